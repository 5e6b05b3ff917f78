package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/throughcare/throughcare/pkg/natsserver"
)

// streamsReport is `throughcare streams` against the test system, with its system and
// operator credentials.
func streamsReport(t *testing.T, sys *system) string {
	t.Helper()
	var out bytes.Buffer
	cfg := streamsConfig{NATSURL: sys.NATS.URL(), SystemSeed: sys.NATS.Creds.SeedFile(natsserver.SystemAccount), OperatorSeed: sys.NATS.Creds.SeedFile(natsserver.OperatorAccount)}
	if err := runStreams(testCtx(t), cfg, &out); err != nil {
		t.Fatalf("streams: %v", err)
	}
	return out.String()
}

// TestStreamsReportsEveryAccountsStreamsAndConsumers: after one referral the report shows
// each agency's outbox, inbox with its sources, buckets and consumers, and the operators'
// FLOW stream, and nothing of the person.
func TestStreamsReportsEveryAccountsStreamsAndConsumers(t *testing.T) {
	sys := newSystem(t)
	rc := openCase(t, sys.Prison)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision).GetHandoverId()
	waitState(t, sys.Handovers[prisonAgency], id, stateDelivered)
	report := streamsReport(t, sys)
	for _, want := range []string{
		"account PRISON", "account PROBATION", "account SOCIALWORK", "account OPERATOR",
		"OUTBOX_PRISON", "INBOX_PROBATION", "← source OUTBOX_PRISON", "KV_prison_handovers", "FLOW",
		"consumer probation-inbox", "consumer prison-outbox-relay",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("streams report lacks %q:\n%s", want, report)
		}
	}
	p := rc.GetPerson()
	for _, personal := range []string{rc.GetCaseId(), id, p.GetFamilyName(), p.GetPrisonNumber()} {
		if strings.Contains(report, personal) {
			t.Errorf("streams report shows %q", personal)
		}
	}
}
