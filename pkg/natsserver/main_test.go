package natsserver_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a consumer, watch or
// server left running. nats-server's own wait for a source consumer's answer outlives its
// shutdown by up to 30 s (stream.go, srcConsumerWaitTime): not ours to stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nats-io/nats-server/v2/server.(*stream).trySetupSourceConsumer.func3"))
}
