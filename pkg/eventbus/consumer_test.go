package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// eventually polls cond until it holds, or fails the test with cond's last message.
func eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := 2 * time.Millisecond
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, msg)
		}
		time.Sleep(wait)
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// bus is a stream, a dead-letter bucket and a consumer configuration over them.
type bus struct {
	js   jetstream.JetStream
	dead *eventbus.DeadLetters
	cfg  eventbus.ConsumerConfig
}

const testStream = "TEST"

func newBus(t *testing.T) *bus {
	t.Helper()
	ns := natstest.Start(t)
	js := ns.JetStream(t)
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: testStream, Subjects: []string{"test.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	dead, err := eventbus.OpenDeadLetters(t.Context(), js, "test_deadletters")
	if err != nil {
		t.Fatalf("open dead letters: %v", err)
	}
	return &bus{js: js, dead: dead, cfg: eventbus.ConsumerConfig{
		Stream:        testStream,
		Durable:       "test-consumer",
		MaxDeliver:    3,
		BackOff:       []time.Duration{20 * time.Millisecond, 40 * time.Millisecond},
		AckWait:       2 * time.Second,
		CheckInterval: 100 * time.Millisecond,
	}}
}

// publish stores a message named name under the subject test.<name>, with a ce-id header.
func (b *bus) publish(t *testing.T, name string) uint64 {
	t.Helper()
	msg := nats.NewMsg("test." + name)
	msg.Data = []byte(name)
	msg.Header.Set("ce-id", "ev-"+name)
	ack, err := b.js.PublishMsg(t.Context(), msg)
	if err != nil {
		t.Fatalf("publish %s: %v", name, err)
	}
	return ack.Sequence
}

// consume runs Consume until the returned stop is called or the test ends; stop waits
// for it to return and reports whether it returned nil.
func (b *bus) consume(t *testing.T, handle eventbus.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eventbus.Consume(ctx, zaptest.NewLogger(t), b.js, b.cfg, b.dead, handle) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Consume returned %v, want nil after its context ended", err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("Consume did not return within 15s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// deadLetters lists every dead letter.
func (b *bus) deadLetters(t *testing.T) []*throughcarev1.DeadLetter {
	t.Helper()
	dl, _, err := b.dead.List(t.Context(), 0, 100)
	if err != nil {
		t.Fatalf("list dead letters: %v", err)
	}
	return dl
}

// waitIdle waits until the consumer has finished with every message in the stream:
// acknowledged or terminated, none pending.
func (b *bus) waitIdle(t *testing.T) {
	t.Helper()
	eventually(t, 10*time.Second, func() (bool, string) {
		s, err := b.js.Stream(t.Context(), testStream)
		if err != nil {
			return false, err.Error()
		}
		si, err := s.Info(t.Context())
		if err != nil {
			return false, err.Error()
		}
		c, err := b.js.Consumer(t.Context(), testStream, b.cfg.Durable)
		if err != nil {
			return false, err.Error()
		}
		ci, err := c.Info(t.Context())
		if err != nil {
			return false, err.Error()
		}
		idle := ci.NumPending == 0 && ci.NumAckPending == 0 && ci.AckFloor.Stream >= si.State.LastSeq
		return idle, fmt.Sprintf("consumer: ack floor %d of %d, pending %d, ack pending %d", ci.AckFloor.Stream, si.State.LastSeq, ci.NumPending, ci.NumAckPending)
	})
}

// deliveries records every delivery a handler saw, by message.
type deliveries struct {
	mu sync.Mutex
	m  map[string][]uint64 // message → NumDelivered of each call
}

func (d *deliveries) add(msg jetstream.Msg) (name string, delivery uint64) {
	meta, _ := msg.Metadata()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[string][]uint64{}
	}
	name = string(msg.Data())
	d.m[name] = append(d.m[name], meta.NumDelivered)
	return name, meta.NumDelivered
}

func (d *deliveries) of(name string) []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.m[name])
}

func TestConsumeRetriesATransientFailureThenSucceeds(t *testing.T) {
	b := newBus(t)
	var seen deliveries
	var done atomic.Bool
	b.consume(t, func(_ context.Context, msg jetstream.Msg) error {
		if _, n := seen.add(msg); n < 3 {
			return errors.New("store busy")
		}
		done.Store(true)
		return nil
	})
	b.publish(t, "flaky")
	eventually(t, 10*time.Second, func() (bool, string) {
		return done.Load(), fmt.Sprintf("flaky delivered %v; want success on the third delivery", seen.of("flaky"))
	})
	b.waitIdle(t)
	if got := seen.of("flaky"); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("deliveries: got %v, want [1 2 3]", got)
	}
	if dl := b.deadLetters(t); len(dl) != 0 {
		t.Errorf("dead letters: got %v, want none", dl)
	}
}

func TestConsumeDeadLettersAfterMaxDeliverAndGoesOn(t *testing.T) {
	b := newBus(t)
	var seen deliveries
	b.consume(t, func(_ context.Context, msg jetstream.Msg) error {
		if name, _ := seen.add(msg); name == "bad" {
			return errors.New("handover ho_1 cannot be stored")
		}
		return nil
	})
	badSeq := b.publish(t, "bad")
	b.publish(t, "good")
	b.waitIdle(t)
	if got := seen.of("good"); !slices.Equal(got, []uint64{1}) {
		t.Errorf("good deliveries: got %v, want [1]", got)
	}
	if got := seen.of("bad"); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("bad deliveries: got %v, want [1 2 3] (MaxDeliver 3, then no more)", got)
	}
	dl := b.deadLetters(t)
	if len(dl) != 1 {
		t.Fatalf("dead letters: got %v, want exactly one", dl)
	}
	d := dl[0]
	if d.GetSequence() != badSeq || d.GetSubject() != "test.bad" || d.GetEventId() != "ev-bad" || d.GetDeliveries() != 3 || d.GetTime() == nil ||
		!strings.Contains(d.GetReason(), "handover ho_1 cannot be stored") {
		t.Errorf("dead letter: got %v; want sequence %d, subject test.bad, event id ev-bad, 3 deliveries, a time and the handler's error", d, badSeq)
	}
	// A new message still flows.
	b.publish(t, "later")
	b.waitIdle(t)
	if got := seen.of("later"); !slices.Equal(got, []uint64{1}) {
		t.Errorf("later deliveries: got %v, want [1]", got)
	}
}

func TestConsumeDeadLettersAPermanentErrorAtOnce(t *testing.T) {
	b := newBus(t)
	b.cfg.MaxDeliver = 5
	var seen deliveries
	b.consume(t, func(_ context.Context, msg jetstream.Msg) error {
		switch name, _ := seen.add(msg); name {
		case "permanent":
			return eventbus.Permanent(errors.New("event ev-permanent addresses another agency"))
		case "undecodable":
			return fmt.Errorf("%w: body is not a throughcare.v1.Event", eventbus.ErrUndecodable)
		}
		return nil
	})
	b.publish(t, "permanent")
	b.publish(t, "undecodable")
	b.publish(t, "fine")
	b.waitIdle(t)
	for _, name := range []string{"permanent", "undecodable", "fine"} {
		if got := seen.of(name); !slices.Equal(got, []uint64{1}) {
			t.Errorf("%s deliveries: got %v, want [1]", name, got)
		}
	}
	dl := b.deadLetters(t)
	if len(dl) != 2 {
		t.Fatalf("dead letters: got %v, want two", dl)
	}
	for i, want := range []string{"addresses another agency", "not a throughcare.v1.Event"} {
		if dl[i].GetDeliveries() != 1 || !strings.Contains(dl[i].GetReason(), want) {
			t.Errorf("dead letter %d: got %v; want one delivery and a reason containing %q", i, dl[i], want)
		}
	}
	if !errors.Is(eventbus.Permanent(errors.New("x")), eventbus.ErrPermanent) {
		t.Error("Permanent(err) is not ErrPermanent")
	}
}

func TestConsumeRecreatesADeletedConsumer(t *testing.T) {
	b := newBus(t)
	var seen deliveries
	b.consume(t, func(_ context.Context, msg jetstream.Msg) error {
		seen.add(msg)
		return nil
	})
	b.publish(t, "before")
	b.waitIdle(t)
	if err := b.js.DeleteConsumer(t.Context(), testStream, b.cfg.Durable); err != nil {
		t.Fatalf("delete consumer: %v", err)
	}
	b.publish(t, "after")
	eventually(t, 10*time.Second, func() (bool, string) {
		return len(seen.of("after")) > 0, "the message published after the consumer was deleted was never handled"
	})
	b.waitIdle(t)
	// The new consumer starts from the stream's start: handlers must be idempotent.
	t.Logf("deliveries of the message before the deletion: %v", seen.of("before"))
}

// TestConsumeFinishesTheMessageInHandOnShutdown ends Consume while a handler runs: the
// handler is not cancelled, Consume returns only after it, and the message is acknowledged.
func TestConsumeFinishesTheMessageInHandOnShutdown(t *testing.T) {
	b := newBus(t)
	started, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	var handlerCtxErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		err            error
		handlerWasDone bool
	}
	done := make(chan result, 1)
	go func() {
		err := eventbus.Consume(ctx, zaptest.NewLogger(t), b.js, b.cfg, b.dead, func(hctx context.Context, _ jetstream.Msg) error {
			close(started)
			<-release
			handlerCtxErr.Store(fmt.Sprint(hctx.Err()))
			finished.Store(true)
			return nil
		})
		done <- result{err, finished.Load()}
	}()
	b.publish(t, "slow")
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("handler not called within 10s")
	}
	cancel()
	// Give Consume every chance to return early: it must not.
	select {
	case r := <-done:
		t.Fatalf("Consume returned (%v) while its handler was still running", r.err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case r := <-done:
		if r.err != nil || !r.handlerWasDone {
			t.Errorf("Consume returned %v, handler finished before: %v; want nil after the handler", r.err, r.handlerWasDone)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Consume did not return within 15s of its handler finishing")
	}
	if got := handlerCtxErr.Load(); got != "<nil>" {
		t.Errorf("handler context after shutdown began: %v, want not cancelled", got)
	}
	b.waitIdle(t)
}

// A handler that takes longer than AckWait is not given the message a second time while
// it works: the consumer tells the server it is in progress. Without that, a short
// AckWait (which is what makes a crashed process's messages come back soon) would hand a
// slow message to a second worker.
func TestConsumeKeepsASlowMessageInProgress(t *testing.T) {
	b := newBus(t)
	b.cfg.AckWait = time.Second
	b.cfg.Workers = 4
	var calls atomic.Int32
	done := make(chan struct{})
	b.consume(t, func(ctx context.Context, msg jetstream.Msg) error {
		if calls.Add(1) == 1 {
			// Slower than AckWait twice over. Time is the scenario here, not a wait for
			// something to happen.
			time.Sleep(2500 * time.Millisecond)
			close(done)
		}
		return nil
	})
	b.publish(t, "slow")
	<-done
	b.waitIdle(t)
	if n := calls.Load(); n != 1 {
		t.Errorf("the slow message was handled %d times, want once", n)
	}
}

// A request in flight when the connection drops never gets its reply: the handling that
// holds it is given up at the drop and the message retried, not held for HandleTimeout.
func TestConsumeGivesUpAHandlingWhoseConnectionDropped(t *testing.T) {
	b := newBus(t)
	b.cfg.HandleTimeout = time.Hour
	var calls atomic.Int32
	holding := make(chan struct{})
	b.consume(t, func(ctx context.Context, msg jetstream.Msg) error {
		if calls.Add(1) == 1 {
			close(holding)
			<-ctx.Done() // as a request whose reply was lost with the connection
			return ctx.Err()
		}
		return nil
	})
	b.publish(t, "held")
	<-holding
	if err := b.js.Conn().ForceReconnect(); err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	b.waitIdle(t)
	if n := calls.Load(); n != 2 {
		t.Errorf("the message was handled %d times, want twice (given up at the drop, then done)", n)
	}
	if dl := b.deadLetters(t); len(dl) != 0 {
		t.Errorf("dead letters: %v, want none", dl)
	}
}
