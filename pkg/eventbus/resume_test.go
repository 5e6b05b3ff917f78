package eventbus_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// An inbox source that has not delivered anything yet, in an inbox that has already
// handled (and so forgotten) events from another source, must still start at the
// beginning of its outbox. nats-server starts such a source by time instead, at the
// time of the inbox's last message, when the inbox's first sequence is above 1, which a
// work queue reaches as soon as it has handled one message: every event the outbox
// stored before that time was skipped for good, with the source reporting lag 0.
//
// Here probation's outbox does not exist yet when prison's inbox is created, as when
// the agencies' services are deployed one after another, so the source has nothing to
// deliver until it is set up again; the restart sets it up again at once.
func TestInboxSourceThatNeverDeliveredStartsAtTheBeginningOfItsOutbox(t *testing.T) {
	srv := natstest.StartWithAgencies(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	js := map[string]jetstream.JetStream{}
	for _, a := range testAgencies.IDs() {
		js[a] = srv.JetStreamAs(t, a)
	}
	if err := eventbus.SetupOutbox(ctx, js[socialWork], socialWork, eventbus.DefaultLimits); err != nil {
		t.Fatalf("outbox: %v", err)
	}
	if err := eventbus.SetupTopology(ctx, js[prison], prison, testAgencies.Peers(prison), eventbus.DefaultLimits, eventbus.AccountPerAgency); err != nil {
		t.Fatalf("prison: %v", err)
	}
	// The server has tried the missing outbox: it tries again only after 12s.
	eventually(t, 5*time.Second, func() (bool, string) {
		sts, err := eventbus.InboxSources(ctx, js[prison], prison)
		for _, st := range sts {
			if st.Source == eventbus.OutboxStream(probation) && st.Error != "" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("sources %+v (%v), want an error from probation's", sts, err)
	})
	if err := eventbus.SetupTopology(ctx, js[probation], probation, testAgencies.Peers(probation), eventbus.DefaultLimits, eventbus.AccountPerAgency); err != nil {
		t.Fatalf("probation: %v", err)
	}

	toPrison := func(from string, id string) {
		t.Helper()
		ev := referral()
		ev.Source, ev.Recipient, ev.EventId = from, prison, id
		if err := eventbus.Publish(ctx, js[from], ev); err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
	}
	// Probation's event is in its outbox before social work's reaches the inbox.
	toPrison(probation, "ev_from_probation")
	toPrison(socialWork, "ev_from_social_work")

	inbox := eventbus.InboxStream(prison)
	cons, err := js[prison].CreateOrUpdateConsumer(ctx, inbox, jetstream.ConsumerConfig{
		Durable:   "test",
		AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	// take handles the next event of the inbox, as the agency's consumer does: once
	// acknowledged, the work queue forgets it.
	take := func(timeout time.Duration) (string, error) {
		t.Helper()
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(timeout))
		if err != nil {
			return "", err
		}
		for msg := range batch.Messages() {
			id := msg.Headers().Get(jetstream.MsgIDHeader)
			if err := msg.DoubleAck(ctx); err != nil {
				return "", fmt.Errorf("ack %s: %w", id, err)
			}
			return id, nil
		}
		return "", batch.Error()
	}
	if id, err := take(5 * time.Second); id != "ev_from_social_work" {
		t.Fatalf("first event in the inbox: %q (%v), want ev_from_social_work", id, err)
	}
	if info, err := js[prison].Stream(ctx, inbox); err != nil {
		t.Fatal(err)
	} else if st := info.CachedInfo().State; st.Msgs != 0 || st.FirstSeq != 2 {
		t.Fatalf("inbox state %+v, want empty from sequence 2", st)
	}

	srv.Restart(t)

	var got []string
	eventually(t, 10*time.Second, func() (bool, string) {
		id, err := take(200 * time.Millisecond)
		if id != "" {
			got = append(got, id)
		}
		if len(got) > 0 {
			return true, ""
		}
		sts, serr := eventbus.InboxSources(ctx, js[prison], prison)
		return false, fmt.Sprintf("probation's event never reached the inbox (last fetch: %v); sources %+v (%v)", err, sts, serr)
	})
	if len(got) != 1 || got[0] != "ev_from_probation" {
		t.Errorf("inbox delivered %v after the restart, want [ev_from_probation]", got)
	}
}
