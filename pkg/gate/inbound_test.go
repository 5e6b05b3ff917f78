package gate

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
)

// inboxMsg is a jetstream.Msg that holds a raw message, for the inbox's erasure predicate.
type inboxMsg struct {
	jetstream.Msg
	m *nats.Msg
}

func (i inboxMsg) Subject() string      { return i.m.Subject }
func (i inboxMsg) Headers() nats.Header { return i.m.Header }
func (i inboxMsg) Data() []byte         { return i.m.Data }

func TestHoldsPersonalData(t *testing.T) {
	receipt := func(fill func(*throughcarev1.ReceiptIssued)) *throughcarev1.Event {
		issued := &throughcarev1.ReceiptIssued{Receipt: &throughcarev1.Receipt{Type: throughcarev1.ReceiptType_RECEIPT_TYPE_DELIVERED, Sequence: 1}}
		if fill != nil {
			fill(issued)
		}
		return &throughcarev1.Event{
			EventId: "ev_1", Type: throughcarev1.EventType_EVENT_TYPE_RECEIPT_ISSUED, Source: "socialwork",
			Recipient: "prison", CaseId: "rc_1", HandoverId: "ho_1", OccurredAt: timestamppb.Now(),
			Payload: &throughcarev1.Event_ReceiptIssued{ReceiptIssued: issued},
		}
	}
	encode := func(ev *throughcarev1.Event) *nats.Msg {
		m, err := eventbus.Encode(ev)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		return m
	}
	withUnknown := encode(receipt(nil))
	withUnknown.Data = protowire.AppendString(protowire.AppendTag(withUnknown.Data, 999, protowire.BytesType), "hidden")
	for _, c := range []struct {
		name string
		msg  *nats.Msg
		want bool
	}{
		{"a receipt of routing metadata only", encode(receipt(nil)), false},
		{"a receipt with a decline note", encode(receipt(func(r *throughcarev1.ReceiptIssued) { r.DeclineNote = "no place" })), true},
		{"an event with a field this service does not know", withUnknown, true},
		{"not an event", &nats.Msg{Subject: "tc.prison.out.socialwork.receipt_issued", Header: nats.Header{}, Data: []byte("garbage")}, true},
	} {
		if got := HoldsPersonalData(inboxMsg{m: c.msg}); got != c.want {
			t.Errorf("%s: HoldsPersonalData = %v, want %v", c.name, got, c.want)
		}
	}
}
