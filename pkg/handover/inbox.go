package handover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/flow"
	"github.com/throughcare/throughcare/pkg/gate"
	"github.com/throughcare/throughcare/pkg/handover/lifecycle"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/records"
	"github.com/throughcare/throughcare/pkg/tracing"
)

// handleIncoming processes one event from another agency (a notice's body read from the
// sender's outbox first), and tells the operators what became of it (package flow). Every
// branch is idempotent.
func (s *Service) handleIncoming(ctx context.Context, msg jetstream.Msg) error {
	body := msg.Data()
	if eventbus.IsNotice(msg.Headers(), body) {
		var err error
		if body, err = eventbus.FetchBody(ctx, s.js.Conn(), s.cfg.Topology, s.cfg.Agency, msg.Subject(), msg.Headers()); err != nil {
			if errors.Is(err, eventbus.ErrBodyNotFound) && s.receivedBefore(ctx, msg) {
				// Its sender deleted the body on our acknowledgement: a redelivery.
				s.log.Info("duplicate notice acknowledged again, its event already received",
					zap.String("event_id", eventbus.NoticeOf(msg.Subject(), msg.Headers()).EventID))
				return nil
			}
			return err
		}
	}
	ev, err := eventbus.Decode(msg.Subject(), msg.Headers(), body)
	if err != nil {
		return err
	}
	ctx, span := tracing.Tracer().Start(tracing.ExtractHeader(ctx, msg.Headers()), "receive "+ev.GetType().String(),
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(eventAttributes(ev)...))
	defer func() { endSpan(span, err) }()
	stage, err := s.receive(ctx, ev)
	span.SetAttributes(attribute.String("throughcare.stage", stage.String()))
	switch {
	case err == nil:
		s.observed(ev, stage, 0, "")
	case errors.Is(err, eventbus.ErrPermanent):
		s.observed(ev, throughcarev1.FlowStage_FLOW_STAGE_REFUSED, 0, gate.RefusalReason(err))
	}
	return err
}

// receivedBefore reports whether the event a notice stands for is one this agency has
// received along its handover already.
func (s *Service) receivedBefore(ctx context.Context, notice jetstream.Msg) bool {
	n := eventbus.NoticeOf(notice.Subject(), notice.Headers())
	if n.Sequence == 0 || !ids.Valid(n.HandoverID) {
		return false
	}
	rec, _, err := s.handovers.Get(ctx, n.HandoverID)
	return err == nil && s.party.PeerOf(rec.GetHandover()) == n.Source && rec.GetLastReceivedSequence() >= n.Sequence
}

// receive admits and applies one decoded event, and says what became of it.
func (s *Service) receive(ctx context.Context, ev *throughcarev1.Event) (throughcarev1.FlowStage, error) {
	if err := s.in.Authenticate(ctx, ev); err != nil {
		return 0, err
	}
	if ev.GetRecipient() != s.cfg.Agency {
		return 0, eventbus.Permanent(fmt.Errorf("event %s is addressed to %s", ev.GetEventId(), ev.GetRecipient()))
	}
	if !ids.Valid(ev.GetHandoverId()) || !ids.Valid(ev.GetCaseId()) {
		return 0, eventbus.Permanent(fmt.Errorf("event %s has a malformed handover or case id", ev.GetEventId()))
	}
	stage, held, err := s.inSequence(ctx, ev)
	if stage != stageApply || err != nil {
		return stage, err
	}
	// The next event of its handover is received, whatever becomes of it: one refused for
	// good is dead-lettered, and must not hold up those behind it.
	err = s.apply(ctx, ev, held)
	if err == nil && settledInline(ev) {
		return stageReceived, nil
	}
	if err == nil || errors.Is(err, eventbus.ErrPermanent) {
		if serr := s.received(ctx, ev); serr != nil {
			return 0, serr
		}
	}
	return stageReceived, err
}

// observed tells the operators what became of ev here: attempt counts its sends, 0 for
// an event received.
func (s *Service) observed(ev *throughcarev1.Event, stage throughcarev1.FlowStage, attempt uint32, reason string) {
	r := flow.Record(ev, stage, s.now())
	r.Attempt, r.Reason = attempt, reason
	s.flow.Publish(r)
	peer := ev.GetSource()
	if peer == s.cfg.Agency {
		peer = ev.GetRecipient()
	}
	s.cfg.Metrics.Event(stage, ev.GetType(), peer)
}

// settledInline reports whether the handler of ev settles it in its own write.
func settledInline(ev *throughcarev1.Event) bool {
	switch ev.GetPayload().(type) {
	case *throughcarev1.Event_HandoverReferred, *throughcarev1.Event_ReceiptIssued, *throughcarev1.Event_InformationProvided:
		return true
	}
	return false
}

// apply admits and applies the next event of a handover; held, if not nil, is its record
// as inSequence read it.
func (s *Service) apply(ctx context.Context, ev *throughcarev1.Event, held *heldRecord) error {
	if err := s.in.CheckReplay(ctx, ev); err != nil {
		return err
	}
	if err := s.in.Check(ctx, ev); err != nil {
		return err
	}
	switch p := ev.GetPayload().(type) {
	case *throughcarev1.Event_HandoverReferred:
		return s.receiveReferral(ctx, ev, p.HandoverReferred)
	case *throughcarev1.Event_ReceiptIssued:
		return s.receiveReceipt(ctx, ev, p.ReceiptIssued, held)
	case *throughcarev1.Event_InformationProvided:
		return s.receiveAnswer(ctx, ev, p.InformationProvided, held)
	case *throughcarev1.Event_ReleaseRecorded:
		return s.receiveRelease(ctx, ev, p.ReleaseRecorded)
	case *throughcarev1.Event_PlanShared:
		return s.receivePlan(ctx, ev, p.PlanShared)
	case *throughcarev1.Event_ConsentWithdrawn:
		return s.receiveConsentWithdrawn(ctx, ev, p.ConsentWithdrawn)
	}
	return eventbus.Permanent(fmt.Errorf("event %s has no payload this service knows", ev.GetEventId()))
}

// receiveReferral stores the shared case and the handover, and answers with a delivered
// receipt in the same write.
func (s *Service) receiveReferral(ctx context.Context, ev *throughcarev1.Event, referred *throughcarev1.HandoverReferred) error {
	h, rc := referred.GetHandover(), referred.GetReleaseCase()
	if h.GetHandoverId() != ev.GetHandoverId() || h.GetCaseId() != ev.GetCaseId() || rc.GetCaseId() != ev.GetCaseId() ||
		h.GetSender() != ev.GetSource() || h.GetRecipient() != s.cfg.Agency {
		return eventbus.Permanent(fmt.Errorf("event %s: handover and case do not match the envelope", ev.GetEventId()))
	}
	if rc.GetOwner() == s.cfg.Agency {
		// A copy of our own case would overwrite the original.
		return eventbus.Permanent(fmt.Errorf("event %s: refers case %s back to %s, which opened it", ev.GetEventId(), rc.GetCaseId(), s.cfg.Agency))
	}
	// A redelivery stores the same copy again and then finds the handover created: the
	// receipt went out with that first write.
	if err := s.storeSharedCase(ctx, rc); err != nil {
		return err
	}
	h = proto.CloneOf(h)
	h.UpdateTime = timestampNow(s.now)
	h.AcknowledgeDueTime = timestamppb.New(s.now().Add(s.cfg.AcknowledgeWithin))
	rec := &storev1.HandoverRecord{Handover: h, LastReceivedSequence: min(ev.GetSequence(), 1)}
	s.party.IssueReceipt(rec, throughcarev1.ReceiptType_RECEIPT_TYPE_DELIVERED, throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED, "", nil)
	if _, err := s.write(ctx, rec, 0); errors.Is(err, records.ErrExists) {
		return nil // another replica delivered it meanwhile
	} else if err != nil {
		return handoverError(h.GetHandoverId(), err)
	}
	s.log.Info("handover delivered", zap.String("handover_id", h.GetHandoverId()), zap.String("case_id", h.GetCaseId()), zap.String("sender", h.GetSender()))
	return nil
}

// storeSharedCase keeps the newest copy of a case a sender shared, and what this agency
// added to its own copy (its plans).
func (s *Service) storeSharedCase(ctx context.Context, shared *throughcarev1.ReleaseCase) error {
	shared = proto.CloneOf(shared)
	// Most referrals bring a case this agency has not seen: try creating it first.
	if _, err := s.cases.Create(ctx, proto.CloneOf(shared)); !errors.Is(err, fault.ErrAlreadyExists) {
		return err
	}
	for range maxConflictRetries {
		have, err := s.cases.Get(ctx, shared.GetCaseId())
		if errors.Is(err, fault.ErrNotFound) {
			if _, err := s.cases.Create(ctx, proto.CloneOf(shared)); errors.Is(err, fault.ErrAlreadyExists) {
				continue
			} else {
				return err
			}
		}
		if err != nil {
			return err
		}
		shared.SupervisionPlan, shared.AssistancePlan = have.GetSupervisionPlan(), have.GetAssistancePlan()
		if _, err := s.cases.Update(ctx, shared, have.GetRevision()); errors.Is(err, fault.ErrConflict) {
			continue
		} else {
			return err
		}
	}
	return fmt.Errorf("release case %s: %w: too many concurrent writes", shared.GetCaseId(), fault.ErrConflict)
}

// updateCase applies change to this agency's copy of a case, retrying on conflict.
func (s *Service) updateCase(ctx context.Context, caseID string, change func(rc *throughcarev1.ReleaseCase)) error {
	for range maxConflictRetries {
		rc, err := s.cases.Get(ctx, caseID)
		if err != nil {
			return err
		}
		before := proto.CloneOf(rc)
		change(rc)
		if proto.Equal(before, rc) {
			return nil
		}
		rc.UpdateTime = timestampNow(s.now)
		if _, err := s.cases.Update(ctx, rc, before.GetRevision()); errors.Is(err, fault.ErrConflict) {
			continue
		} else {
			return err
		}
	}
	return fmt.Errorf("release case %s: %w: too many concurrent writes", caseID, fault.ErrConflict)
}

// receiveReceipt moves the sender's view of an outgoing handover.
func (s *Service) receiveReceipt(ctx context.Context, ev *throughcarev1.Event, issued *throughcarev1.ReceiptIssued, held *heldRecord) error {
	if issued.GetReceipt().GetSequence() == 0 {
		return eventbus.Permanent(fmt.Errorf("event %s: receipt without a sequence", ev.GetEventId()))
	}
	var delivered time.Duration // how long the referral took, once this write stores its delivery
	_, err := s.mutateFrom(ctx, ev.GetHandoverId(), held, func(rec *storev1.HandoverRecord) error {
		h := rec.GetHandover()
		if s.party.Incoming(h) || h.GetRecipient() != ev.GetSource() {
			return eventbus.Permanent(fmt.Errorf("event %s: a receipt from %s for a handover it did not receive", ev.GetEventId(), ev.GetSource()))
		}
		applied := s.party.ApplyReceipt(h, issued)
		delivered = 0
		if applied && issued.GetReceipt().GetType() == throughcarev1.ReceiptType_RECEIPT_TYPE_DELIVERED {
			delivered = s.now().Sub(h.GetCreateTime().AsTime())
		}
		if settled := s.party.Settle(rec, ev); !applied && !settled {
			return errUnchanged
		}
		return nil
	})
	if err == nil && delivered > 0 {
		s.cfg.Metrics.Delivered(delivered)
	}
	if err == nil {
		s.log.Info("receipt received", zap.String("handover_id", ev.GetHandoverId()), zap.String("receipt", issued.GetReceipt().GetType().String()))
	}
	return err
}

// receiveAnswer records the sender's answer on an incoming handover and confirms it.
func (s *Service) receiveAnswer(ctx context.Context, ev *throughcarev1.Event, answer *throughcarev1.InformationProvided, held *heldRecord) error {
	_, err := s.mutateFrom(ctx, ev.GetHandoverId(), held, func(rec *storev1.HandoverRecord) error {
		h := rec.GetHandover()
		if !s.party.Incoming(h) || h.GetSender() != ev.GetSource() {
			return eventbus.Permanent(fmt.Errorf("event %s: an answer from %s for a handover it did not send", ev.GetEventId(), ev.GetSource()))
		}
		req := lifecycle.FindRequest(h, answer.GetRequestId())
		if req == nil {
			return eventbus.Permanent(fmt.Errorf("event %s: no question %s on handover %s", ev.GetEventId(), answer.GetRequestId(), h.GetHandoverId()))
		}
		if req.GetAnswerTime() != nil {
			if s.party.Settle(rec, ev) {
				return nil
			}
			return errUnchanged
		}
		req.Answer, req.AnswerTime = answer.GetAnswer(), timestampNow(s.now)
		state := h.GetState()
		if state == throughcarev1.HandoverState_HANDOVER_STATE_INFORMATION_REQUESTED && lifecycle.OpenRequests(h) == 0 {
			state = throughcarev1.HandoverState_HANDOVER_STATE_ACKNOWLEDGED
		}
		s.party.IssueReceipt(rec, throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_PROVIDED, state, ev.GetActor(), nil)
		s.party.Settle(rec, ev)
		return nil
	})
	return err
}

// receiveRelease records the actual release on this agency's copy of the case.
func (s *Service) receiveRelease(ctx context.Context, ev *throughcarev1.Event, released *throughcarev1.ReleaseRecorded) error {
	if err := s.checkAccepted(ctx, ev, true); err != nil {
		return err
	}
	return s.updateCase(ctx, ev.GetCaseId(), func(rc *throughcarev1.ReleaseCase) {
		if rc.ReleasePlan == nil {
			rc.ReleasePlan = new(throughcarev1.ReleasePlan)
		}
		rc.ReleasePlan.ActualReleaseDate = released.GetRelease().GetActualReleaseDate()
		rc.ReleasePlan.ReleaseAddress = released.GetRelease().GetReleaseAddress()
		rc.State = throughcarev1.CaseState_CASE_STATE_RELEASED
	})
}

// receivePlan records a supervision or assistance plan on this agency's case.
func (s *Service) receivePlan(ctx context.Context, ev *throughcarev1.Event, plan *throughcarev1.PlanShared) error {
	if err := s.checkAccepted(ctx, ev, false); err != nil {
		return err
	}
	return s.updateCase(ctx, ev.GetCaseId(), func(rc *throughcarev1.ReleaseCase) {
		if p := plan.GetSupervisionPlan(); p != nil {
			rc.SupervisionPlan = p
		}
		if p := plan.GetAssistancePlan(); p != nil {
			rc.AssistancePlan = p
		}
	})
}

// receiveConsentWithdrawn purges the withdrawn categories from this agency's copy of the
// case, marks the consent withdrawn on it, and confirms with a PURGED receipt.
func (s *Service) receiveConsentWithdrawn(ctx context.Context, ev *throughcarev1.Event, withdrawn *throughcarev1.ConsentWithdrawn) error {
	rec, err := s.get(ctx, ev.GetHandoverId())
	if err != nil {
		if errors.Is(err, fault.ErrNotFound) {
			return eventbus.Permanent(fmt.Errorf("event %s: unknown handover %s", ev.GetEventId(), ev.GetHandoverId()))
		}
		return err
	}
	if h := rec.GetHandover(); !s.party.Incoming(h) || h.GetSender() != ev.GetSource() || h.GetCaseId() != ev.GetCaseId() {
		return eventbus.Permanent(fmt.Errorf("event %s: handover %s was not sent by %s", ev.GetEventId(), h.GetHandoverId(), ev.GetSource()))
	}
	var purged []throughcarev1.DataCategory
	var person []byte
	err = s.updateCase(ctx, ev.GetCaseId(), func(rc *throughcarev1.ReleaseCase) {
		person = s.cfg.PersonKey.OfCase(rc)
		purged = protocol.Purge(rc, withdrawn.GetCategories())
		for _, c := range rc.GetConsents() {
			if c.GetRecipient() == s.cfg.Agency && slices.Contains(withdrawn.GetCategories(), c.GetCategory()) && c.GetWithdrawnTime() == nil {
				c.WithdrawnTime = ev.GetOccurredAt()
			}
		}
	})
	if err != nil && !errors.Is(err, fault.ErrNotFound) { // no copy left (retention) is nothing to purge
		return err
	}
	// The revisions before the purge held the categories: none may be left unerased.
	if err := s.cases.EraseHistory(ctx, ev.GetCaseId()); err != nil {
		return err
	}
	entry := &throughcarev1.Disclosure{
		Kind:               throughcarev1.DisclosureKind_DISCLOSURE_KIND_PURGED,
		CaseId:             ev.GetCaseId(),
		EventId:            ev.GetEventId(),
		Sender:             ev.GetSource(),
		Recipient:          s.cfg.Agency,
		Purpose:            ev.GetPurpose(),
		WithheldCategories: withdrawn.GetCategories(),
		ProtocolId:         s.cfg.Protocol.ID(),
		ProtocolVersion:    s.cfg.Protocol.Version(),
		Actor:              ev.GetActor(),
		Time:               timestampNow(s.now),
		Note:               fmt.Sprintf("consent withdrawn: purged %v from the copy of case %s", withdrawn.GetCategories(), ev.GetCaseId()),
		PersonHash:         person,
	}
	if _, err := s.ledger.Append(ctx, entry, "purged/"+ev.GetEventId()); err != nil {
		return fmt.Errorf("record purge for event %s: %w", ev.GetEventId(), err)
	}
	_, err = s.mutate(ctx, ev.GetHandoverId(), func(rec *storev1.HandoverRecord) error {
		if slices.Contains(rec.GetAppliedEventIds(), ev.GetEventId()) {
			return errUnchanged
		}
		rec.AppliedEventIds = append(rec.AppliedEventIds, ev.GetEventId())
		if n := len(rec.AppliedEventIds); n > maxAppliedEvents {
			rec.AppliedEventIds = rec.AppliedEventIds[n-maxAppliedEvents:]
		}
		s.party.IssueReceipt(rec, throughcarev1.ReceiptType_RECEIPT_TYPE_PURGED, rec.GetHandover().GetState(), ev.GetActor(), func(issued *throughcarev1.ReceiptIssued) {
			issued.PurgedCategories = withdrawn.GetCategories()
		})
		return nil
	})
	if err == nil {
		s.log.Info("consent withdrawn; copy purged", zap.String("handover_id", ev.GetHandoverId()), zap.String("case_id", ev.GetCaseId()), zap.Int("categories_found", len(purged)))
	}
	return err
}

// maxAppliedEvents bounds the event ids a handover record remembers.
const maxAppliedEvents = 64

// checkAccepted refuses an event about a case unless it travels along an accepted
// handover between the two agencies, in the right direction.
func (s *Service) checkAccepted(ctx context.Context, ev *throughcarev1.Event, incoming bool) error {
	rec, err := s.get(ctx, ev.GetHandoverId())
	if errors.Is(err, fault.ErrNotFound) {
		return eventbus.Permanent(fmt.Errorf("event %s: unknown handover %s", ev.GetEventId(), ev.GetHandoverId()))
	}
	if err != nil {
		return err
	}
	h := rec.GetHandover()
	peer := h.GetRecipient()
	if incoming {
		peer = h.GetSender()
	}
	if s.party.Incoming(h) != incoming || peer != ev.GetSource() || h.GetCaseId() != ev.GetCaseId() || h.GetState() != throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED {
		return eventbus.Permanent(fmt.Errorf("event %s: handover %s does not carry it (%s, %s)", ev.GetEventId(), h.GetHandoverId(), s.party.Direction(h), h.GetState()))
	}
	return nil
}
