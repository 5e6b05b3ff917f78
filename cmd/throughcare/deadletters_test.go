package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/eventbus"
)

// deadLetters runs `throughcare deadletters` against the test system as the operator.
func deadLetters(t *testing.T, sys *system, args ...string) (string, error) {
	t.Helper()
	cfg, err := parseDeadLettersConfig(args, func(string) string { return "" }, &bytes.Buffer{})
	if err != nil {
		return "", err
	}
	reachAsOperator(sys, &cfg.operatorConfig)
	var out bytes.Buffer
	err = runDeadLetters(testCtx(t), cfg, &out)
	return out.String(), err
}

// garble publishes into the prison's outbox a damaged copy of ev, with ev's envelope
// headers and a body that is no event, under its own message id.
func garble(t *testing.T, sys *system, ev *throughcarev1.Event, id string) {
	t.Helper()
	msg, err := eventbus.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	msg.Data = []byte("garbled in transit")
	msg.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := sys.JS[prisonAgency].PublishMsg(testCtx(t), msg); err != nil {
		t.Fatal(err)
	}
}

// TestOperatorRetriesADeadLetterThroughTheSender loses a referral inside NATS and delivers
// a garbled copy of it in its place: probation dead-letters the copy. The operator's retry
// asks the prison to send again, and the handover is delivered; the ledger says who did it.
// A second garbled copy is discarded, with a note, and can then not be retried.
func TestOperatorRetriesADeadLetterThroughTheSender(t *testing.T) {
	sys := newSystem(t, resendAfter(prisonAgency, time.Hour)) // no resend but the one asked for
	ctx := testCtx(t)
	rc := openCase(t, sys.Prison)
	sys.Stop(probationAgency)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision).GetHandoverId()
	lost := dropFromInbox(t, sys, probationAgency, isType(throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED))
	garble(t, sys, lost, "garbled-1")
	sys.Start(probationAgency)

	var dead *throughcarev1.DeadLetter
	eventually(t, crossAgencyWait, func() (bool, string) {
		resp, err := sys.Handovers[probationAgency].ListDeadLetters(ctx, &throughcarev1.ListDeadLettersRequest{})
		for _, dl := range resp.GetDeadLetters() {
			if dl.GetHandoverId() == id {
				dead = dl
			}
		}
		return dead != nil, fmt.Sprintf("probation dead letters %v, %v; want the garbled referral of %s", resp.GetDeadLetters(), err, id)
	})
	if dead.GetSource() != prisonAgency || dead.GetCaseId() != rc.GetCaseId() || dead.GetStream() != eventbus.InboxStream(probationAgency) {
		t.Errorf("dead letter %v: want from the prison, about case %s, in probation's inbox", dead, rc.GetCaseId())
	}
	list, err := deadLetters(t, sys, "list")
	if err != nil || !strings.Contains(list, id) || !strings.Contains(list, "open") {
		t.Fatalf("deadletters list: %v\n%s\nwant the open dead letter of %s", err, list, id)
	}
	seq := fmt.Sprint(dead.GetSequence())
	out, err := deadLetters(t, sys, "retry", "--agency", probationAgency, "--stream", dead.GetStream(), "--sequence", seq, "--note", "copy garbled in transit")
	if err != nil {
		t.Fatalf("deadletters retry: %v", err)
	}
	if !strings.Contains(out, "prison asked to send it again") {
		t.Errorf("retry said %q", out)
	}
	waitState(t, sys.Handovers[prisonAgency], id, stateDelivered)
	checkDeliveredOnce(t, sys, probationAgency, []string{id})

	shown, err := deadLetters(t, sys, "show", "--agency", probationAgency, "--stream", dead.GetStream(), "--sequence", seq)
	if err != nil || !strings.Contains(shown, "DEAD_LETTER_STATUS_RETRIED") || !strings.Contains(shown, certs.OperatorURI) {
		t.Errorf("deadletters show: %v\n%s\nwant it retried by %s", err, shown, certs.OperatorURI)
	}
	entries := listDisclosures(t, auditClient(t, sys, probationAgency), &throughcarev1.ListDisclosuresRequest{CaseId: rc.GetCaseId()})
	resolved := 0
	for _, e := range entries {
		if e.GetKind() == throughcarev1.DisclosureKind_DISCLOSURE_KIND_DEAD_LETTER_RESOLVED {
			resolved++
			if e.GetActor() != certs.OperatorURI || !strings.Contains(e.GetNote(), "copy garbled in transit") {
				t.Errorf("ledger entry %v: want the operator and the note", e)
			}
		}
	}
	if resolved != 1 {
		t.Errorf("%d dead-letter entries in probation's ledger, want 1", resolved)
	}

	// A second garbled copy: discarded, and then neither retried nor discarded again.
	garble(t, sys, lost, "garbled-2")
	var second *throughcarev1.DeadLetter
	eventually(t, crossAgencyWait, func() (bool, string) {
		resp, _ := sys.Handovers[probationAgency].ListDeadLetters(ctx, &throughcarev1.ListDeadLettersRequest{})
		for _, dl := range resp.GetDeadLetters() {
			if dl.GetSequence() != dead.GetSequence() {
				second = dl
			}
		}
		return second != nil, "no second dead letter"
	})
	seq2 := fmt.Sprint(second.GetSequence())
	if _, err := deadLetters(t, sys, "discard", "--agency", probationAgency, "--stream", second.GetStream(), "--sequence", seq2); err == nil || !strings.Contains(err.Error(), "--note") {
		t.Errorf("discard without a note: %v, want an error naming --note", err)
	}
	if _, err := deadLetters(t, sys, "discard", "--agency", probationAgency, "--stream", second.GetStream(), "--sequence", seq2, "--note", "duplicate of a retried copy"); err != nil {
		t.Fatalf("deadletters discard: %v", err)
	}
	_, err = deadLetters(t, sys, "retry", "--agency", probationAgency, "--stream", second.GetStream(), "--sequence", seq2)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "DISCARDED") {
		t.Errorf("retry of a discarded dead letter: %v, want FailedPrecondition naming DISCARDED", err)
	}
	if open, _ := deadLetters(t, sys, "list"); strings.Contains(open, seq2+" ") && strings.Contains(open, "open") {
		t.Errorf("list shows resolved dead letters as open:\n%s", open)
	}
}
