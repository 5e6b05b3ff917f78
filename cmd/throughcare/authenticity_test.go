package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/signing"
)

// TestUnauthenticEventsAreRefusedAndRecorded publishes, on the prison's own outbox, events
// that are unsigned, forged (signed by probation's key while claiming to be the prison's, or
// by a key nobody distributed), tampered with after signing, and a replay (a used event id
// with other content, validly re-signed). Social work refuses each before anything else:
// nothing is stored, each is dead-lettered and recorded in its ledger. A genuine event sent
// after them is delivered, and the same genuine event sent again changes nothing.
func TestUnauthenticEventsAreRefusedAndRecorded(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	prisonKey := sys.cfg[prisonAgency].SigningKey
	within := func(rc *throughcarev1.ReleaseCase) *throughcarev1.ReleaseCase {
		rc = proto.CloneOf(rc)
		rc.Revision = 0
		rc.Sentence, rc.Health, rc.SubstanceUse, rc.Behaviour, rc.Risk, rc.Extremism = nil, nil, nil, nil, nil, nil
		return rc
	}
	// Every message gets a fresh Nats-Msg-Id, as if sent after JetStream's duplicate window:
	// what stops a replay then is the receiver, not the stream.
	publish := func(ev *throughcarev1.Event) {
		t.Helper()
		msg, err := eventbus.Encode(ev)
		if err != nil {
			t.Fatalf("encode %s: %v", ev.GetEventId(), err)
		}
		msg.Header.Set(jetstream.MsgIDHeader, ids.New(ids.Event))
		if _, err := sys.JS[prisonAgency].PublishMsg(ctx, msg); err != nil {
			t.Fatalf("publish %s: %v", ev.GetEventId(), err)
		}
	}
	sign := func(ev *throughcarev1.Event, key signing.Key) *throughcarev1.Event {
		t.Helper()
		ev.Source = key.Agency // Sign refuses another agency's event; set it back after
		if err := signing.Sign(ev, key); err != nil {
			t.Fatalf("sign: %v", err)
		}
		ev.Source = prisonAgency
		return ev
	}

	// The genuine event first, so the replay below reuses an id social work has accepted.
	genuine := sign(socialWorkReferralEvent(within(openCaseN(t, sys.Prison, 1))), prisonKey)
	publish(genuine)
	eventually(t, 20*time.Second, func() (bool, string) {
		_, err := sys.Handovers[socialWorkAgency].GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: genuine.GetHandoverId()})
		return err == nil, fmt.Sprintf("genuine handover %s: %v", genuine.GetHandoverId(), err)
	})

	rc := within(openCaseN(t, sys.Prison, 2))
	unsigned := socialWorkReferralEvent(rc)
	wrongAgency := sign(socialWorkReferralEvent(rc), sys.cfg[probationAgency].SigningKey)
	stranger, err := signing.GenerateKey(prisonAgency, time.Now())
	if err != nil {
		t.Fatalf("key: %v", err)
	}
	unknownKey := sign(socialWorkReferralEvent(rc), stranger)
	tampered := sign(socialWorkReferralEvent(rc), prisonKey)
	tampered.GetHandoverReferred().GetReleaseCase().GetPerson().GivenName = "Someone Else"
	replay := proto.CloneOf(genuine)
	replay.GetHandoverReferred().GetReleaseCase().GetPerson().FamilyName = "Replayed"
	replay.Signature, replay.KeyId = nil, ""
	sign(replay, prisonKey)
	refused := []*throughcarev1.Event{unsigned, wrongAgency, unknownKey, tampered, replay}
	for _, ev := range refused {
		publish(ev)
	}
	publish(genuine) // the same bytes again: a redelivery, not a replay
	control := sign(socialWorkReferralEvent(within(openCaseN(t, sys.Prison, 3))), prisonKey)
	publish(control)

	eventually(t, 20*time.Second, func() (bool, string) {
		_, err := sys.Handovers[socialWorkAgency].GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: control.GetHandoverId()})
		return err == nil, fmt.Sprintf("control handover %s: %v; want it delivered past the refused ones", control.GetHandoverId(), err)
	})
	for _, ev := range refused[:4] {
		if _, err := sys.Handovers[socialWorkAgency].GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: ev.GetHandoverId()}); status.Code(err) != codes.NotFound {
			t.Errorf("refused event %s left handover %s: got %v, want NotFound", ev.GetEventId(), ev.GetHandoverId(), err)
		}
	}
	if got := getHandover(t, sys.Handovers[socialWorkAgency], genuine.GetHandoverId()); got.GetReleaseCase().GetPerson().GetFamilyName() == "Replayed" {
		t.Error("the replay changed the genuine copy")
	}

	wantIDs := make([]string, len(refused))
	for i, ev := range refused {
		wantIDs[i] = ev.GetEventId()
	}
	slices.Sort(wantIDs)
	var dead []string
	eventually(t, 20*time.Second, func() (bool, string) {
		resp, err := sys.Handovers[socialWorkAgency].ListDeadLetters(ctx, &throughcarev1.ListDeadLettersRequest{})
		dead = dead[:0]
		for _, d := range resp.GetDeadLetters() {
			dead = append(dead, d.GetEventId())
		}
		slices.Sort(dead)
		return err == nil && slices.Equal(dead, wantIDs), fmt.Sprintf("social work dead letters %v (%v), want %v", dead, err, wantIDs)
	})

	book, err := ledger.Open(ctx, sys.JS[socialWorkAgency], socialWorkAgency, 1)
	if err != nil {
		t.Fatalf("open social work's ledger: %v", err)
	}
	entries, _, _, err := book.List(ctx, nil, func(d *throughcarev1.Disclosure) bool {
		return d.GetKind() == throughcarev1.DisclosureKind_DISCLOSURE_KIND_REFUSED
	}, 0, 100)
	if err != nil {
		t.Fatalf("list ledger: %v", err)
	}
	var recorded []string
	for _, e := range entries {
		recorded = append(recorded, e.GetEventId())
	}
	slices.Sort(recorded)
	if !slices.Equal(recorded, wantIDs) {
		t.Errorf("social work's ledger records refusals of %v, want %v", recorded, wantIDs)
	}
	if v, err := book.Verify(ctx); err != nil || !v.GetIntact() {
		t.Errorf("social work's ledger: %v, %v; want intact", v, err)
	}
}

// TestWritesDeclareTheirPurposeAndAreRecorded: a write without a purpose is refused,
// naming the header, and changes nothing; a write with one is recorded in the agency's
// ledger with its actor and purpose. Reads need no purpose.
func TestWritesDeclareTheirPurposeAndAreRecorded(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	casesNow := func() int {
		t.Helper()
		resp, err := sys.Prison.ListReleaseCases(ctx, &throughcarev1.ListReleaseCasesRequest{PageSize: 500})
		if err != nil {
			t.Fatalf("list cases: %v", err)
		}
		return len(resp.GetReleaseCases())
	}
	before := casesNow()

	for _, purpose := range []string{"", "PURPOSE_UNSPECIFIED", "surveillance"} {
		callCtx := metadata.AppendToOutgoingContext(ctx, grpcserver.PurposeHeader, purpose)
		if purpose == "" {
			callCtx = metadata.NewOutgoingContext(ctx, metadata.Pairs(grpcserver.PurposeHeader, "")) // the client adds none over an empty one
		}
		_, err := sys.Prison.OpenReleaseCase(callCtx, &throughcarev1.OpenReleaseCaseRequest{Actor: "prison-worker-1", ReleaseCase: fullReleaseCase(1)})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), grpcserver.PurposeHeader) {
			t.Errorf("open with purpose %q: got %v, want InvalidArgument naming %s", purpose, err, grpcserver.PurposeHeader)
		}
	}
	if got := casesNow(); got != before {
		t.Fatalf("refused writes stored cases: %d, want %d", got, before)
	}

	opened, err := sys.Prison.OpenReleaseCase(metadata.AppendToOutgoingContext(ctx, grpcserver.PurposeHeader, "PURPOSE_POST_PENAL_ASSISTANCE"),
		&throughcarev1.OpenReleaseCaseRequest{Actor: "prison-worker-7", ReleaseCase: fullReleaseCase(2)})
	if err != nil {
		t.Fatalf("open with a purpose: %v", err)
	}
	caseID := opened.GetReleaseCase().GetCaseId()
	entries, err := auditClient(t, sys, prisonAgency).ListDisclosures(ctx, &throughcarev1.ListDisclosuresRequest{CaseId: caseID})
	if err != nil {
		t.Fatalf("list disclosures: %v", err)
	}
	var writes []*throughcarev1.Disclosure
	for _, d := range entries.GetDisclosures() {
		if d.GetKind() == throughcarev1.DisclosureKind_DISCLOSURE_KIND_WRITE {
			writes = append(writes, d)
		}
	}
	if len(writes) != 1 || writes[0].GetActor() != "prison-worker-7" || writes[0].GetPurpose() != purposeAssistance ||
		!strings.Contains(writes[0].GetNote(), "OpenReleaseCase") {
		t.Errorf("ledger writes for case %s: got %v; want one OpenReleaseCase by prison-worker-7 for post-penal assistance", caseID, writes)
	}
}
