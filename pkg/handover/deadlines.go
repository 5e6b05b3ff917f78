package handover

import (
	"context"
	"time"

	"go.uber.org/zap"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// watchDeadlines checks deadlines and retention now and then every DeadlineScanInterval
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
func (s *Service) CheckDeadlines(ctx context.Context) error {
	now := s.now()
	var due []*throughcarev1.Handover
	err := s.each(ctx, func(rec *storev1.HandoverRecord) error {
		if ack, accept := overdue(rec.GetHandover(), now); ack || accept {
			due = append(due, rec.GetHandover())
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, h := range due {
		_, err := s.mutate(ctx, h.GetHandoverId(), func(rec *storev1.HandoverRecord) error {
			h := rec.GetHandover()
			ack, accept := overdue(h, now)
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
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) raiseOverdue(rec *storev1.HandoverRecord, t throughcarev1.ReceiptType) {
	h := rec.GetHandover()
	s.log.Warn("handover overdue", zap.String("handover_id", h.GetHandoverId()), zap.String("case_id", h.GetCaseId()),
		zap.String("deadline", t.String()), zap.String("direction", s.direction(h).String()), zap.String("state", h.GetState().String()))
	if s.incoming(h) {
		s.issueReceipt(rec, t, h.GetState(), "", nil)
	}
}

// overdue reports which not-yet-marked deadlines of h have passed.
func overdue(h *throughcarev1.Handover, now time.Time) (ack, accept bool) {
	waitingForAck := h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_REFERRED ||
		h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED ||
		h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_RETRIEVED
	ack = waitingForAck && !h.GetAcknowledgeOverdue() && h.GetAcknowledgeDueTime() != nil && now.After(h.GetAcknowledgeDueTime().AsTime())
	accept = !finished(h) && !h.GetAcceptOverdue() && h.GetAcceptDueTime() != nil && now.After(h.GetAcceptDueTime().AsTime())
	return ack, accept
}
