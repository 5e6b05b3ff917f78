package handover

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/records"
)

// RetryDeadLetter retries a message this agency's inbox gave up on through the normal
// path: it asks the agency that sent it to re-send what this agency has not received
// along the handover, which that agency still keeps until it is acknowledged.
func (s *Service) RetryDeadLetter(ctx context.Context, req *throughcarev1.RetryDeadLetterRequest) (*throughcarev1.RetryDeadLetterResponse, error) {
	dl, rev, err := s.openDeadLetter(ctx, req.GetStream(), req.GetSequence())
	if err != nil {
		return nil, err
	}
	if dl.GetStream() != s.cfg.Inbox.Stream || !s.cfg.Protocol.Agencies().Has(dl.GetSource()) || !ids.Valid(dl.GetHandoverId()) || !ids.Valid(dl.GetCaseId()) {
		return nil, fmt.Errorf("dead letter %s/%d names no sender and handover to ask again; discard it: %w", dl.GetStream(), dl.GetSequence(), fault.ErrFailedPrecondition)
	}
	var received uint64
	about := &throughcarev1.Event{Source: dl.GetSource(), CaseId: dl.GetCaseId(), HandoverId: dl.GetHandoverId()}
	rec, _, err := s.handovers.Get(ctx, dl.GetHandoverId())
	switch {
	case err == nil:
		received, about.Purpose = rec.GetLastReceivedSequence(), rec.GetHandover().GetPurpose()
	case !errors.Is(err, records.ErrNotFound):
		return nil, handoverError(dl.GetHandoverId(), err)
	}
	resolved, err := s.resolveDeadLetter(ctx, dl, rev, throughcarev1.DeadLetterStatus_DEAD_LETTER_STATUS_RETRIED, req.GetNote(), func() error {
		return s.sendControl(ctx, about, received, &throughcarev1.Event_ResendRequested{ResendRequested: &throughcarev1.ResendRequested{ReceivedSequence: received}})
	})
	if err != nil {
		return nil, err
	}
	return &throughcarev1.RetryDeadLetterResponse{DeadLetter: resolved}, nil
}

// DiscardDeadLetter marks a dead letter discarded, on purpose, and records who and why.
func (s *Service) DiscardDeadLetter(ctx context.Context, req *throughcarev1.DiscardDeadLetterRequest) (*throughcarev1.DiscardDeadLetterResponse, error) {
	dl, rev, err := s.openDeadLetter(ctx, req.GetStream(), req.GetSequence())
	if err != nil {
		return nil, err
	}
	resolved, err := s.resolveDeadLetter(ctx, dl, rev, throughcarev1.DeadLetterStatus_DEAD_LETTER_STATUS_DISCARDED, req.GetNote(), func() error { return nil })
	if err != nil {
		return nil, err
	}
	return &throughcarev1.DiscardDeadLetterResponse{DeadLetter: resolved}, nil
}

// openDeadLetter reads a dead letter nobody has retried or discarded yet.
func (s *Service) openDeadLetter(ctx context.Context, stream string, seq uint64) (*throughcarev1.DeadLetter, uint64, error) {
	dl, rev, err := s.dead.Get(ctx, stream, seq)
	if err != nil {
		return nil, 0, err
	}
	if st := dl.GetStatus(); st != throughcarev1.DeadLetterStatus_DEAD_LETTER_STATUS_UNSPECIFIED {
		return nil, 0, fmt.Errorf("dead letter %s/%d is %s already, by %s: %w", stream, seq, st, dl.GetResolvedBy(), fault.ErrFailedPrecondition)
	}
	return dl, rev, nil
}

// resolveDeadLetter records in the ledger what an operator does with dl and why, does it,
// and marks dl. A crash in between repeats the whole: the ledger keeps one entry, and
// asking a sender twice to re-send is harmless.
func (s *Service) resolveDeadLetter(ctx context.Context, dl *throughcarev1.DeadLetter, rev uint64, status throughcarev1.DeadLetterStatus, note string, do func() error) (*throughcarev1.DeadLetter, error) {
	who := "an unidentified caller (--insecure)"
	if caller, ok := grpcserver.CallerFrom(ctx); ok {
		who = caller.URI
	}
	now := timestampNow(s.now)
	entry := &throughcarev1.Disclosure{
		Kind:            throughcarev1.DisclosureKind_DISCLOSURE_KIND_DEAD_LETTER_RESOLVED,
		CaseId:          dl.GetCaseId(),
		EventId:         dl.GetEventId(),
		Sender:          dl.GetSource(),
		Recipient:       s.cfg.Agency,
		ProtocolId:      s.cfg.Protocol.ID(),
		ProtocolVersion: s.cfg.Protocol.Version(),
		Actor:           who,
		Time:            now,
		Note:            fmt.Sprintf("dead letter %s/%d (event %s) %s by %s: %s", dl.GetStream(), dl.GetSequence(), dl.GetEventId(), status, who, note),
	}
	if _, err := s.ledger.Append(ctx, entry, fmt.Sprintf("deadletter/%s/%d/%s", dl.GetStream(), dl.GetSequence(), status)); err != nil {
		return nil, fmt.Errorf("record %s of dead letter %s/%d: %w", status, dl.GetStream(), dl.GetSequence(), err)
	}
	if err := do(); err != nil {
		return nil, err
	}
	dl.Status, dl.ResolvedBy, dl.ResolveTime, dl.ResolveNote = status, who, now, note
	if err := s.dead.Resolve(ctx, dl, rev); err != nil {
		return nil, err
	}
	s.log.Info("dead letter resolved", zap.String("stream", dl.GetStream()), zap.Uint64("sequence", dl.GetSequence()), zap.String("status", status.String()), zap.String("by", who))
	return dl, nil
}
