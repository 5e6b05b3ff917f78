package handover

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/handover/lifecycle"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/records"
	"github.com/throughcare/throughcare/pkg/tracing"
)

// Each signed event sent along a handover is kept under sent.<handover>.<sequence> until
// the other agency acknowledges it (lifecycle: delivery end to end).

func sentKey(handoverID string, seq uint64) string {
	return "sent." + handoverID + "." + strconv.FormatUint(seq, 10)
}

// ackKey holds the last sequence the other agency acknowledged with an acknowledgement
// event. It is kept beside the record, not in it, so an acknowledgement does not write the
// handover (its revision is the clients'); the next write of the record takes it.
func ackKey(handoverID string) string { return "ack." + handoverID }

// peerAcknowledged is the last sequence the other agency acknowledged, from the record and
// from the acknowledgement events beside it.
func (s *Service) peerAcknowledged(ctx context.Context, rec *storev1.HandoverRecord) (uint64, error) {
	acked := rec.GetPeerAcknowledgedSequence()
	raw, _, err := s.handovers.GetRaw(ctx, ackKey(rec.GetHandover().GetHandoverId()))
	if errors.Is(err, records.ErrNotFound) {
		return acked, nil
	}
	if err != nil {
		return 0, err
	}
	if n, perr := strconv.ParseUint(string(raw), 10, 64); perr == nil {
		acked = max(acked, n)
	}
	return acked, nil
}

// keep notes a signed event the relay has published at outboxSeq, until the other agency
// acknowledges it: its envelope only, since the outbox holds it whole, so dropping it
// later needs no erasure. A relay running a revision again (it stopped before
// acknowledging it) keeps nothing the other agency acknowledged meanwhile. An
// acknowledgement that overtakes the note leaves it behind, without personal data, for
// the next resend to drop as stale.
func (s *Service) keep(ctx context.Context, msg jetstream.Msg, ev *throughcarev1.Event, outboxSeq uint64, notice bool) error {
	if meta, err := msg.Metadata(); err == nil && meta.NumDelivered > 1 {
		rec, err := s.get(ctx, ev.GetHandoverId())
		if err != nil {
			return err
		}
		acked, err := s.peerAcknowledged(ctx, rec)
		if err != nil {
			return err
		}
		if ev.GetSequence() <= acked {
			if notice { // published again after the recipient had it
				return s.deleteFromOutbox(ctx, outboxSeq)
			}
			return nil
		}
	}
	return s.setKept(ctx, &storev1.SentEvent{Event: envelope(ev), OutboxSequence: outboxSeq, Notice: notice})
}

// envelope is ev without its payload.
func envelope(ev *throughcarev1.Event) *throughcarev1.Event {
	payload := ev.Payload
	ev.Payload = nil
	defer func() { ev.Payload = payload }()
	return proto.CloneOf(ev)
}

func (s *Service) setKept(ctx context.Context, se *storev1.SentEvent) error {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(se)
	if err != nil {
		return eventbus.Permanent(err)
	}
	return s.handovers.SetRaw(ctx, sentKey(se.GetEvent().GetHandoverId(), se.GetEvent().GetSequence()), data)
}

// kept reads the events kept for a handover, in sequence order.
func (s *Service) kept(ctx context.Context, handoverID string) ([]*storev1.SentEvent, error) {
	entries, err := s.handovers.Latest(ctx, "sent."+handoverID+".*")
	if err != nil {
		return nil, fmt.Errorf("events kept for handover %s: %w", handoverID, err)
	}
	out := make([]*storev1.SentEvent, 0, len(entries))
	for _, e := range entries {
		se := new(storev1.SentEvent)
		if err := proto.Unmarshal(e.Data, se); err != nil {
			return nil, fmt.Errorf("event kept under %s: %w", e.Key, err)
		}
		out = append(out, se)
	}
	slices.SortFunc(out, func(a, b *storev1.SentEvent) int {
		return cmp.Compare(a.GetEvent().GetSequence(), b.GetEvent().GetSequence())
	})
	return out, nil
}

// forget removes the kept events after sequence from, up to through: the other agency has
// them. It runs before the write that records the acknowledgement, so a crash in between
// repeats both.
func (s *Service) forget(ctx context.Context, handoverID string, from, through uint64) error {
	for seq := from + 1; seq <= through; seq++ {
		if err := s.dropKept(ctx, sentKey(handoverID, seq)); err != nil {
			return err
		}
	}
	return nil
}

// dropKept removes a kept event, and the body of one sent as a notice. One kept whole by
// an earlier version that carries personal data is erased first, revision by revision, or
// its bytes would stay in the store's files (records.WithErasure); an envelope (keep)
// holds none, and erasing costs a block rewrite.
func (s *Service) dropKept(ctx context.Context, key string) error {
	revs, err := s.handovers.Revisions(ctx, key)
	if err != nil {
		return err
	}
	personal := false
	var body uint64 // the outbox message of a notice's body
	for _, r := range revs {
		se := new(storev1.SentEvent)
		// An unreadable copy is erased too: nothing shows it holds nothing.
		personal = personal || len(r.Data) > 0 && (proto.Unmarshal(r.Data, se) != nil || protocol.CarriesPersonalData(se.GetEvent()))
		if se.GetNotice() {
			body = se.GetOutboxSequence()
		}
	}
	if body != 0 {
		// Acknowledged: its recipient has no more need to read it.
		if err := s.deleteFromOutbox(ctx, body); err != nil {
			return fmt.Errorf("delete the body of %s from the outbox: %w", key, err)
		}
	}
	if personal {
		if err := s.handovers.EraseBefore(ctx, key, revs[len(revs)-1].Revision+1, 0); err != nil {
			return err
		}
	}
	return s.handovers.RemoveRaw(ctx, key)
}

// deleteFromOutbox deletes the outbox message at seq, if it is still there: an earlier
// attempt cut off by a failing NATS node may have deleted it already, and the server then
// refuses the delete with a code of its own (JSStreamMsgDeleteFailedF), not "not found".
func (s *Service) deleteFromOutbox(ctx context.Context, seq uint64) error {
	err := s.outbox.DeleteMsg(ctx, seq)
	if err == nil || errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if _, gerr := eventbus.OutboxMessage(ctx, s.js, s.cfg.Agency, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return nil
	}
	return err
}

// received settles ev on its handover after it was handled, unless the handler's own
// write did.
func (s *Service) received(ctx context.Context, ev *throughcarev1.Event) error {
	if ev.GetSequence() == 0 {
		return nil
	}
	_, err := s.mutate(ctx, ev.GetHandoverId(), func(rec *storev1.HandoverRecord) error {
		if s.party.PeerOf(rec.GetHandover()) != ev.GetSource() || !s.party.Settle(rec, ev) {
			return errUnchanged
		}
		return nil
	})
	if errors.Is(err, fault.ErrNotFound) {
		return nil // an event about a handover this agency does not hold, refused
	}
	return err
}

// Stages of an incoming event, for its flow record (see package flow); stageApply: not
// settled by its place in the sequence, it goes on to be applied.
const (
	stageApply     = throughcarev1.FlowStage_FLOW_STAGE_UNSPECIFIED
	stageReceived  = throughcarev1.FlowStage_FLOW_STAGE_RECEIVED
	stageDuplicate = throughcarev1.FlowStage_FLOW_STAGE_DUPLICATE
	stageGap       = throughcarev1.FlowStage_FLOW_STAGE_GAP
)

// inSequence places an authenticated event in its handover's sequence before anything is
// applied, and returns the handover's record it read, if any, for the write applying it.
// It handles acknowledgements and resend requests, acknowledges a duplicate again and asks
// for a resend on a gap; any stage but stageApply says what became of the event, which
// needs nothing more. An event without a sequence (from a sender older than sequences)
// passes.
func (s *Service) inSequence(ctx context.Context, ev *throughcarev1.Event) (throughcarev1.FlowStage, *heldRecord, error) {
	if !lifecycle.Sequenced(ev) {
		return stageReceived, nil, s.acknowledged(ctx, ev)
	}
	if ev.GetSequence() == 0 {
		return stageApply, nil, nil
	}
	var received uint64
	rec, rev, err := s.handovers.Get(ctx, ev.GetHandoverId())
	switch {
	case errors.Is(err, records.ErrNotFound):
		// Nothing received yet, as a recipient; as a sender this agency would hold the
		// handover: the handler refuses what is not about one of its own.
		if ev.GetType() == throughcarev1.EventType_EVENT_TYPE_RECEIPT_ISSUED || ev.GetType() == throughcarev1.EventType_EVENT_TYPE_PLAN_SHARED {
			return stageApply, nil, nil
		}
	case err != nil:
		return stageReceived, nil, handoverError(ev.GetHandoverId(), err)
	case s.party.PeerOf(rec.GetHandover()) != ev.GetSource():
		return stageApply, nil, nil // not this handover's other agency: the handler refuses it
	default:
		received = rec.GetLastReceivedSequence()
	}
	seq := ev.GetSequence()
	if seq == received+1 {
		// Before the handler's write records the acknowledgement: see forget.
		if rec != nil && ev.GetAcknowledgedSequence() > rec.GetPeerAcknowledgedSequence() {
			from, err := s.peerAcknowledged(ctx, rec)
			if err != nil {
				return stageReceived, nil, err
			}
			if err := s.forget(ctx, ev.GetHandoverId(), from, min(ev.GetAcknowledgedSequence(), rec.GetLastSentSequence())); err != nil {
				return stageReceived, nil, err
			}
		}
		if rec == nil {
			return stageApply, nil, nil
		}
		// forget wrote beside the record, not the record: it is still current at rev.
		return stageApply, &heldRecord{rec: rec, rev: rev}, nil
	}
	if rec != nil && ev.GetAcknowledgedSequence() > rec.GetPeerAcknowledgedSequence() {
		if err := s.acknowledged(ctx, ev); err != nil {
			return stageReceived, nil, err
		}
	}
	fields := []zap.Field{zap.String("handover_id", ev.GetHandoverId()), zap.String("event_id", ev.GetEventId()),
		zap.String("source", ev.GetSource()), zap.Uint64("sequence", seq), zap.Uint64("received_sequence", received)}
	if seq <= received {
		s.log.Info("duplicate event acknowledged again, not applied", fields...)
		return stageDuplicate, nil, s.sendControl(ctx, ev, received, &throughcarev1.Event_SequenceAcknowledged{SequenceAcknowledged: &throughcarev1.SequenceAcknowledged{}})
	}
	if !s.requests.first(ev.GetHandoverId(), received, s.now(), s.cfg.ResendAfter) {
		s.log.Info("sequence gap: resend already requested", fields...)
		return stageGap, nil, nil
	}
	s.log.Warn("sequence gap: resend requested", fields...)
	return stageGap, nil, s.sendControl(ctx, ev, received, &throughcarev1.Event_ResendRequested{ResendRequested: &throughcarev1.ResendRequested{ReceivedSequence: received}})
}

// acknowledged takes the acknowledgement an event carries, and re-sends what a resend
// request asks for.
func (s *Service) acknowledged(ctx context.Context, ev *throughcarev1.Event) error {
	rec, err := s.get(ctx, ev.GetHandoverId())
	if errors.Is(err, fault.ErrNotFound) {
		return eventbus.Permanent(fmt.Errorf("event %s: unknown handover %s", ev.GetEventId(), ev.GetHandoverId()))
	}
	if err != nil {
		return err
	}
	if s.party.PeerOf(rec.GetHandover()) != ev.GetSource() {
		return eventbus.Permanent(fmt.Errorf("event %s: %s is not the other agency of handover %s", ev.GetEventId(), ev.GetSource(), ev.GetHandoverId()))
	}
	ack := ev.GetAcknowledgedSequence()
	if ack > rec.GetLastSentSequence() {
		return eventbus.Permanent(fmt.Errorf("event %s acknowledges sequence %d of handover %s; %d were sent", ev.GetEventId(), ack, ev.GetHandoverId(), rec.GetLastSentSequence()))
	}
	acked, err := s.peerAcknowledged(ctx, rec)
	if err != nil {
		return err
	}
	if ack > acked {
		if err := s.forget(ctx, ev.GetHandoverId(), acked, ack); err != nil {
			return err
		}
		if err := s.handovers.SetRaw(ctx, ackKey(ev.GetHandoverId()), []byte(strconv.FormatUint(ack, 10))); err != nil {
			return err
		}
	}
	if rr := ev.GetResendRequested(); rr != nil {
		return s.resend(ctx, ev.GetHandoverId(), false, "resend requested")
	}
	return nil
}

// sendControl answers an incoming event with an acknowledgement or a resend request,
// published at once: neither changes this agency's records, and a lost one is made good by
// the sender's own resend.
func (s *Service) sendControl(ctx context.Context, about *throughcarev1.Event, received uint64, payload any) error {
	ev := &throughcarev1.Event{
		EventId:              ids.New(ids.Event),
		Source:               s.cfg.Agency,
		Recipient:            about.GetSource(),
		CaseId:               about.GetCaseId(),
		HandoverId:           about.GetHandoverId(),
		OccurredAt:           timestampNow(s.now),
		Purpose:              about.GetPurpose(),
		ProtocolId:           s.cfg.Protocol.ID(),
		ProtocolVersion:      s.cfg.Protocol.Version(),
		AcknowledgedSequence: received,
		TraceContext:         tracing.Inject(ctx),
	}
	switch p := payload.(type) {
	case *throughcarev1.Event_SequenceAcknowledged:
		ev.Type, ev.Payload = throughcarev1.EventType_EVENT_TYPE_SEQUENCE_ACKNOWLEDGED, p
	case *throughcarev1.Event_ResendRequested:
		ev.Type, ev.Payload = throughcarev1.EventType_EVENT_TYPE_RESEND_REQUESTED, p
	}
	if err := s.out.Sign(ev); err != nil {
		return err
	}
	if err := eventbus.Publish(ctx, s.js, ev); err != nil {
		return err
	}
	s.observed(ev, throughcarev1.FlowStage_FLOW_STAGE_SENT, 1, "")
	return nil
}

// resendTimeout is why a resend pass re-sends.
const resendTimeout = "unacknowledged in time"

// CheckResends re-sends, for every handover whose resend is due, the events the other agency
// has not acknowledged. It reads only the resends filed under the hours since its last pass.
func (s *Service) CheckResends(ctx context.Context) error {
	now := s.now()
	return s.sweepEvery(ctx, "resend", lifecycle.ResendUnit, now, func(ctx context.Context, handoverID string) error {
		rec, err := s.get(ctx, handoverID)
		if errors.Is(err, fault.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if due := rec.GetResendDueTime(); due == nil || now.Before(due.AsTime()) {
			return nil
		}
		return s.resend(ctx, handoverID, true, resendTimeout)
	})
}

// resend publishes again, each under a message id of its own, the kept events of a handover
// the other agency has not acknowledged, counts them on the handover, records each in the
// ledger and logs it. onTimeout re-sends only if the handover's resend is due (another
// replica may have just done it); a resend request re-sends at once.
func (s *Service) resend(ctx context.Context, handoverID string, onTimeout bool, why string) error {
	kept, err := s.kept(ctx, handoverID)
	if err != nil {
		return err
	}
	rec, err := s.get(ctx, handoverID)
	if err != nil {
		return err
	}
	acked, err := s.peerAcknowledged(ctx, rec)
	if err != nil {
		return err
	}
	now := s.now()
	var pending, stale []*storev1.SentEvent
	_, err = s.mutate(ctx, handoverID, func(rec *storev1.HandoverRecord) error {
		pending, stale = pending[:0], stale[:0]
		if due := rec.GetResendDueTime(); onTimeout && (due == nil || now.Before(due.AsTime())) {
			return errUnchanged
		}
		changed := s.party.TakeAcknowledgement(rec, acked)
		for _, se := range kept {
			if se.GetEvent().GetSequence() > rec.GetPeerAcknowledgedSequence() {
				pending = append(pending, se)
			} else {
				stale = append(stale, se)
			}
		}
		switch {
		case len(pending) > 0:
			rec.Handover.ResentEvents += uint32(len(pending))
			rec.ResendDueTime = timestamppb.New(now.Add(s.resendBackoff(pending[0].GetResends() + 1)))
		case rec.GetPeerAcknowledgedSequence() >= rec.GetLastSentSequence():
			rec.ResendDueTime = nil // all acknowledged
		case onTimeout:
			// Sent but not kept yet: the relay is behind. Look again later.
			rec.ResendDueTime = timestamppb.New(now.Add(s.cfg.ResendAfter))
		case !changed:
			return errUnchanged
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, se := range stale { // acknowledged while a crash kept them
		if err := s.dropKept(ctx, sentKey(handoverID, se.GetEvent().GetSequence())); err != nil {
			return err
		}
	}
	for _, se := range pending {
		if err := s.resendOne(ctx, se, why); err != nil {
			return err
		}
	}
	return nil
}

// resendBackoff is how long after its attempt'th resend an event is re-sent again: doubling
// from ResendAfter, up to 32 times it.
func (s *Service) resendBackoff(attempt uint32) time.Duration {
	return s.cfg.ResendAfter << min(attempt-1, 5)
}

// resendOne re-publishes one kept event as it was signed, under the message id
// <event>.r<attempt>, so the outbox's duplicate window does not drop it, and records it.
func (s *Service) resendOne(ctx context.Context, se *storev1.SentEvent, why string) error {
	ev, err := s.sentEvent(ctx, se)
	if err != nil {
		return err
	}
	se.Resends++
	if err := s.setKept(ctx, se); err != nil {
		return err
	}
	if err := s.out.Resent(ctx, ev, se.GetResends(), why); err != nil {
		return err
	}
	// In the trace of what first sent it. A notice's body is still in the outbox.
	traced, msgID := tracing.Extract(ctx, ev.GetTraceContext()), fmt.Sprintf("%s.r%d", ev.GetEventId(), se.GetResends())
	if se.GetNotice() {
		err = eventbus.PublishNotice(traced, s.js, ev, msgID)
	} else {
		_, err = eventbus.PublishAs(traced, s.js, ev, msgID)
	}
	if err != nil {
		return err
	}
	s.observed(ev, throughcarev1.FlowStage_FLOW_STAGE_RESENT, se.GetResends()+1, why)
	s.log.Warn("event re-sent", zap.String("handover_id", ev.GetHandoverId()), zap.String("case_id", ev.GetCaseId()),
		zap.String("event_id", ev.GetEventId()), zap.String("type", ev.GetType().String()), zap.Uint64("sequence", ev.GetSequence()),
		zap.String("recipient", ev.GetRecipient()), zap.Uint32("attempt", se.GetResends()), zap.String("reason", why))
	return nil
}

// sentEvent is the whole event a kept entry stands for, read from the outbox (the stream's
// leader answers, so a copy just stored is there).
func (s *Service) sentEvent(ctx context.Context, se *storev1.SentEvent) (*throughcarev1.Event, error) {
	if se.GetOutboxSequence() == 0 {
		return se.GetEvent(), nil // kept whole
	}
	id := se.GetEvent().GetEventId()
	msg, err := eventbus.OutboxMessage(ctx, s.js, s.cfg.Agency, se.GetOutboxSequence())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, eventbus.Permanent(fmt.Errorf("event %s: gone from the outbox (message %d): past its max age, or deleted on an acknowledgement still being recorded", id, se.GetOutboxSequence()))
	}
	if err != nil {
		return nil, fmt.Errorf("event %s from the outbox: %w", id, err)
	}
	ev, err := eventbus.Decode(msg.Subject, msg.Header, msg.Data)
	if err != nil {
		return nil, eventbus.Permanent(fmt.Errorf("event %s from the outbox: %w", id, err))
	}
	if ev.GetEventId() != id {
		return nil, eventbus.Permanent(fmt.Errorf("event %s: outbox message %d is event %s", id, se.GetOutboxSequence(), ev.GetEventId()))
	}
	return ev, nil
}

// resendRequests remembers which gaps this process asked a resend for, so the events
// behind one gap ask once per ResendAfter, not once each.
type resendRequests struct {
	mu   sync.Mutex
	sent map[string]time.Time
}

// first reports whether no resend was requested for handoverID after received within
// every, and notes this one.
func (r *resendRequests) first(handoverID string, received uint64, now time.Time, every time.Duration) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := handoverID + "/" + strconv.FormatUint(received, 10)
	if at, ok := r.sent[key]; ok && now.Sub(at) < every {
		return false
	}
	if r.sent == nil || len(r.sent) >= maxResendRequests {
		r.sent = map[string]time.Time{}
	}
	r.sent[key] = now
	return true
}

// maxResendRequests bounds the gaps remembered; forgetting them only asks again.
const maxResendRequests = 4096
