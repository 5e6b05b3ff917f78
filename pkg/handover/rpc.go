package handover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"go.uber.org/zap"
	"google.golang.org/grpc"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/handover/lifecycle"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/records"
)

func (s *Service) ListHandovers(ctx context.Context, req *throughcarev1.ListHandoversRequest) (*throughcarev1.ListHandoversResponse, error) {
	page, next, err := s.listIndexed(ctx, listPatterns(req), req.GetOverdueOnly(), req.GetPageToken(), req.GetPageSize(), func(h *throughcarev1.Handover) bool {
		return matches(req, s.party.Direction(h), h)
	})
	if err != nil {
		return nil, fmt.Errorf("list handovers: %w", err)
	}
	for i, h := range page {
		if page[i], err = s.retrieved(ctx, h); err != nil {
			return nil, err
		}
	}
	return &throughcarev1.ListHandoversResponse{Handovers: page, NextPageToken: next}, nil
}

// ListOverdueHandovers lists, for operators, the handovers either way with a deadline
// marked overdue, from the sparse overdue index; it marks nothing retrieved.
func (s *Service) ListOverdueHandovers(ctx context.Context, req *throughcarev1.ListOverdueHandoversRequest) (*throughcarev1.ListOverdueHandoversResponse, error) {
	patterns := []string{"ix.overdue.in.*.*", "ix.overdue.out.*.*"}
	page, next, err := s.listIndexed(ctx, patterns, true, req.GetPageToken(), req.GetPageSize(), func(h *throughcarev1.Handover) bool {
		return h.GetAcknowledgeOverdue() || h.GetAcceptOverdue()
	})
	if err != nil {
		return nil, fmt.Errorf("list overdue handovers: %w", err)
	}
	resp := &throughcarev1.ListOverdueHandoversResponse{NextPageToken: next}
	for _, h := range page {
		resp.Handovers = append(resp.Handovers, &throughcarev1.OverdueHandover{
			HandoverId: h.GetHandoverId(), CaseId: h.GetCaseId(), Sender: h.GetSender(), Recipient: h.GetRecipient(),
			Purpose: h.GetPurpose(), State: h.GetState(), Direction: s.party.Direction(h),
			AcknowledgeOverdue: h.GetAcknowledgeOverdue(), AcknowledgeDueTime: h.GetAcknowledgeDueTime(),
			AcceptOverdue: h.GetAcceptOverdue(), AcceptDueTime: h.GetAcceptDueTime(), CreateTime: h.GetCreateTime(),
		})
	}
	return resp, nil
}

// listIndexed reads a page of the handovers that index entries matching patterns point
// at, as they now stand, keeping those keep accepts, and the token of the next page.
func (s *Service) listIndexed(ctx context.Context, patterns []string, sparse bool, token string, pageSize int32, keep func(*throughcarev1.Handover) bool) ([]*throughcarev1.Handover, string, error) {
	after, err := records.DecodeRevisionToken(token)
	if err != nil {
		return nil, "", err
	}
	size := int(pageSize)
	if size == 0 {
		size = cases.DefaultPageSize
	}
	found := map[string]*storev1.HandoverRecord{}
	entries, resume, err := s.handovers.Matching(ctx, patterns, sparse, after, size, func(ctx context.Context, entries []records.Entry) ([]records.Entry, error) {
		recs, err := s.getMany(ctx, entries)
		if err != nil {
			return nil, err
		}
		for _, rec := range recs {
			found[rec.GetHandover().GetHandoverId()] = rec
		}
		var matching []records.Entry
		for _, e := range entries {
			if rec, ok := found[records.RecordOf(e.Key)]; ok && keep(rec.GetHandover()) {
				matching = append(matching, e)
			}
		}
		return matching, nil
	})
	if err != nil {
		return nil, "", err
	}
	page := make([]*throughcarev1.Handover, len(entries))
	for i, e := range entries {
		page[i] = found[records.RecordOf(e.Key)].GetHandover()
	}
	var next string
	if resume != 0 {
		next = records.EncodeRevisionToken(resume)
	}
	return page, next, nil
}

// listPatterns are the index entries a listing reads: by direction and state, or the
// overdue ones (few, as a rule: read as a sparse index); due_before is checked on each
// handover read.
func listPatterns(req *throughcarev1.ListHandoversRequest) []string {
	index := "ix.list."
	if req.GetOverdueOnly() {
		index = "ix.overdue."
	}
	dir := lifecycle.DirToken(req.GetDirection() == throughcarev1.Direction_DIRECTION_INCOMING)
	if len(req.GetStates()) == 0 {
		return []string{index + dir + ".*.*"}
	}
	var out []string
	for _, st := range req.GetStates() {
		out = append(out, index+dir+"."+lifecycle.StateToken(st)+".*")
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// getMany loads the handovers index entries point at, in the entries' order, in one
// request; an entry whose handover is gone is skipped.
func (s *Service) getMany(ctx context.Context, entries []records.Entry) ([]*storev1.HandoverRecord, error) {
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = records.RecordOf(e.Key)
	}
	found, err := s.handovers.GetMany(ctx, ids...)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]*storev1.HandoverRecord, len(found))
	for _, r := range found {
		byID[r.Key] = r.Msg
	}
	out := make([]*storev1.HandoverRecord, 0, len(ids))
	for _, id := range ids {
		if rec, ok := byID[id]; ok {
			out = append(out, rec)
		}
	}
	return out, nil
}

func matches(req *throughcarev1.ListHandoversRequest, dir throughcarev1.Direction, h *throughcarev1.Handover) bool {
	if dir != req.GetDirection() {
		return false
	}
	if len(req.GetStates()) > 0 && !slices.Contains(req.GetStates(), h.GetState()) {
		return false
	}
	if req.GetOverdueOnly() && !h.GetAcknowledgeOverdue() && !h.GetAcceptOverdue() {
		return false
	}
	if before := req.GetDueBefore(); before != nil {
		ackDue := h.GetAcknowledgeDueTime() != nil && h.GetAcknowledgeDueTime().AsTime().Before(before.AsTime())
		acceptDue := h.GetAcceptDueTime() != nil && h.GetAcceptDueTime().AsTime().Before(before.AsTime())
		if lifecycle.Finished(h) || !ackDue && !acceptDue {
			return false
		}
	}
	return true
}

func (s *Service) GetHandover(ctx context.Context, req *throughcarev1.GetHandoverRequest) (*throughcarev1.GetHandoverResponse, error) {
	rec, err := s.get(ctx, req.GetHandoverId())
	if err != nil {
		return nil, err
	}
	h, err := s.retrieved(ctx, rec.GetHandover())
	if err != nil {
		return nil, err
	}
	resp := &throughcarev1.GetHandoverResponse{Handover: h}
	if s.party.Incoming(h) {
		rc, err := s.localCase(ctx, h.GetCaseId())
		if err != nil {
			return nil, err
		}
		if rc != nil {
			readable, err := s.readable(ctx, h, rc)
			if err != nil {
				return nil, err
			}
			resp.ReleaseCase = readable[0]
		}
	}
	return resp, nil
}

// retrieved marks an incoming handover retrieved the first time the recipient's system
// reads it, records that read in the ledger, and returns the handover as it now stands.
func (s *Service) retrieved(ctx context.Context, h *throughcarev1.Handover) (*throughcarev1.Handover, error) {
	if !s.party.Incoming(h) || h.GetState() != throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED {
		return h, nil
	}
	if err := s.recordRetrieved(ctx, h.GetHandoverId()); err != nil {
		return nil, err
	}
	rec, err := s.recipientStep(ctx, h.GetHandoverId(), "", throughcarev1.ReceiptType_RECEIPT_TYPE_RETRIEVED, throughcarev1.HandoverState_HANDOVER_STATE_RETRIEVED, nil)
	if errors.Is(err, fault.ErrFailedPrecondition) {
		// Moved on meanwhile (acknowledged by a concurrent call): return it as it is.
		rec, err = s.get(ctx, h.GetHandoverId())
	}
	if err != nil {
		return nil, err
	}
	return rec.GetHandover(), nil
}

// recordRetrieved records in the ledger that this agency's system read an incoming
// handover for the first time, unless it has moved on from delivered (a watch replaying an
// old revision). The entry comes before the receipt: a crash in between repeats both, and
// the dedupe id keeps the entry single.
func (s *Service) recordRetrieved(ctx context.Context, handoverID string) error {
	rec, err := s.get(ctx, handoverID)
	if err != nil {
		return err
	}
	h := rec.GetHandover()
	if h.GetState() != throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED {
		return nil
	}
	rc, err := s.localCase(ctx, h.GetCaseId())
	if err != nil {
		return err
	}
	entry := &throughcarev1.Disclosure{
		Kind:            throughcarev1.DisclosureKind_DISCLOSURE_KIND_RETRIEVED,
		CaseId:          h.GetCaseId(),
		Sender:          h.GetSender(),
		Recipient:       s.cfg.Agency,
		Purpose:         h.GetPurpose(),
		ProtocolId:      s.cfg.Protocol.ID(),
		ProtocolVersion: s.cfg.Protocol.Version(),
		Time:            timestampNow(s.now),
		PersonHash:      s.cfg.PersonKey.OfCase(rc),
		Note:            fmt.Sprintf("handover %s first read by %s's system", handoverID, s.cfg.Agency),
	}
	if _, err := s.ledger.Append(ctx, entry, "retrieved/"+handoverID); err != nil {
		return fmt.Errorf("record retrieval of handover %s: %w", handoverID, err)
	}
	return nil
}

// recipientStep takes one of the recipient's steps on an incoming handover: it checks the
// transition on the current state, applies it, and sends the receipt in the same write.
func (s *Service) recipientStep(ctx context.Context, handoverID, actor string, t throughcarev1.ReceiptType, to throughcarev1.HandoverState, apply func(*throughcarev1.Handover, *throughcarev1.ReceiptIssued)) (*storev1.HandoverRecord, error) {
	rec, err := s.mutate(ctx, handoverID, func(rec *storev1.HandoverRecord) error {
		h := rec.GetHandover()
		if !s.party.Incoming(h) {
			return fmt.Errorf("handover %s was sent by this agency; only its recipient can take this step: %w", handoverID, fault.ErrFailedPrecondition)
		}
		if err := lifecycle.CheckTransition(h, t); err != nil {
			return err
		}
		s.party.IssueReceipt(rec, t, to, actor, func(issued *throughcarev1.ReceiptIssued) {
			if apply != nil {
				apply(h, issued)
			}
		})
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("handover step", zap.String("handover_id", handoverID), zap.String("receipt", t.String()), zap.String("actor", actor))
	return rec, nil
}

func (s *Service) AcknowledgeHandover(ctx context.Context, req *throughcarev1.AcknowledgeHandoverRequest) (*throughcarev1.AcknowledgeHandoverResponse, error) {
	rec, err := s.recipientStep(ctx, req.GetHandoverId(), req.GetActor(), throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGED, throughcarev1.HandoverState_HANDOVER_STATE_ACKNOWLEDGED, nil)
	if err != nil {
		return nil, err
	}
	return &throughcarev1.AcknowledgeHandoverResponse{Handover: rec.GetHandover()}, nil
}

func (s *Service) AcceptHandover(ctx context.Context, req *throughcarev1.AcceptHandoverRequest) (*throughcarev1.AcceptHandoverResponse, error) {
	rec, err := s.recipientStep(ctx, req.GetHandoverId(), req.GetActor(), throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPTED, throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED,
		func(h *throughcarev1.Handover, issued *throughcarev1.ReceiptIssued) {
			h.AssignedWorker = req.GetAssignedWorker()
			issued.AssignedWorker = req.GetAssignedWorker()
		})
	if err != nil {
		return nil, err
	}
	return &throughcarev1.AcceptHandoverResponse{Handover: rec.GetHandover()}, nil
}

func (s *Service) DeclineHandover(ctx context.Context, req *throughcarev1.DeclineHandoverRequest) (*throughcarev1.DeclineHandoverResponse, error) {
	rec, err := s.recipientStep(ctx, req.GetHandoverId(), req.GetActor(), throughcarev1.ReceiptType_RECEIPT_TYPE_DECLINED, throughcarev1.HandoverState_HANDOVER_STATE_DECLINED,
		func(h *throughcarev1.Handover, issued *throughcarev1.ReceiptIssued) {
			h.DeclineReason, h.DeclineNote = req.GetReason(), req.GetNote()
			issued.DeclineReason, issued.DeclineNote = req.GetReason(), req.GetNote()
		})
	if err != nil {
		return nil, err
	}
	return &throughcarev1.DeclineHandoverResponse{Handover: rec.GetHandover()}, nil
}

// maxQuestions bounds the questions on one handover, and so the writes it can take.
const maxQuestions = 20

func (s *Service) RequestInformation(ctx context.Context, req *throughcarev1.RequestInformationRequest) (*throughcarev1.RequestInformationResponse, error) {
	rec, err := s.mutate(ctx, req.GetHandoverId(), func(rec *storev1.HandoverRecord) error {
		h := rec.GetHandover()
		if !s.party.Incoming(h) {
			return fmt.Errorf("handover %s was sent by this agency; only its recipient can ask: %w", h.GetHandoverId(), fault.ErrFailedPrecondition)
		}
		if err := lifecycle.CheckTransition(h, throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_REQUESTED); err != nil {
			return err
		}
		if len(h.GetInformationRequests()) >= maxQuestions {
			return fmt.Errorf("handover %s already has %d questions: %w", h.GetHandoverId(), maxQuestions, fault.ErrFailedPrecondition)
		}
		question := &throughcarev1.InformationRequest{RequestId: ids.New(ids.Request), Question: req.GetQuestion(), AskTime: timestampNow(s.now)}
		h.InformationRequests = append(h.InformationRequests, question)
		s.party.IssueReceipt(rec, throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_REQUESTED, throughcarev1.HandoverState_HANDOVER_STATE_INFORMATION_REQUESTED, req.GetActor(),
			func(issued *throughcarev1.ReceiptIssued) { issued.InformationRequest = question })
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &throughcarev1.RequestInformationResponse{Handover: rec.GetHandover()}, nil
}

func (s *Service) ProvideInformation(ctx context.Context, req *throughcarev1.ProvideInformationRequest) (*throughcarev1.ProvideInformationResponse, error) {
	rec, err := s.mutate(ctx, req.GetHandoverId(), func(rec *storev1.HandoverRecord) error {
		h := rec.GetHandover()
		if s.party.Incoming(h) {
			return fmt.Errorf("handover %s was received by this agency; only its sender can answer: %w", h.GetHandoverId(), fault.ErrFailedPrecondition)
		}
		question := lifecycle.FindRequest(h, req.GetRequestId())
		if question == nil {
			return fmt.Errorf("handover %s has no question %s: %w", h.GetHandoverId(), req.GetRequestId(), fault.ErrNotFound)
		}
		if question.GetAnswerTime() != nil {
			return fmt.Errorf("question %s on handover %s is answered: %w", req.GetRequestId(), h.GetHandoverId(), fault.ErrFailedPrecondition)
		}
		question.Answer, question.AnswerTime = req.GetAnswer(), timestampNow(s.now)
		ev := s.party.NewEvent(h, h.GetRecipient(), req.GetActor(), throughcarev1.EventType_EVENT_TYPE_INFORMATION_PROVIDED)
		ev.EventId = lifecycle.StableEventID(h.GetHandoverId(), "answer/"+req.GetRequestId())
		ev.Payload = &throughcarev1.Event_InformationProvided{InformationProvided: &throughcarev1.InformationProvided{RequestId: req.GetRequestId(), Answer: req.GetAnswer()}}
		rec.Outbox = append(rec.Outbox, ev)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &throughcarev1.ProvideInformationResponse{Handover: rec.GetHandover()}, nil
}

// WatchHandovers streams every change to this agency's handovers after the cursor. The
// cursor is the bucket revision of the change, so a resumed watch neither skips nor repeats.
func (s *Service) WatchHandovers(req *throughcarev1.WatchHandoversRequest, stream grpc.ServerStreamingServer[throughcarev1.WatchHandoversResponse]) error {
	var after uint64
	if c := req.GetCursor(); c != "" {
		var err error
		if after, err = strconv.ParseUint(c, 10, 64); err != nil {
			return fault.InvalidField("cursor", "is not a cursor from a previous response")
		}
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := s.handovers.Watch(ctx, after, func(_ string, rec *storev1.HandoverRecord, rev uint64) error {
		h := rec.GetHandover()
		if s.party.Incoming(h) && h.GetState() == throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED {
			// The retrieved receipt is a change of its own that the watch sends next.
			if _, err := s.retrieved(ctx, h); err != nil {
				return err
			}
		}
		return stream.Send(&throughcarev1.WatchHandoversResponse{Handover: h, Direction: s.party.Direction(h), Cursor: strconv.FormatUint(rev, 10)})
	})
	select {
	case <-s.closing:
		return fmt.Errorf("the service is shutting down; resume from the last cursor: %w", fault.ErrUnavailable)
	default:
	}
	if ctx.Err() != nil {
		return nil // the client went away
	}
	return err
}

func (s *Service) ListDeadLetters(ctx context.Context, req *throughcarev1.ListDeadLettersRequest) (*throughcarev1.ListDeadLettersResponse, error) {
	after, err := records.DecodeRevisionToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = cases.DefaultPageSize
	}
	page, resume, err := s.dead.List(ctx, after, size)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	resp := &throughcarev1.ListDeadLettersResponse{DeadLetters: page}
	if resume != 0 {
		resp.NextPageToken = records.EncodeRevisionToken(resume)
	}
	return resp, nil
}
