// Package lifecycle is what one handover can go through, as one agency's side sees it,
// with no NATS in it: which receipts each state allows, what a receipt does to the
// record, the events a change sends and their sequence along the handover, the
// acknowledgements that settle them, the deadlines, and the index entries a record needs.
// Package handover stores what these functions decide.
package lifecycle

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

// Protocol is what a handover's life needs of the sharing protocol: its name, to stamp
// events, and its rules, for how long a received copy may be kept.
type Protocol interface {
	ID() string
	Version() uint32
	Rule(sender, recipient string, purpose throughcarev1.Purpose) (*throughcarev1.SharingRule, bool)
}

// Party is one agency's side of every handover it sends or receives.
type Party struct {
	Agency   string
	Protocol Protocol
	// AcknowledgeWithin is how long after delivery an acknowledgement is due.
	AcknowledgeWithin time.Duration
	// AcceptBeforeRelease is how long before the expected release acceptance is due.
	AcceptBeforeRelease time.Duration
	// ResendAfter is how long a sent event may go unacknowledged before it is re-sent.
	ResendAfter time.Duration
	Now         func() time.Time
}

func (p *Party) timestamp() *timestamppb.Timestamp { return timestamppb.New(p.Now()) }

// Incoming reports whether this agency is the handover's recipient.
func (p *Party) Incoming(h *throughcarev1.Handover) bool { return h.GetRecipient() == p.Agency }

// Direction is the handover's direction as this agency sees it.
func (p *Party) Direction(h *throughcarev1.Handover) throughcarev1.Direction {
	if p.Incoming(h) {
		return throughcarev1.Direction_DIRECTION_INCOMING
	}
	return throughcarev1.Direction_DIRECTION_OUTGOING
}

// PeerOf is the other agency of a handover.
func (p *Party) PeerOf(h *throughcarev1.Handover) string {
	if p.Incoming(h) {
		return h.GetSender()
	}
	return h.GetRecipient()
}

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

// CheckTransition refuses a receipt the handover's state does not allow.
func CheckTransition(h *throughcarev1.Handover, t throughcarev1.ReceiptType) error {
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

// StableEventID is the same for the same event however often it is made, so an event
// issued twice (two replicas, a retry) is stored once downstream.
func StableEventID(handoverID, what string) string {
	sum := sha256.Sum256([]byte(handoverID + "/" + what))
	return ids.Event + "_" + receiptIDEncoding.EncodeToString(sum[:])[:26]
}

// IssueReceipt appends a receipt to an incoming handover, moves it to state and puts the
// receipt event for the sender in the outbox. fill adds type-specific detail to the event.
func (p *Party) IssueReceipt(rec *storev1.HandoverRecord, t throughcarev1.ReceiptType, state throughcarev1.HandoverState, actor string, fill func(*throughcarev1.ReceiptIssued)) {
	h := rec.GetHandover()
	seq := uint64(len(h.GetReceipts())) + 1
	receipt := &throughcarev1.Receipt{
		Type:     t,
		Time:     p.timestamp(),
		Actor:    actor,
		EventId:  StableEventID(h.GetHandoverId(), fmt.Sprintf("receipt/%d", seq)),
		Sequence: seq,
		State:    state,
	}
	h.Receipts = append(h.Receipts, receipt)
	h.State = state
	issued := &throughcarev1.ReceiptIssued{Receipt: proto.CloneOf(receipt)}
	if fill != nil {
		fill(issued)
	}
	ev := p.NewEvent(h, h.GetSender(), actor, throughcarev1.EventType_EVENT_TYPE_RECEIPT_ISSUED)
	ev.EventId = receipt.GetEventId()
	ev.OccurredAt = receipt.GetTime()
	ev.Payload = &throughcarev1.Event_ReceiptIssued{ReceiptIssued: issued}
	rec.Outbox = append(rec.Outbox, ev)
}

// NewEvent starts an event about h from this agency to recipient.
func (p *Party) NewEvent(h *throughcarev1.Handover, recipient string, actor string, t throughcarev1.EventType) *throughcarev1.Event {
	return &throughcarev1.Event{
		EventId:    ids.New(ids.Event),
		Type:       t,
		Source:     p.Agency,
		Recipient:  recipient,
		CaseId:     h.GetCaseId(),
		HandoverId: h.GetHandoverId(),
		OccurredAt: p.timestamp(),
		Purpose:    h.GetPurpose(),
		Actor:      actor,
		// Stamped with the protocol that cuts it down at the relay.
		ProtocolId:      p.Protocol.ID(),
		ProtocolVersion: p.Protocol.Version(),
	}
}

// ApplyReceipt brings the sender's view of a handover up to a receipt from the recipient.
// Receipts are ordered by their sequence, so one that arrives late or twice changes
// nothing it should not.
func (p *Party) ApplyReceipt(h *throughcarev1.Handover, issued *throughcarev1.ReceiptIssued) bool {
	r := issued.GetReceipt()
	if slices.ContainsFunc(h.GetReceipts(), func(have *throughcarev1.Receipt) bool { return have.GetSequence() == r.GetSequence() }) {
		return false
	}
	h.Receipts = append(h.Receipts, proto.CloneOf(r))
	slices.SortFunc(h.Receipts, func(a, b *throughcarev1.Receipt) int { return cmp.Compare(a.GetSequence(), b.GetSequence()) })
	h.State = h.Receipts[len(h.Receipts)-1].GetState()
	switch r.GetType() {
	case throughcarev1.ReceiptType_RECEIPT_TYPE_DELIVERED:
		h.AcknowledgeDueTime = timestamppb.New(r.GetTime().AsTime().Add(p.AcknowledgeWithin))
	case throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPTED:
		h.AssignedWorker = issued.GetAssignedWorker()
	case throughcarev1.ReceiptType_RECEIPT_TYPE_DECLINED:
		h.DeclineReason, h.DeclineNote = issued.GetDeclineReason(), issued.GetDeclineNote()
	case throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_REQUESTED:
		req := issued.GetInformationRequest()
		if req != nil && FindRequest(h, req.GetRequestId()) == nil {
			h.InformationRequests = append(h.InformationRequests, proto.CloneOf(req))
		}
	case throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGE_OVERDUE:
		h.AcknowledgeOverdue = true
	case throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPT_OVERDUE:
		h.AcceptOverdue = true
	}
	return true
}

// FindRequest is the question of h with requestID, or nil.
func FindRequest(h *throughcarev1.Handover, requestID string) *throughcarev1.InformationRequest {
	for _, r := range h.GetInformationRequests() {
		if r.GetRequestId() == requestID {
			return r
		}
	}
	return nil
}

// OpenRequests counts the questions of h not yet answered.
func OpenRequests(h *throughcarev1.Handover) int {
	n := 0
	for _, r := range h.GetInformationRequests() {
		if r.GetAnswerTime() == nil {
			n++
		}
	}
	return n
}

// Finished reports whether the recipient has given its answer.
func Finished(h *throughcarev1.Handover) bool {
	return h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED || h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_DECLINED
}

// AcceptDue is when acceptance of a referral of rc is due: a set time before the
// expected release.
func (p *Party) AcceptDue(rc *throughcarev1.ReleaseCase) *timestamppb.Timestamp {
	d := rc.GetReleasePlan().GetExpectedReleaseDate()
	if d == nil {
		return nil
	}
	release := time.Date(int(d.GetYear()), time.Month(d.GetMonth()), int(d.GetDay()), 0, 0, 0, 0, time.UTC)
	return timestamppb.New(release.Add(-p.AcceptBeforeRelease))
}

// Overdue reports which not-yet-marked deadlines of h have passed.
func Overdue(h *throughcarev1.Handover, now time.Time) (ack, accept bool) {
	ack = waitingForAcknowledgement(h) && !h.GetAcknowledgeOverdue() && h.GetAcknowledgeDueTime() != nil && now.After(h.GetAcknowledgeDueTime().AsTime())
	accept = !Finished(h) && !h.GetAcceptOverdue() && h.GetAcceptDueTime() != nil && now.After(h.GetAcceptDueTime().AsTime())
	return ack, accept
}

// waitingForAcknowledgement reports whether h has not been acknowledged yet.
func waitingForAcknowledgement(h *throughcarev1.Handover) bool {
	switch h.GetState() {
	case throughcarev1.HandoverState_HANDOVER_STATE_REFERRED, throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED, throughcarev1.HandoverState_HANDOVER_STATE_RETRIEVED:
		return true
	}
	return false
}

// pendingDeadlines are the due times of h's deadlines that are neither met nor marked.
func pendingDeadlines(h *throughcarev1.Handover) []time.Time {
	var due []time.Time
	if waitingForAcknowledgement(h) && !h.GetAcknowledgeOverdue() && h.GetAcknowledgeDueTime() != nil {
		due = append(due, h.GetAcknowledgeDueTime().AsTime())
	}
	if !Finished(h) && !h.GetAcceptOverdue() && h.GetAcceptDueTime() != nil {
		due = append(due, h.GetAcceptDueTime().AsTime())
	}
	return due
}

// RetainUntil is when this agency's copy brought by rec's handover may no longer be kept:
// for a received handover whose copy is still held, its rule's retention after delivery.
func (p *Party) RetainUntil(rec *storev1.HandoverRecord) (time.Time, bool) {
	h := rec.GetHandover()
	if !p.Incoming(h) || len(h.GetReceipts()) == 0 || rec.GetCopyRemoved() {
		return time.Time{}, false
	}
	rule, ok := p.Protocol.Rule(h.GetSender(), p.Agency, h.GetPurpose())
	if !ok {
		return time.Time{}, false
	}
	return h.GetReceipts()[0].GetTime().AsTime().Add(rule.GetRetention().AsDuration()), true
}
