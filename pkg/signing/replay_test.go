package signing_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/signing"
)

const (
	maxAge  = 7 * 24 * time.Hour
	maxSkew = 5 * time.Minute
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newGuard returns a guard on a fresh server whose clock stands at now.
func newGuard(t *testing.T, now time.Time) (*signing.ReplayGuard, jetstream.JetStream) {
	t.Helper()
	js := natstest.Start(t).JetStream(t)
	guard, err := signing.NewReplayGuard(testContext(t), js, "accepted_events", 1, maxAge, maxSkew, func() time.Time { return now })
	if err != nil {
		t.Fatalf("NewReplayGuard: %v", err)
	}
	return guard, js
}

func TestReplayGuardAllowsRedeliveryAndRefusesOtherContentUnderTheSameID(t *testing.T) {
	ctx := testContext(t)
	guard, _ := newGuard(t, occurred())
	key := generateKey(t, prison)
	ev := sign(t, referral(), key)

	for i := range 2 {
		if err := guard.Check(ctx, received(t, ev)); err != nil {
			t.Errorf("delivery %d: Check = %v, want nil", i+1, err)
		}
	}
	// The same content signed again, e.g. with the next key after a rotation, is the same event.
	if err := guard.Check(ctx, sign(t, referral(), generateKey(t, prison))); err != nil {
		t.Errorf("Check(same content, other key) = %v, want nil", err)
	}

	forged := referral()
	forged.GetHandoverReferred().GetReleaseCase().GetPerson().FamilyName = "Someone Else"
	if err := guard.Check(ctx, sign(t, forged, key)); !errors.Is(err, signing.ErrReplayed) {
		t.Errorf("Check(same id, other content) = %v, want ErrReplayed", err)
	}
	// The first content is still the accepted one.
	if err := guard.Check(ctx, ev); err != nil {
		t.Errorf("Check(first content again) = %v, want nil", err)
	}
	other := referral()
	other.EventId = "ev_06h09hkdfsvyd8rtf98xswpwr5"
	if err := guard.Check(ctx, sign(t, other, key)); err != nil {
		t.Errorf("Check(another id) = %v, want nil", err)
	}
}

func TestReplayGuardRefusesEventsOutsideTheWindow(t *testing.T) {
	ctx := testContext(t)
	now := occurred()
	guard, _ := newGuard(t, now)
	for i, tc := range []struct {
		name     string
		occurred time.Time
		want     error
	}{
		{"just inside max age", now.Add(-maxAge + time.Second), nil},
		{"at max age", now.Add(-maxAge), nil},
		{"older than max age", now.Add(-maxAge - time.Nanosecond), signing.ErrReplayed},
		{"much older", now.Add(-365 * 24 * time.Hour), signing.ErrReplayed},
		{"at max skew ahead", now.Add(maxSkew), nil},
		{"beyond max skew ahead", now.Add(maxSkew + time.Nanosecond), signing.ErrReplayed},
		{"far in the future", now.Add(30 * 24 * time.Hour), signing.ErrReplayed},
		{"no occurred_at", time.Time{}, signing.ErrReplayed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := referral()
			ev.EventId = fmt.Sprintf("ev_window_%d", i)
			ev.OccurredAt = timestamppb.New(tc.occurred)
			if tc.occurred.IsZero() {
				ev.OccurredAt = nil
			}
			err := guard.Check(ctx, ev)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Errorf("Check = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestReplayGuardRefusesIDThatCannotBeAKey(t *testing.T) {
	guard, _ := newGuard(t, occurred())
	for _, id := range []string{"", "ev.1", "ev_*", "ev >"} {
		ev := referral()
		ev.EventId = id
		if err := guard.Check(testContext(t), ev); err == nil {
			t.Errorf("Check(id %q) = nil, want an error", id)
		}
	}
}

// Ids are forgotten only once their events are too old to pass the window anyway.
func TestReplayGuardBucketKeepsIDsForMaxAgePlusSkew(t *testing.T) {
	ctx := testContext(t)
	_, js := newGuard(t, occurred())
	kv, err := js.KeyValue(ctx, "accepted_events")
	if err != nil {
		t.Fatal(err)
	}
	status, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := status.TTL(), maxAge+maxSkew; got != want {
		t.Errorf("bucket TTL = %s, want %s", got, want)
	}
}

func TestReplayGuardAcceptsOneOfTwoRacingContents(t *testing.T) {
	ctx := testContext(t)
	guard, _ := newGuard(t, occurred())
	key := generateKey(t, prison)
	first := sign(t, referral(), key)
	second := referral()
	second.Actor = "prison-worker-2"
	sign(t, second, key)

	const deliveries = 8
	contents := [2][]byte{marshal(t, first), marshal(t, second)}
	errs := make([]error, 2*deliveries)
	var wg sync.WaitGroup
	for i := range errs {
		ev := decode(t, contents[i%2])
		wg.Go(func() { errs[i] = guard.Check(ctx, ev) })
	}
	wg.Wait()

	accepted := map[bool]int{}
	for i, err := range errs {
		switch {
		case err == nil:
			accepted[i%2 == 0]++
		case !errors.Is(err, signing.ErrReplayed):
			t.Fatalf("delivery %d: Check = %v", i, err)
		}
	}
	// Every delivery of the winning content passes, none of the other.
	if len(accepted) != 1 || accepted[true]+accepted[false] != deliveries {
		t.Errorf("accepted (first content: count) = %v, want all %d deliveries of exactly one content", accepted, deliveries)
	}
}

func TestNewReplayGuardRefusesBadWindow(t *testing.T) {
	js := natstest.Start(t).JetStream(t)
	for _, tc := range []struct{ maxAge, maxSkew time.Duration }{{0, maxSkew}, {-time.Hour, maxSkew}, {maxAge, -time.Second}} {
		if _, err := signing.NewReplayGuard(testContext(t), js, "guard", 1, tc.maxAge, tc.maxSkew, nil); err == nil {
			t.Errorf("NewReplayGuard(max age %s, max skew %s) = nil error", tc.maxAge, tc.maxSkew)
		}
	}
	if _, err := signing.NewReplayGuard(testContext(t), js, "bad.name", 1, maxAge, maxSkew, nil); err == nil {
		t.Error("NewReplayGuard(bucket bad.name) = nil error")
	}
	if _, err := signing.NewReplayGuard(testContext(t), js, "guard", 0, maxAge, maxSkew, nil); err == nil {
		t.Error("NewReplayGuard(0 replicas) = nil error")
	}
}

// TestReplayGuardMovesToTheReplicasAsked opens a guard at R1 on a cluster, as versions
// before this one made it, then again at R3: the bucket is scaled up in place and still
// knows the id accepted before.
func TestReplayGuardMovesToTheReplicasAsked(t *testing.T) {
	ctx := testContext(t)
	cluster := natstest.StartCluster(t, 3)
	js := cluster.JetStream(t, 0)
	clock := func() time.Time { return occurred() }
	key := generateKey(t, prison)
	guard, err := signing.NewReplayGuard(ctx, js, "accepted_events", 1, maxAge, maxSkew, clock)
	if err != nil {
		t.Fatalf("NewReplayGuard(1 replica): %v", err)
	}
	if err := guard.Check(ctx, sign(t, referral(), key)); err != nil {
		t.Fatalf("Check at R1: %v", err)
	}
	if guard, err = signing.NewReplayGuard(ctx, js, "accepted_events", 3, maxAge, maxSkew, clock); err != nil {
		t.Fatalf("NewReplayGuard(3 replicas): %v", err)
	}
	stream, err := js.Stream(ctx, "KV_accepted_events")
	if err != nil {
		t.Fatal(err)
	}
	if got := stream.CachedInfo().Config.Replicas; got != 3 {
		t.Errorf("replicas after reopening at 3 = %d, want 3", got)
	}
	forged := referral()
	forged.GetHandoverReferred().GetReleaseCase().GetPerson().FamilyName = "Someone Else"
	forged = sign(t, forged, key)
	// A request in the moment of the scale-up may go unanswered (here, in every run, the
	// first one after it); the inbox's handler retries such a failure.
	for attempt := 1; ; attempt++ {
		attemptCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = guard.Check(attemptCtx, forged)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) && attempt < 3 {
			continue
		}
		if !errors.Is(err, signing.ErrReplayed) {
			t.Errorf("Check(same id, other content) after scaling, attempt %d = %v, want ErrReplayed", attempt, err)
		}
		break
	}
}
