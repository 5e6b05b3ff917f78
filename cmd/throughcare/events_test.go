package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/flow"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// tailLine is one line of `events tail --output json`.
type tailLine struct {
	seq uint64
	r   *throughcarev1.FlowRecord
}

// startTail runs `events tail` as the operators, with args, until the returned stop.
func startTail(t *testing.T, sys *system, args ...string) (out *syncBuffer, lines func() []tailLine, stop func() error) {
	t.Helper()
	cfg, err := parseEventsConfig(append([]string{"tail", "--output", "json"}, args...), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	js, err := jetstream.New(sys.NATS.ConnectAsOperator(t, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	out = &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- tail(ctx, cfg, js, out, io.Discard) }()
	lines = func() []tailLine {
		var got []tailLine
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if l == "" {
				continue
			}
			var raw struct {
				StreamSequence uint64          `json:"stream_sequence"`
				Record         json.RawMessage `json:"record"`
			}
			if err := json.Unmarshal([]byte(l), &raw); err != nil {
				t.Fatalf("tail line %q: %v", l, err)
			}
			r := new(throughcarev1.FlowRecord)
			if err := protojson.Unmarshal(raw.Record, r); err != nil {
				t.Fatalf("tail record %s: %v", raw.Record, err)
			}
			got = append(got, tailLine{raw.StreamSequence, r})
		}
		return got
	}
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(10 * time.Second):
				stopErr = errors.New("tail did not end after its context was cancelled")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = stop() })
	return out, lines, stop
}

// stages lists what the lines say happened, as "<stage> <type> <from>→<to> <receipt>".
func stages(lines []tailLine) []string {
	var out []string
	for _, l := range lines {
		s := fmt.Sprintf("%s %s %s→%s", short(l.r.GetStage().String(), "FLOW_STAGE_"), short(l.r.GetType().String(), "EVENT_TYPE_"), l.r.GetSource(), l.r.GetRecipient())
		if l.r.GetReceipt() != 0 {
			s += " " + short(l.r.GetReceipt().String(), "RECEIPT_TYPE_")
		}
		out = append(out, s)
	}
	return out
}

// TestOperatorTailsTheFlowWithoutPersonalData follows one referral to its acknowledgement
// through `events tail` as the operators: both ends of every event show, with what was
// shared and held back, and nothing of the person.
func TestOperatorTailsTheFlowWithoutPersonalData(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	rc := openCase(t, sys.Prison)
	other := refer(t, sys, openCaseN(t, sys.Prison, 2).GetCaseId(), probationAgency, purposeSupervision).GetHandoverId()
	id := refer(t, sys, rc.GetCaseId(), socialWorkAgency, purposeAssistance).GetHandoverId()
	withheld := waitState(t, sys.Handovers[prisonAgency], id, stateDelivered).GetWithheldCategories()
	if err := acknowledge(ctx, sys.Handovers[socialWorkAgency], id, "sw-ivana"); err != nil {
		t.Fatal(err)
	}
	waitState(t, sys.Handovers[prisonAgency], id, stateAcknowledged)

	out, lines, stop := startTail(t, sys, "--since", "1h", "--handover", id)
	want := []string{
		"sent handover_referred prison→socialwork",
		"received handover_referred prison→socialwork",
		"sent receipt_issued socialwork→prison delivered",
		"received receipt_issued socialwork→prison delivered",
		"sent receipt_issued socialwork→prison acknowledged",
		"received receipt_issued socialwork→prison acknowledged",
	}
	eventually(t, crossAgencyWait, func() (bool, string) {
		got := stages(lines())
		for _, w := range want {
			if !slices.Contains(got, w) {
				return false, fmt.Sprintf("tail shows %v; want among them %v", got, want)
			}
		}
		return true, ""
	})
	if err := stop(); err != nil {
		t.Fatalf("tail after Ctrl-C: %v, want a clean end", err)
	}
	for _, l := range lines() {
		if l.r.GetHandoverId() != id || l.r.GetCaseId() != rc.GetCaseId() {
			t.Errorf("--handover %s shows a record of handover %s (case %s)", id, l.r.GetHandoverId(), l.r.GetCaseId())
		}
		if l.r.GetStage() == throughcarev1.FlowStage_FLOW_STAGE_SENT && l.r.GetType() == throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED {
			shared, held := l.r.GetSharedCategories(), l.r.GetWithheldCategories()
			if len(withheld) == 0 || !slices.Equal(held, withheld) || !slices.Contains(shared, throughcarev1.DataCategory_DATA_CATEGORY_IDENTITY) || slices.ContainsFunc(shared, func(c throughcarev1.DataCategory) bool { return slices.Contains(withheld, c) }) {
				t.Errorf("referral sent: shared %v, withheld %v; want identity shared and what the handover says was held back (%v) held back", shared, held, withheld)
			}
			if l.r.GetAttempt() != 1 || l.r.GetSequence() != 1 || l.r.GetProtocolId() == "" {
				t.Errorf("referral sent: attempt %d, sequence %d, protocol %q; want 1, 1, named", l.r.GetAttempt(), l.r.GetSequence(), l.r.GetProtocolId())
			}
		}
	}
	if strings.Contains(out.String(), other) {
		t.Errorf("--handover %s also shows handover %s", id, other)
	}
	p := rc.GetPerson()
	for _, personal := range []string{p.GetGivenName(), p.GetFamilyName(), p.GetPrisonNumber(), p.GetNationalId(), rc.GetContact().GetPhone(), rc.GetHealth().GetSummary(), "Trubarjeva", "sw-ivana"} {
		if strings.Contains(out.String(), personal) {
			t.Errorf("the operators' tail shows %q", personal)
		}
	}
}

// TestOperatorCredentialsOpenNoPayloadStream: the operators' NATS user sees the FLOW stream
// and nothing else, and can forge no flow record; an agency can neither read the flow nor
// publish records in another agency's name.
func TestOperatorCredentialsOpenNoPayloadStream(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	operator, err := jetstream.New(sys.NATS.ConnectAsOperator(t))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for name := range operator.StreamNames(ctx).Name() {
		names = append(names, name)
	}
	if !slices.Equal(names, []string{flow.Stream}) {
		t.Errorf("streams the operators can see: %v, want only %s", names, flow.Stream)
	}
	for _, a := range testAgencies.IDs() {
		for _, stream := range []string{eventbus.OutboxStream(a), eventbus.InboxStream(a), "KV_" + a + "_cases", "KV_" + a + "_handovers"} {
			if _, err := operator.Stream(ctx, stream); !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("operators open %s: %v, want not found", stream, err)
			}
		}
	}
	if _, err := sys.JS[prisonAgency].Stream(ctx, flow.Stream); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("the prison opens %s: %v, want not found", flow.Stream, err)
	}

	refused := func(who string, nc *nats.Conn, subject string) {
		t.Helper()
		violations := make(chan error, 1)
		nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case violations <- err:
			default:
			}
		})
		if err := nc.Publish(subject, []byte("forged")); err != nil {
			t.Fatalf("%s publish: %v", who, err)
		}
		select {
		case err := <-violations:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Errorf("%s publishing %s: %v, want a permissions violation", who, subject, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s published %s: want it refused", who, subject)
		}
	}
	refused("the operators", sys.NATS.ConnectAsOperator(t), "flow.prison.sent.prison.probation.handover_referred")
	refused("the prison", sys.NATS.ConnectAs(t, prisonAgency), "flow.probation.sent.probation.prison.receipt_issued")
}

// TestTailSurvivesANATSRestartWithoutGapOrDuplicate follows the flow from its first record
// while NATS restarts under it: afterwards it has shown every record of the stream once.
func TestTailSurvivesANATSRestartWithoutGapOrDuplicate(t *testing.T) {
	sys := newSystem(t)
	_, lines, _ := startTail(t, sys, "--from-sequence", "1")
	cases := openCases(t, sys, 4)
	before := referAll(t, sys, cases[:2], probationAgency, 2)
	waitAllState(t, sys.Handovers[prisonAgency], outgoing, before, stateDelivered, crossAgencyWait)
	sys.RestartNATS()
	after := referAll(t, sys, cases[2:], probationAgency, 2)
	waitAllState(t, sys.Handovers[prisonAgency], outgoing, after, stateDelivered, crossAgencyWait)

	operator, err := jetstream.New(sys.NATS.ConnectAsOperator(t))
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	eventually(t, crossAgencyWait, func() (bool, string) {
		s, err := operator.Stream(testCtx(t), flow.Stream)
		if err != nil {
			return false, err.Error()
		}
		last = s.CachedInfo().State.LastSeq
		got := lines()
		return len(got) > 0 && got[len(got)-1].seq == last, fmt.Sprintf("tail at %d records, stream at %d", len(got), last)
	})
	seen := map[uint64]int{}
	for _, l := range lines() {
		seen[l.seq]++
	}
	for seq := uint64(1); seq <= last; seq++ {
		if seen[seq] != 1 {
			t.Errorf("record %d shown %d times, want once", seq, seen[seq])
		}
	}
	for _, id := range slices.Concat(before, after) {
		if !slices.Contains(stages(filterHandover(lines(), id)), "received handover_referred prison→probation") {
			t.Errorf("handover %s: its delivery is not in the tail", id)
		}
	}
}

func filterHandover(lines []tailLine, id string) []tailLine {
	var out []tailLine
	for _, l := range lines {
		if l.r.GetHandoverId() == id {
			out = append(out, l)
		}
	}
	return out
}

func TestEventsTailFlagsNameWhatIsWrong(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tail", "--state", "lost"}, "--state"},
		{[]string{"tail", "--type", "telegram"}, "--type"},
		{[]string{"tail", "--output", "xml"}, "--output"},
		{[]string{"tail", "--since", "1h", "--from-sequence", "4"}, "--since and --from-sequence"},
		{[]string{"rewind"}, "unknown events command"},
		{[]string{"setup", "--replicas", "0"}, "--replicas"},
	} {
		var out bytes.Buffer
		_, err := parseEventsConfig(tc.args, func(string) string { return "" }, &out)
		if err == nil || !strings.Contains(err.Error()+out.String(), tc.want) {
			t.Errorf("events %v: %v (%s), want an error naming %s", tc.args, err, out.String(), tc.want)
		}
	}
	c, err := parseEventsConfig([]string{"tail", "--since", "90m", "--state", "delivered", "--type", "receipt_issued", "--agency", "probation"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Filter.Subject(), "flow.*.*.probation.*.receipt_issued"; got != want {
		t.Errorf("subject filter %q, want %q", got, want)
	}
	now := time.Now()
	if start, err := c.startTime(now); err != nil || !start.Equal(now.Add(-90*time.Minute)) {
		t.Errorf("--since 90m: %v, %v", start, err)
	}
}

// The table's rows fit the width they are given: the columns keep their places and the
// last one is cut short with an ellipsis, never wrapped.
func TestTailTableFitsItsWidth(t *testing.T) {
	var out bytes.Buffer
	p := newFlowPrinter(eventsConfig{Output: "table", Width: 170}, &out, nil)
	r := &throughcarev1.FlowRecord{
		Type: throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED, Stage: throughcarev1.FlowStage_FLOW_STAGE_SENT,
		Source: "prison", Recipient: "probation", HandoverId: "ho_1", Sequence: 1, Time: timestamppb.Now(),
		SharedCategories:   []throughcarev1.DataCategory{throughcarev1.DataCategory_DATA_CATEGORY_IDENTITY, throughcarev1.DataCategory_DATA_CATEGORY_RISK},
		WithheldCategories: []throughcarev1.DataCategory{throughcarev1.DataCategory_DATA_CATEGORY_HEALTH, throughcarev1.DataCategory_DATA_CATEGORY_SUBSTANCE_USE},
	}
	if err := p.print(42, r); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "SEQ     TIME") {
		t.Fatalf("want a header and one row, got:\n%s", out.String())
	}
	row := lines[1]
	if n := utf8.RuneCountInString(row); n != 170 || !strings.HasSuffix(row, "…") {
		t.Errorf("row is %d runes, want 170 ending in an ellipsis:\n%s", n, row)
	}
	if !strings.HasPrefix(row, "42      ") || !strings.Contains(row, " prison → probation       ho_1 ") ||
		!strings.Contains(row, "identity,risk / held back: hea") {
		t.Errorf("columns out of place:\n%s", row)
	}
}

// TestEventsSetupMakesTheFlowStreamAtTheReplicasAsked runs `events setup --replicas 3`
// on a 3-node cluster: the operators' stream survives a node as the agencies' do.
func TestEventsSetupMakesTheFlowStreamAtTheReplicasAsked(t *testing.T) {
	cluster := natstest.StartCluster(t, 3)
	c, err := parseEventsConfig([]string{"setup", "--replicas", "3", "--nats-url", cluster.Servers[0].ClientURL(), "--data-dir", t.TempDir()}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := runEvents(testCtx(t), c, &out, io.Discard); err != nil {
		t.Fatalf("events setup: %v", err)
	}
	stream, err := cluster.JetStream(t, 0).Stream(testCtx(t), flow.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if got := stream.CachedInfo().Config.Replicas; got != 3 {
		t.Errorf("FLOW stream replicas = %d, want 3 (setup said %q)", got, out.String())
	}
}
