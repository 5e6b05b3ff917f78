package records_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: a consumer, watch or
// server left running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
