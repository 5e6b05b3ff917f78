package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the tests if any goroutine outlives them: a service, consumer, watch or
// server left running after its test. nats-server's own wait for a source consumer's
// answer outlives its shutdown by up to 30 s (stream.go, srcConsumerWaitTime): not ours.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*stream).trySetupSourceConsumer.func3"))
}
