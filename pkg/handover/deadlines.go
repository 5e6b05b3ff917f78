package handover

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/handover/lifecycle"
	"github.com/throughcare/throughcare/pkg/records"
)

// watchDeadlines checks deadlines, retention and resends now and then every DeadlineScanInterval
// until ctx ends.
func (s *Service) watchDeadlines(ctx context.Context) error {
	ticker := time.NewTicker(s.cfg.DeadlineScanInterval)
	defer ticker.Stop()
	for {
		if err := s.CheckDeadlines(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("deadline check failed; trying again next round", zap.Error(err))
		}
		if err := s.CheckRetention(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("retention check failed; trying again next round", zap.Error(err))
		}
		if err := s.CheckResends(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("resend check failed; trying again next round", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// CheckDeadlines marks every handover whose acknowledgement or acceptance is overdue.
// For an incoming handover the recipient tells the sender with an overdue receipt; for an
// outgoing one the sender marks its own view, so it learns even when the recipient is down.
// It reads only the deadlines filed under the hours since its last pass.
func (s *Service) CheckDeadlines(ctx context.Context) error {
	now := s.now()
	return s.sweep(ctx, "due", now, func(ctx context.Context, handoverID string) error {
		_, err := s.mutate(ctx, handoverID, func(rec *storev1.HandoverRecord) error {
			h := rec.GetHandover()
			ack, accept := lifecycle.Overdue(h, now)
			if !ack && !accept {
				return errUnchanged
			}
			if ack {
				h.AcknowledgeOverdue = true
				s.raiseOverdue(rec, throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGE_OVERDUE)
			}
			if accept {
				h.AcceptOverdue = true
				s.raiseOverdue(rec, throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPT_OVERDUE)
			}
			return nil
		})
		if errors.Is(err, fault.ErrNotFound) {
			return nil
		}
		return err
	})
}

// sweep calls handle for each handover filed in the index ix.<kind>.<hour> for every hour
// from the last sweep's checkpoint up to now's, then moves the checkpoint on. Entries are
// removed by the writes that settle them, so the hours behind the checkpoint are empty and
// a sweep reads what is due and what falls due later in the current hour, nothing else.
// The checkpoint stays an hour behind, so a writer whose clock is a little behind files
// nothing where a sweep no longer reads.
func (s *Service) sweep(ctx context.Context, kind string, now time.Time, handle func(ctx context.Context, handoverID string) error) error {
	return s.sweepEvery(ctx, kind, time.Hour, now, handle)
}

// sweepEvery is sweep for an index filed by unit rather than by the hour.
func (s *Service) sweepEvery(ctx context.Context, kind string, unit time.Duration, now time.Time, handle func(ctx context.Context, handoverID string) error) error {
	checkpointKey := "cp." + kind
	until := lifecycle.UnitOf(now, unit)
	from := until - 1
	if cp, _, err := s.handovers.GetRaw(ctx, checkpointKey); err == nil {
		if h, perr := strconv.ParseInt(string(cp), 10, 64); perr == nil && h < from {
			from = h
		}
	} else if !errors.Is(err, records.ErrNotFound) {
		return err
	}
	for hour := from; hour <= until; hour++ {
		pattern := "ix." + kind + "." + lifecycle.UnitToken(hour) + ".*"
		var after uint64
		for {
			entries, resume, err := s.handovers.PageSparse(ctx, pattern, after, sweepBatch)
			if err != nil {
				return fmt.Errorf("sweep %s: %w", kind, err)
			}
			for _, e := range entries {
				if err := handle(ctx, records.RecordOf(e.Key)); err != nil {
					return err
				}
			}
			if resume == 0 {
				break
			}
			after = resume
		}
	}
	if until-1 > from {
		return s.handovers.SetRaw(ctx, checkpointKey, []byte(strconv.FormatInt(until-1, 10)))
	}
	return nil
}

// sweepBatch is how many index entries a sweep reads at a time.
const sweepBatch = 256

func (s *Service) raiseOverdue(rec *storev1.HandoverRecord, t throughcarev1.ReceiptType) {
	h := rec.GetHandover()
	s.log.Warn("handover overdue", zap.String("handover_id", h.GetHandoverId()), zap.String("case_id", h.GetCaseId()),
		zap.String("deadline", t.String()), zap.String("direction", s.party.Direction(h).String()), zap.String("state", h.GetState().String()))
	if s.party.Incoming(h) {
		s.party.IssueReceipt(rec, t, h.GetState(), "", nil)
	}
}
