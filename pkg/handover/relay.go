package handover

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
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
		if err := s.out.Pass(ctx, ev); err != nil {
			return err
		}
		if ev.GetSequence() > 0 {
			if err := s.keep(ctx, msg, ev); err != nil {
				return err
			}
		}
		if err := eventbus.Publish(ctx, s.js, ev); err != nil {
			return err
		}
		s.observed(ev, throughcarev1.FlowStage_FLOW_STAGE_SENT, 1, "")
	}
	return nil
}

// followIndex puts a handover's index entries in place if the write that changed it did
// not (it crashed in between).
func (s *Service) followIndex(ctx context.Context, msg jetstream.Msg) error {
	return s.index.Follow(ctx, msg, eventbus.Later)
}
