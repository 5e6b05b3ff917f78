package main

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/signing"
)

// withPCVE is the shipped example protocol: the default one and a P/CVE coordination body.
const withPCVE = "../../deploy/protocol/with-pcve.textproto"

const pcveAgency = "pcve"

// TestFourthAgencyJoinsByConfigurationAlone runs `throughcare dev` with the example
// protocol: the P/CVE body, declared there and nowhere in code, gets its own certificates,
// NATS account, streams and signing key; receives a referral under its rule and only what
// that rule allows; is refused flows no rule covers; and cannot reach other agencies'
// streams, buckets or services.
func TestFourthAgencyJoinsByConfigurationAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dataDir := t.TempDir()
	cfg := testDevConfig(t, dataDir)
	cfg.Handover.ProtocolFile = withPCVE
	sys, err := startDev(ctx, zaptest.NewLogger(t), cfg)
	if err != nil {
		t.Fatalf("start dev: %v", err)
	}
	defer sys.Stop()

	var ids []string
	for _, a := range sys.agencies {
		ids = append(ids, a.agency)
	}
	if want := []string{prisonAgency, probationAgency, socialWorkAgency, pcveAgency}; !slices.Equal(ids, want) {
		t.Fatalf("dev runs %v, want %v", ids, want)
	}
	pcve := sys.agencies[3]
	var banner strings.Builder
	printDevBanner(&banner, cfg, sys)
	if !strings.Contains(banner.String(), "P/CVE coordination body") || !strings.Contains(banner.String(), pcve.Addr()) {
		t.Errorf("the banner does not show the P/CVE body at %s:\n%s", pcve.Addr(), banner.String())
	}

	// Its own certificates, naming its own identity.
	cert, key := sys.certs.ClientFiles(pcveAgency)
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatalf("P/CVE client certificate: %v", err)
	}
	if uris := pair.Leaf.URIs; len(uris) != 1 || uris[0].String() != certs.AgencyURI(pcveAgency) {
		t.Errorf("P/CVE client certificate names %v, want %s", uris, certs.AgencyURI(pcveAgency))
	}
	// Its own signing key, on everyone's keyring.
	signingKey, err := signing.LoadPrivateKey(filepath.Join(dataDir, "keys", "pcve.key"))
	if err != nil || signingKey.Agency != pcveAgency {
		t.Fatalf("P/CVE signing key: %v, %v", signingKey.Agency, err)
	}
	keyring, err := signing.LoadKeyring(filepath.Join(dataDir, "keys", "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if pub, ok := keyring.Lookup(signingKey.ID); !ok || pub.Agency != pcveAgency {
		t.Errorf("the keyring does not hold the P/CVE key %s", signingKey.ID)
	}
	// Its own NATS account and user.
	creds := natsserver.Credentials{Dir: devCredentialsDir(dataDir)}
	if st, err := os.Stat(creds.AgencySeedFile(pcveAgency)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("P/CVE seed: %v, %v; want a 0600 file", st, err)
	}
	opts, err := creds.ConnectOptions(pcveAgency)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(sys.nats.ClientURL(), append(opts, nats.MaxReconnects(0))...)
	if err != nil {
		t.Fatalf("connect as the P/CVE body: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	// Its inbox sources only the outbox of the one agency a rule links it with, and no
	// other inbox sources its outbox but that agency's.
	if got := inboxSources(t, js, pcveAgency); !slices.Equal(got, []string{eventbus.OutboxStream(prisonAgency)}) {
		t.Errorf("INBOX_PCVE sources %v, want only OUTBOX_PRISON", got)
	}
	probationJS := devJetStream(t, sys, creds, probationAgency)
	if got := inboxSources(t, probationJS, probationAgency); slices.Contains(got, eventbus.OutboxStream(pcveAgency)) {
		t.Errorf("INBOX_PROBATION sources %v: no rule links probation with the P/CVE body", got)
	}
	// Nothing of another agency is reachable with its credentials.
	for _, stream := range []string{"OUTBOX_PRISON", "INBOX_PRISON", "OUTBOX_PROBATION", "KV_prison_cases", "KV_socialwork_handovers"} {
		if _, err := js.Stream(ctx, stream); err == nil {
			t.Errorf("the P/CVE body's credentials opened %s", stream)
		}
	}
	if _, err := js.Stream(ctx, "INBOX_PCVE"); err != nil {
		t.Errorf("the P/CVE body's credentials cannot open its own inbox: %v", err)
	}

	// A referral under its rule: it gets identity, release plan and extremism risk, and
	// nothing about health, contact, family or money.
	prisonConn := dialDev(t, sys, sys.agencies[0])
	prisonCases := throughcarev1.NewCaseServiceClient(prisonConn)
	rc := openCase(t, throughcarev1.NewPrisonServiceClient(prisonConn))
	resp, err := prisonCases.ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(),
		Recipient: pcveAgency, Purpose: purposeCoordinate})
	if err != nil {
		t.Fatalf("refer to the P/CVE body: %v", err)
	}
	if !slices.Contains(resp.GetWithheldCategories(), catHealth) || slices.Contains(resp.GetWithheldCategories(), catExtremism) {
		t.Errorf("withheld from the P/CVE body: %v; want HEALTH withheld, EXTREMISM_RISK shared", resp.GetWithheldCategories())
	}
	handoverID := resp.GetHandover().GetHandoverId()
	waitState(t, throughcarev1.NewHandoverServiceClient(prisonConn), handoverID, stateDelivered)

	pcveConn := dialDev(t, sys, pcve)
	got, err := throughcarev1.NewCaseServiceClient(pcveConn).GetReceivedCase(ctx, &throughcarev1.GetReceivedCaseRequest{CaseId: rc.GetCaseId()})
	if err != nil {
		t.Fatalf("the P/CVE body reads its copy: %v", err)
	}
	copied := got.GetReleaseCase()
	if copied.GetPerson() == nil || copied.GetExtremism() == nil || copied.GetReleasePlan() == nil {
		t.Errorf("the P/CVE copy lacks what its rule allows: %v", copied)
	}
	if copied.GetHealth() != nil || copied.GetContact() != nil || copied.GetFamily() != nil || copied.GetFinanceId() != nil || copied.GetRisk() != nil {
		t.Errorf("the P/CVE copy holds what its rule does not allow: %v", copied)
	}
	pcveHandovers := throughcarev1.NewHandoverServiceClient(pcveConn)
	if _, err := pcveHandovers.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: "pcve-worker-1", HandoverId: handoverID}); err != nil {
		t.Fatalf("the P/CVE body acknowledges: %v", err)
	}
	waitState(t, throughcarev1.NewHandoverServiceClient(prisonConn), handoverID, stateAcknowledged)

	// Refused what no rule covers: another purpose, or passing the case on.
	_, err = prisonCases.ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Recipient: pcveAgency, Purpose: purposeSupervision})
	if code := status.Code(err); code != codes.PermissionDenied {
		t.Errorf("refer to the P/CVE body for supervision: %v; want PermissionDenied (no rule)", err)
	}
	_, err = throughcarev1.NewCaseServiceClient(pcveConn).ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "pcve-worker-1", CaseId: rc.GetCaseId(), Recipient: probationAgency, Purpose: purposeCoordinate})
	if code := status.Code(err); code != codes.PermissionDenied {
		t.Errorf("the P/CVE body passes the case to probation: %v; want PermissionDenied (no rule)", err)
	}
	// Its certificate opens its own service only.
	asPCVE := throughcarev1.NewCaseServiceClient(dialAgency(t, sys.agencies[0].Addr(), clientTLS(t, sys.certs, pcveAgency, prisonAgency)))
	if _, err := asPCVE.GetReceivedCase(ctx, &throughcarev1.GetReceivedCaseRequest{CaseId: rc.GetCaseId()}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("the P/CVE body's certificate at the prison's service: %v; want PermissionDenied", err)
	}
}

// TestProbationRefersToSocialWorkForCoordination: an agency that received a case refers
// its copy on, under its own rule: social work gets what the probation → social work
// coordination rule allows of what probation holds, and the receipts come back to
// probation. Referring it back to the prison, which holds the original, is refused.
func TestProbationRefersToSocialWorkForCoordination(t *testing.T) {
	sys := newSystem(t)
	rc := openCase(t, sys.Prison)
	toProbation := refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision)
	waitState(t, sys.Handovers[prisonAgency], toProbation.GetHandoverId(), stateDelivered)

	onward := referFrom(t, sys, probationAgency, rc.GetCaseId(), socialWorkAgency, purposeCoordinate)
	waitState(t, sys.Handovers[probationAgency], onward.GetHandoverId(), stateDelivered)
	got, err := sys.Cases[socialWorkAgency].GetReceivedCase(testCtx(t), &throughcarev1.GetReceivedCaseRequest{CaseId: rc.GetCaseId()})
	if err != nil {
		t.Fatalf("social work reads its copy: %v", err)
	}
	copied := got.GetReleaseCase()
	if copied.GetPerson() == nil || copied.GetContact() == nil || copied.GetReleasePlan() == nil || copied.GetOwner() != prisonAgency {
		t.Errorf("social work's copy lacks what coordination allows: %v", copied)
	}
	// Probation holds health, risk and legal data; coordination passes none of them on.
	if copied.GetHealth() != nil || copied.GetRisk() != nil || copied.GetSentence() != nil || copied.GetAccommodation() != nil {
		t.Errorf("social work's copy holds what coordination does not allow: %v", copied)
	}
	atSocialWork := getHandover(t, sys.Handovers[socialWorkAgency], onward.GetHandoverId()).GetHandover()
	if atSocialWork.GetSender() != probationAgency || atSocialWork.GetPurpose() != purposeCoordinate {
		t.Errorf("social work's view: from %s for %s, want from probation for coordination", atSocialWork.GetSender(), atSocialWork.GetPurpose())
	}
	waitState(t, sys.Handovers[probationAgency], onward.GetHandoverId(), stateRetrieved)

	_, err = sys.Cases[probationAgency].ReferCase(testCtx(t), &throughcarev1.ReferCaseRequest{Actor: "probation-worker-1", CaseId: rc.GetCaseId(), Recipient: prisonAgency, Purpose: purposeSupervision})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "recipient") {
		t.Errorf("probation refers the case back to the prison: %v; want InvalidArgument naming recipient", err)
	}
	// The prison's own case is not a copy it received.
	if _, err := sys.Cases[prisonAgency].GetReceivedCase(testCtx(t), &throughcarev1.GetReceivedCaseRequest{CaseId: rc.GetCaseId()}); status.Code(err) != codes.NotFound {
		t.Errorf("the prison reads its own case as received: %v; want NotFound", err)
	}
}

// inboxSources are the streams agency's inbox sources, by name.
func inboxSources(t *testing.T, js jetstream.JetStream, agency string) []string {
	t.Helper()
	s, err := js.Stream(testCtx(t), eventbus.InboxStream(agency))
	if err != nil {
		t.Fatalf("inbox of %s: %v", agency, err)
	}
	var names []string
	for _, src := range s.CachedInfo().Config.Sources {
		names = append(names, src.Name)
	}
	return names
}

// devJetStream is a JetStream connection to dev's server with agency's credentials.
func devJetStream(t *testing.T, sys *devSystem, creds natsserver.Credentials, agency string) jetstream.JetStream {
	t.Helper()
	opts, err := creds.ConnectOptions(agency)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(sys.nats.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", agency, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
