package lifecycle

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
)

const (
	referred     = throughcarev1.HandoverState_HANDOVER_STATE_REFERRED
	delivered    = throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED
	retrieved    = throughcarev1.HandoverState_HANDOVER_STATE_RETRIEVED
	acknowledged = throughcarev1.HandoverState_HANDOVER_STATE_ACKNOWLEDGED
	infoReq      = throughcarev1.HandoverState_HANDOVER_STATE_INFORMATION_REQUESTED
	accepted     = throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED
	declined     = throughcarev1.HandoverState_HANDOVER_STATE_DECLINED
)

var allStates = []throughcarev1.HandoverState{referred, delivered, retrieved, acknowledged, infoReq, accepted, declined}

func TestCheckTransitionAllowsOnlyTheRecipientsMoves(t *testing.T) {
	allowed := map[throughcarev1.ReceiptType][]throughcarev1.HandoverState{
		throughcarev1.ReceiptType_RECEIPT_TYPE_RETRIEVED:             {delivered},
		throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGED:          {delivered, retrieved},
		throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_REQUESTED: {acknowledged, infoReq},
		throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPTED:              {acknowledged, infoReq},
		throughcarev1.ReceiptType_RECEIPT_TYPE_DECLINED:              {acknowledged, infoReq},
	}
	for rt, from := range allowed {
		for _, st := range allStates {
			err := CheckTransition(&throughcarev1.Handover{HandoverId: "ho_1", State: st}, rt)
			if want := slices.Contains(from, st); want != (err == nil) {
				t.Errorf("%s from %s: got %v, want allowed=%v", rt, st, err, want)
			}
			if err != nil && !errors.Is(err, fault.ErrFailedPrecondition) {
				t.Errorf("%s from %s: got %v, want ErrFailedPrecondition", rt, st, err)
			}
		}
	}
}

func receipt(seq uint64, rt throughcarev1.ReceiptType, st throughcarev1.HandoverState, at time.Time) *throughcarev1.ReceiptIssued {
	return &throughcarev1.ReceiptIssued{Receipt: &throughcarev1.Receipt{Sequence: seq, Type: rt, State: st, Time: timestamppb.New(at), EventId: StableEventID("ho_1", fmt.Sprintf("receipt/%d", seq))}}
}

func TestApplyReceiptOrdersBySequenceAndIgnoresDuplicates(t *testing.T) {
	p := &Party{Agency: "prison", AcknowledgeWithin: time.Hour}
	h := &throughcarev1.Handover{HandoverId: "ho_1", State: referred}
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	accept := receipt(4, throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPTED, accepted, t0.Add(3*time.Minute))
	accept.AssignedWorker = "po-marko"
	// Out of order: the acceptance overtakes the ones before it.
	for _, r := range []*throughcarev1.ReceiptIssued{
		receipt(2, throughcarev1.ReceiptType_RECEIPT_TYPE_RETRIEVED, retrieved, t0.Add(time.Minute)),
		accept,
		receipt(1, throughcarev1.ReceiptType_RECEIPT_TYPE_DELIVERED, delivered, t0),
		receipt(3, throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGED, acknowledged, t0.Add(2*time.Minute)),
	} {
		if !p.ApplyReceipt(h, r) {
			t.Errorf("receipt %d: ApplyReceipt = false, want true the first time", r.GetReceipt().GetSequence())
		}
	}
	if h.GetState() != accepted || h.GetAssignedWorker() != "po-marko" {
		t.Errorf("after late receipts: state %s, worker %q; want ACCEPTED, po-marko", h.GetState(), h.GetAssignedWorker())
	}
	var seqs []uint64
	for _, r := range h.GetReceipts() {
		seqs = append(seqs, r.GetSequence())
	}
	if !slices.Equal(seqs, []uint64{1, 2, 3, 4}) {
		t.Errorf("receipt sequences: got %v, want [1 2 3 4]", seqs)
	}
	if got, want := h.GetAcknowledgeDueTime().AsTime(), t0.Add(time.Hour); !got.Equal(want) {
		t.Errorf("acknowledge due: got %v, want delivery + AcknowledgeWithin = %v", got, want)
	}
	// Twice: nothing changes.
	before := len(h.GetReceipts())
	if p.ApplyReceipt(h, receipt(3, throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGED, acknowledged, t0.Add(2*time.Minute))) {
		t.Error("a receipt applied twice: ApplyReceipt = true, want false")
	}
	if len(h.GetReceipts()) != before || h.GetState() != accepted {
		t.Errorf("after a duplicate: %d receipts, state %s; want %d, ACCEPTED", len(h.GetReceipts()), h.GetState(), before)
	}
}

func TestApplyReceiptCarriesTheRecipientsDetail(t *testing.T) {
	p := &Party{Agency: "prison", AcknowledgeWithin: time.Hour}
	h := &throughcarev1.Handover{HandoverId: "ho_1", State: referred}
	t0 := time.Now()
	ask := receipt(2, throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_REQUESTED, infoReq, t0)
	ask.InformationRequest = &throughcarev1.InformationRequest{RequestId: "rq_1", Question: "Which hostel?"}
	p.ApplyReceipt(h, ask)
	if len(h.GetInformationRequests()) != 1 || h.GetInformationRequests()[0].GetQuestion() != "Which hostel?" {
		t.Errorf("questions: got %v, want the one asked", h.GetInformationRequests())
	}
	decline := receipt(3, throughcarev1.ReceiptType_RECEIPT_TYPE_DECLINED, declined, t0)
	decline.DeclineReason, decline.DeclineNote = throughcarev1.DeclineReason_DECLINE_REASON_OUT_OF_AREA, "Not ours"
	p.ApplyReceipt(h, decline)
	if h.GetDeclineReason() != throughcarev1.DeclineReason_DECLINE_REASON_OUT_OF_AREA || h.GetDeclineNote() != "Not ours" || h.GetState() != declined {
		t.Errorf("after decline: %s %q %s; want OUT_OF_AREA, the note, DECLINED", h.GetDeclineReason(), h.GetDeclineNote(), h.GetState())
	}
	p.ApplyReceipt(h, receipt(4, throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGE_OVERDUE, declined, t0))
	if !h.GetAcknowledgeOverdue() || h.GetAcceptOverdue() {
		t.Errorf("after an acknowledge-overdue receipt: ack %v accept %v; want true false", h.GetAcknowledgeOverdue(), h.GetAcceptOverdue())
	}
}

func TestOverdueMarksEachDeadlineOnce(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	past, future := timestamppb.New(now.Add(-time.Minute)), timestamppb.New(now.Add(time.Minute))
	for _, tc := range []struct {
		name        string
		h           *throughcarev1.Handover
		ack, accept bool
	}{
		{"delivered, ack due passed", &throughcarev1.Handover{State: delivered, AcknowledgeDueTime: past, AcceptDueTime: future}, true, false},
		{"retrieved, ack due passed", &throughcarev1.Handover{State: retrieved, AcknowledgeDueTime: past}, true, false},
		{"ack due not yet", &throughcarev1.Handover{State: delivered, AcknowledgeDueTime: future}, false, false},
		{"acknowledged in time", &throughcarev1.Handover{State: acknowledged, AcknowledgeDueTime: past}, false, false},
		{"already marked", &throughcarev1.Handover{State: delivered, AcknowledgeDueTime: past, AcknowledgeOverdue: true}, false, false},
		{"no ack due", &throughcarev1.Handover{State: referred}, false, false},
		{"accept due passed", &throughcarev1.Handover{State: infoReq, AcceptDueTime: past}, false, true},
		{"both", &throughcarev1.Handover{State: delivered, AcknowledgeDueTime: past, AcceptDueTime: past}, true, true},
		{"accepted", &throughcarev1.Handover{State: accepted, AcceptDueTime: past}, false, false},
		{"declined", &throughcarev1.Handover{State: declined, AcceptDueTime: past}, false, false},
		{"accept already marked", &throughcarev1.Handover{State: acknowledged, AcceptDueTime: past, AcceptOverdue: true}, false, false},
	} {
		ack, accept := Overdue(tc.h, now)
		if ack != tc.ack || accept != tc.accept {
			t.Errorf("%s: overdue = %v, %v; want %v, %v", tc.name, ack, accept, tc.ack, tc.accept)
		}
	}
}

func TestStableEventIDIsTheSameForTheSameEventOnly(t *testing.T) {
	a, b := StableEventID("ho_1", "receipt/1"), StableEventID("ho_1", "receipt/1")
	if a != b {
		t.Errorf("same event: %q and %q, want equal", a, b)
	}
	for _, other := range []string{StableEventID("ho_1", "receipt/2"), StableEventID("ho_2", "receipt/1"), StableEventID("ho_1", "release")} {
		if other == a {
			t.Errorf("different events share the id %q", a)
		}
	}
}
