package prison_test

import (
	"testing"

	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// TestCasesSurviveRestart stops the service and restarts NATS on the same store directory:
// a new store and server see every case at the revision it had.
func TestCasesSurviveRestart(t *testing.T) {
	h := newPrison(t)
	var opened []*throughcarev1.ReleaseCase
	for range 3 {
		opened = append(opened, h.open(t, fullCase()))
	}
	// The first case gets a later revision, the second is closed, the third stays as opened.
	resp0, err := h.Client.UpdateReleaseCase(t.Context(), &throughcarev1.UpdateReleaseCaseRequest{
		Actor: "cw-1", CaseId: opened[0].GetCaseId(), ExpectedRevision: opened[0].GetRevision(),
		ReleaseCase: &throughcarev1.ReleaseCase{Family: need(throughcarev1.NeedLevel_NEED_LEVEL_HIGH, "changed before restart")},
		UpdateMask:  &fieldmaskpb.FieldMask{Paths: []string{"family"}},
	})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	updated := resp0.GetReleaseCase()
	resp1, err := h.Client.CloseReleaseCase(t.Context(), &throughcarev1.CloseReleaseCaseRequest{Actor: "cw-1", CaseId: opened[1].GetCaseId(), ExpectedRevision: opened[1].GetRevision()})
	if err != nil {
		t.Fatalf("close: %v", err)
	}
	closed := resp1.GetReleaseCase()
	want := map[string]*throughcarev1.ReleaseCase{
		updated.GetCaseId():   updated,
		closed.GetCaseId():    closed,
		opened[2].GetCaseId(): opened[2],
	}
	seq := h.lastSeq(t)

	h.Stop()
	h.NATS.Restart(t)
	h2 := startPrison(t, h.NATS, zaptest.NewLogger(t))

	if got := h2.lastSeq(t); got != seq {
		t.Errorf("got bucket sequence %d after restart, want %d", got, seq)
	}
	for id, w := range want {
		if got := h2.get(t, id); !proto.Equal(got, w) {
			t.Errorf("case %s after restart: got\n%v\nwant\n%v", id, got, w)
		}
	}
	resp, err := h2.Client.ListReleaseCases(t.Context(), &throughcarev1.ListReleaseCasesRequest{})
	if err != nil {
		t.Fatalf("list after restart: %v", err)
	}
	if got := len(resp.GetReleaseCases()); got != len(want) {
		t.Errorf("got %d cases listed after restart, want %d", got, len(want))
	}
	for _, rc := range resp.GetReleaseCases() {
		if !proto.Equal(rc, want[rc.GetCaseId()]) {
			t.Errorf("listed after restart: got\n%v\nwant\n%v", rc, want[rc.GetCaseId()])
		}
	}

	// The revisions are the ones the store compares: writing at the pre-restart revision
	// works, and the closed case stays closed.
	if _, err := h2.Client.UpdateReleaseCase(t.Context(), &throughcarev1.UpdateReleaseCaseRequest{
		Actor: "cw-1", CaseId: updated.GetCaseId(), ExpectedRevision: updated.GetRevision(),
		ReleaseCase: &throughcarev1.ReleaseCase{Family: need(throughcarev1.NeedLevel_NEED_LEVEL_LOW, "changed after restart")},
		UpdateMask:  &fieldmaskpb.FieldMask{Paths: []string{"family"}},
	}); err != nil {
		t.Errorf("update at pre-restart revision %d: %v", updated.GetRevision(), err)
	}
	if got := h2.get(t, closed.GetCaseId()).GetState(); got != throughcarev1.CaseState_CASE_STATE_CLOSED {
		t.Errorf("got state %v after restart, want CLOSED", got)
	}
}
