package handover

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/protocol"
)

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
		if until, ok := s.party.RetainUntil(rec); !ok || now.Before(until) {
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
		if u, ok := s.party.RetainUntil(rec); ok && u.After(until) {
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
			PersonHash:      s.cfg.PersonKey.OfCase(rc),
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
			protocol.Purge(rec.GetHandover(), protocol.AllCategories)
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
