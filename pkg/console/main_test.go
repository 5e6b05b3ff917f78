package console

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a flow follower, an
// event stream or a server left running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
