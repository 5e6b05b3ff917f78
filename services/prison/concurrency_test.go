package prison_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

const writers = 50

// TestConcurrentUpdatesFromOneRevision races writers on the same expected revision: the
// store's compare-and-set must let exactly one through and refuse the rest with Aborted.
func TestConcurrentUpdatesFromOneRevision(t *testing.T) {
	h := newPrison(t)
	opened := h.open(t, fullCase())

	type result struct {
		resp *throughcarev1.UpdateReleaseCaseResponse
		err  error
	}
	results := make([]result, writers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			<-start
			resp, err := h.Client.UpdateReleaseCase(t.Context(), &throughcarev1.UpdateReleaseCaseRequest{
				Actor: fmt.Sprintf("cw-%d", i), CaseId: opened.GetCaseId(), ExpectedRevision: opened.GetRevision(),
				ReleaseCase: &throughcarev1.ReleaseCase{
					Health: need(throughcarev1.NeedLevel_NEED_LEVEL_HIGH, fmt.Sprintf("written by writer %d", i), fmt.Sprintf("action of writer %d", i)),
				},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"health"}},
			})
			results[i] = result{resp, err}
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, r := range results {
		switch code := status.Code(r.err); code {
		case codes.OK:
			if winner >= 0 {
				t.Errorf("writers %d and %d both succeeded from revision %d, want exactly one", winner, i, opened.GetRevision())
			}
			winner = i
		case codes.Aborted:
		default:
			t.Errorf("writer %d: got %v (%v), want OK or Aborted", i, code, r.err)
		}
	}
	if winner < 0 {
		t.Fatalf("no writer succeeded, want exactly one")
	}
	won := results[winner].resp.GetReleaseCase()
	if got, want := won.GetHealth().GetSummary(), fmt.Sprintf("written by writer %d", winner); got != want {
		t.Errorf("got winner's health summary %q, want %q", got, want)
	}
	stored := h.get(t, opened.GetCaseId())
	if !proto.Equal(stored, won) {
		t.Errorf("got stored\n%v\nwant the winner's response\n%v", stored, won)
	}
	if stored.GetRevision() <= opened.GetRevision() {
		t.Errorf("got revision %d, want more than %d", stored.GetRevision(), opened.GetRevision())
	}
}

// TestConcurrentReadModifyWriteLosesNothing has writers each append one offence with a
// get-then-update loop that retries on Aborted: every append must land exactly once.
// sentence.offences holds up to 50, which is why it is used rather than need actions (20).
func TestConcurrentReadModifyWriteLosesNothing(t *testing.T) {
	h := newPrison(t)
	rc := minimalCase()
	rc.Sentence = &throughcarev1.Sentence{Court: "Crown Court"}
	opened := h.open(t, rc)
	ctx := withTimeout(t)

	// An attempt fails only when another writer's update lands between its get and its
	// update, and each of the other writers lands once, so no writer needs more than
	// `writers` attempts; more means a conflict was reported where there was none.
	const maxAttempts = writers
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		attempts int
	)
	start := make(chan struct{})
	for i := range writers {
		wg.Go(func() {
			<-start
			offence := fmt.Sprintf("offence recorded by writer %d", i)
			for n := 1; ; n++ {
				if n > maxAttempts {
					t.Errorf("writer %d: still conflicting after %d attempts", i, maxAttempts)
					return
				}
				mu.Lock()
				attempts++
				mu.Unlock()
				got, err := h.Client.GetReleaseCase(ctx, &throughcarev1.GetReleaseCaseRequest{CaseId: opened.GetCaseId()})
				if err != nil {
					t.Errorf("writer %d: get: %v", i, err)
					return
				}
				cur := got.GetReleaseCase()
				sentence := proto.CloneOf(cur.GetSentence())
				sentence.Offences = append(sentence.Offences, offence)
				_, err = h.Client.UpdateReleaseCase(ctx, &throughcarev1.UpdateReleaseCaseRequest{
					Actor: fmt.Sprintf("cw-%d", i), CaseId: cur.GetCaseId(), ExpectedRevision: cur.GetRevision(),
					ReleaseCase: &throughcarev1.ReleaseCase{Sentence: sentence},
					UpdateMask:  &fieldmaskpb.FieldMask{Paths: []string{"sentence"}},
				})
				switch status.Code(err) {
				case codes.OK:
					return
				case codes.Aborted:
					continue
				default:
					t.Errorf("writer %d: update: %v", i, err)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}

	final := h.get(t, opened.GetCaseId())
	got := slices.Clone(final.GetSentence().GetOffences())
	slices.Sort(got)
	var want []string
	for i := range writers {
		want = append(want, fmt.Sprintf("offence recorded by writer %d", i))
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("got %d offences\n%q\nwant each writer's exactly once\n%q", len(got), got, want)
	}
	if final.GetSentence().GetCourt() != "Crown Court" {
		t.Errorf("got court %q, want it kept", final.GetSentence().GetCourt())
	}
	t.Logf("%d writers landed in %d attempts", writers, attempts)
}
