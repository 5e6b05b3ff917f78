package handover

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/gate"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/tracing"
)

// relayOutbox publishes the events a write put in a handover's outbox. It sees every
// revision the bucket keeps; a crash before the acknowledgement publishes them again
// under the same ids, which JetStream's duplicate window and the receivers' idempotence
// absorb.
func (s *Service) relayOutbox(ctx context.Context, msg jetstream.Msg) error {
	if op := msg.Headers().Get("KV-Operation"); op != "" || len(msg.Data()) == 0 {
		return nil // a delete or purge marker
	}
	rec, err := s.handovers.Decode(msg.Data())
	if err != nil {
		return eventbus.Permanent(err)
	}
	for _, ev := range rec.GetOutbox() {
		if err := s.relayOne(ctx, msg, ev); err != nil {
			return err
		}
	}
	return nil
}

// relayOne sends one event of an outbox, in the trace of what caused it.
func (s *Service) relayOne(ctx context.Context, msg jetstream.Msg, ev *throughcarev1.Event) (err error) {
	ctx, span := tracing.Tracer().Start(tracing.Extract(ctx, ev.GetTraceContext()), "relay "+ev.GetType().String(),
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(eventAttributes(ev)...))
	defer func() { endSpan(span, err) }()
	if err := s.out.Pass(ctx, ev); err != nil {
		return err
	}
	seq, notice, err := s.publish(ctx, ev)
	if err != nil {
		return err
	}
	if ev.GetSequence() > 0 {
		if err := s.keep(ctx, msg, ev, seq, notice); err != nil {
			return err
		}
	}
	s.observed(ev, throughcarev1.FlowStage_FLOW_STAGE_SENT, 1, "")
	return nil
}

// publish stores ev in the outbox and returns its sequence there. An event with personal
// data goes as a notice: its body is kept in the outbox for the recipient to read, so the
// recipient's inbox never holds it. Only an event along a handover's sequence does, since
// its body is deleted on its acknowledgement (dropKept).
func (s *Service) publish(ctx context.Context, ev *throughcarev1.Event) (seq uint64, notice bool, err error) {
	if ev.GetSequence() == 0 || !protocol.CarriesPersonalData(ev) {
		seq, err = eventbus.PublishAs(ctx, s.js, ev, ev.GetEventId())
		return seq, false, err
	}
	if seq, err = eventbus.PublishBody(ctx, s.js, ev, ev.GetEventId()); err != nil {
		return 0, false, err
	}
	return seq, true, eventbus.PublishNotice(ctx, s.js, ev, ev.GetEventId())
}

// eventAttributes describe an event on a span: routing metadata only, as on a flow record.
func eventAttributes(ev *throughcarev1.Event) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("throughcare.event_id", ev.GetEventId()),
		attribute.String("throughcare.event_type", ev.GetType().String()),
		attribute.String("throughcare.source", ev.GetSource()),
		attribute.String("throughcare.recipient", ev.GetRecipient()),
		attribute.String("throughcare.handover_id", ev.GetHandoverId()),
		attribute.Int64("throughcare.sequence", int64(ev.GetSequence())),
	}
}

// endSpan ends span, marking it failed with err's kind, never its text (which may name
// ids a trace backend has no need of).
func endSpan(span trace.Span, err error) {
	switch {
	case errors.Is(err, eventbus.ErrPermanent):
		span.SetStatus(codes.Error, gate.RefusalReason(err))
	case err != nil:
		span.SetStatus(codes.Error, "failed; will be retried")
	}
	span.End()
}

// followIndex puts a handover's index entries in place if the write that changed it did
// not (it crashed in between).
func (s *Service) followIndex(ctx context.Context, msg jetstream.Msg) error {
	return s.index.Follow(ctx, msg, eventbus.Later)
}
