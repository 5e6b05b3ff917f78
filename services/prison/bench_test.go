package prison_test

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// BenchmarkOpenReleaseCase opens a full release case through gRPC into JetStream, and
// compares it with a bare synchronous JetStream publish of the same bytes on the same
// server. Each sub-benchmark reports ops/s and p50/p99 latency; ratio-vs-raw reports the
// gRPC throughput as a fraction of the raw one.
//
//	go test -run '^$' -bench BenchmarkOpenReleaseCase -benchtime 2000x ./services/prison/
func BenchmarkOpenReleaseCase(b *testing.B) {
	ns := natstest.Start(b)
	// Benchmark logs are always printed; one info line per call would swamp the output.
	h := startPrison(b, ns, zaptest.NewLogger(b, zaptest.Level(zap.WarnLevel)))
	req := &throughcarev1.OpenReleaseCaseRequest{Actor: "cw-bench", ReleaseCase: fullCase()}

	// What the service stores for that request, byte for byte in size.
	stored := proto.CloneOf(req.GetReleaseCase())
	stored.CaseId = ids.New(ids.Case)
	stored.State = throughcarev1.CaseState_CASE_STATE_OPEN
	stored.Owner = "prison"
	stored.CreateTime = timestamppb.Now()
	stored.UpdateTime = stored.CreateTime
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(stored)
	if err != nil {
		b.Fatalf("marshal: %v", err)
	}

	var grpcOps, rawOps float64
	b.Run("grpc+jetstream", func(b *testing.B) {
		grpcOps = measure(b, len(data), func(ctx context.Context) error {
			_, err := h.Client.OpenReleaseCase(ctx, req)
			return err
		})
	})
	b.Run("raw-jetstream-publish", func(b *testing.B) {
		js := ns.JetStream(b)
		if _, err := js.CreateOrUpdateStream(b.Context(), jetstream.StreamConfig{
			Name:     "RAW_BENCH",
			Subjects: []string{"raw.bench.>"},
			Storage:  jetstream.FileStorage, // as the case bucket
		}); err != nil {
			b.Fatalf("create stream: %v", err)
		}
		rawOps = measure(b, len(data), func(ctx context.Context) error {
			_, err := js.Publish(ctx, "raw.bench.case", data)
			return err
		})
	})
	b.Run("ratio-vs-raw", func(b *testing.B) {
		if grpcOps == 0 || rawOps == 0 {
			b.Skip("needs both grpc+jetstream and raw-jetstream-publish to run")
		}
		for b.Loop() {
		}
		b.ReportMetric(0, "ns/op") // nothing was measured here
		b.ReportMetric(grpcOps/rawOps, "ratio-vs-raw")
	})
}

// measure runs op once per b.Loop iteration, one at a time, and reports throughput and
// latency percentiles. It returns the ops/s.
func measure(b *testing.B, caseBytes int, op func(context.Context) error) float64 {
	b.Helper()
	ctx := b.Context()
	var latencies []time.Duration
	start := time.Now()
	for b.Loop() {
		t0 := time.Now()
		if err := op(ctx); err != nil {
			b.Fatalf("op %d: %v", len(latencies), err)
		}
		latencies = append(latencies, time.Since(t0))
	}
	elapsed := time.Since(start)
	if len(latencies) == 0 {
		return 0
	}
	slices.Sort(latencies)
	ops := float64(len(latencies)) / elapsed.Seconds()
	b.ReportMetric(ops, "ops/s")
	b.ReportMetric(micros(percentile(latencies, 0.50)), "p50-µs")
	b.ReportMetric(micros(percentile(latencies, 0.99)), "p99-µs")
	b.ReportMetric(float64(caseBytes), "case-bytes")
	return ops
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
