package ledger_test

import (
	"fmt"
	"testing"

	"github.com/throughcare/throughcare/pkg/natstest"
)

// BenchmarkAppend measures one writer appending to one ledger: each append is one
// compare-and-set publish, acknowledged after the file store took it.
func BenchmarkAppend(b *testing.B) {
	ctx := testContext(b)
	l := openLedger(b, natstest.Start(b).JetStream(b))
	d := disclosure(1, "case-a", "A1234BC")
	n := 0
	for b.Loop() {
		n++
		if _, err := l.Append(ctx, d, fmt.Sprintf("shared/bench-%d", n)); err != nil {
			b.Fatalf("append %d: %v", n, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkVerify measures reading and checking a ledger of 10,000 entries.
func BenchmarkVerify(b *testing.B) {
	const entries = 10_000
	ctx := testContext(b)
	l := openLedger(b, natstest.Start(b).JetStream(b))
	for i := 1; i <= entries; i++ {
		mustAppend(b, l, disclosure(i, "case-a", "A1234BC"))
	}
	for b.Loop() {
		got, err := l.Verify(ctx)
		if err != nil || !got.GetIntact() || got.GetEntries() != entries {
			b.Fatalf("verify = %v, %v", got, err)
		}
	}
	b.ReportMetric(float64(b.N*entries)/b.Elapsed().Seconds(), "entries/s")
}
