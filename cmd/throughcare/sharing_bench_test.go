package main

import (
	"testing"

	"go.uber.org/zap/zapcore"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// BenchmarkReferToDeliveredEnforcement measures what enforcing the sharing protocol costs
// a referral, from the ReferCase call until the prison sees it DELIVERED, with 64 in
// flight (as BenchmarkReferToDelivered does): once under the default protocol
// ("enforced"), once with enforcement switched off ("not-enforced": same rules, nothing
// cut, nothing checked at the receiver), each on a system of its own, in the same run.
// "ratio" reports enforced/not-enforced throughput; the goal is at least 0.90.
//
//	go test -run '^$' -bench BenchmarkReferToDeliveredEnforcement -benchtime 300x ./cmd/throughcare/
func BenchmarkReferToDeliveredEnforcement(b *testing.B) {
	const inFlight = 64
	rates := map[string]float64{}
	for _, run := range []struct {
		name   string
		policy handover.Policy
	}{
		{"enforced", protocol.Default()},
		{"not-enforced", noEnforcement{protocol.Default()}},
	} {
		// As BenchmarkReferToDelivered: quiet logs, deadlines scanned at the shipped interval.
		opts := []systemOption{withLogLevel(zapcore.ErrorLevel)}
		for _, a := range allAgencies {
			opts = append(opts, withConfig(a, func(c *handover.Config) {
				c.DeadlineScanInterval = handover.DefaultConfig(a).DeadlineScanInterval
				c.Protocol = run.policy
			}))
		}
		// Started here, not in the sub-benchmark, whose cleanups run after each of its runs.
		sys := newSystem(b, opts...)
		tr := startTracking(b, sys)
		b.Run(run.name, func(b *testing.B) {
			s := benchRefer(b, sys, tr, inFlight)
			rates[run.name] = s.opsPerSec
			b.ReportMetric(s.opsPerSec, "refer/s")
			b.ReportMetric(s.p50, "p50-µs")
			b.ReportMetric(s.p99, "p99-µs")
			b.ReportMetric(s.storedP50, "stored-p50-µs")
			b.ReportMetric(s.storedP99, "stored-p99-µs")
		})
	}
	b.Run("ratio", func(b *testing.B) {
		enforced, off := rates["enforced"], rates["not-enforced"]
		if enforced == 0 || off == 0 {
			b.Skip("needs both enforced and not-enforced in the same run")
		}
		b.ReportMetric(enforced/off, "enforced/not-enforced")
		b.ReportMetric(0, "ns/op")
	})
}

// noEnforcement is the protocol with enforcement switched off: a flow still needs a rule,
// but Enforce cuts nothing and Check finds nothing, so the cost of walking messages and
// deciding their fields is all that differs from the protocol it wraps.
type noEnforcement struct{ *protocol.Protocol }

var _ handover.Policy = noEnforcement{}

func (p noEnforcement) Enforce(_ proto.Message, sender, recipient string, purpose throughcarev1.Purpose, _ []*throughcarev1.Consent) (protocol.Report, error) {
	rule, err := p.RuleFor(sender, recipient, purpose)
	if err != nil {
		return protocol.Report{}, err
	}
	return protocol.Report{Rule: rule}, nil
}

func (noEnforcement) Check(proto.Message, string, string, throughcarev1.Purpose, []*throughcarev1.Consent) ([]throughcarev1.DataCategory, error) {
	return nil, nil
}
