package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/signing"
)

// Short names for what the sharing tests use most.
const (
	purposeSupervision = throughcarev1.Purpose_PURPOSE_SUPERVISION
	purposeAssistance  = throughcarev1.Purpose_PURPOSE_POST_PENAL_ASSISTANCE
	purposeCoordinate  = throughcarev1.Purpose_PURPOSE_COORDINATION

	catIdentity      = throughcarev1.DataCategory_DATA_CATEGORY_IDENTITY
	catContact       = throughcarev1.DataCategory_DATA_CATEGORY_CONTACT
	catLegal         = throughcarev1.DataCategory_DATA_CATEGORY_LEGAL
	catReleasePlan   = throughcarev1.DataCategory_DATA_CATEGORY_RELEASE_PLAN
	catAccommodation = throughcarev1.DataCategory_DATA_CATEGORY_ACCOMMODATION
	catEducationWork = throughcarev1.DataCategory_DATA_CATEGORY_EDUCATION_WORK
	catHealth        = throughcarev1.DataCategory_DATA_CATEGORY_HEALTH
	catSubstanceUse  = throughcarev1.DataCategory_DATA_CATEGORY_SUBSTANCE_USE
	catFinanceID     = throughcarev1.DataCategory_DATA_CATEGORY_FINANCE_ID
	catFamily        = throughcarev1.DataCategory_DATA_CATEGORY_FAMILY
	catBehaviour     = throughcarev1.DataCategory_DATA_CATEGORY_BEHAVIOUR
	catRisk          = throughcarev1.DataCategory_DATA_CATEGORY_RISK
	catExtremism     = throughcarev1.DataCategory_DATA_CATEGORY_EXTREMISM_RISK
	catWorkerSafety  = throughcarev1.DataCategory_DATA_CATEGORY_WORKER_SAFETY

	notAllowed = throughcarev1.WithholdReason_WITHHOLD_REASON_NOT_ALLOWED
	noConsent  = throughcarev1.WithholdReason_WITHHOLD_REASON_NO_CONSENT

	kindShared   = throughcarev1.DisclosureKind_DISCLOSURE_KIND_SHARED
	kindPurged   = throughcarev1.DisclosureKind_DISCLOSURE_KIND_PURGED
	kindExpired  = throughcarev1.DisclosureKind_DISCLOSURE_KIND_EXPIRED
	kindRefused  = throughcarev1.DisclosureKind_DISCLOSURE_KIND_REFUSED
	receiptPurge = throughcarev1.ReceiptType_RECEIPT_TYPE_PURGED

	// socialWorkReferral is the subject a referral from the prison to social work is
	// published on, in the prison's outbox.
	socialWorkReferral = "tc.prison.out.socialwork.handover_referred"
)

// socialWorkGets is what the default protocol lets the prison share with social work for
// post-penal assistance without consent, in enum order: everything else of a full case is
// withheld.
var socialWorkGets = []throughcarev1.DataCategory{
	catIdentity, catContact, catReleasePlan, catAccommodation, catEducationWork, catFinanceID, catFamily, catWorkerSafety,
}

// socialWorkWithholdings is what the default protocol withholds from social work of a full
// case without consent, and why.
var socialWorkWithholdings = []*throughcarev1.Withholding{
	{Category: catLegal, Reason: notAllowed},
	{Category: catHealth, Reason: noConsent},
	{Category: catSubstanceUse, Reason: noConsent},
	{Category: catBehaviour, Reason: notAllowed},
	{Category: catRisk, Reason: notAllowed},
	{Category: catExtremism, Reason: notAllowed},
}

// fullCaseCategories is every category fullReleaseCase fills, in enum order.
var fullCaseCategories = []throughcarev1.DataCategory{
	catIdentity, catContact, catLegal, catReleasePlan, catAccommodation, catEducationWork, catHealth, catSubstanceUse,
	catFinanceID, catFamily, catBehaviour, catRisk, catExtremism, catWorkerSafety,
}

// TestSharingToSocialWorkWithholdsAndRecords refers a full case to social work: the answer
// says what was withheld and why, nothing withheld leaves the prison or reaches social
// work (its reads, its stored copy, the event on the wire), and the prison's ledger holds
// one SHARED entry that says all of it, found by case and by person.
func TestSharingToSocialWorkWithholdsAndRecords(t *testing.T) {
	sys := newSystem(t)
	prisonSent := watchSent(t, sys, prisonAgency)
	ctx := testCtx(t)
	prisonAudit := auditClient(t, sys, prisonAgency)
	rc := openCase(t, sys.Prison)
	if got := categoriesIn(rc); !slices.Equal(got, fullCaseCategories) {
		t.Fatalf("opened case carries %v, want every category %v", got, fullCaseCategories)
	}

	resp, err := sys.Cases[prisonAgency].ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Recipient: socialWorkAgency, Purpose: purposeAssistance})
	if err != nil {
		t.Fatalf("refer to social work: %v", err)
	}
	checkWithholdings(t, "ReferCase withholdings", resp.GetWithholdings(), socialWorkWithholdings)
	wantWithheld := withheldOf(socialWorkWithholdings)
	if got := resp.GetWithheldCategories(); !slices.Equal(got, wantWithheld) {
		t.Errorf("ReferCase withheld_categories: got %v, want %v", got, wantWithheld)
	}
	h := resp.GetHandover()
	if got := h.GetWithheldCategories(); !slices.Equal(got, wantWithheld) {
		t.Errorf("handover withheld_categories: got %v, want %v", got, wantWithheld)
	}
	id := h.GetHandoverId()

	// What social work's system reads: the handover's case and the assistance case.
	var atSocial *throughcarev1.GetHandoverResponse
	eventually(t, 20*time.Second, func() (bool, string) {
		atSocial, err = sys.Handovers[socialWorkAgency].GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: id})
		return err == nil, fmt.Sprintf("social work: handover %s: %v; want it delivered", id, err)
	})
	if got := categoriesIn(atSocial.GetReleaseCase()); !slices.Equal(got, socialWorkGets) {
		t.Errorf("social work GetHandover.release_case carries %v, want exactly %v", got, socialWorkGets)
	}
	if got := atSocial.GetReleaseCase().GetPerson().GetPrisonNumber(); got != rc.GetPerson().GetPrisonNumber() {
		t.Errorf("social work GetHandover.release_case prison number: got %q, want %q", got, rc.GetPerson().GetPrisonNumber())
	}
	if got := atSocial.GetHandover().GetWithheldCategories(); !slices.Equal(got, wantWithheld) {
		t.Errorf("social work's handover withheld_categories: got %v, want %v", got, wantWithheld)
	}
	assistance, err := sys.SocialWork.GetAssistanceCase(ctx, &throughcarev1.GetAssistanceCaseRequest{CaseId: rc.GetCaseId()})
	if err != nil {
		t.Fatalf("GetAssistanceCase: %v", err)
	}
	if got := categoriesIn(assistance.GetReleaseCase()); !slices.Equal(got, socialWorkGets) {
		t.Errorf("GetAssistanceCase carries %v, want exactly %v", got, socialWorkGets)
	}
	c := assistance.GetReleaseCase()
	if c.GetSentence() != nil || c.GetBehaviour() != nil || c.GetRisk() != nil || c.GetExtremism() != nil || c.GetHealth() != nil || c.GetSubstanceUse() != nil {
		t.Errorf("GetAssistanceCase holds a withheld field: %v", c)
	}
	// Reads cut down as of now; what social work stored must never have held more.
	stored, ok := storedCopy(t, sys, socialWorkAgency, rc.GetCaseId())
	if !ok {
		t.Fatalf("social work stored no copy of %s", rc.GetCaseId())
	}
	if got := categoriesIn(stored); !slices.Equal(got, socialWorkGets) {
		t.Errorf("social work's stored copy carries %v, want exactly %v", got, socialWorkGets)
	}

	// What left the prison: the event in its outbox.
	sent := prisonSent.last(t, socialWorkReferral)
	if sent.GetHandoverId() != id {
		t.Fatalf("last referral to social work in the outbox: handover %s, want %s", sent.GetHandoverId(), id)
	}
	if got := categoriesIn(sent); !slices.Equal(got, socialWorkGets) {
		t.Errorf("the referral event as sent carries %v, want exactly %v", got, socialWorkGets)
	}
	checkWithholdings(t, "event withholdings", sent.GetWithholdings(), socialWorkWithholdings)

	// The prison's ledger: one SHARED entry, by case and by person.
	byCase := listDisclosures(t, prisonAudit, &throughcarev1.ListDisclosuresRequest{CaseId: rc.GetCaseId()})
	if len(byCase) != 1 {
		t.Fatalf("prison ledger for case %s: got %d entries, want 1: %v", rc.GetCaseId(), len(byCase), byCase)
	}
	d := byCase[0]
	rule, _ := protocol.Default().Rule(prisonAgency, socialWorkAgency, purposeAssistance)
	// The payload hash covers the event as sent, less its signature: what the signature covers.
	unsigned := proto.CloneOf(sent)
	unsigned.Signature, unsigned.KeyId = nil, ""
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(unsigned)
	if err != nil {
		t.Fatalf("encode the sent event: %v", err)
	}
	hash := sha256.Sum256(payload)
	want := &throughcarev1.Disclosure{
		Sequence:           d.GetSequence(), // after the writes that opened and referred the case
		CaseId:             rc.GetCaseId(),
		EventId:            sent.GetEventId(),
		Sender:             prisonAgency,
		Recipient:          socialWorkAgency,
		Purpose:            purposeAssistance,
		SharedCategories:   socialWorkGets,
		WithheldCategories: wantWithheld,
		LegalBasis:         rule.GetLegalBasis(),
		ProtocolId:         protocol.Default().ID(),
		ProtocolVersion:    protocol.Default().Version(),
		Actor:              "prison-worker-1",
		Time:               d.GetTime(),
		PayloadHash:        hash[:],
		EntryHash:          d.GetEntryHash(),
		Kind:               kindShared,
		Withholdings:       socialWorkWithholdings,
		PersonHash:         sys.cfg[prisonAgency].PersonKey.Hash(rc.GetPerson().GetPrisonNumber()),
	}
	if !proto.Equal(d, want) {
		t.Errorf("prison ledger entry:\n got %v\nwant %v", prototext.Format(d), prototext.Format(want))
	}
	if rule.GetLegalBasis() == "" || d.GetTime() == nil || len(d.GetEntryHash()) != sha256.Size {
		t.Errorf("prison ledger entry: legal basis %q, time %v, entry hash %x; want all set", d.GetLegalBasis(), d.GetTime(), d.GetEntryHash())
	}
	if since := time.Since(d.GetTime().AsTime()); since < 0 || since > time.Minute {
		t.Errorf("prison ledger entry time %v: want within the last minute", d.GetTime().AsTime())
	}
	byPerson := listDisclosures(t, prisonAudit, &throughcarev1.ListDisclosuresRequest{PrisonNumber: rc.GetPerson().GetPrisonNumber()})
	if len(byPerson) != 1 || !proto.Equal(byPerson[0], d) {
		t.Errorf("prison ledger by prison number: got %v, want only the entry found by case", byPerson)
	}
	checkLedgerIntact(t, sys, prisonAgency, 1)
}

// TestReferralWithoutRuleIsPermissionDenied refers along flows the default protocol has no
// rule for: each is refused with PermissionDenied naming the missing rule, and leaves no
// handover and no ledger entry; a referral along a rule then does.
func TestReferralWithoutRuleIsPermissionDenied(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	prisonAudit := auditClient(t, sys, prisonAgency)
	rc := openCase(t, sys.Prison)

	for _, tc := range []struct {
		recipient string
		purpose   throughcarev1.Purpose
		names     []string
	}{
		{socialWorkAgency, purposeSupervision, []string{"prison", "social work", "SUPERVISION", protocol.Default().ID()}},
		{probationAgency, purposeAssistance, []string{"prison", "probation", "POST_PENAL_ASSISTANCE", protocol.Default().ID()}},
		{probationAgency, purposeCoordinate, []string{"prison", "probation", "COORDINATION", protocol.Default().ID()}},
	} {
		_, err := sys.Cases[prisonAgency].ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Recipient: tc.recipient, Purpose: tc.purpose})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("refer to %s for %s: got %v, want PermissionDenied", tc.recipient, tc.purpose, err)
			continue
		}
		msg := status.Convert(err).Message()
		for _, name := range tc.names {
			if !strings.Contains(msg, name) {
				t.Errorf("refer to %s for %s: message %q does not name %q", tc.recipient, tc.purpose, msg, name)
			}
		}
		if strings.Contains(msg, rc.GetPerson().GetFamilyName()) || strings.Contains(msg, rc.GetPerson().GetPrisonNumber()) {
			t.Errorf("refer to %s for %s: message %q carries personal data", tc.recipient, tc.purpose, msg)
		}
	}
	if out := listAll(t, sys.Handovers[prisonAgency], &throughcarev1.ListHandoversRequest{Direction: outgoing}); len(out) != 0 {
		t.Errorf("prison outgoing after refused referrals: got %v, want none", out)
	}
	if got := listDisclosures(t, prisonAudit, &throughcarev1.ListDisclosuresRequest{CaseId: rc.GetCaseId()}); len(got) != 0 {
		t.Errorf("prison ledger after refused referrals: got %v, want nothing", got)
	}
	checkLedgerIntact(t, sys, prisonAgency, 0)

	// The flow the protocol has a rule for goes through, and is the only one recorded.
	id := refer(t, sys, rc.GetCaseId(), socialWorkAgency, purposeAssistance).GetHandoverId()
	eventually(t, 20*time.Second, func() (bool, string) {
		in, err := tryListAll(ctx, sys.Handovers[socialWorkAgency], &throughcarev1.ListHandoversRequest{Direction: incoming})
		return err == nil && len(in) == 1 && in[0].GetHandoverId() == id && in[0].GetPurpose() == purposeAssistance,
			fmt.Sprintf("social work incoming: got %v, %v; want only %s", in, err, id)
	})
	got := listDisclosures(t, prisonAudit, &throughcarev1.ListDisclosuresRequest{CaseId: rc.GetCaseId()})
	if len(got) != 1 || got[0].GetPurpose() != purposeAssistance || got[0].GetRecipient() != socialWorkAgency {
		t.Errorf("prison ledger after one allowed referral: got %v, want one entry to social work for post-penal assistance", got)
	}
	if out := listAll(t, sys.Handovers[prisonAgency], &throughcarev1.ListHandoversRequest{Direction: outgoing}); len(out) != 1 {
		t.Errorf("prison outgoing: got %d handovers, want 1", len(out))
	}
	if in := listAll(t, sys.Handovers[probationAgency], &throughcarev1.ListHandoversRequest{Direction: incoming}); len(in) != 0 {
		t.Errorf("probation incoming: got %v, want none", in)
	}
}

// TestConsentGrantsAndWithdrawalPurgesEveryCopy gives consent to share health with social
// work, refers to social work (health goes) and probation (which has it anyway), then
// withdraws the consent: social work purges health from its copy and confirms with a
// PURGED receipt and a ledger entry, probation keeps health, since consent was per
// recipient.
func TestConsentGrantsAndWithdrawalPurgesEveryCopy(t *testing.T) {
	// Social work's receipts to the prison are waited for: start with every outbox in place.
	sys := newSystem(t)
	ctx := testCtx(t)
	socialAudit := auditClient(t, sys, socialWorkAgency)
	prisonAudit := auditClient(t, sys, prisonAgency)
	rc := openCase(t, sys.Prison)

	consented, err := sys.Prison.RecordConsent(ctx, &throughcarev1.RecordConsentRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Category: catHealth, Recipient: socialWorkAgency})
	if err != nil {
		t.Fatalf("record consent: %v", err)
	}
	if !protocol.StandingConsent(consented.GetReleaseCase().GetConsents(), catHealth, socialWorkAgency) {
		t.Fatalf("after RecordConsent the case has consents %v, want health for social work standing", consented.GetReleaseCase().GetConsents())
	}

	resp, err := sys.Cases[prisonAgency].ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Recipient: socialWorkAgency, Purpose: purposeAssistance})
	if err != nil {
		t.Fatalf("refer to social work: %v", err)
	}
	withConsent := slices.DeleteFunc(slices.Clone(socialWorkWithholdings), func(w *throughcarev1.Withholding) bool { return w.GetCategory() == catHealth })
	checkWithholdings(t, "ReferCase withholdings with consent to health", resp.GetWithholdings(), withConsent)
	toSocial := resp.GetHandover().GetHandoverId()
	toProbation := refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision).GetHandoverId()

	socialGetsWithHealth := slices.Sorted(slices.Values(append(slices.Clone(socialWorkGets), catHealth)))
	assistanceCase := func() (*throughcarev1.ReleaseCase, error) {
		r, err := sys.SocialWork.GetAssistanceCase(ctx, &throughcarev1.GetAssistanceCaseRequest{CaseId: rc.GetCaseId()})
		return r.GetReleaseCase(), err
	}
	supervisionCase := func() (*throughcarev1.ReleaseCase, error) {
		r, err := sys.Probation.GetSupervisionCase(ctx, &throughcarev1.GetSupervisionCaseRequest{CaseId: rc.GetCaseId()})
		return r.GetReleaseCase(), err
	}
	eventually(t, 20*time.Second, func() (bool, string) {
		c, err := assistanceCase()
		return err == nil && proto.Equal(c.GetHealth(), rc.GetHealth()), fmt.Sprintf("social work's case: health %v, err %v; want the prison's health assessment", c.GetHealth(), err)
	})
	eventually(t, 20*time.Second, func() (bool, string) {
		c, err := supervisionCase()
		return err == nil && proto.Equal(c.GetHealth(), rc.GetHealth()), fmt.Sprintf("probation's case: health %v, err %v; want the prison's health assessment", c.GetHealth(), err)
	})
	if stored, _ := storedCopy(t, sys, socialWorkAgency, rc.GetCaseId()); !slices.Equal(categoriesIn(stored), socialGetsWithHealth) {
		t.Errorf("social work's stored copy before the withdrawal carries %v, want %v", categoriesIn(stored), socialGetsWithHealth)
	}

	withdrawn, err := sys.Prison.WithdrawConsent(ctx, &throughcarev1.WithdrawConsentRequest{Actor: "prison-worker-2", CaseId: rc.GetCaseId(), Category: catHealth, Recipient: socialWorkAgency})
	if err != nil {
		t.Fatalf("withdraw consent: %v", err)
	}
	if protocol.StandingConsent(withdrawn.GetReleaseCase().GetConsents(), catHealth, socialWorkAgency) {
		t.Errorf("after WithdrawConsent the case has consents %v, want health for social work withdrawn", withdrawn.GetReleaseCase().GetConsents())
	}

	// The prison sees social work's PURGED receipt on the handover.
	var atPrison *throughcarev1.Handover
	eventually(t, 20*time.Second, func() (bool, string) {
		atPrison = getHandover(t, sys.Handovers[prisonAgency], toSocial).GetHandover()
		return count(atPrison, receiptPurge) > 0, fmt.Sprintf("prison: handover %s receipts %v; want a PURGED receipt", toSocial, receiptTypes(atPrison))
	})
	if n := count(atPrison, receiptPurge); n != 1 {
		t.Errorf("prison: handover %s has %d PURGED receipts, want 1 (%v)", toSocial, n, receiptTypes(atPrison))
	}
	checkSequences(t, "prison, handover to social work", atPrison)

	// Social work's copy has lost health: what it stored, and every read.
	stored, ok := storedCopy(t, sys, socialWorkAgency, rc.GetCaseId())
	if !ok {
		t.Fatalf("social work has no copy of %s left; want one without health", rc.GetCaseId())
	}
	if got := categoriesIn(stored); !slices.Equal(got, socialWorkGets) {
		t.Errorf("social work's stored copy after the withdrawal carries %v, want %v", got, socialWorkGets)
	}
	if protocol.StandingConsent(stored.GetConsents(), catHealth, socialWorkAgency) {
		t.Errorf("social work's stored copy still holds a standing consent to health: %v", stored.GetConsents())
	}
	c, err := assistanceCase()
	if err != nil {
		t.Fatalf("GetAssistanceCase after the withdrawal: %v", err)
	}
	if got := categoriesIn(c); c.GetHealth() != nil || !slices.Equal(got, socialWorkGets) {
		t.Errorf("GetAssistanceCase after the withdrawal carries %v (health %v), want %v", got, c.GetHealth(), socialWorkGets)
	}
	if got := getHandover(t, sys.Handovers[socialWorkAgency], toSocial).GetReleaseCase(); got.GetHealth() != nil {
		t.Errorf("social work GetHandover.release_case after the withdrawal still has health %v", got.GetHealth())
	}

	// Probation's consent was never needed, nor withdrawn: it keeps health.
	if c, err := supervisionCase(); err != nil || !proto.Equal(c.GetHealth(), rc.GetHealth()) {
		t.Errorf("probation's case after the withdrawal: health %v, err %v; want it kept", c.GetHealth(), err)
	}
	if stored, _ := storedCopy(t, sys, probationAgency, rc.GetCaseId()); !proto.Equal(stored.GetHealth(), rc.GetHealth()) {
		t.Errorf("probation's stored copy after the withdrawal: health %v, want it kept", stored.GetHealth())
	}
	if h := getHandover(t, sys.Handovers[prisonAgency], toProbation).GetHandover(); count(h, receiptPurge) != 0 {
		t.Errorf("prison: handover to probation has receipts %v, want no PURGED", receiptTypes(h))
	}

	// Social work's ledger records the purge; the prison's the health it shared.
	purged := filterKind(listDisclosures(t, socialAudit, &throughcarev1.ListDisclosuresRequest{CaseId: rc.GetCaseId()}), kindPurged)
	if len(purged) != 1 {
		t.Fatalf("social work ledger: got %d PURGED entries, want 1: %v", len(purged), purged)
	}
	p := purged[0]
	if p.GetSender() != prisonAgency || p.GetRecipient() != socialWorkAgency || !slices.Equal(p.GetWithheldCategories(), []throughcarev1.DataCategory{catHealth}) ||
		p.GetActor() != "prison-worker-2" || p.GetEventId() == "" || p.GetProtocolId() != protocol.Default().ID() || p.GetTime() == nil {
		t.Errorf("social work PURGED entry: got %v; want health purged on prison-worker-2's withdrawal, from the prison", prototext.Format(p))
	}
	checkLedgerIntact(t, sys, socialWorkAgency, 1)
	shared := filterKind(listDisclosures(t, prisonAudit, &throughcarev1.ListDisclosuresRequest{CaseId: rc.GetCaseId()}), kindShared)
	for _, d := range shared {
		if !slices.Contains(d.GetSharedCategories(), catHealth) {
			t.Errorf("prison ledger: the disclosure to %s shared %v, want health among them", d.GetRecipient(), d.GetSharedCategories())
		}
		if d.GetRecipient() == socialWorkAgency {
			checkWithholdings(t, "prison ledger, to social work with consent", d.GetWithholdings(), withConsent)
		}
	}
	if len(shared) != 2 {
		t.Errorf("prison ledger: got %d SHARED entries, want 2 (social work, probation)", len(shared))
	}
}

// TestReceiverRefusesForbiddenCategory publishes, as the prison's outbox would, a
// well-formed referral to social work whose case carries a risk assessment, which social
// work may never have: social work stores nothing, dead-letters the event and records the
// refusal. The same referral without the risk assessment is delivered.
func TestReceiverRefusesForbiddenCategory(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	socialAudit := auditClient(t, sys, socialWorkAgency)

	// A case cut down to what social work may have, plus the risk assessment.
	rc := openCaseN(t, sys.Prison, 1)
	withRisk := proto.CloneOf(rc)
	withRisk.Revision = 0
	withRisk.Sentence, withRisk.Health, withRisk.SubstanceUse, withRisk.Behaviour, withRisk.Extremism = nil, nil, nil, nil, nil
	if got, want := categoriesIn(withRisk), slices.Sorted(slices.Values(append(slices.Clone(socialWorkGets), catRisk))); !slices.Equal(got, want) {
		t.Fatalf("forged case carries %v, want %v", got, want)
	}
	forged := socialWorkReferralEvent(withRisk)
	// A control: another case, within the rule.
	ok := openCaseN(t, sys.Prison, 2)
	allowed := proto.CloneOf(ok)
	allowed.Revision = 0
	allowed.Sentence, allowed.Health, allowed.SubstanceUse, allowed.Behaviour, allowed.Risk, allowed.Extremism = nil, nil, nil, nil, nil, nil
	control := socialWorkReferralEvent(allowed)

	for _, ev := range []*throughcarev1.Event{forged, control} {
		// Signed with the prison's own key: the event is authentic, only its content is wrong.
		if err := signing.Sign(ev, sys.cfg[prisonAgency].SigningKey); err != nil {
			t.Fatalf("sign %s: %v", ev.GetEventId(), err)
		}
		msg, err := eventbus.Encode(ev)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		if msg.Subject != socialWorkReferral {
			t.Fatalf("referral subject: got %s, want %s", msg.Subject, socialWorkReferral)
		}
		if _, err := sys.JS[prisonAgency].PublishMsg(ctx, msg); err != nil {
			t.Fatalf("publish %s: %v", ev.GetEventId(), err)
		}
	}

	// Dead-lettered at social work, naming the event and the category, nothing personal.
	var dead []*throughcarev1.DeadLetter
	eventually(t, 20*time.Second, func() (bool, string) {
		resp, err := sys.Handovers[socialWorkAgency].ListDeadLetters(ctx, &throughcarev1.ListDeadLettersRequest{})
		dead = resp.GetDeadLetters()
		return err == nil && len(dead) > 0, fmt.Sprintf("social work dead letters: got %v, %v; want the forged referral", dead, err)
	})
	if len(dead) != 1 || dead[0].GetEventId() != forged.GetEventId() || dead[0].GetSubject() != socialWorkReferral || dead[0].GetDeliveries() != 1 {
		t.Fatalf("social work dead letters: got %v; want only event %s on %s, after one delivery", dead, forged.GetEventId(), socialWorkReferral)
	}
	if reason := dead[0].GetReason(); !strings.Contains(reason, "RISK") || !strings.Contains(reason, forged.GetEventId()) {
		t.Errorf("dead letter reason %q: want it to name the event and RISK", reason)
	}
	if text := prototext.Format(dead[0]); strings.Contains(text, "Kovač") || strings.Contains(text, rc.GetPerson().GetPrisonNumber()) || strings.Contains(text, rc.GetRisk().GetSummary()) {
		t.Errorf("dead letter carries personal data: %s", text)
	}

	// The control is delivered, so the inbox got past the forged one; the forged one left nothing.
	eventually(t, 20*time.Second, func() (bool, string) {
		_, err := sys.Handovers[socialWorkAgency].GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: control.GetHandoverId()})
		return err == nil, fmt.Sprintf("social work: control handover %s: %v; want it delivered", control.GetHandoverId(), err)
	})
	if _, err := sys.Handovers[socialWorkAgency].GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: forged.GetHandoverId()}); status.Code(err) != codes.NotFound {
		t.Errorf("social work: forged handover %s: got %v, want NotFound", forged.GetHandoverId(), err)
	}
	if _, err := sys.SocialWork.GetAssistanceCase(ctx, &throughcarev1.GetAssistanceCaseRequest{CaseId: rc.GetCaseId()}); status.Code(err) != codes.NotFound {
		t.Errorf("social work: case %s of the forged referral: got %v, want NotFound", rc.GetCaseId(), err)
	}
	if stored, found := storedCopy(t, sys, socialWorkAgency, rc.GetCaseId()); found {
		t.Errorf("social work stored the forged case: %v", stored)
	}
	if in := listAll(t, sys.Handovers[socialWorkAgency], &throughcarev1.ListHandoversRequest{Direction: incoming}); len(in) != 1 || in[0].GetHandoverId() != control.GetHandoverId() {
		t.Errorf("social work incoming: got %v, want only the control %s", in, control.GetHandoverId())
	}

	// The refusal is in social work's ledger.
	entries := listDisclosures(t, socialAudit, &throughcarev1.ListDisclosuresRequest{CaseId: rc.GetCaseId()})
	if len(entries) != 1 {
		t.Fatalf("social work ledger for case %s: got %d entries, want the refusal: %v", rc.GetCaseId(), len(entries), entries)
	}
	r := entries[0]
	if r.GetKind() != kindRefused || r.GetEventId() != forged.GetEventId() || r.GetSender() != prisonAgency || r.GetRecipient() != socialWorkAgency ||
		r.GetPurpose() != purposeAssistance || !slices.Equal(r.GetWithheldCategories(), []throughcarev1.DataCategory{catRisk}) ||
		r.GetProtocolId() != protocol.Default().ID() || r.GetTime() == nil || len(r.GetSharedCategories()) != 0 {
		t.Errorf("social work ledger entry: got %v; want REFUSED of event %s from the prison for RISK", prototext.Format(r), forged.GetEventId())
	}
	if !strings.Contains(r.GetNote(), forged.GetEventId()) || strings.Contains(r.GetNote(), "Kovač") {
		t.Errorf("refusal note %q: want it to name event %s and nothing personal", r.GetNote(), forged.GetEventId())
	}
	all := listDisclosures(t, socialAudit, &throughcarev1.ListDisclosuresRequest{CaseId: ok.GetCaseId()})
	if got := slices.DeleteFunc(all, func(d *throughcarev1.Disclosure) bool { return d.GetKind() == kindRetrieved }); len(got) != 0 {
		t.Errorf("social work ledger for the control case: got %v, want nothing but its first read", got)
	}
	checkLedgerIntact(t, sys, socialWorkAgency, 1)
}

// TestRetentionRemovesExpiredCopies runs a protocol that lets probation keep what the
// prison sends for one second: probation removes its copy once that has run out from
// delivery, and records the removal; social work, with years to go, keeps its copy.
func TestRetentionRemovesExpiredCopies(t *testing.T) {
	const retention = time.Second
	p := protocolWithRetention(t, prisonAgency, probationAgency, purposeSupervision, retention)
	var opts []systemOption
	for _, a := range allAgencies {
		opts = append(opts, withConfig(a, func(c *handover.Config) {
			c.Protocol = p
			c.DeadlineScanInterval = 50 * time.Millisecond
		}))
	}
	sys := newSystem(t, opts...)
	ctx := testCtx(t)
	probationAudit := auditClient(t, sys, probationAgency)
	rc := openCase(t, sys.Prison)
	toProbation := refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision).GetHandoverId()
	refer(t, sys, rc.GetCaseId(), socialWorkAgency, purposeAssistance)

	var expired []*throughcarev1.Disclosure
	eventually(t, 20*time.Second, func() (bool, string) {
		all, err := tryListDisclosures(ctx, probationAudit, &throughcarev1.ListDisclosuresRequest{CaseId: rc.GetCaseId()})
		expired = filterKind(all, kindExpired)
		return err == nil && len(expired) > 0, fmt.Sprintf("probation ledger: got %v, %v; want an EXPIRED entry", all, err)
	})
	if _, err := sys.Probation.GetSupervisionCase(ctx, &throughcarev1.GetSupervisionCaseRequest{CaseId: rc.GetCaseId()}); status.Code(err) != codes.NotFound {
		t.Errorf("probation GetSupervisionCase after expiry: got %v, want NotFound", err)
	}
	if stored, found := storedCopy(t, sys, probationAgency, rc.GetCaseId()); found {
		t.Errorf("probation still stores case %s after expiry: %v", rc.GetCaseId(), stored)
	}
	checkNoHistory(t, sys, probationAgency, rc.GetCaseId())

	// The handover stays, without the case, and says when the copy was delivered.
	atProbation := getHandover(t, sys.Handovers[probationAgency], toProbation)
	if atProbation.GetReleaseCase() != nil {
		t.Errorf("probation GetHandover after expiry carries a case: %v", atProbation.GetReleaseCase())
	}
	receipts := atProbation.GetHandover().GetReceipts()
	if len(receipts) == 0 || receipts[0].GetType() != receiptDelivered {
		t.Fatalf("probation: handover %s receipts %v, want DELIVERED first", toProbation, receiptTypes(atProbation.GetHandover()))
	}
	delivered := receipts[0].GetTime().AsTime()

	if len(expired) != 1 {
		t.Errorf("probation ledger: got %d EXPIRED entries, want 1: %v", len(expired), expired)
	}
	e := expired[0]
	if e.GetSender() != prisonAgency || e.GetRecipient() != probationAgency || e.GetProtocolId() != p.ID() || e.GetProtocolVersion() != p.Version() ||
		!bytes.Equal(e.GetPersonHash(), sys.cfg[prisonAgency].PersonKey.Hash(rc.GetPerson().GetPrisonNumber())) || e.GetNote() == "" {
		t.Errorf("probation EXPIRED entry: got %v; want case %s from the prison under %s v%d, with the person's hash and a note", prototext.Format(e), rc.GetCaseId(), p.ID(), p.Version())
	}
	if at := e.GetTime().AsTime(); at.Before(delivered.Add(retention)) {
		t.Errorf("probation removed its copy at %v, before the retention of %s from delivery at %v ran out", at, retention, delivered)
	}
	checkLedgerIntact(t, sys, probationAgency, 1)

	// Social work's rule keeps the default years: its copy stays.
	if _, err := sys.SocialWork.GetAssistanceCase(ctx, &throughcarev1.GetAssistanceCaseRequest{CaseId: rc.GetCaseId()}); err != nil {
		t.Errorf("social work GetAssistanceCase: got %v, want its copy kept", err)
	}
	if got := filterKind(listDisclosures(t, auditClient(t, sys, socialWorkAgency), &throughcarev1.ListDisclosuresRequest{CaseId: rc.GetCaseId()}), kindExpired); len(got) != 0 {
		t.Errorf("social work ledger: got EXPIRED entries %v, want none", got)
	}
}

// TestSubjectAccessReport refers two cases of one person to probation and social work,
// and a third person's case besides: the prison's ledger lists, by prison number, the four
// disclosures about the person and no other, oldest first, the same over pages.
func TestSubjectAccessReport(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	prisonAudit := auditClient(t, sys, prisonAgency)
	first, second := openCaseN(t, sys.Prison, 7), openCaseN(t, sys.Prison, 7)
	other := openCaseN(t, sys.Prison, 8)
	number := first.GetPerson().GetPrisonNumber()
	if second.GetPerson().GetPrisonNumber() != number || other.GetPerson().GetPrisonNumber() == number || first.GetCaseId() == second.GetCaseId() {
		t.Fatalf("cases: %s and %s of %s, %s of %s; want two cases of one person and one of another",
			first.GetCaseId(), second.GetCaseId(), number, other.GetCaseId(), other.GetPerson().GetPrisonNumber())
	}
	type flow struct {
		caseID    string
		recipient string
	}
	var want []flow
	for _, rc := range []*throughcarev1.ReleaseCase{first, second} {
		refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision)
		refer(t, sys, rc.GetCaseId(), socialWorkAgency, purposeAssistance)
		want = append(want, flow{rc.GetCaseId(), probationAgency}, flow{rc.GetCaseId(), socialWorkAgency})
	}
	refer(t, sys, other.GetCaseId(), probationAgency, purposeSupervision)

	// The other person's referral is recorded too before the report is read, so it could
	// show up in the wrong place.
	var all []*throughcarev1.Disclosure
	eventually(t, 20*time.Second, func() (bool, string) {
		mine, err := tryListDisclosures(ctx, prisonAudit, &throughcarev1.ListDisclosuresRequest{PrisonNumber: number})
		if err != nil {
			return false, err.Error()
		}
		theirs, err := tryListDisclosures(ctx, prisonAudit, &throughcarev1.ListDisclosuresRequest{CaseId: other.GetCaseId()})
		all = mine
		return err == nil && len(mine) >= len(want) && len(theirs) == 1,
			fmt.Sprintf("prison ledger: %d entries for %s, %d for case %s, err %v; want %d and 1", len(mine), number, len(theirs), other.GetCaseId(), err, len(want))
	})
	var got []flow
	for i, d := range all {
		got = append(got, flow{d.GetCaseId(), d.GetRecipient()})
		if d.GetKind() != kindShared || !bytes.Equal(d.GetPersonHash(), sys.cfg[prisonAgency].PersonKey.Hash(number)) {
			t.Errorf("entry %d: kind %s, person hash %x; want SHARED about %s", i, d.GetKind(), d.GetPersonHash(), number)
		}
		// Oldest first is the ledger's own order, its sequence. (Not its times: each entry is
		// stamped before it waits for the ledger, so two relayed at once may swap.)
		if i > 0 && d.GetSequence() <= all[i-1].GetSequence() {
			t.Errorf("entry %d has sequence %d after sequence %d: want oldest first", i, d.GetSequence(), all[i-1].GetSequence())
		}
	}
	byFlow := func(a, b flow) int {
		return strings.Compare(a.caseID+a.recipient, b.caseID+b.recipient)
	}
	if slices.SortFunc(got, byFlow); !slices.Equal(got, slices.SortedFunc(slices.Values(want), byFlow)) {
		t.Errorf("subject-access report for %s: got disclosures %v, want %v", number, got, want)
	}

	// Every page size gives the same entries; a number typed in lower case finds the same person.
	for _, size := range []int32{1, 3, 4} {
		var paged []*throughcarev1.Disclosure
		req := &throughcarev1.ListDisclosuresRequest{PrisonNumber: number, PageSize: size}
		for pages := 0; ; pages++ {
			if pages > len(all) {
				t.Fatalf("page size %d: more than %d pages", size, len(all))
			}
			resp, err := prisonAudit.ListDisclosures(ctx, req)
			if err != nil {
				t.Fatalf("page size %d: %v", size, err)
			}
			if len(resp.GetDisclosures()) > int(size) || (resp.GetNextPageToken() != "" && len(resp.GetDisclosures()) != int(size)) {
				t.Errorf("page size %d: got a page of %d with next token %q", size, len(resp.GetDisclosures()), resp.GetNextPageToken())
			}
			paged = append(paged, resp.GetDisclosures()...)
			if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
				break
			}
		}
		if !slices.EqualFunc(paged, all, protoEqual) {
			t.Errorf("page size %d: got %d entries %v, want the %d of one page", size, len(paged), paged, len(all))
		}
	}
	lower := listDisclosures(t, prisonAudit, &throughcarev1.ListDisclosuresRequest{PrisonNumber: strings.ToLower(number)})
	if !slices.EqualFunc(lower, all, protoEqual) {
		t.Errorf("report for %q: got %d entries, want the same %d as for %q", strings.ToLower(number), len(lower), len(all), number)
	}
	checkLedgerIntact(t, sys, prisonAgency, 5)
}

// TestSharingReadsAreCutAsOfNow restarts social work under a protocol that no longer lets
// the prison share family with it: every read of the copy it already holds leaves family
// out from then on, though the stored copy still has it.
func TestSharingReadsAreCutAsOfNow(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	rc := openCase(t, sys.Prison)
	id := refer(t, sys, rc.GetCaseId(), socialWorkAgency, purposeAssistance).GetHandoverId()
	eventually(t, 20*time.Second, func() (bool, string) {
		_, err := sys.Handovers[socialWorkAgency].GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: id})
		return err == nil, fmt.Sprintf("social work: handover %s: %v; want it delivered", id, err)
	})

	stricter := changedProtocol(t, "throughcare-no-family", prisonAgency, socialWorkAgency, purposeAssistance, func(r *throughcarev1.SharingRule) {
		r.Allowed = slices.DeleteFunc(r.Allowed, func(c throughcarev1.DataCategory) bool { return c == catFamily })
	})
	sys.Stop(socialWorkAgency)
	cfg := sys.cfg[socialWorkAgency]
	cfg.Protocol = stricter
	sys.cfg[socialWorkAgency] = cfg
	sys.Start(socialWorkAgency)
	if got, err := auditClient(t, sys, socialWorkAgency).GetSharingProtocol(ctx, &throughcarev1.GetSharingProtocolRequest{}); err != nil ||
		got.GetProtocol().GetProtocolId() != stricter.ID() || got.GetProtocol().GetVersion() != stricter.Version() {
		t.Fatalf("social work's protocol after the restart: got %v, %v; want %s v%d", got.GetProtocol().GetProtocolId(), err, stricter.ID(), stricter.Version())
	}

	// Only the read path can leave family out: the stored copy still has it.
	if stored, _ := storedCopy(t, sys, socialWorkAgency, rc.GetCaseId()); stored.GetFamily() == nil {
		t.Fatalf("social work's stored copy has no family: the reads below would prove nothing")
	}
	want := slices.DeleteFunc(slices.Clone(socialWorkGets), func(c throughcarev1.DataCategory) bool { return c == catFamily })
	one, err := sys.SocialWork.GetAssistanceCase(ctx, &throughcarev1.GetAssistanceCaseRequest{CaseId: rc.GetCaseId()})
	if err != nil {
		t.Fatalf("GetAssistanceCase: %v", err)
	}
	if got := categoriesIn(one.GetReleaseCase()); !slices.Equal(got, want) {
		t.Errorf("GetAssistanceCase under the stricter protocol carries %v, want %v", got, want)
	}
	list, err := sys.SocialWork.ListAssistanceCases(ctx, &throughcarev1.ListAssistanceCasesRequest{})
	if err != nil || len(list.GetReleaseCases()) != 1 {
		t.Fatalf("ListAssistanceCases: got %v, %v; want one case", list.GetReleaseCases(), err)
	}
	if got := categoriesIn(list.GetReleaseCases()[0]); !slices.Equal(got, want) {
		t.Errorf("ListAssistanceCases under the stricter protocol carries %v, want %v", got, want)
	}
	if got := categoriesIn(getHandover(t, sys.Handovers[socialWorkAgency], id).GetReleaseCase()); !slices.Equal(got, want) {
		t.Errorf("GetHandover.release_case under the stricter protocol carries %v, want %v", got, want)
	}
}

// TestSharingInboxesKeepNothingTheRecipientMayNotHave looks past the stores the services
// read, into the agencies' inbox streams, after a refusal, a consent withdrawal and an
// expiry: the inboxes are work queues, which forget each event once it is handled.
func TestSharingInboxesKeepNothingTheRecipientMayNotHave(t *testing.T) {
	p := protocolWithRetention(t, prisonAgency, probationAgency, purposeSupervision, time.Second)
	var opts []systemOption
	for _, a := range allAgencies {
		opts = append(opts, withConfig(a, func(c *handover.Config) { c.Protocol = p; c.DeadlineScanInterval = 50 * time.Millisecond }))
	}
	sys := newSystem(t, opts...)
	ctx := testCtx(t)
	rc := openCaseN(t, sys.Prison, 1)
	if _, err := sys.Prison.RecordConsent(ctx, &throughcarev1.RecordConsentRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Category: catHealth, Recipient: socialWorkAgency}); err != nil {
		t.Fatalf("record consent: %v", err)
	}
	refer(t, sys, rc.GetCaseId(), socialWorkAgency, purposeAssistance)
	refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision)
	eventually(t, 20*time.Second, func() (bool, string) {
		stored, _ := storedCopy(t, sys, socialWorkAgency, rc.GetCaseId())
		return stored.GetHealth() != nil, "social work's copy has no health yet"
	})
	if _, err := sys.Prison.WithdrawConsent(ctx, &throughcarev1.WithdrawConsentRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Category: catHealth, Recipient: socialWorkAgency}); err != nil {
		t.Fatalf("withdraw consent: %v", err)
	}
	forged := socialWorkReferralEvent(openCaseN(t, sys.Prison, 2)) // the whole case, risk and all
	if err := signing.Sign(forged, sys.cfg[prisonAgency].SigningKey); err != nil {
		t.Fatalf("sign: %v", err)
	}
	msg, err := eventbus.Encode(forged)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	if _, err := sys.JS[prisonAgency].PublishMsg(ctx, msg); err != nil {
		t.Fatalf("publish: %v", err)
	}
	waitLedgerKind(t, auditClient(t, sys, socialWorkAgency), rc.GetCaseId(), kindPurged)
	waitLedgerKind(t, auditClient(t, sys, probationAgency), rc.GetCaseId(), kindExpired)
	waitLedgerKind(t, auditClient(t, sys, socialWorkAgency), forged.GetCaseId(), kindRefused)

	for _, e := range inboxEvents(t, sys, socialWorkAgency) {
		if e.ev.GetEventId() == forged.GetEventId() {
			t.Errorf("INBOX_SOCIALWORK #%d still holds the refused event %s, carrying %v", e.seq, forged.GetEventId(), categoriesIn(e.ev))
		}
		if e.ev.GetCaseId() == rc.GetCaseId() && slices.Contains(categoriesIn(e.ev), catHealth) {
			t.Errorf("INBOX_SOCIALWORK #%d still holds health of case %s, after the consent was withdrawn and social work purged it (event %s)", e.seq, rc.GetCaseId(), e.ev.GetEventId())
		}
	}
	for _, e := range inboxEvents(t, sys, probationAgency) {
		if got := categoriesIn(e.ev); e.ev.GetCaseId() == rc.GetCaseId() && len(got) > 0 {
			t.Errorf("INBOX_PROBATION #%d still holds %v of case %s, after its retention ran out and probation removed its copy (event %s)", e.seq, got, rc.GetCaseId(), e.ev.GetEventId())
		}
	}
}

// waitLedgerKind waits until the agency's ledger has an entry of kind about caseID.
func waitLedgerKind(t testing.TB, client throughcarev1.AuditServiceClient, caseID string, kind throughcarev1.DisclosureKind) {
	t.Helper()
	eventually(t, 20*time.Second, func() (bool, string) {
		all, err := tryListDisclosures(testCtx(t), client, &throughcarev1.ListDisclosuresRequest{CaseId: caseID})
		return err == nil && len(filterKind(all, kind)) > 0, fmt.Sprintf("ledger for case %s: got %v, %v; want a %s entry", caseID, all, err, kind)
	})
}

type inboxEvent struct {
	seq uint64
	ev  *throughcarev1.Event
}

// inboxEvents decodes every message agency's inbox stream still holds.
func inboxEvents(t testing.TB, sys *system, agency string) []inboxEvent {
	t.Helper()
	ctx := testCtx(t)
	stream, err := sys.JS[agency].Stream(ctx, eventbus.InboxStream(agency))
	if err != nil {
		t.Fatalf("%s: %v", eventbus.InboxStream(agency), err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("%s: %v", eventbus.InboxStream(agency), err)
	}
	var out []inboxEvent
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("%s #%d: %v", eventbus.InboxStream(agency), seq, err)
		}
		ev := new(throughcarev1.Event)
		if err := proto.Unmarshal(m.Data, ev); err != nil {
			continue // not an event: nothing of a case to find
		}
		out = append(out, inboxEvent{seq, ev})
	}
	return out
}

// auditClient is the AuditService of agency's first process.
func auditClient(t testing.TB, sys *system, agency string) throughcarev1.AuditServiceClient {
	t.Helper()
	return throughcarev1.NewAuditServiceClient(sys.dialAs(agency, agency))
}

// listDisclosures lists every ledger entry req matches, over every page.
func listDisclosures(t testing.TB, client throughcarev1.AuditServiceClient, req *throughcarev1.ListDisclosuresRequest) []*throughcarev1.Disclosure {
	t.Helper()
	all, err := tryListDisclosures(testCtx(t), client, req)
	if err != nil {
		t.Fatalf("list disclosures %v: %v", req, err)
	}
	return all
}

func tryListDisclosures(ctx context.Context, client throughcarev1.AuditServiceClient, req *throughcarev1.ListDisclosuresRequest) ([]*throughcarev1.Disclosure, error) {
	req = proto.CloneOf(req)
	var all []*throughcarev1.Disclosure
	for {
		resp, err := client.ListDisclosures(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, d := range resp.GetDisclosures() {
			// Every successful write is recorded too; these tests look at disclosures.
			if d.GetKind() != throughcarev1.DisclosureKind_DISCLOSURE_KIND_WRITE {
				all = append(all, d)
			}
		}
		if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
			return all, nil
		}
	}
}

// checkLedgerIntact fails unless the agency's ledger verifies, holding entries entries.
// checkLedgerIntact verifies agency's ledger and counts the entries other than WRITE ones
// (every successful write is recorded too; these tests look at what left or was refused).
func checkLedgerIntact(t testing.TB, sys *system, agency string, entries int) {
	t.Helper()
	v, err := auditClient(t, sys, agency).VerifyLedger(testCtx(t), &throughcarev1.VerifyLedgerRequest{})
	if err != nil {
		t.Fatalf("%s VerifyLedger: %v", agency, err)
	}
	book, err := ledger.Open(testCtx(t), sys.JS[agency], agency, 1)
	if err != nil {
		t.Fatalf("open %s ledger: %v", agency, err)
	}
	got, _, _, err := book.List(testCtx(t), nil, func(d *throughcarev1.Disclosure) bool {
		return d.GetKind() != throughcarev1.DisclosureKind_DISCLOSURE_KIND_WRITE && d.GetKind() != throughcarev1.DisclosureKind_DISCLOSURE_KIND_RETRIEVED
	}, 0, 1000)
	if err != nil {
		t.Fatalf("list %s ledger: %v", agency, err)
	}
	if !v.GetIntact() || len(got) != entries {
		t.Errorf("%s ledger: got intact %v, %d entries besides writes and first reads (problem %q); want intact with %d", agency, v.GetIntact(), len(got), v.GetProblem(), entries)
	}
}

func filterKind(ds []*throughcarev1.Disclosure, kind throughcarev1.DisclosureKind) []*throughcarev1.Disclosure {
	var out []*throughcarev1.Disclosure
	for _, d := range ds {
		if d.GetKind() == kind {
			out = append(out, d)
		}
	}
	return out
}

func protoEqual[M proto.Message](a, b M) bool { return proto.Equal(a, b) }

// checkWithholdings fails unless got is want: the same categories, reasons and order.
func checkWithholdings(t testing.TB, what string, got, want []*throughcarev1.Withholding) {
	t.Helper()
	if !slices.EqualFunc(got, want, protoEqual) {
		t.Errorf("%s: got %v, want %v", what, got, want)
	}
}

func withheldOf(ws []*throughcarev1.Withholding) []throughcarev1.DataCategory {
	var out []throughcarev1.DataCategory
	for _, w := range ws {
		out = append(out, w.GetCategory())
	}
	return out
}

// categoriesIn lists, in enum order, the data categories of the fields set in m, read from
// the contract's markers alone: a categorized field counts whole, a routing container is
// looked into (well-known types such as Timestamp are values, not containers). A set field
// with neither marker counts as DATA_CATEGORY_UNSPECIFIED, since nothing vouches for it.
func categoriesIn(m proto.Message) []throughcarev1.DataCategory {
	found := map[throughcarev1.DataCategory]bool{}
	var walk func(protoreflect.Message)
	inside := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) {
		md := fd.Message()
		if fd.IsMap() {
			md = fd.MapValue().Message()
		}
		if md == nil || md.ParentFile().Package() == "google.protobuf" {
			return
		}
		switch {
		case fd.IsMap():
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { walk(mv.Message()); return true })
		case fd.IsList():
			for i := range v.List().Len() {
				walk(v.List().Get(i).Message())
			}
		default:
			walk(v.Message())
		}
	}
	walk = func(m protoreflect.Message) {
		if len(m.GetUnknown()) > 0 {
			found[throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED] = true
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch marker := protocol.MarkerOf(fd); {
			case marker.Category != throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED:
				found[marker.Category] = true
			case marker.Routing:
				inside(fd, v)
			default:
				found[throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED] = true
			}
			return true
		})
	}
	if m == nil || !m.ProtoReflect().IsValid() {
		return nil
	}
	walk(m.ProtoReflect())
	var out []throughcarev1.DataCategory
	for c := range found {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// storedCopy reads agency's stored copy of a case straight from its bucket, as no read
// path cuts it down.
func storedCopy(t testing.TB, sys *system, agency string, caseID string) (*throughcarev1.ReleaseCase, bool) {
	t.Helper()
	ctx := testCtx(t)
	kv, err := sys.JS[agency].KeyValue(ctx, agency+"_cases")
	if err != nil {
		t.Fatalf("%s cases bucket: %v", agency, err)
	}
	entry, err := kv.Get(ctx, caseID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("%s: read case %s: %v", agency, caseID, err)
	}
	rc := new(throughcarev1.ReleaseCase)
	if err := proto.Unmarshal(entry.Value(), rc); err != nil {
		t.Fatalf("%s: decode case %s: %v", agency, caseID, err)
	}
	return rc, true
}

// checkNoHistory fails if agency's bucket still holds any revision of the case with data.
func checkNoHistory(t testing.TB, sys *system, agency string, caseID string) {
	t.Helper()
	ctx := testCtx(t)
	kv, err := sys.JS[agency].KeyValue(ctx, agency+"_cases")
	if err != nil {
		t.Fatalf("%s cases bucket: %v", agency, err)
	}
	history, err := kv.History(ctx, caseID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return
	}
	if err != nil {
		t.Fatalf("%s: history of case %s: %v", agency, caseID, err)
	}
	for _, e := range history {
		if e.Operation() == jetstream.KeyValuePut || len(e.Value()) > 0 {
			t.Errorf("%s: case %s still has revision %d with %d bytes in its history", agency, caseID, e.Revision(), len(e.Value()))
		}
	}
}

// socialWorkReferralEvent is a referral of rc from the prison to social work for
// post-penal assistance, well-formed in every way but built by the test.
func socialWorkReferralEvent(rc *throughcarev1.ReleaseCase) *throughcarev1.Event {
	h := &throughcarev1.Handover{
		HandoverId: ids.New(ids.Handover), CaseId: rc.GetCaseId(), Sender: prisonAgency, Recipient: socialWorkAgency,
		Purpose: purposeAssistance, State: stateReferred, Revision: 1, CreateTime: timestamppb.Now(), UpdateTime: timestamppb.Now(),
	}
	return &throughcarev1.Event{
		EventId: ids.New(ids.Event), Type: throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED,
		Source: prisonAgency, Recipient: socialWorkAgency, CaseId: rc.GetCaseId(), HandoverId: h.GetHandoverId(),
		OccurredAt: timestamppb.Now(), Purpose: purposeAssistance, Actor: "prison-worker-1",
		ProtocolId: protocol.Default().ID(), ProtocolVersion: protocol.Default().Version(),
		Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{Handover: h, ReleaseCase: proto.CloneOf(rc)}},
	}
}

// protocolWithRetention is the default protocol with the retention of one rule changed,
// written out as text and read back with protocol.Parse, as a protocol file would be.
func protocolWithRetention(t testing.TB, sender, recipient string, purpose throughcarev1.Purpose, retention time.Duration) *protocol.Protocol {
	t.Helper()
	p := changedProtocol(t, "throughcare-retention-test", sender, recipient, purpose, func(r *throughcarev1.SharingRule) {
		r.Retention = durationpb.New(retention)
	})
	if r, _ := p.Rule(sender, recipient, purpose); r.GetRetention().AsDuration() != retention {
		t.Fatalf("parsed protocol: rule %v, want retention %s", r, retention)
	}
	return p
}

// changedProtocol is the default protocol under another id, version 2, with the one rule
// for (sender, recipient, purpose) changed by change, written out as text and read back
// with protocol.Parse, as a protocol file would be.
func changedProtocol(t testing.TB, id string, sender, recipient string, purpose throughcarev1.Purpose, change func(*throughcarev1.SharingRule)) *protocol.Protocol {
	t.Helper()
	sp := protocol.Default().Proto()
	sp.ProtocolId, sp.Version = id, 2
	changed := 0
	for _, r := range sp.GetRules() {
		if r.GetSender() == sender && r.GetRecipient() == recipient && r.GetPurpose() == purpose {
			change(r)
			changed++
		}
	}
	if changed != 1 {
		t.Fatalf("default protocol has %d rules from %s to %s for %s, want 1", changed, sender, recipient, purpose)
	}
	text, err := prototext.MarshalOptions{Multiline: true}.Marshal(sp)
	if err != nil {
		t.Fatalf("write protocol: %v", err)
	}
	p, err := protocol.Parse(id+".textproto", text)
	if err != nil {
		t.Fatalf("parse protocol:\n%s\n%v", text, err)
	}
	return p
}

// TestACopyIsReadUnderTheLatestHandoverThatBroughtIt: social work holds a case from the
// prison (assistance, here without contact) and then from probation (coordination, with
// contact). Every read, the prison's earlier handover included, cuts the copy as the latest
// rule allows: contact in.
func TestACopyIsReadUnderTheLatestHandoverThatBroughtIt(t *testing.T) {
	noContact := changedProtocol(t, "throughcare-no-contact", prisonAgency, socialWorkAgency, purposeAssistance, func(r *throughcarev1.SharingRule) {
		r.Allowed = slices.DeleteFunc(r.Allowed, func(c throughcarev1.DataCategory) bool { return c == catContact })
	})
	sys := newSystem(t, withProtocol(noContact))
	rc := openCase(t, sys.Prison)
	fromPrison := refer(t, sys, rc.GetCaseId(), socialWorkAgency, purposeAssistance).GetHandoverId()
	waitState(t, sys.Handovers[prisonAgency], fromPrison, stateDelivered)
	if got := getHandover(t, sys.Handovers[socialWorkAgency], fromPrison).GetReleaseCase(); got.GetContact() != nil {
		t.Fatalf("social work reads contact under a rule without it: %v", got.GetContact())
	}

	toProbation := refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision).GetHandoverId()
	waitState(t, sys.Handovers[prisonAgency], toProbation, stateDelivered)
	fromProbation := referFrom(t, sys, probationAgency, rc.GetCaseId(), socialWorkAgency, purposeCoordinate).GetHandoverId()
	waitState(t, sys.Handovers[probationAgency], fromProbation, stateDelivered)

	for _, id := range []string{fromPrison, fromProbation} {
		if got := getHandover(t, sys.Handovers[socialWorkAgency], id).GetReleaseCase(); got.GetContact() == nil {
			t.Errorf("social work reads handover %s's case without contact, though the latest rule, coordination, allows it", id)
		}
	}
}

// TestReferralBodyIsReadableOnlyUntilAcknowledged: a referral reaches probation's inbox as
// a notice without personal data, probation reads the referral from the prison's outbox,
// and once its receipt has reached the prison the prison deletes it there, so probation
// can read it no more (after a consent is withdrawn, say).
func TestReferralBodyIsReadableOnlyUntilAcknowledged(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	prisonSent := watchSent(t, sys, prisonAgency)
	rc := openCase(t, sys.Prison)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision).GetHandoverId()
	waitState(t, sys.Handovers[prisonAgency], id, stateDelivered)

	const subject = "tc.prison.out.probation.handover_referred"
	sent := prisonSent.last(t, subject)
	if sent.GetHandoverId() != id || sent.GetHandoverReferred().GetReleaseCase().GetPerson() == nil {
		t.Fatalf("the prison sent %v for handover %s; want the referral of %s with the person", sent.GetType(), sent.GetHandoverId(), id)
	}
	outbox, err := sys.JS[prisonAgency].Stream(ctx, eventbus.OutboxStream(prisonAgency))
	if err != nil {
		t.Fatal(err)
	}
	notice, err := outbox.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatalf("the notice in the prison's outbox: %v", err)
	}
	if !eventbus.IsNotice(notice.Header, notice.Data) {
		t.Fatalf("the prison's outbox sent the referral whole (%d bytes) on %s, not as a notice", len(notice.Data), subject)
	}
	_, err = eventbus.FetchBody(ctx, sys.JS[probationAgency].Conn(), eventbus.AccountPerAgency, probationAgency, notice.Subject, notice.Header)
	if !errors.Is(err, eventbus.ErrBodyNotFound) {
		t.Errorf("probation reads the referral after acknowledging it: %v; want %v", err, eventbus.ErrBodyNotFound)
	}
	if body := eventbus.BodySubject(prisonAgency, probationAgency, sent.GetEventId()); prisonSent.count(body) != 1 {
		t.Errorf("the prison stored %d bodies on %s, want 1", prisonSent.count(body), body)
	}
}
