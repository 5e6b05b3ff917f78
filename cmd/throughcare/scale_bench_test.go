package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/handover"
)

// BenchmarkAtScale measures the everyday operations with 1,000, 10,000 and 100,000
// handovers stored, in one system grown from one size to the next: fill to 1k, measure
// every operation, fill up to 10k, measure, fill to 100k, measure.
//
// The prefill goes through the services' own gRPC APIs, 64 cases in flight: the prison
// opens a case (expected release spread over the next two years), refers it to probation,
// and probation leaves it DELIVERED, reads it (RETRIEVED), acknowledges it, or
// acknowledges and accepts it, a quarter each. Every size waits until the prison's view
// of every handover shows the state probation put it in.
//
// Operations, each a sub-benchmark of its own (stored=N/...):
//
//	GetHandover/sender         the prison's view of a random stored handover
//	GetHandover/recipient      probation's view of a random one it has already read
//	                           (a first read would also write RETRIEVED)
//	raw-Get/sender             the baseline: the KV Gets of the records GetHandover returns,
//	raw-Get/recipient          straight from JetStream (the prison: the handover; probation:
//	                           the handover and its case copy); GetHandover reports its cost
//	                           over this, same size, as over-raw-ratio
//	ListHandovers/first-page   the prison's outgoing handovers, first page of 50
//	ListHandovers/middle-page  the same from a page token near the middle (see middleToken)
//	ListSupervisionCases       probation's case list, first page of 50
//	ReferCase→DELIVERED        refer one new case, poll the prison's GetHandover until it
//	                           is DELIVERED; p50-ms and p99-ms beside ns/op
//	RecordRelease              release a case whose handover probation accepted
//	CheckDeadlines/sender      one deadline pass of the prison's handover.Service
//	CheckDeadlines/recipient   one deadline pass of probation's
//	heap                       HeapInuse after a GC (heap-MiB), and how long the prefill
//	                           took (prefill-s); its ns/op is 0
//
// ReferCase→DELIVERED and RecordRelease add a few handovers of their own (b.N each), so a
// size holds slightly more than N when the later operations run.
//
// On the largest size each operation also reports its cost against the smallest size,
// ns/op over ns/op from this same run, e.g. "100k/1k-ratio" and "10k/1k-ratio".
//
// THROUGHCARE_SCALE_MAX (default 100000) caps the largest size; -short caps it at 1000.
// A cap below 1000 runs that one size. Prefilling 100k takes long: give -timeout.
// THROUGHCARE_SCALE_PROFILE=DIR writes a CPU profile of each operation at each size
// (DIR/cpu-<op>-<size>.out, '/' in the name as '_'); -cpuprofile would mostly show the prefill.
//
//	THROUGHCARE_SCALE_MAX=10000 go test -run '^$' -bench BenchmarkAtScale -benchtime 3x -timeout 3h ./cmd/throughcare/
//	go test -short -run '^$' -bench BenchmarkAtScale -benchtime 1x ./cmd/throughcare/
func BenchmarkAtScale(b *testing.B) {
	sizes := scaleSizes(b)
	// Calls are slow at scale: let them run, so the figures say how slow rather than
	// stopping at the shipped 30s. Deadlines and the inbox as shipped, quiet logs.
	opts := []systemOption{
		withLogLevel(zapcore.ErrorLevel),
		withGRPC(grpcFlags{CallTimeout: scaleCallTimeout, MaxInFlightPerCaller: 4 * scaleInFlight}),
	}
	for _, a := range allAgencies {
		opts = append(opts, withConfig(a, func(c *handover.Config) {
			shipped := handover.DefaultConfig(a)
			c.DeadlineScanInterval = shipped.DeadlineScanInterval
			c.Inbox = shipped.Inbox
		}))
	}
	sys := newSystem(b, opts...)
	s := &scaleBench{
		sys:      sys,
		sizes:    sizes,
		ns:       map[string]map[int]float64{},
		caseOf:   map[string]string{},
		rng:      rand.New(rand.NewPCG(1, 2)),
		atPrison: followStates(b, sys.Handovers[prisonAgency]),
	}
	for _, size := range sizes {
		ok := b.Run(fmt.Sprintf("stored=%d", size), func(b *testing.B) {
			if s.broken != "" {
				b.Skipf("not run: %s", s.broken)
			}
			start := time.Now()
			if err := s.fillTo(b, size); err != nil {
				s.broken = fmt.Sprintf("prefill to %d failed after %s with %d handovers stored: %v", size, time.Since(start).Round(time.Second), len(s.all), err)
				b.Fatal(s.broken)
			}
			prefill := time.Since(start)
			fmt.Fprintf(os.Stderr, "scale: stored=%d prefilled in %s\n", size, prefill.Round(time.Millisecond))
			s.measure(b, size, prefill)
		})
		if !ok && s.broken == "" {
			s.broken = fmt.Sprintf("stored=%d failed", size)
		}
	}
}

const (
	// scaleInFlight is how many prefill cases are in flight at once.
	scaleInFlight = 64
	// scaleCallTimeout bounds one call, client and server side.
	scaleCallTimeout = 5 * time.Minute
	// scaleWait bounds waiting for the prison to see every prefilled handover's state.
	scaleWait = 15 * time.Minute
	// scalePageSize is the page size measured; paging to the middle uses the largest.
	scalePageSize = 50
	maxPageSize   = 500
	// middleBudget bounds paging forward to the middle page's token.
	middleBudget = 3 * time.Minute
)

// scaleSizes are the sizes to run, smallest first, capped by THROUGHCARE_SCALE_MAX and -short.
func scaleSizes(b *testing.B) []int {
	limit := 100000
	if v := os.Getenv("THROUGHCARE_SCALE_MAX"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("THROUGHCARE_SCALE_MAX=%q: want a positive number of handovers", v)
		}
		limit = n
	}
	if testing.Short() {
		limit = min(limit, 1000)
	}
	var sizes []int
	for _, n := range []int{1000, 10000, 100000} {
		if n <= limit {
			sizes = append(sizes, n)
		}
	}
	if len(sizes) == 0 || sizes[len(sizes)-1] != limit {
		sizes = append(sizes, limit)
	}
	return sizes
}

// sizeLabel is 1k for 1000.
func sizeLabel(n int) string {
	if n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

// scaleBench is the system and what the prefill stored in it.
type scaleBench struct {
	sys      *system
	sizes    []int
	atPrison *stateFollower
	// ns is ns/op per operation and size, measured in this run.
	ns     map[string]map[int]float64
	broken string

	mu  sync.Mutex
	rng *rand.Rand
	// all are the prefilled handovers; read those probation has read already.
	all, read []string
	// caseOf is each prefilled handover's case.
	caseOf map[string]string
	// releasable are cases whose handover probation accepted and that are not released yet.
	releasable []string
	// next numbers the next case opened.
	next atomic.Int64
}

// prefillKind is what probation does with a prefilled handover, and the state the
// prison's view ends in.
type prefillKind int

const (
	leaveDelivered prefillKind = iota
	readOnce
	acknowledgeOnly
	acknowledgeAccept
)

func (k prefillKind) state() throughcarev1.HandoverState {
	return [...]throughcarev1.HandoverState{stateDelivered, stateRetrieved, stateAcknowledged, stateAccepted}[k]
}

// fillTo prefills until size handovers are stored, a quarter of each kind.
func (s *scaleBench) fillTo(b *testing.B, size int) error {
	n := size - len(s.all)
	if n <= 0 {
		return nil
	}
	return s.prefill(b, n, func(num int) prefillKind { return prefillKind(num % 4) })
}

// prefilled is one handover the prefill stored.
type prefilled struct {
	id, caseID string
	kind       prefillKind
}

// prefill stores n more handovers, scaleInFlight cases in flight, and waits until the
// prison sees each in the state probation put it in. kind picks by case number.
func (s *scaleBench) prefill(b *testing.B, n int, kind func(num int) prefillKind) error {
	ctx := b.Context()
	got := make([]prefilled, n)
	var next, done atomic.Int64
	var failed atomic.Pointer[error]
	start := time.Now()
	var wg sync.WaitGroup
	for range scaleInFlight {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || failed.Load() != nil {
					return
				}
				num := int(s.next.Add(1))
				p, err := s.prefillOne(ctx, num, kind(num))
				if err != nil {
					err = fmt.Errorf("case %d (%d of %d more, after %s): %w", num, done.Load(), n, time.Since(start).Round(time.Millisecond), err)
					failed.CompareAndSwap(nil, &err)
					return
				}
				got[i] = p
				if d := done.Add(1); d%1000 == 0 {
					fmt.Fprintf(os.Stderr, "scale: %d of %d more stored in %s (%d in all)\n", d, n, time.Since(start).Round(time.Millisecond), len(s.all)+int(d))
				}
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		return *err
	}
	want := make(map[string]throughcarev1.HandoverState, n)
	s.mu.Lock()
	for _, p := range got {
		want[p.id] = p.kind.state()
		s.all = append(s.all, p.id)
		s.caseOf[p.id] = p.caseID
		if p.kind != leaveDelivered {
			s.read = append(s.read, p.id)
		}
		if p.kind == acknowledgeAccept {
			s.releasable = append(s.releasable, p.caseID)
		}
	}
	s.mu.Unlock()
	if err := s.atPrison.waitFor(want, scaleWait); err != nil {
		return fmt.Errorf("all %d stored at probation, then: %w", n, err)
	}
	return nil
}

// prefillOne opens case num at the prison, refers it to probation and takes probation's
// steps for kind.
func (s *scaleBench) prefillOne(ctx context.Context, num int, kind prefillKind) (prefilled, error) {
	caseID, err := s.openScaleCase(ctx, num)
	if err != nil {
		return prefilled{}, err
	}
	var id string
	err = scaleCall(ctx, false, func(ctx context.Context) error {
		resp, err := s.sys.Cases[prisonAgency].ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: caseID, Recipient: probationAgency, Purpose: throughcarev1.Purpose_PURPOSE_SUPERVISION})
		id = resp.GetHandover().GetHandoverId()
		return err
	})
	if err != nil {
		return prefilled{}, fmt.Errorf("refer %s: %w", caseID, err)
	}
	probationH := s.sys.Handovers[probationAgency]
	// Probation answers NotFound until the referral reaches it.
	if kind == readOnce {
		err = scaleCall(ctx, true, func(ctx context.Context) error {
			_, err := probationH.GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: id})
			return err
		})
		if err != nil {
			return prefilled{}, fmt.Errorf("read %s at probation: %w", id, err)
		}
	}
	if kind >= acknowledgeOnly {
		err = scaleCall(ctx, true, func(ctx context.Context) error {
			_, err := probationH.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: "po-marko", HandoverId: id})
			return err
		})
		if err != nil {
			return prefilled{}, fmt.Errorf("acknowledge %s: %w", id, err)
		}
	}
	if kind == acknowledgeAccept {
		err = scaleCall(ctx, false, func(ctx context.Context) error {
			_, err := probationH.AcceptHandover(ctx, &throughcarev1.AcceptHandoverRequest{Actor: "po-marko", HandoverId: id, AssignedWorker: "po-marko"})
			return err
		})
		if err != nil {
			return prefilled{}, fmt.Errorf("accept %s: %w", id, err)
		}
	}
	return prefilled{id: id, caseID: caseID, kind: kind}, nil
}

// openScaleCase opens a full case numbered num, expected to be released on one of the
// next 730 days, spread evenly by num.
func (s *scaleBench) openScaleCase(ctx context.Context, num int) (string, error) {
	rc := fullReleaseCase(num)
	rc.ReleasePlan.ExpectedReleaseDate = date(time.Now().AddDate(0, 0, 1+(num*7919)%730))
	var caseID string
	err := scaleCall(ctx, false, func(ctx context.Context) error {
		resp, err := s.sys.Prison.OpenReleaseCase(ctx, &throughcarev1.OpenReleaseCaseRequest{Actor: "prison-worker-1", ReleaseCase: rc})
		caseID = resp.GetReleaseCase().GetCaseId()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("open case %d: %w", num, err)
	}
	return caseID, nil
}

// scaleCall calls fn, each try bounded by scaleCallTimeout, and tries again while it is
// refused for load (Unavailable, ResourceExhausted, Aborted) or, with notFoundToo, while
// what it asks for has not arrived yet; at most for scaleCallTimeout in all.
func scaleCall(ctx context.Context, notFoundToo bool, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(scaleCallTimeout)
	wait := 10 * time.Millisecond
	for {
		callCtx, cancel := context.WithTimeout(ctx, scaleCallTimeout)
		err := fn(callCtx)
		cancel()
		switch status.Code(err) {
		case codes.OK:
			return nil
		case codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		case codes.NotFound:
			if !notFoundToo {
				return err
			}
		default:
			return err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(fmt.Errorf("still failing after %s", scaleCallTimeout), err)
		}
		time.Sleep(wait)
		wait = min(2*wait, 250*time.Millisecond)
	}
}

// callCtx bounds one measured call.
func callCtx(b *testing.B) (context.Context, context.CancelFunc) {
	return context.WithTimeout(b.Context(), scaleCallTimeout)
}

// stateFollower keeps the latest state of every handover an agency's WatchHandovers shows.
type stateFollower struct {
	mu     sync.Mutex
	latest map[string]*throughcarev1.Handover
	err    error
}

// followStates follows client's handovers from the start until the benchmark ends.
func followStates(b *testing.B, client throughcarev1.HandoverServiceClient) *stateFollower {
	f := &stateFollower{latest: map[string]*throughcarev1.Handover{}}
	ctx, stop := context.WithCancel(context.Background())
	stream, err := client.WatchHandovers(ctx, &throughcarev1.WatchHandoversRequest{})
	if err != nil {
		stop()
		b.Fatalf("watch handovers: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				f.mu.Lock()
				f.err = err
				f.mu.Unlock()
				return
			}
			h := resp.GetHandover()
			f.mu.Lock()
			if have := f.latest[h.GetHandoverId()]; have == nil || have.GetRevision() < h.GetRevision() {
				f.latest[h.GetHandoverId()] = h
			}
			f.mu.Unlock()
		}
	}()
	b.Cleanup(func() { stop(); <-done })
	return f
}

// waitFor waits until every handover in want is in its state.
func (f *stateFollower) waitFor(want map[string]throughcarev1.HandoverState, timeout time.Duration) error {
	start := time.Now()
	lastNote := start
	for {
		f.mu.Lock()
		err := f.err
		missing := 0
		var example string
		for id, state := range want {
			if got := f.latest[id].GetState(); got != state {
				missing++
				if example == "" {
					example = fmt.Sprintf("%s is %s, want %s", id, got, state)
				}
			}
		}
		f.mu.Unlock()
		switch {
		case missing == 0:
			return nil
		case err != nil:
			return fmt.Errorf("watching the prison's handovers: %w", err)
		case time.Since(start) > timeout:
			return fmt.Errorf("after %s the prison sees %d of %d handovers not yet in their state, e.g. %s", timeout, missing, len(want), example)
		}
		if time.Since(lastNote) > 15*time.Second {
			fmt.Fprintf(os.Stderr, "scale: waiting %s for the prison to see %d of %d handovers in their state\n", time.Since(start).Round(time.Second), missing, len(want))
			lastNote = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// measure runs every operation at size.
func (s *scaleBench) measure(b *testing.B, size int, prefill time.Duration) {
	prisonH, probationH := s.sys.Handovers[prisonAgency], s.sys.Handovers[probationAgency]

	s.op(b, size, "heap", func(b *testing.B) {
		b.StopTimer()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		heap := float64(m.HeapInuse) / (1 << 20)
		b.ReportMetric(heap, "heap-MiB")
		b.ReportMetric(prefill.Seconds(), "prefill-s")
		b.ReportMetric(float64(len(s.all)), "handovers")
		b.ReportMetric(0, "ns/op")
		s.record(b, size, "heap", heap) // the ratio compares heaps, not times
	})

	getHandover := func(client throughcarev1.HandoverServiceClient, from []string) func(b *testing.B) {
		return func(b *testing.B) {
			ids := s.pick(b.N, from)
			b.ResetTimer()
			for i := range b.N {
				ctx, cancel := callCtx(b)
				_, err := client.GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: ids[i]})
				cancel()
				if err != nil {
					b.Fatalf("get handover %s: %v", ids[i], err)
				}
			}
		}
	}
	rawGet := func(agency string, from []string, withCase bool) func(b *testing.B) {
		return func(b *testing.B) {
			handovers, err := s.sys.JS[agency].KeyValue(b.Context(), agency+"_handovers")
			if err != nil {
				b.Fatal(err)
			}
			cases, err := s.sys.JS[agency].KeyValue(b.Context(), agency+"_cases")
			if err != nil {
				b.Fatal(err)
			}
			ids := s.pick(b.N, from)
			b.ResetTimer()
			for i := range b.N {
				ctx, cancel := callCtx(b)
				_, err := handovers.Get(ctx, ids[i])
				if err == nil && withCase {
					_, err = cases.Get(ctx, s.caseOf[ids[i]])
				}
				cancel()
				if err != nil {
					b.Fatalf("raw get of handover %s at %s: %v", ids[i], agency, err)
				}
			}
		}
	}
	s.op(b, size, "raw-Get/sender", rawGet(prisonAgency, s.all, false))
	s.op(b, size, "raw-Get/recipient", rawGet(probationAgency, s.read, true))
	s.op(b, size, "GetHandover/sender", getHandover(prisonH, s.all))
	s.overRaw(b, size, "GetHandover/sender", "raw-Get/sender")
	s.op(b, size, "GetHandover/recipient", getHandover(probationH, s.read))
	s.overRaw(b, size, "GetHandover/recipient", "raw-Get/recipient")

	listPage := func(at func(b *testing.B) *middlePage) func(b *testing.B) {
		return func(b *testing.B) {
			page := at(b)
			req := &throughcarev1.ListHandoversRequest{Direction: outgoing, PageSize: scalePageSize, PageToken: page.token}
			// After ResetTimer, which drops reported metrics.
			defer b.ReportMetric(float64(page.offset), "offset")
			b.ResetTimer()
			for range b.N {
				ctx, cancel := callCtx(b)
				resp, err := prisonH.ListHandovers(ctx, req)
				cancel()
				if err != nil {
					b.Fatalf("list handovers: %v", err)
				}
				if len(resp.GetHandovers()) != scalePageSize {
					b.Fatalf("list handovers: got %d, want a full page of %d", len(resp.GetHandovers()), scalePageSize)
				}
			}
		}
	}
	s.op(b, size, "ListHandovers/first-page", listPage(func(*testing.B) *middlePage { return &middlePage{} }))
	var middle *middlePage
	s.op(b, size, "ListHandovers/middle-page", listPage(func(b *testing.B) *middlePage {
		if middle == nil {
			middle = s.middleToken(b, prisonH)
		}
		return middle
	}))

	s.op(b, size, "ListSupervisionCases", func(b *testing.B) {
		for range b.N {
			ctx, cancel := callCtx(b)
			resp, err := s.sys.Probation.ListSupervisionCases(ctx, &throughcarev1.ListSupervisionCasesRequest{PageSize: scalePageSize})
			cancel()
			if err != nil {
				b.Fatalf("list supervision cases: %v", err)
			}
			if len(resp.GetReleaseCases()) != scalePageSize {
				b.Fatalf("list supervision cases: got %d, want a full page of %d", len(resp.GetReleaseCases()), scalePageSize)
			}
		}
	})

	s.op(b, size, "ReferCase→DELIVERED", func(b *testing.B) {
		caseIDs := make([]string, b.N)
		if err := parallel(b.N, 16, func(i int) (err error) {
			caseIDs[i], err = s.openScaleCase(b.Context(), int(s.next.Add(1)))
			return err
		}); err != nil {
			b.Fatal(err)
		}
		lat := make([]time.Duration, b.N)
		b.ResetTimer()
		for i := range b.N {
			t0 := time.Now()
			if err := s.referUntilDelivered(b, caseIDs[i]); err != nil {
				b.Fatal(err)
			}
			lat[i] = time.Since(t0)
		}
		b.StopTimer()
		slices.Sort(lat)
		at := func(q float64) float64 {
			i := max(int(float64(len(lat))*q+0.999999)-1, 0)
			return float64(lat[i].Microseconds()) / 1000
		}
		b.ReportMetric(at(0.50), "p50-ms")
		b.ReportMetric(at(0.99), "p99-ms")
	})

	s.op(b, size, "RecordRelease", func(b *testing.B) {
		if short := b.N - len(s.releasable); short > 0 {
			if err := s.prefill(b, short, func(int) prefillKind { return acknowledgeAccept }); err != nil {
				b.Fatalf("prefill %d more accepted cases: %v", short, err)
			}
		}
		s.mu.Lock()
		caseIDs := s.releasable[:b.N]
		s.releasable = s.releasable[b.N:]
		s.mu.Unlock()
		release := &throughcarev1.Release{ActualReleaseDate: date(time.Now())}
		b.ResetTimer()
		for i := range b.N {
			ctx, cancel := callCtx(b)
			_, err := s.sys.Prison.RecordRelease(ctx, &throughcarev1.RecordReleaseRequest{Actor: "prison-worker-1", CaseId: caseIDs[i], Release: release})
			cancel()
			if err != nil {
				b.Fatalf("record release of %s: %v", caseIDs[i], err)
			}
		}
	})

	checkDeadlines := func(agency string) func(b *testing.B) {
		svc := s.sys.nodes[agency][0].srv.handovers
		return func(b *testing.B) {
			for range b.N {
				ctx, cancel := callCtx(b)
				err := svc.CheckDeadlines(ctx)
				cancel()
				if err != nil {
					b.Fatalf("check deadlines: %v", err)
				}
			}
		}
	}
	s.op(b, size, "CheckDeadlines/sender", checkDeadlines(prisonAgency))
	s.op(b, size, "CheckDeadlines/recipient", checkDeadlines(probationAgency))
}

// op runs one operation's sub-benchmark at size and records its ns/op.
func (s *scaleBench) op(b *testing.B, size int, name string, body func(b *testing.B)) {
	b.Run(name, func(b *testing.B) {
		if dir := os.Getenv("THROUGHCARE_SCALE_PROFILE"); dir != "" && name != "heap" {
			stop := startCPUProfile(b, filepath.Join(dir, fmt.Sprintf("cpu-%s-%d.out", strings.ReplaceAll(name, "/", "_"), size)))
			defer stop()
		}
		body(b)
		if name != "heap" {
			s.record(b, size, name, float64(b.Elapsed().Nanoseconds())/float64(b.N))
		}
	})
}

// overRaw reports, in the sub-benchmark just run as name, its cost over raw's at size.
func (s *scaleBench) overRaw(b *testing.B, size int, name, raw string) {
	if r := s.ns[raw][size]; r > 0 {
		b.Run(name+"/over-raw", func(b *testing.B) {
			b.ReportMetric(s.ns[name][size]/r, "over-raw-ratio")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// startCPUProfile profiles the process into path until the returned func is called.
func startCPUProfile(b *testing.B, path string) func() {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// record keeps v for name at size and, at the largest size, reports each size's v
// against the smallest's, measured in this same run.
func (s *scaleBench) record(b *testing.B, size int, name string, v float64) {
	if s.ns[name] == nil {
		s.ns[name] = map[int]float64{}
	}
	s.ns[name][size] = v
	if size != s.sizes[len(s.sizes)-1] || len(s.sizes) < 2 {
		return
	}
	smallest := s.sizes[0]
	base, ok := s.ns[name][smallest]
	if !ok || base == 0 {
		return
	}
	for _, other := range s.sizes[1:] {
		if o, ok := s.ns[name][other]; ok {
			b.ReportMetric(o/base, sizeLabel(other)+"/"+sizeLabel(smallest)+"-ratio")
		}
	}
}

// pick picks n ids from from at random, repeats allowed.
func (s *scaleBench) pick(n int, from []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	picked := make([]string, n)
	for i := range picked {
		picked[i] = from[s.rng.IntN(len(from))]
	}
	return picked
}

// middlePage is a page token of the prison's outgoing handovers and how many handovers
// come before the page it names: the first page, or one near the middle.
type middlePage struct {
	token  string
	offset int
}

// middleToken pages forward through the prison's outgoing handovers, maxPageSize at a
// time (a token names a position, whatever the page size it came with), to the page
// after half of them. If that takes longer than middleBudget it stops at the page it
// reached: the offset metric says where the measured page starts.
func (s *scaleBench) middleToken(b *testing.B, client throughcarev1.HandoverServiceClient) *middlePage {
	b.StopTimer()
	defer b.StartTimer()
	half := len(s.all) / 2
	start := time.Now()
	m := &middlePage{}
	for m.offset < half {
		if time.Since(start) > middleBudget {
			b.Logf("paging to the middle (%d) stopped after %s at offset %d", half, middleBudget, m.offset)
			fmt.Fprintf(os.Stderr, "scale: paging to the middle (%d) stopped after %s at offset %d\n", half, middleBudget, m.offset)
			break
		}
		ctx, cancel := callCtx(b)
		resp, err := client.ListHandovers(ctx, &throughcarev1.ListHandoversRequest{Direction: outgoing, PageSize: int32(min(maxPageSize, half-m.offset)), PageToken: m.token})
		cancel()
		if err != nil {
			b.Fatalf("page to the middle, at offset %d: %v", m.offset, err)
		}
		if resp.GetNextPageToken() == "" {
			b.Fatalf("page to the middle: no next page at offset %d of %d", m.offset, len(s.all))
		}
		m.offset += len(resp.GetHandovers())
		m.token = resp.GetNextPageToken()
	}
	return m
}

// referUntilDelivered refers caseID to probation and polls the prison's GetHandover until
// it shows the handover DELIVERED.
func (s *scaleBench) referUntilDelivered(b *testing.B, caseID string) error {
	ctx, cancel := callCtx(b)
	defer cancel()
	resp, err := s.sys.Cases[prisonAgency].ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: caseID, Recipient: probationAgency, Purpose: throughcarev1.Purpose_PURPOSE_SUPERVISION})
	if err != nil {
		return fmt.Errorf("refer %s: %w", caseID, err)
	}
	id := resp.GetHandover().GetHandoverId()
	for {
		got, err := s.sys.Handovers[prisonAgency].GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: id})
		if err != nil {
			return fmt.Errorf("handover %s, waiting for DELIVERED: %w", id, err)
		}
		if got.GetHandover().GetState() == stateDelivered {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
}
