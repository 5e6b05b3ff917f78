package handover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/handover/lifecycle"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/records"
)

// Refer creates a handover of a case this agency holds (its own, or its copy of one referred
// to it) to recipient for purpose, and sends the case with it, cut down to what the protocol allows. It returns the handover and what
// was held back, and why. With no rule for the flow it refuses, naming the missing rule.
//
// A requestID, when given, makes the call safe to retry: the first call claims it for the
// handover it makes, and a later call with it returns that handover (if it asks for the
// same referral) instead of making another.
func (s *Service) Refer(ctx context.Context, actor, caseID string, recipient string, purpose throughcarev1.Purpose, requestID string) (*throughcarev1.Handover, []*throughcarev1.Withholding, error) {
	if recipient == s.cfg.Agency {
		return nil, nil, fault.InvalidField("recipient", "must be another agency")
	}
	if _, err := s.cfg.Protocol.RuleFor(s.cfg.Agency, recipient, purpose); err != nil {
		return nil, nil, err
	}
	rc, err := s.cases.Get(ctx, caseID)
	if err != nil {
		return nil, nil, err
	}
	if rc.GetOwner() == recipient {
		// Its copy would overwrite the original the recipient keeps under the same id.
		return nil, nil, fault.InvalidField("recipient", "%s opened case %s and holds the original", recipient, caseID)
	}
	if rc.GetState() != throughcarev1.CaseState_CASE_STATE_OPEN {
		return nil, nil, fmt.Errorf("release case %s is %s; only an open case can be referred: %w", caseID, rc.GetState(), fault.ErrFailedPrecondition)
	}
	// rc, read for this call alone, becomes the copy the recipient gets, cut down in place:
	// what is needed of the whole case is taken first. Its revision is ours, not theirs.
	acceptDue, consents := s.party.AcceptDue(rc), rc.GetConsents()
	rc.Revision = 0
	report, err := s.cfg.Protocol.Enforce(rc, s.cfg.Agency, recipient, purpose, consents)
	if err != nil {
		return nil, nil, err
	}
	id, done, err := s.claimRequest(ctx, requestID, caseID, recipient, purpose)
	if err != nil || done != nil {
		return done, report.Withheld, err
	}
	now := timestampNow(s.now)
	h := &throughcarev1.Handover{
		HandoverId:    id,
		CaseId:        caseID,
		Sender:        s.cfg.Agency,
		Recipient:     recipient,
		Purpose:       purpose,
		State:         throughcarev1.HandoverState_HANDOVER_STATE_REFERRED,
		CreateTime:    now,
		UpdateTime:    now,
		AcceptDueTime: acceptDue,
		Revision:      1,
	}
	h.WithheldCategories = report.WithheldCategories()
	ev := s.party.NewEvent(h, recipient, actor, throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED)
	ev.Withholdings = report.Withheld
	ev.Payload = &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{Handover: proto.CloneOf(h), ReleaseCase: rc}}
	rec := &storev1.HandoverRecord{Handover: h, Outbox: []*throughcarev1.Event{ev}}
	if _, err := s.write(ctx, rec, 0); errors.Is(err, records.ErrExists) && requestID != "" {
		// A retry of the same request, in flight at the same time, stored it first.
		stored, err := s.get(ctx, id)
		return stored.GetHandover(), report.Withheld, err
	} else if err != nil {
		return nil, nil, handoverError(h.GetHandoverId(), err)
	}
	s.log.Info("handover referred", zap.String("handover_id", h.GetHandoverId()), zap.String("case_id", caseID),
		zap.String("recipient", recipient), zap.String("purpose", purpose.String()), zap.String("actor", actor),
		zap.Any("withheld", h.GetWithheldCategories()))
	return h, report.Withheld, nil
}

// requestTTL is how long a referral's request id is remembered: a retry comes within it.
const requestTTL = 24 * time.Hour

// claimRequest is the id of the handover a referral makes. With a request id, the first
// call claims the id for a new handover; a retry finds the handover it made and returns it
// (done), or, if that call stopped before storing it, the id to store it under.
func (s *Service) claimRequest(ctx context.Context, requestID, caseID, recipient string, purpose throughcarev1.Purpose) (string, *throughcarev1.Handover, error) {
	id := ids.New(ids.Handover)
	if requestID == "" {
		return id, nil, nil
	}
	key := "req." + requestID
	err := s.handovers.CreateRaw(ctx, key, []byte(id), requestTTL)
	if err == nil {
		return id, nil, nil
	}
	if !errors.Is(err, records.ErrExists) {
		return "", nil, err
	}
	raw, _, err := s.handovers.GetRaw(ctx, key)
	if err != nil {
		return "", nil, fmt.Errorf("request %s: %w", requestID, err)
	}
	id = string(raw)
	rec, err := s.get(ctx, id)
	if errors.Is(err, fault.ErrNotFound) {
		return id, nil, nil // the first call stopped before storing it
	}
	if err != nil {
		return "", nil, err
	}
	if h := rec.GetHandover(); h.GetCaseId() != caseID || h.GetRecipient() != recipient || h.GetPurpose() != purpose {
		return "", nil, fault.InvalidField("request_id", "was used for another referral (handover %s)", id)
	}
	return id, rec.GetHandover(), nil
}

// NotifyRelease tells every agency that accepted a handover of the case that the person
// has left prison, once along each handover: calling it again sends nothing more.
func (s *Service) NotifyRelease(ctx context.Context, actor, caseID string, release *throughcarev1.Release) (int, error) {
	accepted, err := s.find(ctx, caseID, false, func(h *throughcarev1.Handover) bool {
		return h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED
	})
	if err != nil {
		return 0, err
	}
	for _, h := range accepted {
		_, err := s.mutate(ctx, h.GetHandoverId(), func(rec *storev1.HandoverRecord) error {
			if rec.GetReleaseNotified() {
				return errUnchanged
			}
			rec.ReleaseNotified = true
			ev := s.party.NewEvent(rec.GetHandover(), rec.GetHandover().GetRecipient(), actor, throughcarev1.EventType_EVENT_TYPE_RELEASE_RECORDED)
			ev.EventId = lifecycle.StableEventID(rec.GetHandover().GetHandoverId(), "release")
			ev.Payload = &throughcarev1.Event_ReleaseRecorded{ReleaseRecorded: &throughcarev1.ReleaseRecorded{Release: proto.CloneOf(release)}}
			rec.Outbox = append(rec.Outbox, ev)
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	s.log.Info("release notified", zap.String("case_id", caseID), zap.Int("agencies", len(accepted)), zap.String("actor", actor))
	return len(accepted), nil
}

// SharePlan sends this agency's plan for a case back to the agency that referred it. The
// handover must have been accepted.
func (s *Service) SharePlan(ctx context.Context, actor, caseID string, plan *throughcarev1.PlanShared) error {
	accepted, err := s.find(ctx, caseID, true, func(h *throughcarev1.Handover) bool {
		return h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED
	})
	if err != nil {
		return err
	}
	if len(accepted) == 0 {
		return fmt.Errorf("release case %s has no accepted handover to share a plan along: %w", caseID, fault.ErrFailedPrecondition)
	}
	for _, h := range accepted {
		_, err := s.mutate(ctx, h.GetHandoverId(), func(rec *storev1.HandoverRecord) error {
			ev := s.party.NewEvent(rec.GetHandover(), rec.GetHandover().GetSender(), actor, throughcarev1.EventType_EVENT_TYPE_PLAN_SHARED)
			ev.Payload = &throughcarev1.Event_PlanShared{PlanShared: proto.CloneOf(plan)}
			rec.Outbox = append(rec.Outbox, ev)
			return nil
		})
		if err != nil {
			return err
		}
	}
	s.log.Info("plan shared", zap.String("case_id", caseID), zap.Int("handovers", len(accepted)), zap.String("actor", actor))
	return nil
}

// find returns the handovers of a case, received or sent, that match, from the case's
// index entries.
func (s *Service) find(ctx context.Context, caseID string, incoming bool, match func(*throughcarev1.Handover) bool) ([]*throughcarev1.Handover, error) {
	recs, err := s.ofCase(ctx, caseID, incoming)
	if err != nil {
		return nil, err
	}
	var found []*throughcarev1.Handover
	for _, rec := range recs {
		if match(rec.GetHandover()) {
			found = append(found, rec.GetHandover())
		}
	}
	return found, nil
}

// ofCase returns the handovers of a case in one direction, oldest first.
func (s *Service) ofCase(ctx context.Context, caseID string, incoming bool) ([]*storev1.HandoverRecord, error) {
	if !ids.Valid(caseID) {
		return nil, fault.InvalidField("case_id", "is not a case id")
	}
	entries, err := s.handovers.Latest(ctx, "ix.case."+caseID+"."+lifecycle.DirToken(incoming)+".*")
	if err != nil {
		return nil, fmt.Errorf("handovers of case %s: %w", caseID, err)
	}
	recs, err := s.getMany(ctx, entries)
	if err != nil {
		return nil, fmt.Errorf("handovers of case %s: %w", caseID, err)
	}
	slices.SortFunc(recs, func(a, b *storev1.HandoverRecord) int {
		return strings.Compare(a.GetHandover().GetHandoverId(), b.GetHandover().GetHandoverId())
	})
	return recs, nil
}

// WithdrawConsent tells every agency this agency referred the case to as recipient that the
// person withdrew consent to categories: each purges them from its copy and confirms with
// a PURGED receipt. A recipient that declined still holds the copy it was sent, so it is
// told too.
func (s *Service) WithdrawConsent(ctx context.Context, actor, caseID string, recipient string, categories []throughcarev1.DataCategory) (int, error) {
	referred, err := s.find(ctx, caseID, false, func(h *throughcarev1.Handover) bool {
		return h.GetRecipient() == recipient
	})
	if err != nil {
		return 0, err
	}
	for _, h := range referred {
		_, err := s.mutate(ctx, h.GetHandoverId(), func(rec *storev1.HandoverRecord) error {
			ev := s.party.NewEvent(rec.GetHandover(), recipient, actor, throughcarev1.EventType_EVENT_TYPE_CONSENT_WITHDRAWN)
			ev.Payload = &throughcarev1.Event_ConsentWithdrawn{ConsentWithdrawn: &throughcarev1.ConsentWithdrawn{Categories: categories}}
			rec.Outbox = append(rec.Outbox, ev)
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return len(referred), nil
}
