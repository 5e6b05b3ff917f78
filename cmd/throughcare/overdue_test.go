package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/handover"
)

// reachAsOperator points an operator command at the test system's agencies, with the
// operator certificate.
func reachAsOperator(sys *system, cfg *operatorConfig) {
	var addrs []string
	for _, a := range sys.Agencies.IDs() {
		addrs = append(addrs, a+"="+sys.nodes[a][0].addr)
	}
	cfg.Addrs = strings.Join(addrs, ",")
	cfg.TLSCA = sys.Certs.CAFile()
	cfg.TLSCert, cfg.TLSKey = sys.Certs.ClientFiles(certs.Operator)
}

// overdueReport is `throughcare handovers overdue` against the test system, with the
// operator certificate.
func overdueReport(t *testing.T, sys *system, args ...string) string {
	t.Helper()
	cfg, err := parseOverdueConfig(append([]string{"overdue"}, args...), func(string) string { return "" }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	reachAsOperator(sys, &cfg.operatorConfig)
	var out bytes.Buffer
	if err := runOverdue(testCtx(t), cfg, &out); err != nil {
		t.Fatalf("handovers overdue: %v", err)
	}
	return out.String()
}

// TestOperatorListsOverdueHandoversAtEveryAgency: with the operator certificate, the
// overdue report shows a late acknowledgement at both ends, and not the handover that is
// on time, nor anything of the person.
func TestOperatorListsOverdueHandoversAtEveryAgency(t *testing.T) {
	sys := newSystem(t, withConfig(probationAgency, func(c *handover.Config) { c.AcknowledgeWithin = 300 * time.Millisecond }))
	rc := openCase(t, sys.Prison)
	late := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	onTime := refer(t, sys, rc.GetCaseId(), socialWorkAgency, throughcarev1.Purpose_PURPOSE_POST_PENAL_ASSISTANCE).GetHandoverId()
	eventually(t, crossAgencyWait, func() (bool, string) {
		h := getHandover(t, sys.Handovers[prisonAgency], late).GetHandover()
		return h.GetAcknowledgeOverdue(), "prison: not yet marked overdue"
	})
	report := overdueReport(t, sys)
	rows := 0
	for _, line := range strings.Split(report, "\n") {
		if strings.Contains(line, late) {
			rows++
			if !strings.Contains(line, "acknowledge") || !strings.Contains(line, "prison → probation") {
				t.Errorf("row %q: want the acknowledge deadline of prison → probation", line)
			}
		}
	}
	if rows != 2 {
		t.Errorf("%d rows for %s, want 2 (prison outgoing, probation incoming):\n%s", rows, late, report)
	}
	if strings.Contains(report, onTime) {
		t.Errorf("the report shows %s, which is on time:\n%s", onTime, report)
	}
	for _, personal := range []string{rc.GetPerson().GetFamilyName(), rc.GetPerson().GetPrisonNumber(), "prison-worker-1"} {
		if strings.Contains(report, personal) {
			t.Errorf("the report shows %q", personal)
		}
	}
	if got := overdueReport(t, sys, "--agency", socialWorkAgency); strings.Contains(got, late) {
		t.Errorf("--agency socialwork shows %s:\n%s", late, got)
	}
	if got := overdueReport(t, sys, "--deadline", "accept"); strings.Contains(got, late) {
		t.Errorf("--deadline accept shows the late acknowledgement:\n%s", got)
	}
	if got := overdueReport(t, sys, "--min-age", "1h"); strings.Contains(got, late) {
		t.Errorf("--min-age 1h shows a deadline passed a moment ago:\n%s", got)
	}
}
