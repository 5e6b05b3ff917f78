package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads agency's first node's /metrics.
func scrape(t *testing.T, sys *system, agency string) ([]byte, map[string]*dto.MetricFamily) {
	t.Helper()
	addr := sys.nodes[agency][0].srv.MetricsAddr()
	if addr == "" {
		t.Fatalf("%s serves no metrics", agency)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %d %v", agency, resp.StatusCode, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse %s's metrics: %v", agency, err)
	}
	return body, families
}

// value is the value of the sample of family whose labels include want; -1 if none.
func value(families map[string]*dto.MetricFamily, family string, want map[string]string) float64 {
	f := families[family]
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// TestMetricsCountTheFlowWithoutPersonalData refers one case and reads both agencies'
// metrics: the events each sent and received, the referral's delivery time, the gRPC
// call, the consumers and sources; Prometheus conventions hold, and no label carries a
// case, a handover, a person or a worker.
func TestMetricsCountTheFlowWithoutPersonalData(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	rc := openCase(t, sys.Prison)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision).GetHandoverId()
	waitState(t, sys.Handovers[prisonAgency], id, stateDelivered)
	if err := acknowledge(ctx, sys.Handovers[probationAgency], id, "po-marko"); err != nil {
		t.Fatal(err)
	}
	waitState(t, sys.Handovers[prisonAgency], id, stateAcknowledged)

	var prison, probation map[string]*dto.MetricFamily
	var raw [][]byte
	eventually(t, crossAgencyWait, func() (bool, string) {
		body, p := scrape(t, sys, prisonAgency)
		body2, q := scrape(t, sys, probationAgency)
		prison, probation, raw = p, q, [][]byte{body, body2}
		got := value(prison, "throughcare_events_total", map[string]string{"stage": "received", "type": "receipt_issued", "peer": probationAgency})
		return got >= 2, fmt.Sprintf("prison received %v receipts from probation, want 2", got)
	})
	for _, c := range []struct {
		what   string
		in     map[string]*dto.MetricFamily
		family string
		labels map[string]string
		min    float64
	}{
		{"prison sent the referral", prison, "throughcare_events_total", map[string]string{"agency": prisonAgency, "stage": "sent", "type": "handover_referred", "peer": probationAgency}, 1},
		{"probation received it", probation, "throughcare_events_total", map[string]string{"agency": probationAgency, "stage": "received", "type": "handover_referred", "peer": prisonAgency}, 1},
		{"probation sent two receipts", probation, "throughcare_events_total", map[string]string{"stage": "sent", "type": "receipt_issued", "peer": prisonAgency}, 2},
		{"the referral's delivery was timed", prison, "throughcare_refer_to_delivered_seconds", nil, 1},
		{"ReferCase answered OK", prison, "grpc_server_handled_total", map[string]string{"grpc_service": "throughcare.v1.CaseService", "grpc_method": "ReferCase", "grpc_code": "OK"}, 1},
		{"the inbox's backlog", prison, "throughcare_consumer_pending_messages", map[string]string{"consumer": "inbox"}, 0},
		{"the relay's backlog", prison, "throughcare_consumer_ack_pending_messages", map[string]string{"consumer": "outbox_relay"}, 0},
		{"the inbox's source from probation", prison, "throughcare_inbox_source_lag_messages", map[string]string{"source": "OUTBOX_PROBATION"}, 0},
		{"the ledger", prison, "throughcare_ledger_entries", nil, 2},
		{"no dead letters", prison, "throughcare_dead_letters", nil, 0},
		{"JetStream read", prison, "throughcare_jetstream_state_up", nil, 1},
	} {
		if got := value(c.in, c.family, c.labels); got < c.min {
			t.Errorf("%s: %s%v = %v, want at least %v", c.what, c.family, c.labels, got, c.min)
		}
	}
	checkDashboard(t, prison)
	if got := value(prison, "throughcare_dead_letters", nil); got != 0 {
		t.Errorf("dead letters %v, want 0", got)
	}
	p := rc.GetPerson()
	for i, body := range raw {
		for _, personal := range []string{rc.GetCaseId(), id, p.GetGivenName(), p.GetFamilyName(), p.GetPrisonNumber(), "prison-worker-1", "po-marko"} {
			if bytes.Contains(body, []byte(personal)) {
				t.Errorf("metrics of agency %d show %q", i, personal)
			}
		}
		problems, err := promlint.New(bytes.NewReader(body)).Lint()
		if err != nil {
			t.Fatal(err)
		}
		for _, pr := range problems {
			if strings.HasPrefix(pr.Metric, "throughcare_") {
				t.Errorf("metric %s: %s", pr.Metric, pr.Text)
			}
		}
	}
}

// checkDashboard: every metric the shipped Grafana dashboard queries is one the services
// serve.
func checkDashboard(t *testing.T, served map[string]*dto.MetricFamily) {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/grafana/throughcare.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	name := regexp.MustCompile(`\b(throughcare_|grpc_server_)[a-z_]+`)
	queried := 0
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			for _, m := range name.FindAllString(target.Expr, -1) {
				queried++
				family := strings.TrimSuffix(m, "_bucket")
				if _, ok := served[family]; !ok {
					t.Errorf("panel %q queries %s, which no service serves", p.Title, m)
				}
			}
		}
	}
	if queried == 0 {
		t.Error("the dashboard queries no metric")
	}
}
