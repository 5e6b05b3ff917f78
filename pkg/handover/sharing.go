package handover

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/records"
	"github.com/throughcare/throughcare/pkg/signing"
)

// allCategories is every data category, for stripping a message no rule covers.
var allCategories = func() []throughcarev1.DataCategory {
	var all []throughcarev1.DataCategory
	for n := range throughcarev1.DataCategory_name {
		if n != 0 {
			all = append(all, throughcarev1.DataCategory(n))
		}
	}
	slices.Sort(all)
	return all
}()

// enforce cuts ev down to what the protocol lets its recipient have, in place. An event
// that no rule covers (a receipt back along a purpose the protocol has no reverse rule for)
// keeps its routing metadata only.
func (s *Service) enforce(ev *throughcarev1.Event, consents []*throughcarev1.Consent) (protocol.Report, error) {
	report, err := s.cfg.Protocol.Enforce(ev, ev.GetSource(), ev.GetRecipient(), ev.GetPurpose(), consents)
	if errors.Is(err, protocol.ErrNoRule) {
		for _, c := range protocol.Purge(ev, allCategories) {
			report.Withheld = append(report.Withheld, &throughcarev1.Withholding{Category: c, Reason: throughcarev1.WithholdReason_WITHHOLD_REASON_NOT_ALLOWED})
		}
		return report, nil
	}
	return report, err
}

// localCase is this agency's copy of the case an event is about, if it still has one.
func (s *Service) localCase(ctx context.Context, caseID string) (*throughcarev1.ReleaseCase, error) {
	rc, err := s.cases.Get(ctx, caseID)
	if errors.Is(err, fault.ErrNotFound) {
		return nil, nil
	}
	return rc, err
}

// disclose is the last gate before an event leaves: it enforces the protocol once more
// (consent may have been withdrawn since the event was made) and records the disclosure in
// the ledger, before the event is published.
func (s *Service) disclose(ctx context.Context, ev *throughcarev1.Event) error {
	// The case is read for its current consents and the person's hash; an event that
	// carries no personal data (most receipts) needs neither, and saves the round trip.
	var rc *throughcarev1.ReleaseCase
	if ev.GetType() == throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED || carriesPersonalData(ev) {
		var err error
		if rc, err = s.localCase(ctx, ev.GetCaseId()); err != nil {
			return err
		}
	}
	report, err := s.enforce(ev, rc.GetConsents())
	if err != nil {
		return err
	}
	ev.Withholdings = mergeWithholdings(ev.GetWithholdings(), report.Withheld)
	if len(report.Shared) == 0 && ev.GetType() != throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED {
		return nil // routing metadata only: nothing personal is disclosed
	}
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event %s: %w", ev.GetEventId(), err)
	}
	hash := sha256.Sum256(payload)
	entry := &throughcarev1.Disclosure{
		Kind:               throughcarev1.DisclosureKind_DISCLOSURE_KIND_SHARED,
		CaseId:             ev.GetCaseId(),
		EventId:            ev.GetEventId(),
		Sender:             ev.GetSource(),
		Recipient:          ev.GetRecipient(),
		Purpose:            ev.GetPurpose(),
		SharedCategories:   report.Shared,
		WithheldCategories: categoriesOf(ev.GetWithholdings()),
		Withholdings:       ev.GetWithholdings(),
		LegalBasis:         report.Rule.GetLegalBasis(),
		ProtocolId:         s.cfg.Protocol.ID(),
		ProtocolVersion:    s.cfg.Protocol.Version(),
		Actor:              ev.GetActor(),
		Time:               timestampNow(s.now),
		PayloadHash:        hash[:],
		PersonHash:         s.personHash(rc),
	}
	if _, err := s.ledger.Append(ctx, entry, "shared/"+ev.GetEventId()); err != nil {
		return fmt.Errorf("record disclosure of event %s: %w", ev.GetEventId(), err)
	}
	return nil
}

// authenticate is the receiver's first gate: an event must carry a valid signature of its
// source agency, and (checkReplay, once its sequence says it is new) must not replay an old
// one. A refusal is recorded in the ledger (by event id and reason only: nothing of an
// unauthenticated payload is trusted or kept) and the message is dead-lettered.
func (s *Service) authenticate(ctx context.Context, ev *throughcarev1.Event) error {
	return s.refuseUnauthentic(ctx, ev, s.verifier.Verify(ev))
}

// checkReplay refuses an authenticated event that replays an old one; see authenticate.
func (s *Service) checkReplay(ctx context.Context, ev *throughcarev1.Event) error {
	return s.refuseUnauthentic(ctx, ev, s.replays.Check(ctx, ev))
}

func (s *Service) refuseUnauthentic(ctx context.Context, ev *throughcarev1.Event, err error) error {
	if err == nil {
		return nil
	}
	if !isRefusal(err) {
		return err // the replay store is unreachable: retry
	}
	entry := &throughcarev1.Disclosure{
		Kind:            throughcarev1.DisclosureKind_DISCLOSURE_KIND_REFUSED,
		EventId:         ev.GetEventId(),
		Sender:          ev.GetSource(),
		Recipient:       s.cfg.Agency,
		ProtocolId:      s.cfg.Protocol.ID(),
		ProtocolVersion: s.cfg.Protocol.Version(),
		Time:            timestampNow(s.now),
		Note:            fmt.Sprintf("refused event %s claiming to come from %s: %v", ev.GetEventId(), ev.GetSource(), err),
	}
	if _, lerr := s.ledger.Append(ctx, entry, "unauthenticated/"+ev.GetEventId()+"/"+refusalKind(err)); lerr != nil {
		return fmt.Errorf("record refusal of event %s: %w", ev.GetEventId(), lerr)
	}
	s.log.Warn("event refused: not authentic", zap.String("event_id", ev.GetEventId()), zap.String("claimed_source", ev.GetSource()), zap.String("reason", refusalKind(err)))
	return eventbus.Permanent(err)
}

// isRefusal tells a verdict on the event from a failure to reach a verdict.
func isRefusal(err error) bool { return refusalKind(err) != "" }

func refusalKind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{
		{signing.ErrUnsigned, "unsigned"}, {signing.ErrUnknownKey, "unknown-key"}, {signing.ErrWrongAgency, "wrong-agency"},
		{signing.ErrBadSignature, "bad-signature"}, {signing.ErrKeyExpired, "key-expired"}, {signing.ErrReplayed, "replayed"},
	} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return ""
}

// checkIncoming is the receiver's gate: an event carrying a category the protocol does not
// let this agency have is refused, never stored, and the refusal is recorded.
func (s *Service) checkIncoming(ctx context.Context, ev *throughcarev1.Event) error {
	forbidden, err := s.forbiddenIn(ev, ev.GetHandoverReferred().GetReleaseCase().GetConsents())
	if err == nil && len(forbidden) > 0 && ev.GetHandoverReferred() == nil {
		// Consent can only widen what is allowed: look it up only when it could matter.
		var rc *throughcarev1.ReleaseCase
		if rc, err = s.localCase(ctx, ev.GetCaseId()); err == nil {
			forbidden, err = s.forbiddenIn(ev, rc.GetConsents())
		}
	}
	if err != nil {
		return err
	}
	if len(forbidden) == 0 {
		return nil
	}
	note := fmt.Sprintf("refused event %s from %s: it carries %v, which protocol %s v%d does not let %s have for %s",
		ev.GetEventId(), ev.GetSource(), forbidden, s.cfg.Protocol.ID(), s.cfg.Protocol.Version(), s.cfg.Agency, ev.GetPurpose())
	entry := &throughcarev1.Disclosure{
		Kind:               throughcarev1.DisclosureKind_DISCLOSURE_KIND_REFUSED,
		CaseId:             ev.GetCaseId(),
		EventId:            ev.GetEventId(),
		Sender:             ev.GetSource(),
		Recipient:          s.cfg.Agency,
		Purpose:            ev.GetPurpose(),
		WithheldCategories: forbidden,
		ProtocolId:         s.cfg.Protocol.ID(),
		ProtocolVersion:    s.cfg.Protocol.Version(),
		Time:               timestampNow(s.now),
		Note:               note,
	}
	if _, err := s.ledger.Append(ctx, entry, "refused/"+ev.GetEventId()); err != nil {
		return fmt.Errorf("record refusal of event %s: %w", ev.GetEventId(), err)
	}
	s.log.Warn("event refused: protocol violation", zap.String("event_id", ev.GetEventId()), zap.String("source", ev.GetSource()), zap.Any("categories", forbidden))
	return eventbus.Permanent(errors.New(note))
}

// forbiddenIn lists the categories in ev that this agency may not have from its source.
func (s *Service) forbiddenIn(ev *throughcarev1.Event, consents []*throughcarev1.Consent) ([]throughcarev1.DataCategory, error) {
	forbidden, err := s.cfg.Protocol.Check(ev, ev.GetSource(), s.cfg.Agency, ev.GetPurpose(), consents)
	if errors.Is(err, protocol.ErrNoRule) {
		return protocol.Purge(proto.CloneOf(ev), allCategories), nil
	}
	return forbidden, err
}

// holdsPersonalData reports whether an inbox message may hold something personal, so must
// be erased once handled: unless it is an event that carries no categorized field and no
// field this service does not know, it may.
func holdsPersonalData(msg jetstream.Msg) bool {
	ev, err := eventbus.Decode(msg.Subject(), msg.Headers(), msg.Data())
	return err != nil || carriesPersonalData(ev) || hasUnknownFields(ev.ProtoReflect())
}

func hasUnknownFields(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					found = hasUnknownFields(mv.Message())
					return !found
				})
			}
		case fd.Message() == nil:
		case fd.IsList():
			for i := 0; i < v.List().Len() && !found; i++ {
				found = hasUnknownFields(v.List().Get(i).Message())
			}
		default:
			found = hasUnknownFields(v.Message())
		}
		return !found
	})
	return found
}

// carriesPersonalData reports whether any categorized field of ev is set.
func carriesPersonalData(ev *throughcarev1.Event) bool {
	return len(protocol.Purge(proto.CloneOf(ev), allCategories)) > 0
}

// Readable returns what this agency's system may read of its copies of cases: each cut
// down, as of now, under the rule of the latest handover that brought it (consent may have
// been withdrawn, or the protocol changed, since it arrived).
func (s *Service) Readable(ctx context.Context, copies ...*throughcarev1.ReleaseCase) ([]*throughcarev1.ReleaseCase, error) {
	latest, err := s.latestReceived(ctx, copies)
	if err != nil {
		return nil, err
	}
	out := make([]*throughcarev1.ReleaseCase, len(copies))
	for i, rc := range copies {
		rc = proto.CloneOf(rc)
		h, ok := latest[rc.GetCaseId()]
		if !ok {
			protocol.Purge(rc, allCategories)
		} else if _, err := s.cfg.Protocol.Enforce(rc, h.GetSender(), s.cfg.Agency, h.GetPurpose(), rc.GetConsents()); errors.Is(err, protocol.ErrNoRule) {
			protocol.Purge(rc, allCategories)
		} else if err != nil {
			return nil, err
		}
		out[i] = rc
	}
	return out, nil
}

// latestReceived is, for each case of copies, the last handover that brought it, read from
// the cases' index entries in one request and the handovers in another.
func (s *Service) latestReceived(ctx context.Context, copies []*throughcarev1.ReleaseCase) (map[string]*throughcarev1.Handover, error) {
	patterns := make([]string, 0, len(copies))
	for _, rc := range copies {
		if ids.Valid(rc.GetCaseId()) {
			patterns = append(patterns, "ix.case."+rc.GetCaseId()+".in.*")
		}
	}
	entries, err := s.handovers.Latest(ctx, patterns...)
	if err != nil {
		return nil, fmt.Errorf("handovers of %d cases: %w", len(copies), err)
	}
	// Handover ids sort by creation: the largest of a case is its latest.
	last := map[string]records.Entry{}
	for _, e := range entries {
		caseID := strings.Split(e.Key, ".")[2]
		if have, ok := last[caseID]; !ok || records.RecordOf(e.Key) > records.RecordOf(have.Key) {
			last[caseID] = e
		}
	}
	recs, err := s.getMany(ctx, slices.Collect(maps.Values(last)))
	if err != nil {
		return nil, fmt.Errorf("handovers of %d cases: %w", len(copies), err)
	}
	latest := make(map[string]*throughcarev1.Handover, len(recs))
	for _, rec := range recs {
		latest[rec.GetHandover().GetCaseId()] = rec.GetHandover()
	}
	return latest, nil
}

// CheckRetention removes this agency's copies of cases whose rules' retention has run out
// since they were delivered, and records each removal in the ledger. It reads only the
// copies filed under the hours since its last pass.
func (s *Service) CheckRetention(ctx context.Context) error {
	now := s.now()
	return s.sweep(ctx, "retain", now, func(ctx context.Context, handoverID string) error {
		rec, err := s.get(ctx, handoverID)
		if errors.Is(err, fault.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if until, ok := s.retainUntil(rec); !ok || now.Before(until) {
			return nil
		}
		return s.expireCopy(ctx, rec.GetHandover().GetCaseId(), now)
	})
}

// expireCopy removes this agency's copy of a case once the retention of every handover
// that brought it has run out, records the removal, and clears the handovers' free text.
// Every revision that held any of it is erased (records.WithErasure): the copy's, by the
// erasing bucket; the handovers', here.
func (s *Service) expireCopy(ctx context.Context, caseID string, now time.Time) error {
	received, err := s.ofCase(ctx, caseID, true)
	if err != nil {
		return err
	}
	var until time.Time
	for _, rec := range received {
		if u, ok := s.retainUntil(rec); ok && u.After(until) {
			until = u
		}
	}
	if now.Before(until) {
		return nil // a later handover keeps the copy; its own entry comes due later
	}
	// A revision whose events are not yet published cannot be erased: leave the whole
	// removal to a later pass, while the handovers are still filed as due.
	for _, rec := range received {
		if err := s.erasable(ctx, rec.GetHandover().GetHandoverId(), math.MaxUint64); err != nil {
			return err
		}
	}
	rc, err := s.localCase(ctx, caseID)
	if err != nil {
		return err
	}
	if rc != nil {
		entry := &throughcarev1.Disclosure{
			Kind:            throughcarev1.DisclosureKind_DISCLOSURE_KIND_EXPIRED,
			CaseId:          caseID,
			Sender:          rc.GetOwner(),
			Recipient:       s.cfg.Agency,
			ProtocolId:      s.cfg.Protocol.ID(),
			ProtocolVersion: s.cfg.Protocol.Version(),
			Time:            timestamppb.New(now),
			PersonHash:      s.personHash(rc),
			Note:            fmt.Sprintf("copy of case %s removed: retention ran out at %s", caseID, until.UTC().Format(time.RFC3339)),
		}
		// The entry first: a crash before the removal repeats both, and the dedupe id keeps
		// the entry single.
		if _, err := s.ledger.Append(ctx, entry, fmt.Sprintf("expired/%s/%d", caseID, rc.GetRevision())); err != nil {
			return fmt.Errorf("record expiry of case %s: %w", caseID, err)
		}
		if err := s.cases.Purge(ctx, caseID, rc.GetRevision()); err != nil {
			if errors.Is(err, fault.ErrConflict) {
				return nil // a concurrent change: the next pass removes it
			}
			return err
		}
		s.log.Info("case copy removed: retention ran out", zap.String("case_id", caseID))
	}
	// The handovers keep their routing metadata; their free text goes with the copy.
	for _, rec := range received {
		_, err := s.mutate(ctx, rec.GetHandover().GetHandoverId(), func(rec *storev1.HandoverRecord) error {
			if rec.GetCopyRemoved() {
				return errUnchanged
			}
			protocol.Purge(rec.GetHandover(), allCategories)
			rec.CopyRemoved = true
			return nil
		})
		if err != nil {
			return err
		}
		if err := s.eraseHistory(ctx, rec.GetHandover().GetHandoverId()); err != nil {
			return err
		}
	}
	return nil
}

// eraseHistory erases every revision of a handover but the current one (the history a
// watch replays): for a handover whose free text was just cleared.
func (s *Service) eraseHistory(ctx context.Context, handoverID string) error {
	revs, err := s.handovers.Revisions(ctx, handoverID)
	if err != nil || len(revs) < 2 {
		return err
	}
	current := revs[len(revs)-1].Revision
	if err := s.erasable(ctx, handoverID, current); err != nil {
		return err
	}
	if err := s.handovers.EraseBefore(ctx, handoverID, current, 0); err != nil {
		return fmt.Errorf("handover %s: %w", handoverID, err)
	}
	return nil
}

// erasable checks that the outbox relay has published the events of every revision of a
// handover below before: erasing one it has not would lose them.
func (s *Service) erasable(ctx context.Context, handoverID string, before uint64) error {
	revs, err := s.handovers.Revisions(ctx, handoverID)
	if err != nil {
		return err
	}
	var floor uint64
	var floorRead bool
	for _, r := range revs {
		if r.Revision >= before || len(r.Data) == 0 {
			continue
		}
		rec, err := s.handovers.Decode(r.Data)
		if err != nil || len(rec.GetOutbox()) == 0 {
			continue // nothing to publish
		}
		if !floorRead {
			if floor, err = s.relayed(ctx); err != nil {
				return err
			}
			floorRead = true
		}
		if r.Revision > floor {
			return fmt.Errorf("handover %s: revision %d is not yet relayed; erasing it waits: %w", handoverID, r.Revision, fault.ErrUnavailable)
		}
	}
	return nil
}

// relayed is the revision of the handovers bucket up to which the outbox relay has
// published and acknowledged everything.
func (s *Service) relayed(ctx context.Context) (uint64, error) {
	stream, _ := s.handovers.ChangeStream()
	cons, err := s.js.Consumer(ctx, stream, relayDurable(s.cfg.Agency))
	if err != nil {
		return 0, fmt.Errorf("outbox relay: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("outbox relay: %w", err)
	}
	return info.AckFloor.Stream, nil
}

func (s *Service) personHash(rc *throughcarev1.ReleaseCase) []byte {
	if pn := rc.GetPerson().GetPrisonNumber(); pn != "" {
		return s.cfg.PersonKey.Hash(pn)
	}
	return nil
}

func categoriesOf(ws []*throughcarev1.Withholding) []throughcarev1.DataCategory {
	out := make([]throughcarev1.DataCategory, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.GetCategory())
	}
	return out
}

// mergeWithholdings adds to what the event already says was held back.
func mergeWithholdings(have, more []*throughcarev1.Withholding) []*throughcarev1.Withholding {
	for _, w := range more {
		if !slices.ContainsFunc(have, func(h *throughcarev1.Withholding) bool { return h.GetCategory() == w.GetCategory() }) {
			have = append(have, w)
		}
	}
	slices.SortFunc(have, func(a, b *throughcarev1.Withholding) int { return int(a.GetCategory()) - int(b.GetCategory()) })
	return have
}
