package eventbus_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// testAgencies are the default protocol's agencies.
var testAgencies = protocol.Default().Agencies()

const (
	prison     = "prison"
	probation  = "probation"
	socialWork = "socialwork"
)

// referral is a well-formed referral event from the prison to probation.
func referral() *throughcarev1.Event {
	return &throughcarev1.Event{
		EventId:    "ev_06h09hkdfsvyd8rtf98xswpwr4",
		Type:       throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED,
		Source:     prison,
		Recipient:  probation,
		CaseId:     "rc_06h09hkdfsvyd8rtf98xswpwr4",
		HandoverId: "ho_06h09hkdfsvyd8rtf98xswpwr4",
		OccurredAt: timestamppb.New(time.Date(2026, 11, 22, 10, 30, 0, 123456789, time.UTC)),
		Purpose:    throughcarev1.Purpose_PURPOSE_SUPERVISION,
		Actor:      "prison-worker-1",
		Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{
			Handover:    &throughcarev1.Handover{HandoverId: "ho_06h09hkdfsvyd8rtf98xswpwr4", CaseId: "rc_06h09hkdfsvyd8rtf98xswpwr4"},
			ReleaseCase: &throughcarev1.ReleaseCase{CaseId: "rc_06h09hkdfsvyd8rtf98xswpwr4", Person: &throughcarev1.Person{FamilyName: "Kovač"}},
		}},
	}
}

func TestSubjectNamesSourceRecipientAndType(t *testing.T) {
	types := map[throughcarev1.EventType]string{
		throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED:    "handover_referred",
		throughcarev1.EventType_EVENT_TYPE_RECEIPT_ISSUED:       "receipt_issued",
		throughcarev1.EventType_EVENT_TYPE_INFORMATION_PROVIDED: "information_provided",
		throughcarev1.EventType_EVENT_TYPE_RELEASE_RECORDED:     "release_recorded",
		throughcarev1.EventType_EVENT_TYPE_PLAN_SHARED:          "plan_shared",
	}
	tokens := map[string]string{prison: "prison", probation: "probation", socialWork: "socialwork"}
	for _, src := range testAgencies.IDs() {
		for _, dst := range testAgencies.IDs() {
			if src == dst {
				continue
			}
			for typ, token := range types {
				ev := &throughcarev1.Event{EventId: "ev_1", Source: src, Recipient: dst, Type: typ}
				got, err := eventbus.Subject(ev)
				want := "tc." + tokens[src] + ".out." + tokens[dst] + "." + token
				if err != nil || got != want {
					t.Errorf("Subject(%s→%s, %s) = %q, %v; want %q", src, dst, typ, got, err, want)
				}
			}
		}
	}
}

func TestSubjectRefusesEqualOrUnknownAgenciesAndTypes(t *testing.T) {
	referred := throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED
	for _, tc := range []struct {
		name     string
		src, dst string
		typ      throughcarev1.EventType
	}{
		{"same agency", prison, prison, referred},
		{"same agency social work", socialWork, socialWork, referred},
		{"unset source", "", probation, referred},
		{"unset recipient", prison, "", referred},
		{"malformed source", "Prison", probation, referred},
		{"malformed recipient", prison, "social_work", referred},
		{"unset type", prison, probation, throughcarev1.EventType_EVENT_TYPE_UNSPECIFIED},
		{"unknown type", prison, probation, throughcarev1.EventType(42)},
	} {
		ev := &throughcarev1.Event{EventId: "ev_1", Source: tc.src, Recipient: tc.dst, Type: tc.typ}
		if got, err := eventbus.Subject(ev); err == nil {
			t.Errorf("%s: Subject = %q, nil; want an error", tc.name, got)
		}
		if _, err := eventbus.Encode(ev); err == nil {
			t.Errorf("%s: Encode succeeded; want an error", tc.name)
		}
	}
}

func TestStreamNames(t *testing.T) {
	for agency, want := range map[string][2]string{
		prison:     {"OUTBOX_PRISON", "INBOX_PRISON"},
		probation:  {"OUTBOX_PROBATION", "INBOX_PROBATION"},
		socialWork: {"OUTBOX_SOCIALWORK", "INBOX_SOCIALWORK"},
	} {
		if got := [2]string{eventbus.OutboxStream(agency), eventbus.InboxStream(agency)}; got != want {
			t.Errorf("streams of %s: got %v, want %v", agency, got, want)
		}
	}
}

func TestEncodeSetsCloudEventsHeadersAndMsgID(t *testing.T) {
	ev := referral()
	msg, err := eventbus.Encode(ev)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	if msg.Subject != "tc.prison.out.probation.handover_referred" {
		t.Errorf("subject: got %q, want tc.prison.out.probation.handover_referred", msg.Subject)
	}
	for header, want := range map[string]string{
		jetstream.MsgIDHeader: ev.GetEventId(),
		"ce-specversion":      "1.0",
		"ce-id":               ev.GetEventId(),
		"ce-source":           "throughcare/prison",
		"ce-type":             "throughcare.v1.handover_referred",
		"ce-time":             "2026-11-22T10:30:00.123456789Z",
		"ce-subject":          ev.GetCaseId(),
		"content-type":        "application/protobuf; messageType=throughcare.v1.Event",
	} {
		if got := msg.Header.Get(header); got != want {
			t.Errorf("header %s: got %q, want %q", header, got, want)
		}
	}
	got := new(throughcarev1.Event)
	if err := proto.Unmarshal(msg.Data, got); err != nil || !proto.Equal(got, ev) {
		t.Errorf("body: got %v, %v; want the event in binary", got, err)
	}
	again, err := eventbus.Encode(ev)
	if err != nil || string(again.Data) != string(msg.Data) {
		t.Errorf("encoding twice: got different bytes (%v); want the same (deterministic)", err)
	}
}

func TestDecodeRoundTrips(t *testing.T) {
	ev := referral()
	msg, err := eventbus.Encode(ev)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	got, err := eventbus.Decode(msg.Subject, msg.Header, msg.Data)
	if err != nil || !proto.Equal(got, ev) {
		t.Errorf("Decode(Encode(ev)) = %v, %v; want ev", got, err)
	}
}

func TestDecodeRejectsWhatIsNotAnEventOrDoesNotMatch(t *testing.T) {
	encode := func(t *testing.T, ev *throughcarev1.Event) *nats.Msg {
		t.Helper()
		data, err := proto.Marshal(ev)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		msg := nats.NewMsg("tc.prison.out.probation.handover_referred")
		msg.Data = data
		msg.Header.Set("ce-id", ev.GetEventId())
		return msg
	}
	for _, tc := range []struct {
		name string
		msg  func(t *testing.T) *nats.Msg
	}{
		{"garbage body", func(t *testing.T) *nats.Msg {
			msg := nats.NewMsg("tc.prison.out.probation.handover_referred")
			msg.Data = []byte("garbage, not a protobuf")
			msg.Header.Set("ce-id", "ev_1")
			return msg
		}},
		{"ce-id of another event", func(t *testing.T) *nats.Msg {
			msg := encode(t, referral())
			msg.Header.Set("ce-id", "ev_06h09hkdfsvyd8rtf98xswpwr5")
			return msg
		}},
		{"no ce-id", func(t *testing.T) *nats.Msg {
			msg := encode(t, referral())
			msg.Header.Del("ce-id")
			return msg
		}},
		{"no event id", func(t *testing.T) *nats.Msg {
			ev := referral()
			ev.EventId = ""
			return encode(t, ev)
		}},
		{"wrong subject", func(t *testing.T) *nats.Msg {
			msg := encode(t, referral())
			msg.Subject = "tc.prison.out.socialwork.handover_referred"
			return msg
		}},
		{"subject of another type", func(t *testing.T) *nats.Msg {
			msg := encode(t, referral())
			msg.Subject = "tc.prison.out.probation.receipt_issued"
			return msg
		}},
		{"source and recipient the same", func(t *testing.T) *nats.Msg {
			ev := referral()
			ev.Recipient = prison
			return encode(t, ev)
		}},
		{"no payload", func(t *testing.T) *nats.Msg {
			ev := referral()
			ev.Payload = nil
			return encode(t, ev)
		}},
		{"no case id", func(t *testing.T) *nats.Msg {
			ev := referral()
			ev.CaseId = ""
			return encode(t, ev)
		}},
		{"no occurred_at", func(t *testing.T) *nats.Msg {
			ev := referral()
			ev.OccurredAt = nil
			return encode(t, ev)
		}},
		{"empty body", func(t *testing.T) *nats.Msg {
			msg := nats.NewMsg("tc.prison.out.probation.handover_referred")
			msg.Header.Set("ce-id", "ev_1")
			return msg
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := tc.msg(t)
			ev, err := eventbus.Decode(msg.Subject, msg.Header, msg.Data)
			if !errors.Is(err, eventbus.ErrUndecodable) {
				t.Fatalf("Decode = %v, %v; want ErrUndecodable", ev, err)
			}
			if strings.Contains(err.Error(), "Kovač") {
				t.Errorf("error %q carries payload", err)
			}
		})
	}
}

// TestPublishRoutesToTheRecipientsInboxOnce sets up all three agencies and publishes an
// event twice: the recipient's inbox holds it once, the others' nothing.
func TestPublishRoutesToTheRecipientsInboxOnce(t *testing.T) {
	ns := natstest.Start(t)
	js := ns.JetStream(t)
	ctx := t.Context()
	for _, a := range testAgencies.IDs() {
		if err := eventbus.Setup(ctx, js, a, testAgencies.Peers(a), eventbus.DefaultLimits); err != nil {
			t.Fatalf("Setup %s: %v", a, err)
		}
	}
	// Setting up again changes nothing.
	if err := eventbus.Setup(ctx, js, probation, testAgencies.Peers(probation), eventbus.DefaultLimits); err != nil {
		t.Fatalf("Setup again: %v", err)
	}
	ev := referral()
	for range 2 {
		if err := eventbus.Publish(ctx, js, ev); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	toSocial := referral()
	toSocial.EventId, toSocial.Recipient = "ev_06h09hkdfsvyd8rtf98xswpwr6", socialWork
	if err := eventbus.Publish(ctx, js, toSocial); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	msgs := func(stream string) uint64 {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatalf("stream %s: %v", stream, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatalf("stream %s info: %v", stream, err)
		}
		return info.State.Msgs
	}
	if got := msgs("OUTBOX_PRISON"); got != 2 {
		t.Errorf("OUTBOX_PRISON holds %d, want 2 (the duplicate stored once)", got)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		p, s := msgs("INBOX_PROBATION"), msgs("INBOX_SOCIALWORK")
		return p >= 1 && s >= 1, fmt.Sprintf("inboxes: probation %d, social work %d; want 1 each", p, s)
	})
	if got := msgs("INBOX_PRISON"); got != 0 {
		t.Errorf("INBOX_PRISON holds %d, want 0", got)
	}
	inbox, err := js.Stream(ctx, "INBOX_PROBATION")
	if err != nil {
		t.Fatal(err)
	}
	m, err := inbox.GetMsg(ctx, 1)
	if err != nil {
		t.Fatalf("read inbox: %v", err)
	}
	got, err := eventbus.Decode(m.Subject, m.Header, m.Data)
	if err != nil || !proto.Equal(got, ev) {
		t.Errorf("probation's inbox holds %v, %v; want the event as published", got, err)
	}
	if msgs("INBOX_PROBATION") != 1 {
		t.Errorf("INBOX_PROBATION holds %d, want 1", msgs("INBOX_PROBATION"))
	}
	// An event that has no subject is refused, not lost silently.
	bad := referral()
	bad.Type = throughcarev1.EventType(42)
	if err := eventbus.Publish(ctx, js, bad); err == nil {
		t.Error("Publish of an event with an unknown type: got nil, want an error")
	}
}
