package handover

import (
	"cmp"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/ids"
)

func timestampNow(now func() time.Time) *timestamppb.Timestamp { return timestamppb.New(now()) }

// transitions are the recipient's moves: from which states each receipt may be issued.
var transitions = map[throughcarev1.ReceiptType][]throughcarev1.HandoverState{
	throughcarev1.ReceiptType_RECEIPT_TYPE_RETRIEVED:    {throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED},
	throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGED: {throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED, throughcarev1.HandoverState_HANDOVER_STATE_RETRIEVED},
	throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_REQUESTED: {
		throughcarev1.HandoverState_HANDOVER_STATE_ACKNOWLEDGED, throughcarev1.HandoverState_HANDOVER_STATE_INFORMATION_REQUESTED,
	},
	throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPTED: {
		throughcarev1.HandoverState_HANDOVER_STATE_ACKNOWLEDGED, throughcarev1.HandoverState_HANDOVER_STATE_INFORMATION_REQUESTED,
	},
	throughcarev1.ReceiptType_RECEIPT_TYPE_DECLINED: {
		throughcarev1.HandoverState_HANDOVER_STATE_ACKNOWLEDGED, throughcarev1.HandoverState_HANDOVER_STATE_INFORMATION_REQUESTED,
	},
}

// checkTransition refuses a receipt the handover's state does not allow.
func checkTransition(h *throughcarev1.Handover, t throughcarev1.ReceiptType) error {
	allowed := transitions[t]
	if slices.Contains(allowed, h.GetState()) {
		return nil
	}
	names := make([]string, len(allowed))
	for i, st := range allowed {
		names[i] = st.String()
	}
	return fmt.Errorf("handover %s is %s; %s needs %v: %w", h.GetHandoverId(), h.GetState(), t, names, fault.ErrFailedPrecondition)
}

var receiptIDEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// stableEventID is the same for the same event however often it is made, so an event
// issued twice (two replicas, a retry) is stored once downstream.
func stableEventID(handoverID, what string) string {
	sum := sha256.Sum256([]byte(handoverID + "/" + what))
	return ids.Event + "_" + receiptIDEncoding.EncodeToString(sum[:])[:26]
}

// issueReceipt appends a receipt to an incoming handover, moves it to state and puts the
// receipt event for the sender in the outbox. fill adds type-specific detail to the event.
func (s *Service) issueReceipt(rec *storev1.HandoverRecord, t throughcarev1.ReceiptType, state throughcarev1.HandoverState, actor string, fill func(*throughcarev1.ReceiptIssued)) {
	h := rec.GetHandover()
	seq := uint64(len(h.GetReceipts())) + 1
	receipt := &throughcarev1.Receipt{
		Type:     t,
		Time:     timestampNow(s.now),
		Actor:    actor,
		EventId:  stableEventID(h.GetHandoverId(), fmt.Sprintf("receipt/%d", seq)),
		Sequence: seq,
		State:    state,
	}
	h.Receipts = append(h.Receipts, receipt)
	h.State = state
	issued := &throughcarev1.ReceiptIssued{Receipt: proto.CloneOf(receipt)}
	if fill != nil {
		fill(issued)
	}
	ev := s.newEvent(h, h.GetSender(), actor, throughcarev1.EventType_EVENT_TYPE_RECEIPT_ISSUED)
	ev.EventId = receipt.GetEventId()
	ev.OccurredAt = receipt.GetTime()
	ev.Payload = &throughcarev1.Event_ReceiptIssued{ReceiptIssued: issued}
	rec.Outbox = append(rec.Outbox, ev)
}

// newEvent starts an event about h from this agency to recipient.
func (s *Service) newEvent(h *throughcarev1.Handover, recipient string, actor string, t throughcarev1.EventType) *throughcarev1.Event {
	return &throughcarev1.Event{
		EventId:    ids.New(ids.Event),
		Type:       t,
		Source:     s.cfg.Agency,
		Recipient:  recipient,
		CaseId:     h.GetCaseId(),
		HandoverId: h.GetHandoverId(),
		OccurredAt: timestampNow(s.now),
		Purpose:    h.GetPurpose(),
		Actor:      actor,
		// Stamped with the protocol that cuts it down at the relay.
		ProtocolId:      s.cfg.Protocol.ID(),
		ProtocolVersion: s.cfg.Protocol.Version(),
	}
}

// applyReceipt brings the sender's view of a handover up to a receipt from the recipient.
// Receipts are ordered by their sequence, so one that arrives late or twice changes
// nothing it should not.
func (s *Service) applyReceipt(h *throughcarev1.Handover, issued *throughcarev1.ReceiptIssued) bool {
	r := issued.GetReceipt()
	if slices.ContainsFunc(h.GetReceipts(), func(have *throughcarev1.Receipt) bool { return have.GetSequence() == r.GetSequence() }) {
		return false
	}
	h.Receipts = append(h.Receipts, proto.CloneOf(r))
	slices.SortFunc(h.Receipts, func(a, b *throughcarev1.Receipt) int { return cmp.Compare(a.GetSequence(), b.GetSequence()) })
	h.State = h.Receipts[len(h.Receipts)-1].GetState()
	switch r.GetType() {
	case throughcarev1.ReceiptType_RECEIPT_TYPE_DELIVERED:
		h.AcknowledgeDueTime = timestamppb.New(r.GetTime().AsTime().Add(s.cfg.AcknowledgeWithin))
	case throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPTED:
		h.AssignedWorker = issued.GetAssignedWorker()
	case throughcarev1.ReceiptType_RECEIPT_TYPE_DECLINED:
		h.DeclineReason, h.DeclineNote = issued.GetDeclineReason(), issued.GetDeclineNote()
	case throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_REQUESTED:
		req := issued.GetInformationRequest()
		if req != nil && findRequest(h, req.GetRequestId()) == nil {
			h.InformationRequests = append(h.InformationRequests, proto.CloneOf(req))
		}
	case throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGE_OVERDUE:
		h.AcknowledgeOverdue = true
	case throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPT_OVERDUE:
		h.AcceptOverdue = true
	}
	return true
}

func findRequest(h *throughcarev1.Handover, requestID string) *throughcarev1.InformationRequest {
	for _, r := range h.GetInformationRequests() {
		if r.GetRequestId() == requestID {
			return r
		}
	}
	return nil
}

func openRequests(h *throughcarev1.Handover) int {
	n := 0
	for _, r := range h.GetInformationRequests() {
		if r.GetAnswerTime() == nil {
			n++
		}
	}
	return n
}

// finished reports whether the recipient has given its answer.
func finished(h *throughcarev1.Handover) bool {
	return h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED || h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_DECLINED
}
