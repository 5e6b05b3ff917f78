package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// agencyBus is every agency's streams, each set up in its own account with its own user.
func agencyBus(t *testing.T, tune ...func(*natsserver.Config)) (*natstest.AgencyServer, map[string]jetstream.JetStream) {
	t.Helper()
	srv := natstest.StartWithAgencies(t, tune...)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	js := map[string]jetstream.JetStream{}
	// Every outbox first, as dev does: a source that starts on a missing stream is
	// retried only after 12s.
	for _, a := range testAgencies.IDs() {
		js[a] = srv.JetStreamAs(t, a)
		if err := eventbus.SetupOutbox(ctx, js[a], a, eventbus.DefaultLimits); err != nil {
			t.Fatalf("outbox %s: %v", a, err)
		}
	}
	for _, a := range testAgencies.IDs() {
		if err := eventbus.SetupTopology(ctx, js[a], a, testAgencies.Peers(a), eventbus.DefaultLimits, eventbus.AccountPerAgency); err != nil {
			t.Fatalf("setup %s: %v", a, err)
		}
	}
	return srv, js
}

func streamMsgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatalf("stream %s info: %v", stream, err)
	}
	return info.State.Msgs
}

func TestAcrossAccountsEventReachesOnlyItsRecipient(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags map[string]bool
	}{
		{"flow control v1", nil},
		// The 2.14+ format, not yet the default in 2.15: the exports cover it already.
		{"flow control v2", map[string]bool{"js_ack_fc_v2": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, js := agencyBus(t, func(c *natsserver.Config) { c.FeatureFlags = tc.flags })
			eventReachesOnlyItsRecipient(t, js)
		})
	}
}

func eventReachesOnlyItsRecipient(t *testing.T, js map[string]jetstream.JetStream) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	// Enough events, and big enough, for the sourcing consumers' flow control to have to
	// be answered across the accounts.
	const n = 300
	big := make([]byte, 16<<10)
	for i := range n {
		ev := referral()
		ev.EventId = fmt.Sprintf("ev_%026d", i)
		ev.GetHandoverReferred().GetReleaseCase().GetPerson().GivenName = string(big)
		if err := eventbus.Publish(ctx, js[prison], ev); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	toSW := proto.CloneOf(referral())
	toSW.Source, toSW.Recipient = probation, socialWork
	toSW.EventId = "ev_for_social_work"
	if err := eventbus.Publish(ctx, js[probation], toSW); err != nil {
		t.Fatalf("publish probation→social work: %v", err)
	}

	deadline := time.Now().Add(15 * time.Second)
	for streamMsgs(t, js[probation], eventbus.InboxStream(probation)) < n || streamMsgs(t, js[socialWork], eventbus.InboxStream(socialWork)) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("inboxes: probation %d of %d, social work %d of 1", streamMsgs(t, js[probation], eventbus.InboxStream(probation)), n,
				streamMsgs(t, js[socialWork], eventbus.InboxStream(socialWork)))
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // anything misrouted would have arrived by now
	if got := streamMsgs(t, js[probation], eventbus.InboxStream(probation)); got != n {
		t.Errorf("INBOX_PROBATION has %d messages, want %d", got, n)
	}
	if got := streamMsgs(t, js[socialWork], eventbus.InboxStream(socialWork)); got != 1 {
		t.Errorf("INBOX_SOCIALWORK has %d messages, want only the one addressed to it", got)
	}
	if got := streamMsgs(t, js[prison], eventbus.InboxStream(prison)); got != 0 {
		t.Errorf("INBOX_PRISON has %d messages, want 0", got)
	}
}

func TestAcrossAccountsSourcesReportActive(t *testing.T) {
	_, js := agencyBus(t)
	for _, a := range testAgencies.IDs() {
		eventuallyTrue(t, 10*time.Second, func() (bool, string) {
			sts, err := eventbus.InboxSources(t.Context(), js[a], a)
			if err != nil {
				return false, err.Error()
			}
			if len(sts) != 2 {
				return false, fmt.Sprintf("%d sources, want 2", len(sts))
			}
			for _, st := range sts {
				if st.Inactive(5*time.Second) || st.Lag != 0 {
					return false, fmt.Sprintf("%+v", st)
				}
			}
			return true, ""
		})
	}
}

// A source filtered outside what the source account exports is never answered: it stays
// empty, with no error from the server, and only its inactivity tells.
func TestAcrossAccountsSourceOutsideItsExportIsReportedInactive(t *testing.T) {
	_, js := agencyBus(t)
	ctx := t.Context()
	ev := referral()
	ev.Recipient = socialWork
	if err := eventbus.Publish(ctx, js[prison], ev); err != nil {
		t.Fatalf("publish: %v", err)
	}
	ext := eventbus.External(prison, probation)
	// Probation tries to source what prison sends social work, through its own imports.
	_, err := js[probation].CreateStream(ctx, jetstream.StreamConfig{
		Name: "SNOOP",
		Sources: []*jetstream.StreamSource{{
			Name:          eventbus.OutboxStream(prison),
			FilterSubject: "tc.prison.out.socialwork.>",
			External:      &jetstream.ExternalStream{APIPrefix: ext.APIPrefix, DeliverPrefix: ext.DeliverPrefix},
		}},
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	time.Sleep(2 * time.Second)
	sts, err := eventbus.StreamSources(ctx, js[probation], "SNOOP")
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 1 || !sts[0].Inactive(time.Second) {
		t.Errorf("sources = %+v, want one inactive", sts)
	}
	if n := streamMsgs(t, js[probation], "SNOOP"); n != 0 {
		t.Errorf("SNOOP holds %d messages sent to social work", n)
	}
}

func eventuallyTrue(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An event sent as a notice reaches the recipient's inbox as headers alone; the recipient
// reads its body from the sender's outbox, and no other agency can.
func TestAcrossAccountsNoticeBodyIsReadOnlyByItsRecipient(t *testing.T) {
	srv, js := agencyBus(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	ev := referral()
	ev.Sequence = 3
	if _, err := eventbus.PublishBody(ctx, js[prison], ev, ev.GetEventId()); err != nil {
		t.Fatalf("publish body: %v", err)
	}
	if err := eventbus.PublishNotice(ctx, js[prison], ev, ev.GetEventId()); err != nil {
		t.Fatalf("publish notice: %v", err)
	}
	notice := nextInboxMsg(t, js[probation], probation)
	if !eventbus.IsNotice(notice.Headers(), notice.Data()) {
		t.Fatalf("inbox message is not a notice: %d bytes, headers %v", len(notice.Data()), notice.Headers())
	}
	body, err := eventbus.FetchBody(ctx, js[probation].Conn(), eventbus.AccountPerAgency, probation, notice.Subject(), notice.Headers())
	if err != nil {
		t.Fatalf("fetch body: %v", err)
	}
	got, err := eventbus.Decode(notice.Subject(), notice.Headers(), body)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !proto.Equal(got, ev) {
		t.Errorf("fetched event differs from the one sent")
	}
	if n := eventbus.NoticeOf(notice.Subject(), notice.Headers()); n != (eventbus.Notice{EventID: ev.GetEventId(), Source: prison, Recipient: probation, HandoverID: ev.GetHandoverId(), Sequence: ev.GetSequence()}) {
		t.Errorf("notice says %+v of event %s", n, ev.GetEventId())
	}

	// Social work, with probation's notice in hand, reaches no body: neither through its
	// own imports (it has none for this) nor by claiming to be probation.
	sw := srv.ConnectAs(t, socialWork)
	short, stop := context.WithTimeout(ctx, time.Second)
	defer stop()
	if _, err := eventbus.FetchBody(short, sw, eventbus.AccountPerAgency, probation, notice.Subject(), notice.Headers()); err == nil {
		t.Errorf("social work read the body of an event addressed to probation")
	}
	ext := eventbus.External(prison, probation)
	if _, err := sw.RequestWithContext(short, ext.ImportedBodyGet, nil); err == nil {
		t.Errorf("social work's request on probation's import was answered")
	}
}

func nextInboxMsg(t *testing.T, js jetstream.JetStream, a string) jetstream.Msg {
	t.Helper()
	cons, err := js.CreateConsumer(t.Context(), eventbus.InboxStream(a), jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("inbox %s: %v", a, err)
	}
	return msg
}

func TestOutboxMessageIsReadFromTheLeader(t *testing.T) {
	_, js := agencyBus(t)
	ctx := t.Context()
	ev := referral()
	seq, err := eventbus.PublishBody(ctx, js[prison], ev, ev.GetEventId())
	if err != nil {
		t.Fatal(err)
	}
	msg, err := eventbus.OutboxMessage(ctx, js[prison], prison, seq)
	if err != nil {
		t.Fatalf("read message %d: %v", seq, err)
	}
	if got, err := eventbus.Decode(msg.Subject, msg.Header, msg.Data); err != nil || got.GetEventId() != ev.GetEventId() || msg.Sequence != seq {
		t.Errorf("message %d: %v (%v), want event %s", msg.Sequence, got.GetEventId(), err, ev.GetEventId())
	}
	if _, err := eventbus.OutboxMessage(ctx, js[prison], prison, seq+1); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("read a message not stored: %v, want %v", err, jetstream.ErrMsgNotFound)
	}
}
