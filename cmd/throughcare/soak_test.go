package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// TestSoakWithFaultsOnASchedule refers THROUGHCARE_SOAK handovers (at least 20,000 for
// the documented soak) on a 3-node cluster with the services as processes, 32 in flight,
// while a NATS node is killed with kill -9 and started again 10 s later, in turn, a
// minute after the last one came back. Every handover must end DELIVERED with one
// delivered receipt; each service's heap in use and goroutines, scraped from its
// /metrics, must end no more than half as high again as they stood a quarter of the way in.
//
//	THROUGHCARE_SOAK=20000 go test -run TestSoakWithFaultsOnASchedule -timeout 60m -v ./cmd/throughcare
func TestSoakWithFaultsOnASchedule(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("THROUGHCARE_SOAK"))
	if n <= 0 {
		t.Skip("the soak: THROUGHCARE_SOAK=20000 runs it")
	}
	c := startLocalCluster(t)
	ctx := t.Context() // the soak outlasts testCtx's bound; each call has its own
	prisonConn := dialAgency(t, c.Agencies[0].Addr, clientTLS(t, c.Certs, prisonAgency, prisonAgency))
	prison, prisonCases := throughcarev1.NewPrisonServiceClient(prisonConn), throughcarev1.NewCaseServiceClient(prisonConn)
	prisonH := throughcarev1.NewHandoverServiceClient(prisonConn)

	stopFaults := make(chan struct{})
	faultsDone := make(chan int)
	go func() { faultsDone <- killNodesOnASchedule(t, c, stopFaults) }()

	var samples []usageSample
	var mu sync.Mutex
	sample := func(done int) {
		s := usageSample{done: done, at: time.Now(), heap: map[string]float64{}, goroutines: map[string]float64{}}
		for _, a := range c.Agencies {
			heap, goroutines, err := scrapeUsage(a.MetricsAddr)
			if err != nil {
				return // a service busy with a fault; the next sample will do
			}
			s.heap[a.ID], s.goroutines[a.ID] = heap, goroutines
		}
		mu.Lock()
		samples = append(samples, s)
		mu.Unlock()
	}

	ids := make([]string, n)
	var next, referred, retried atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || t.Failed() {
					return
				}
				// A retried open may leave a second case behind; only the handovers count.
				rc, err := retryCall(ctx, func(ctx context.Context) (*throughcarev1.ReleaseCase, error) {
					return tryOpenCase(ctx, prison, i+1)
				}, &retried)
				if err != nil {
					t.Errorf("open case %d: %v", i, err)
					return
				}
				h, err := retryCall(ctx, func(ctx context.Context) (*throughcarev1.Handover, error) {
					resp, err := prisonCases.ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Recipient: probationAgency, Purpose: purposeSupervision, RequestId: fmt.Sprintf("soak-%d", i)})
					return resp.GetHandover(), err
				}, &retried)
				if err != nil {
					t.Errorf("refer %d: %v", i, err)
					return
				}
				ids[i] = h.GetHandoverId()
				if done := referred.Add(1); done%1000 == 0 {
					sample(int(done))
				}
			}
		})
	}
	wg.Wait()
	close(stopFaults)
	kills := <-faultsDone
	if t.Failed() {
		return
	}
	// Each by id, 16 at a time: a list of every handover is not what an operator or a
	// case system asks for, and at 20,000 one takes longer than a call's bound.
	var delivered atomic.Int64
	work := make(chan string)
	for range 16 {
		wg.Go(func() {
			for id := range work {
				for deadline := time.Now().Add(10 * time.Minute); ; {
					callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
					resp, err := prisonH.GetHandover(callCtx, &throughcarev1.GetHandoverRequest{HandoverId: id})
					cancel()
					if err == nil && resp.GetHandover().GetState() == stateDelivered {
						checkReceipts(t, "prison", resp.GetHandover(), receiptDelivered) // one receipt: not processed twice
						delivered.Add(1)
						break
					}
					if time.Now().After(deadline) {
						t.Errorf("handover %s not delivered within 10 min: %v %v", id, resp.GetHandover().GetState(), err)
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	if delivered.Load() != int64(n) {
		t.Fatalf("%d of %d delivered", delivered.Load(), n)
	}
	elapsed := time.Since(start)
	sample(n)
	t.Logf("soak: %d handovers delivered in %s (%.0f/s) through %d NATS node kills; %d calls retried",
		n, elapsed.Round(time.Second), float64(n)/elapsed.Seconds(), kills, retried.Load())
	checkFlat(t, samples)
}

// retryCall calls f until it succeeds, as a case-management system would across a fault
// (a referral with its request id is safe to repeat), for up to 2 minutes.
func retryCall[T any](ctx context.Context, f func(context.Context) (T, error), retried *atomic.Int64) (T, error) {
	for start := time.Now(); ; {
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		v, err := f(callCtx)
		cancel()
		if err == nil || time.Since(start) > 2*time.Minute || ctx.Err() != nil {
			return v, err
		}
		retried.Add(1)
		time.Sleep(200 * time.Millisecond)
	}
}

// killNodesOnASchedule kills one NATS node a minute after the last came back, in turn,
// and starts it again 10 s later, until stop; it returns how many it killed.
func killNodesOnASchedule(t *testing.T, c *localCluster, stop <-chan struct{}) int {
	kills := 0
	for {
		select {
		case <-stop:
			return kills
		case <-time.After(time.Minute):
		}
		node := kills % natsNodes
		if err := c.KillNATS(node); err != nil {
			t.Errorf("kill nats-%d: %v", node+1, err)
			return kills
		}
		kills++
		time.Sleep(10 * time.Second) // the fault's length, not a wait for anything
		if err := c.RestartNATS(node); err != nil {
			t.Errorf("restart nats-%d: %v", node+1, err)
			return kills
		}
	}
}

type usageSample struct {
	done             int
	at               time.Time
	heap, goroutines map[string]float64
}

// checkFlat compares each service's heap and goroutines at the end with a quarter of the
// way in: growth with the handovers held is a leak.
func checkFlat(t *testing.T, samples []usageSample) {
	t.Helper()
	if len(samples) < 4 {
		t.Fatalf("only %d usage samples", len(samples))
	}
	early, last := samples[len(samples)/4], samples[len(samples)-1]
	for agency := range last.heap {
		t.Logf("soak %s: heap in use %.1f MiB at %d handovers, %.1f MiB at %d; goroutines %.0f, %.0f",
			agency, early.heap[agency]/(1<<20), early.done, last.heap[agency]/(1<<20), last.done, early.goroutines[agency], last.goroutines[agency])
		if last.heap[agency] > 1.5*early.heap[agency]+16<<20 {
			t.Errorf("%s: heap grew from %.1f to %.1f MiB", agency, early.heap[agency]/(1<<20), last.heap[agency]/(1<<20))
		}
		if last.goroutines[agency] > 1.5*early.goroutines[agency]+20 {
			t.Errorf("%s: goroutines grew from %.0f to %.0f", agency, early.goroutines[agency], last.goroutines[agency])
		}
	}
}

// scrapeUsage scrapes a service's heap in use and goroutines from its /metrics.
func scrapeUsage(addr string) (heap, goroutines float64, err error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	gauge := func(name string) float64 {
		if f := families[name]; f != nil && len(f.GetMetric()) > 0 {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
		return 0
	}
	return gauge("go_memstats_heap_inuse_bytes"), gauge("go_goroutines"), nil
}
