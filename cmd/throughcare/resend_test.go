package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/ledger"
)

// resendAfter tunes one agency's resend timeout for a test.
func resendAfter(agency string, d time.Duration) systemOption {
	return withConfig(agency, func(c *handover.Config) { c.ResendAfter = d })
}

// dropFromInbox waits until agency's inbox (its service stopped) holds an event that
// match picks, then deletes every such message with the stream API, as if NATS had lost
// it, and returns the event.
func dropFromInbox(t *testing.T, sys *system, agency string, match func(*throughcarev1.Event) bool) *throughcarev1.Event {
	t.Helper()
	return inInbox(t, sys, agency, match, true)
}

// inInbox waits until agency's inbox holds an event that match picks and returns it; with
// drop, it deletes every such message.
func inInbox(t *testing.T, sys *system, agency string, match func(*throughcarev1.Event) bool, drop bool) *throughcarev1.Event {
	t.Helper()
	ctx := testCtx(t)
	inbox, err := sys.JS[agency].Stream(ctx, eventbus.InboxStream(agency))
	if err != nil {
		t.Fatalf("inbox: %v", err)
	}
	var dropped *throughcarev1.Event
	eventually(t, 10*time.Second, func() (bool, string) {
		info, err := inbox.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := inbox.GetMsg(ctx, seq)
			if err != nil {
				continue // deleted or consumed
			}
			ev, err := decodeEvent(t, sys, m)
			if err != nil || !match(ev) {
				continue
			}
			if !drop {
				dropped = ev
				break
			}
			if err := inbox.DeleteMsg(ctx, seq); err != nil {
				t.Fatalf("delete %s from %s: %v", ev.GetEventId(), eventbus.InboxStream(agency), err)
			}
			dropped = ev
		}
		return dropped != nil, fmt.Sprintf("%s holds no such event yet", eventbus.InboxStream(agency))
	})
	return dropped
}

// resentEntries are the RESENT entries of agency's ledger for eventID.
func resentEntries(t *testing.T, sys *system, agency string, eventID string) []*throughcarev1.Disclosure {
	t.Helper()
	book, err := ledger.Open(testCtx(t), sys.JS[agency], agency, 1)
	if err != nil {
		t.Fatalf("open %s's ledger: %v", agency, err)
	}
	entries, _, _, err := book.List(testCtx(t), nil, func(d *throughcarev1.Disclosure) bool {
		return d.GetKind() == throughcarev1.DisclosureKind_DISCLOSURE_KIND_RESENT && d.GetEventId() == eventID
	}, 0, 100)
	if err != nil {
		t.Fatalf("list %s's ledger: %v", agency, err)
	}
	return entries
}

// outboxHas reports whether agency's outbox holds a message on subject.
func outboxHas(t *testing.T, sys *system, agency string, subject string) bool {
	t.Helper()
	outbox, err := sys.JS[agency].Stream(testCtx(t), eventbus.OutboxStream(agency))
	if err != nil {
		t.Fatalf("outbox: %v", err)
	}
	_, err = outbox.GetLastMsgForSubject(testCtx(t), subject)
	return err == nil
}

func isType(t throughcarev1.EventType) func(*throughcarev1.Event) bool {
	return func(ev *throughcarev1.Event) bool { return ev.GetType() == t }
}

func isReceipt(rt throughcarev1.ReceiptType) func(*throughcarev1.Event) bool {
	return func(ev *throughcarev1.Event) bool { return ev.GetReceiptIssued().GetReceipt().GetType() == rt }
}

// TestReferralLostInsideNATSIsResent deletes the referral from probation's inbox before
// probation consumes it. The prison, unacknowledged, re-sends it after --resend-after; the
// handover is delivered and accepted, and the repair shows on the prison's handover, in
// its ledger, with nothing dead-lettered.
func TestReferralLostInsideNATSIsResent(t *testing.T) {
	sys := newSystem(t, resendAfter(prisonAgency, 300*time.Millisecond))
	ctx := testCtx(t)
	prisonH, probationH := sys.Handovers[prisonAgency], sys.Handovers[probationAgency]
	rc := openCase(t, sys.Prison)

	sys.Stop(probationAgency)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	lost := dropFromInbox(t, sys, probationAgency, isType(throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED))
	if lost.GetHandoverId() != id || lost.GetSequence() != 1 {
		t.Fatalf("dropped event %s of handover %s at sequence %d; want the referral of %s at 1", lost.GetEventId(), lost.GetHandoverId(), lost.GetSequence(), id)
	}
	checkKeptEnvelopeOnly(t, sys, lost)
	sys.Start(probationAgency)

	waitState(t, prisonH, id, stateDelivered)
	if err := acknowledge(ctx, probationH, id, "po-marko"); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	if err := accept(ctx, probationH, id, "po-marko", "po-marko"); err != nil {
		t.Fatalf("accept: %v", err)
	}
	sender := waitState(t, prisonH, id, stateAccepted)
	checkReceipts(t, "prison", sender, receiptDelivered, receiptAcknowledged, receiptAccepted)
	checkDeliveredOnce(t, sys, probationAgency, []string{id})
	if sender.GetResentEvents() == 0 {
		t.Error("prison's handover counts no resent events; want the referral's resend")
	}
	entries := resentEntries(t, sys, prisonAgency, lost.GetEventId())
	if len(entries) == 0 {
		t.Fatalf("prison's ledger records no resend of the referral %s", lost.GetEventId())
	}
	if e := entries[0]; e.GetRecipient() != probationAgency || e.GetCaseId() != rc.GetCaseId() || len(e.GetPersonHash()) == 0 ||
		!strings.Contains(e.GetNote(), "sequence 1 of handover "+id) || !strings.Contains(e.GetNote(), "unacknowledged") {
		t.Errorf("resend entry %v; want to probation, for case %s, with the person's reference and the sequence and reason in its note", e, rc.GetCaseId())
	}
	if dl := listDeadLetters(t, sys); len(dl) != 0 {
		t.Errorf("dead letters: got %v, want none", dl)
	}
	// The operators see the resend, and the referral received once.
	_, lines, _ := startTail(t, sys, "--from-sequence", "1", "--handover", id)
	eventually(t, crossAgencyWait, func() (bool, string) {
		got := stages(lines())
		return slices.Contains(got, "resent handover_referred prison→probation") &&
				slices.Contains(got, "received handover_referred prison→probation"),
			fmt.Sprintf("the operators' tail shows %v; want the referral resent and received", got)
	})
	for _, l := range lines() {
		if l.r.GetStage() == throughcarev1.FlowStage_FLOW_STAGE_RESENT && (l.r.GetAttempt() < 2 || !strings.Contains(l.r.GetReason(), "unacknowledged")) {
			t.Errorf("resent record: attempt %d, reason %q; want a second attempt, unacknowledged", l.r.GetAttempt(), l.r.GetReason())
		}
	}
	if report := streamsReport(t, sys); !regexp.MustCompile(`prison → probation\s+[1-9]`).MatchString(report) {
		t.Errorf("streams report counts no resend from the prison to probation:\n%s", report)
	}
}

// checkKeptEnvelopeOnly fails unless the sender keeps ev, until acknowledged, as its
// envelope and its place in the outbox: the case it carries is not stored a second time.
func checkKeptEnvelopeOnly(t *testing.T, sys *system, ev *throughcarev1.Event) {
	t.Helper()
	kv, err := sys.JS[ev.GetSource()].KeyValue(testCtx(t), ev.GetSource()+"_handovers")
	if err != nil {
		t.Fatalf("handovers bucket: %v", err)
	}
	key := fmt.Sprintf("sent.%s.%d", ev.GetHandoverId(), ev.GetSequence())
	kept := new(storev1.SentEvent)
	eventually(t, 5*time.Second, func() (bool, string) { // kept once the outbox confirmed it
		entry, err := kv.Get(testCtx(t), key)
		if err != nil {
			return false, fmt.Sprintf("%s: %v", key, err)
		}
		if err := proto.Unmarshal(entry.Value(), kept); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		return true, ""
	})
	if kept.GetEvent().GetEventId() != ev.GetEventId() || kept.GetEvent().GetPayload() != nil || kept.GetOutboxSequence() == 0 {
		t.Errorf("kept %s: event %s with payload %T at outbox message %d; want event %s without payload, at its outbox message",
			key, kept.GetEvent().GetEventId(), kept.GetEvent().GetPayload(), kept.GetOutboxSequence(), ev.GetEventId())
	}
}

// TestLostReceiptGapIsRequestedAndResent deletes the acknowledged receipt from the prison's
// inbox, keeping the accepted receipt behind it. The prison sees the gap, does not apply
// the later receipt, and asks probation for a resend; probation, whose own resend timer is
// far off, re-sends at once, and the prison ends with every receipt in order.
func TestLostReceiptGapIsRequestedAndResent(t *testing.T) {
	sys := newSystem(t, resendAfter(probationAgency, time.Hour))
	ctx := testCtx(t)
	prisonH, probationH := sys.Handovers[prisonAgency], sys.Handovers[probationAgency]
	rc := openCase(t, sys.Prison)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	waitState(t, probationH, id, stateRetrieved) // probation's read retrieves it
	waitState(t, prisonH, id, stateRetrieved)

	sys.Stop(prisonAgency)
	if err := acknowledge(ctx, probationH, id, "po-marko"); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	if err := accept(ctx, probationH, id, "po-marko", "po-marko"); err != nil {
		t.Fatalf("accept: %v", err)
	}
	lost := dropFromInbox(t, sys, prisonAgency, isReceipt(receiptAcknowledged))
	sys.Start(prisonAgency)

	sender := waitState(t, prisonH, id, stateAccepted)
	checkReceipts(t, "prison", sender, receiptDelivered, receiptRetrieved, receiptAcknowledged, receiptAccepted)
	checkSequences(t, "prison", sender)
	if !outboxHas(t, sys, prisonAgency, "tc.prison.out.probation.resend_requested") {
		t.Error("the prison's outbox holds no resend request")
	}
	var recipient *throughcarev1.Handover
	eventually(t, 10*time.Second, func() (bool, string) {
		recipient = getHandover(t, probationH, id).GetHandover()
		return recipient.GetResentEvents() >= 2, fmt.Sprintf("probation re-sent %d events, want the lost receipt and the one behind it", recipient.GetResentEvents())
	})
	entries := resentEntries(t, sys, probationAgency, lost.GetEventId())
	if len(entries) == 0 || !strings.Contains(entries[0].GetNote(), "resend requested") {
		t.Errorf("probation's ledger resend entries for %s: %v; want one saying the resend was requested", lost.GetEventId(), entries)
	}
	if dl := listDeadLetters(t, sys); len(dl) != 0 {
		t.Errorf("dead letters: got %v, want none (a gap is not an error)", dl)
	}
}

// TestDuplicateResendChangesNothing deletes the delivered receipt from the prison's inbox:
// the receipt carried probation's acknowledgement of the referral, so the prison re-sends
// the referral, which probation already holds. Probation recognises it by its sequence,
// acknowledges it again and changes nothing; its own resend of the receipt brings the
// prison up to date.
func TestDuplicateResendChangesNothing(t *testing.T) {
	sys := newSystem(t, resendAfter(prisonAgency, 300*time.Millisecond), resendAfter(probationAgency, 300*time.Millisecond))
	prisonH, probationH := sys.Handovers[prisonAgency], sys.Handovers[probationAgency]
	rc := openCase(t, sys.Prison)

	// The referral waits in probation's inbox while the prison stops, so its delivered
	// receipt waits in the prison's.
	sys.Stop(probationAgency)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	inInbox(t, sys, probationAgency, isType(throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED), false)
	sys.Stop(prisonAgency)
	sys.Start(probationAgency)
	lost := dropFromInbox(t, sys, prisonAgency, isReceipt(receiptDelivered))
	if lost.GetHandoverId() != id || lost.GetAcknowledgedSequence() != 1 {
		t.Fatalf("dropped receipt of %s acknowledging %d; want the delivered receipt of %s acknowledging the referral", lost.GetHandoverId(), lost.GetAcknowledgedSequence(), id)
	}
	sys.Start(prisonAgency)

	referral := outboxEvent(t, sys, prisonAgency, "tc.prison.out.probation.handover_referred")
	var sender *throughcarev1.Handover
	eventually(t, 10*time.Second, func() (bool, string) {
		sender = getHandover(t, prisonH, id).GetHandover()
		return len(resentEntries(t, sys, prisonAgency, referral.GetEventId())) > 0 && count(sender, receiptDelivered) == 1 &&
				outboxHas(t, sys, probationAgency, "tc.probation.out.prison.sequence_acknowledged"),
			fmt.Sprintf("prison %v, re-sent %d events; want the referral re-sent, acknowledged again by probation, and the delivered receipt re-sent", receiptTypes(sender), sender.GetResentEvents())
	})
	recipient := getHandover(t, probationH, id).GetHandover()
	checkReceipts(t, "probation", recipient, receiptDelivered, receiptRetrieved) // retrieved by the read above, nothing else
	checkDeliveredOnce(t, sys, probationAgency, []string{id})
	if dl := listDeadLetters(t, sys); len(dl) != 0 {
		t.Errorf("dead letters: got %v, want none (a duplicate is not an error)", dl)
	}
}

// outboxEvent is the last event agency's outbox holds on subject.
func outboxEvent(t *testing.T, sys *system, agency string, subject string) *throughcarev1.Event {
	t.Helper()
	outbox, err := sys.JS[agency].Stream(testCtx(t), eventbus.OutboxStream(agency))
	if err != nil {
		t.Fatalf("outbox: %v", err)
	}
	m, err := outbox.GetLastMsgForSubject(testCtx(t), subject)
	if err != nil {
		t.Fatalf("outbox of %s on %s: %v", agency, subject, err)
	}
	ev, err := decodeEvent(t, sys, m)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return ev
}
