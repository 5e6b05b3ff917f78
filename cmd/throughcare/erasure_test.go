package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// Markers the journey writes into what social work is sent and writes, so that their bytes
// can be looked for anywhere.
const (
	healthMarker    = "HEALTH-MARKER-c81e"
	substanceMarker = "SUBSTANCE-MARKER-c81e"
	questionMarker  = "QUESTION-MARKER-c81e"
	answerMarker    = "ANSWER-MARKER-c81e"
	declineMarker   = "DECLINE-MARKER-c81e"

	kindRetrieved = throughcarev1.DisclosureKind_DISCLOSURE_KIND_RETRIEVED
)

// TestErasureLeavesNoBytesAtTheRecipient runs a journey to social work whose consented
// categories and whose question, answer and decline note carry markers. After the consent
// is withdrawn, and again after the retention runs out, it reads what social work's account
// holds every way there is: the raw revisions of its buckets and every message of its
// streams through the stream API, a WatchHandovers replay from the start, and then, with the
// server stopped (its shutdown writes out whatever it buffered), every byte of every file
// under social work's account directory of the store. No marker may be anywhere it is gone
// from. The prison's account directory is left out of the search: the prison keeps its own
// case and its own handover record, as it should; it serves as the check that the search
// finds a marker where one is.
func TestErasureLeavesNoBytesAtTheRecipient(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	rc := fullReleaseCase(41)
	rc.Health.Summary = "Asthma " + healthMarker
	rc.SubstanceUse.Summary = "Alcohol " + substanceMarker
	opened, err := sys.Prison.OpenReleaseCase(ctx, &throughcarev1.OpenReleaseCaseRequest{Actor: "prison-worker-1", ReleaseCase: rc})
	if err != nil {
		t.Fatalf("open case: %v", err)
	}
	caseID := opened.GetReleaseCase().GetCaseId()
	for _, c := range []throughcarev1.DataCategory{catHealth, catSubstanceUse} {
		if _, err := sys.Prison.RecordConsent(ctx, &throughcarev1.RecordConsentRequest{Actor: "prison-worker-1", CaseId: caseID, Category: c, Recipient: socialWorkAgency}); err != nil {
			t.Fatalf("record consent: %v", err)
		}
	}
	id := refer(t, sys, caseID, socialWorkAgency, purposeAssistance).GetHandoverId()
	eventually(t, 20*time.Second, func() (bool, string) {
		stored, _ := storedCopy(t, sys, socialWorkAgency, caseID)
		return stored.GetHealth() != nil && stored.GetSubstanceUse() != nil, "social work's copy has no health and substance use yet"
	})

	// The first read issues the RETRIEVED receipt, and is in social work's ledger.
	sw := sys.Handovers[socialWorkAgency]
	if got := getHandover(t, sw, id).GetHandover().GetState(); got != stateRetrieved {
		t.Fatalf("social work's first GetHandover: state %v, want RETRIEVED", got)
	}
	getHandover(t, sw, id) // a second read is no disclosure of its own
	waitLedgerKind(t, auditClient(t, sys, socialWorkAgency), caseID, kindRetrieved)
	all, err := tryListDisclosures(ctx, auditClient(t, sys, socialWorkAgency), &throughcarev1.ListDisclosuresRequest{CaseId: caseID})
	if err != nil {
		t.Fatalf("social work ledger: %v", err)
	}
	if r := filterKind(all, kindRetrieved); len(r) != 1 || r[0].GetSender() != prisonAgency || r[0].GetRecipient() != socialWorkAgency ||
		r[0].GetPurpose() != purposeAssistance || len(r[0].GetPersonHash()) == 0 {
		t.Errorf("social work's RETRIEVED entries: %v; want one, from the prison, for assistance, with the person's hash", r)
	}

	if err := acknowledge(ctx, sw, id, "sw-1"); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	asked, err := sw.RequestInformation(ctx, &throughcarev1.RequestInformationRequest{Actor: "sw-1", HandoverId: id, Question: "Which hostel? " + questionMarker})
	if err != nil {
		t.Fatalf("request information: %v", err)
	}
	requestID := asked.GetHandover().GetInformationRequests()[0].GetRequestId()
	waitState(t, sys.Handovers[prisonAgency], id, stateInfoReq)
	if _, err := sys.Handovers[prisonAgency].ProvideInformation(ctx, &throughcarev1.ProvideInformationRequest{Actor: "prison-worker-1", HandoverId: id, RequestId: requestID, Answer: "Celica " + answerMarker}); err != nil {
		t.Fatalf("provide information: %v", err)
	}
	waitState(t, sw, id, stateAcknowledged)
	if _, err := sw.DeclineHandover(ctx, &throughcarev1.DeclineHandoverRequest{Actor: "sw-1", HandoverId: id, Reason: throughcarev1.DeclineReason_DECLINE_REASON_OTHER, Note: "No place " + declineMarker}); err != nil {
		t.Fatalf("decline: %v", err)
	}
	waitState(t, sys.Handovers[prisonAgency], id, stateDeclined)

	// Consent withdrawn: health and substance use go from every revision and every file.
	for _, c := range []throughcarev1.DataCategory{catHealth, catSubstanceUse} {
		if _, err := sys.Prison.WithdrawConsent(ctx, &throughcarev1.WithdrawConsentRequest{Actor: "prison-worker-1", CaseId: caseID, Category: c, Recipient: socialWorkAgency}); err != nil {
			t.Fatalf("withdraw consent: %v", err)
		}
	}
	eventually(t, 20*time.Second, func() (bool, string) {
		h := getHandover(t, sys.Handovers[prisonAgency], id).GetHandover()
		return count(h, receiptPurge) == 2, "the prison has not seen both PURGED receipts"
	})
	waitInboxProcessed(t, sys, socialWorkAgency)
	withdrawn := []string{healthMarker, substanceMarker}
	checkStreamsHoldNone(t, sys, socialWorkAgency, withdrawn, nil)
	checkReplayHoldsNone(t, sys, id, withdrawn)
	checkFilesHoldNone(t, sys, withdrawn, nil)
	// Still held: what retention has not yet removed, in the bucket and on disk.
	if stored, _ := storedCopy(t, sys, socialWorkAgency, caseID); stored.GetAccommodation() == nil {
		t.Fatalf("social work's copy lost what consent did not cover: %v", stored)
	}

	// Retention runs out: social work restarts under a protocol that keeps its copies a
	// millisecond, and files its handovers under it again.
	short := protocolWithRetention(t, prisonAgency, socialWorkAgency, purposeAssistance, time.Millisecond)
	sys.Stop(socialWorkAgency)
	cfg := sys.cfg[socialWorkAgency]
	cfg.Protocol = short
	sys.cfg[socialWorkAgency] = cfg
	sys.Start(socialWorkAgency)
	if err := sys.service(socialWorkAgency).RebuildIndexes(ctx); err != nil {
		t.Fatalf("rebuild social work's indexes: %v", err)
	}
	waitLedgerKind(t, auditClient(t, sys, socialWorkAgency), caseID, kindExpired)
	eventually(t, 20*time.Second, func() (bool, string) {
		h := getHandover(t, sw, id).GetHandover()
		return h.GetDeclineNote() == "" && len(h.GetInformationRequests()) > 0 && h.GetInformationRequests()[0].GetQuestion() == "",
			"social work's handover still has its free text"
	})
	// The copy's removal erases the handover's earlier revisions straight after.
	handovers, err := sys.JS[socialWorkAgency].Stream(ctx, "KV_socialwork_handovers")
	if err != nil {
		t.Fatalf("handovers stream: %v", err)
	}
	subject := "$KV.socialwork_handovers." + id
	eventually(t, 20*time.Second, func() (bool, string) {
		info, err := handovers.Info(ctx, jetstream.WithSubjectFilter(subject))
		return err == nil && info.State.Subjects[subject] == 1, "social work's handover keeps more than one revision"
	})
	everything := []string{healthMarker, substanceMarker, questionMarker, answerMarker, declineMarker}
	// Social work's own outbox keeps the receipts it sent, with its question and decline
	// note, as the record of what it sent (until its max age): not erased here.
	ownOutbox := []string{questionMarker, declineMarker}
	checkStreamsHoldNone(t, sys, socialWorkAgency, everything, ownOutbox)
	checkReplayHoldsNone(t, sys, id, everything)
	checkFilesHoldNone(t, sys, everything, ownOutbox)
}

// checkStreamsHoldNone reads every message that every stream of agency's account still
// holds (a bucket's every revision included) through the stream API, and fails on a marker
// in any, but for markers allowed in the agency's own outbox.
func checkStreamsHoldNone(t *testing.T, sys *system, agency string, markers, inOutbox []string) {
	t.Helper()
	ctx := testCtx(t)
	js := sys.JS[agency]
	names := js.StreamNames(ctx)
	var checked int
	for name := range names.Name() {
		stream, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
			m, err := stream.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				t.Fatalf("%s #%d: %v", name, seq, err)
			}
			checked++
			for _, marker := range markers {
				if name == eventbus.OutboxStream(agency) && slices.Contains(inOutbox, marker) {
					continue
				}
				if bytes.Contains(m.Data, []byte(marker)) {
					t.Errorf("%s #%d (%s) still holds %s", name, seq, m.Subject, marker)
				}
			}
		}
	}
	if err := names.Err(); err != nil {
		t.Fatalf("streams of %s: %v", agency, err)
	}
	if checked == 0 {
		t.Fatalf("no message in any stream of %s: nothing was checked", agency)
	}
}

// checkReplayHoldsNone replays social work's handovers from an empty cursor until it
// reaches the current revision of handover id, and fails on a marker in any revision it
// sends on the way.
func checkReplayHoldsNone(t *testing.T, sys *system, id string, markers []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	handovers, err := sys.JS[socialWorkAgency].Stream(ctx, "KV_socialwork_handovers")
	if err != nil {
		t.Fatalf("handovers stream: %v", err)
	}
	last, err := handovers.GetLastMsgForSubject(ctx, "$KV.socialwork_handovers."+id)
	if err != nil {
		t.Fatalf("current revision of handover %s: %v", id, err)
	}
	stream, err := sys.Handovers[socialWorkAgency].WatchHandovers(ctx, &throughcarev1.WatchHandoversRequest{})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch ended before handover %s at revision %d: %v", id, last.Sequence, err)
		}
		raw, _ := proto.Marshal(resp)
		for _, marker := range markers {
			if bytes.Contains(raw, []byte(marker)) {
				t.Errorf("WatchHandovers replays handover %s at cursor %s with %s", resp.GetHandover().GetHandoverId(), resp.GetCursor(), marker)
			}
		}
		if resp.GetHandover().GetHandoverId() == id && resp.GetCursor() == strconv.FormatUint(last.Sequence, 10) {
			return
		}
	}
}

// checkFilesHoldNone stops the NATS server, searches every file under social work's account
// directory of the store for the markers (but those allowed in its own outbox's directory),
// checks that the prison's directory still holds them (the search finds what is there),
// and starts the server again.
func checkFilesHoldNone(t *testing.T, sys *system, markers, inOutbox []string) {
	t.Helper()
	root := filepath.Join(sys.NATS.StoreDir(), "jetstream")
	recipient := filepath.Join(root, natsserver.AccountName(socialWorkAgency))
	outbox := filepath.Join(recipient, "streams", eventbus.OutboxStream(socialWorkAgency)) + string(filepath.Separator)
	sys.NATS.Stop()
	for _, marker := range markers {
		for _, path := range natstest.FilesHolding(t, recipient, marker) {
			if strings.HasPrefix(path, outbox) && slices.Contains(inOutbox, marker) {
				continue
			}
			t.Errorf("%s still holds %s", strings.TrimPrefix(path, root+string(filepath.Separator)), marker)
		}
		if len(natstest.FilesHolding(t, filepath.Join(root, natsserver.AccountName(prisonAgency)), marker)) == 0 {
			t.Errorf("%s is in no file of the prison's own store: the search finds nothing", marker)
		}
	}
	sys.RestartNATS()
}
