package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/zap/zapcore"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/ids"
)

// BenchmarkReferToDelivered measures a referral from the ReferCase call until the prison's
// own view shows it DELIVERED (seen on a WatchHandovers stream, so the figure is not bound
// to a polling interval), with 1 and 64 referrals in flight. Beside it, in the same run, it
// publishes the same event bytes synchronously to a plain stream on the same server: the
// floor any handover can reach. It also reports when the handover was stored at probation
// (seen on a watch of probation's bucket), and the floor: the raw rate over the fewest
// writes a handover needs (minWritesPerHandover).
//
//	go test -run '^$' -bench BenchmarkReferToDelivered -benchtime 300x ./cmd/throughcare/
func BenchmarkReferToDelivered(b *testing.B) {
	sys := newBenchSystem(b)
	tr := startTracking(b, sys)
	raw := newRawPublisher(b, sys)
	for _, inFlight := range []int{1, 64} {
		b.Run(fmt.Sprintf("inflight=%d", inFlight), func(b *testing.B) {
			refer := benchRefer(b, sys, tr, inFlight)
			b.StopTimer()
			rawStats := raw.run(b, inFlight, b.N)
			b.ReportMetric(refer.opsPerSec, "refer/s")
			b.ReportMetric(refer.p50, "p50-µs")
			b.ReportMetric(refer.p99, "p99-µs")
			b.ReportMetric(refer.storedP50, "stored-p50-µs")
			b.ReportMetric(refer.storedP99, "stored-p99-µs")
			b.ReportMetric(rawStats.opsPerSec, "raw/s")
			b.ReportMetric(rawStats.p50, "raw-p50-µs")
			b.ReportMetric(rawStats.p99, "raw-p99-µs")
			b.ReportMetric(refer.opsPerSec/rawStats.opsPerSec, "ratio")
			floor := rawStats.opsPerSec / minWritesPerHandover
			b.ReportMetric(floor, "floor/s")
			b.ReportMetric(refer.opsPerSec/floor, "floor-ratio")
			// What the design costs: the writes and client messages one referral makes
			// today, and the rate the raw publish would give if each write cost one.
			b.ReportMetric(refer.writes, "writes/refer")
			b.ReportMetric(refer.messages, "msgs/refer")
			writesFloor := rawStats.opsPerSec / refer.writes
			b.ReportMetric(writesFloor, "writes-floor/s")
			b.ReportMetric(refer.opsPerSec/writesFloor, "writes-floor-ratio")
		})
	}
}

// minWritesPerHandover is the fewest stored writes one referral to DELIVERED can cost,
// whatever the design, given what must be durable before each step is acknowledged:
//
//  1. the referral stored at the sender (its record, with the event to send);
//  2. its copy in the recipient's inbox (the server's sourcing, one write);
//  3. the shared case and handover stored at the recipient, with its receipt;
//  4. the receipt's copy in the sender's inbox (sourcing again);
//  5. the sender's record moved to DELIVERED.
//
// The floor rate is the raw publish rate over this: what a handover would reach if each
// of its writes cost one raw publish and nothing else.
const minWritesPerHandover = 5

// newBenchSystem is the system the referral benchmarks run: errors logged only, and
// deadlines scanned at the shipped interval, since they are not what is measured.
func newBenchSystem(b *testing.B, opts ...systemOption) *system {
	opts = append(opts, withLogLevel(zapcore.ErrorLevel))
	for _, a := range allAgencies {
		opts = append(opts, withConfig(a, func(c *handover.Config) { c.DeadlineScanInterval = handover.DefaultConfig(a).DeadlineScanInterval }))
	}
	return newSystem(b, opts...)
}

// BenchmarkReferToDeliveredTelemetry is BenchmarkReferToDelivered with metrics and
// tracing on (every span recorded and handed to an exporter) against a system with
// neither, in the same run; the ratio is on's throughput over off's.
//
//	go test -run '^$' -bench BenchmarkReferToDeliveredTelemetry -benchtime 300x ./cmd/throughcare/
func BenchmarkReferToDeliveredTelemetry(b *testing.B) {
	// One provider for the whole run: the on system's gRPC handler keeps the provider it
	// started with. Off runs with the global no-op one.
	spans := &spanCounter{}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(spans))
	noSpans := otel.GetTracerProvider()
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	type running struct {
		sys *system
		tr  *tracker
	}
	quiet := newBenchSystem(b, withoutTelemetry())
	otel.SetTracerProvider(tp)
	traced := newBenchSystem(b)
	otel.SetTracerProvider(noSpans)
	systems := map[bool]running{false: {quiet, startTracking(b, quiet)}, true: {traced, startTracking(b, traced)}}
	off := map[int]float64{}
	for _, inFlight := range []int{1, 64} {
		for _, on := range []bool{false, true} {
			b.Run(fmt.Sprintf("inflight=%d/telemetry=%v", inFlight, on), func(b *testing.B) {
				if on {
					otel.SetTracerProvider(tp)
					defer otel.SetTracerProvider(noSpans)
				}
				r := systems[on]
				s := benchRefer(b, r.sys, r.tr, inFlight)
				b.ReportMetric(s.opsPerSec, "refer/s")
				b.ReportMetric(s.p50, "p50-µs")
				b.ReportMetric(s.p99, "p99-µs")
				if on {
					_ = tp.ForceFlush(context.Background())
					b.ReportMetric(float64(spans.n.Swap(0))/float64(b.N), "spans/refer")
				}
				if !on {
					off[inFlight] = s.opsPerSec
				} else if off[inFlight] > 0 {
					b.ReportMetric(s.opsPerSec/off[inFlight], "ratio")
				}
			})
		}
	}
}

// spanCounter is an exporter that only counts what it is given.
type spanCounter struct{ n atomic.Int64 }

func (c *spanCounter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	c.n.Add(int64(len(spans)))
	return nil
}

func (c *spanCounter) Shutdown(context.Context) error { return nil }

type benchStats struct {
	opsPerSec, p50, p99  float64
	storedP50, storedP99 float64
	// writes and messages are the server's stored writes and client messages per
	// referral while they ran (the last referrals' tail work after their DELIVERED is
	// left out: a few of b.N).
	writes, messages float64
}

// benchRefer refers b.N fresh cases, inFlight at a time, each waiting for its DELIVERED.
func benchRefer(b *testing.B, sys *system, tr *tracker, inFlight int) benchStats {
	b.StopTimer()
	cases := openCases(b, sys, b.N)
	ctx := testCtx(b)
	delivered := make([]time.Duration, b.N)
	stored := make([]time.Duration, b.N)
	var next atomic.Int64
	var failed atomic.Pointer[error]
	before := sys.NATS.Traffic(b)
	b.StartTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range inFlight {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N || failed.Load() != nil {
					return
				}
				t0 := time.Now()
				resp, err := sys.Cases[prisonAgency].ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: cases[i].GetCaseId(), Recipient: probationAgency, Purpose: throughcarev1.Purpose_PURPOSE_SUPERVISION})
				if err != nil {
					err = fmt.Errorf("refer: %w", err)
					failed.Store(&err)
					return
				}
				tk := tr.get(resp.GetHandover().GetHandoverId())
				select {
				case <-tk.delivered:
				case <-time.After(30 * time.Second):
					err := fmt.Errorf("handover %s not delivered within 30s", resp.GetHandover().GetHandoverId())
					failed.Store(&err)
					return
				}
				select {
				case <-tk.stored: // stored at probation before delivered at the prison
				case <-time.After(5 * time.Second):
					err := fmt.Errorf("handover %s delivered but never seen stored at probation", resp.GetHandover().GetHandoverId())
					failed.Store(&err)
					return
				}
				delivered[i], stored[i] = tk.deliveredAt.Sub(t0), tk.storedAt.Sub(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	after := sys.NATS.Traffic(b)
	s := benchStats{
		opsPerSec: float64(b.N) / elapsed.Seconds(),
		writes:    float64(after.StoredWrites-before.StoredWrites) / float64(b.N),
		messages:  float64(after.ClientMessages-before.ClientMessages) / float64(b.N),
	}
	s.p50, s.p99 = percentiles(delivered)
	s.storedP50, s.storedP99 = percentiles(stored)
	return s
}

// percentiles returns the 50th and 99th percentile in µs.
func percentiles(d []time.Duration) (p50, p99 float64) {
	d = slices.Clone(d)
	slices.Sort(d)
	at := func(q float64) float64 {
		i := max(int(math.Ceil(q*float64(len(d))))-1, 0)
		return float64(d[i].Microseconds())
	}
	return at(0.50), at(0.99)
}

// tracker notes when each handover was first seen DELIVERED at the prison and first
// stored at probation.
type tracker struct {
	mu sync.Mutex
	m  map[string]*tracked
}

type tracked struct {
	delivered, stored     chan struct{}
	deliveredAt, storedAt time.Time
}

func (tr *tracker) get(id string) *tracked {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tk := tr.m[id]
	if tk == nil {
		tk = &tracked{delivered: make(chan struct{}), stored: make(chan struct{})}
		tr.m[id] = tk
	}
	return tk
}

// markDelivered and markStored note the first time only.
func (tr *tracker) markDelivered(id string, at time.Time) {
	tk := tr.get(id)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tk.deliveredAt.IsZero() {
		tk.deliveredAt = at
		close(tk.delivered)
	}
}

func (tr *tracker) markStored(id string, at time.Time) {
	tk := tr.get(id)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tk.storedAt.IsZero() {
		tk.storedAt = at
		close(tk.stored)
	}
}

// startTracking watches the prison's handovers over gRPC and probation's bucket directly.
func startTracking(b *testing.B, sys *system) *tracker {
	tr := &tracker{m: map[string]*tracked{}}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() { stop(); wg.Wait() })

	stream, err := sys.Handovers[prisonAgency].WatchHandovers(ctx, &throughcarev1.WatchHandoversRequest{})
	if err != nil {
		b.Fatalf("watch prison: %v", err)
	}
	wg.Go(func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			if h := resp.GetHandover(); resp.GetDirection() == outgoing && h.GetState() != stateReferred {
				tr.markDelivered(h.GetHandoverId(), time.Now())
			}
		}
	})

	kv, err := sys.JS[probationAgency].KeyValue(ctx, "probation_handovers")
	if err != nil {
		b.Fatalf("probation bucket: %v", err)
	}
	w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.MetaOnly())
	if err != nil {
		b.Fatalf("watch probation bucket: %v", err)
	}
	wg.Go(func() {
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					tr.markStored(e.Key(), time.Now())
				}
			}
		}
	})
	return tr
}

// rawPublisher publishes one referral's bytes to a stream of its own.
type rawPublisher struct {
	js  jetstream.JetStream
	msg *nats.Msg
}

func newRawPublisher(b *testing.B, sys *system) *rawPublisher {
	ctx := testCtx(b)
	// The bytes of a real referral, as the relay publishes it.
	rc := openCase(b, sys.Prison)
	id := refer(b, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	waitState(b, sys.Handovers[prisonAgency], id, stateDelivered)
	outbox, err := sys.JS[prisonAgency].Stream(ctx, eventbus.OutboxStream(prisonAgency))
	if err != nil {
		b.Fatalf("outbox: %v", err)
	}
	orig, err := outbox.GetLastMsgForSubject(ctx, "tc.prison.out.probation.handover_referred")
	if err != nil {
		b.Fatalf("read a referral: %v", err)
	}
	// The same kind of stream as an outbox: file storage, a duplicate window.
	// In the prison's account, on a subject its user may publish to.
	if _, err := sys.JS[prisonAgency].CreateStream(ctx, jetstream.StreamConfig{
		Name: "BENCH_RAW", Subjects: []string{"tc.prison.bench.raw.>"}, Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew,
		MaxBytes: 1 << 30, Duplicates: 10 * time.Minute,
	}); err != nil {
		b.Fatalf("create raw stream: %v", err)
	}
	msg := &nats.Msg{Subject: "tc.prison.bench.raw.handover_referred", Header: nats.Header{}, Data: orig.Data}
	for k, v := range orig.Header {
		msg.Header[k] = slices.Clone(v)
	}
	// The relay's publish expects its stream; so does this one.
	msg.Header.Set(jetstream.ExpectedStreamHeader, "BENCH_RAW")
	b.Logf("referral event: %d bytes body, %d headers", len(orig.Data), len(orig.Header))
	return &rawPublisher{js: sys.JS[prisonAgency], msg: msg}
}

// run publishes n copies, inFlight at a time, each under a fresh message id.
func (r *rawPublisher) run(b *testing.B, inFlight, n int) benchStats {
	ctx := testCtx(b)
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var failed atomic.Pointer[error]
	start := time.Now()
	var wg sync.WaitGroup
	for range inFlight {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || failed.Load() != nil {
					return
				}
				m := &nats.Msg{Subject: r.msg.Subject, Header: nats.Header{}, Data: r.msg.Data}
				for k, v := range r.msg.Header {
					m.Header[k] = v
				}
				m.Header.Set(jetstream.MsgIDHeader, ids.New(ids.Event))
				t0 := time.Now()
				if _, err := r.js.PublishMsg(ctx, m); err != nil {
					failed.Store(&err)
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := failed.Load(); err != nil {
		b.Fatalf("raw publish: %v", *err)
	}
	s := benchStats{opsPerSec: float64(n) / elapsed.Seconds()}
	s.p50, s.p99 = percentiles(lat)
	return s
}
