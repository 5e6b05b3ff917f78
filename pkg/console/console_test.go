package console

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSource is a Source the test controls: FollowFlow hands on what arrives on records,
// and ends with failFlow when records closes.
type fakeSource struct {
	topology Topology
	records  chan FlowEvent
	failFlow error
	overdue  []Overdue
	dead     []DeadLetter
	streams  []Stream
	// err fails Overdue, DeadLetters and Streams.
	err   error
	reads atomic.Int32
}

func (f *fakeSource) Topology() Topology { return f.topology }

func (f *fakeSource) FollowFlow(ctx context.Context, _ uint64, following func(), record func(FlowEvent)) error {
	following()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-f.records:
			if !ok {
				return f.failFlow
			}
			record(ev)
		}
	}
}

func (f *fakeSource) Overdue(context.Context) ([]Overdue, error) {
	f.reads.Add(1)
	return f.overdue, f.err
}

func (f *fakeSource) DeadLetters(context.Context) ([]DeadLetter, error) {
	f.reads.Add(1)
	return f.dead, f.err
}

func (f *fakeSource) Streams(context.Context) ([]Stream, error) {
	f.reads.Add(1)
	return f.streams, f.err
}

// fourAgencies is a protocol's topology with a fourth party, which the console must draw
// like the others.
func fourAgencies() Topology {
	t := Topology{Agencies: []Agency{{"prison", "prison"}, {"probation", "probation"}, {"socialwork", "social work"}, {"pcve", "P/CVE coordination body"}}}
	for _, pair := range [][2]string{{"prison", "probation"}, {"prison", "socialwork"}, {"probation", "socialwork"}, {"prison", "pcve"}} {
		t.Routes = append(t.Routes, Route{pair[0], pair[1]}, Route{pair[1], pair[0]})
	}
	return t
}

func newFake() *fakeSource {
	due := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	last := due.Add(time.Minute)
	return &fakeSource{
		topology: fourAgencies(),
		records:  make(chan FlowEvent),
		overdue:  []Overdue{{Agency: "prison", Direction: "outgoing", HandoverID: "ho_1", CaseID: "rc_1", From: "prison", To: "probation", State: "delivered", Deadline: "acknowledge", Due: due}},
		dead:     []DeadLetter{{Agency: "probation", Stream: "INBOX_PROBATION", Sequence: 7, Time: due, From: "prison", HandoverID: "ho_1", EventID: "ev_1", Deliveries: 1, Reason: "undecodable event"}},
		streams: []Stream{{Server: "n1", Account: "PROBATION", Name: "INBOX_PROBATION", Messages: 3, Bytes: 900, Last: &last,
			Sources:   []StreamSource{{Name: "OUTBOX_PRISON", Lag: 0, HeardMillis: 20}},
			Consumers: []StreamConsumer{{Name: "probation-inbox", Pending: 0, AckPending: 0, Redelivered: 0, LastDelivery: &last}}}},
	}
}

// get requests path from h as a browser on the loopback would.
func get(t *testing.T, h http.Handler, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	req.Host = "127.0.0.1:7180"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// keys are the names of a JSON object's members, sorted.
func keys(t *testing.T, raw json.RawMessage) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return slices.Sorted(maps.Keys(m))
}

// TestServesThePageItsFilesAndTheFeedShapes: the page and its two files come from the
// binary; every feed answers JSON of exactly the fields the console means to show, and
// adding one is a change this test makes visible.
func TestServesThePageItsFilesAndTheFeedShapes(t *testing.T) {
	h := New(newFake(), Options{}).Handler()
	for path, want := range map[string]struct{ contentType, holds string }{
		"/":            {"text/html", `<svg id="graph"`},
		"/console.js":  {"javascript", "new EventSource('/api/flow/stream')"},
		"/console.css": {"text/css", ".edge.active path"},
	} {
		rec := get(t, h, http.MethodGet, path)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Header().Get("Content-Type"), want.contentType) || !strings.Contains(rec.Body.String(), want.holds) {
			t.Errorf("GET %s: %d %s, want 200 %s holding %q", path, rec.Code, rec.Header().Get("Content-Type"), want.contentType, want.holds)
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: Content-Security-Policy %q, want scripts from the console alone and no framing", path, csp)
		}
	}
	if rec := get(t, h, http.MethodGet, "/api/nothing"); rec.Code != http.StatusNotFound {
		t.Errorf("GET /api/nothing: %d, want 404", rec.Code)
	}

	var snap struct {
		Agencies []json.RawMessage `json:"agencies"`
		Edges    []json.RawMessage `json:"edges"`
	}
	rec := get(t, h, http.MethodGet, "/api/flow")
	if err := json.Unmarshal(rec.Body.Bytes(), &snap); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("GET /api/flow: %d %v\n%s", rec.Code, err, rec.Body)
	}
	if got, want := keys(t, rec.Body.Bytes()), []string{"agencies", "edges", "flow_error", "last_sequence", "recent", "refresh_ms", "since"}; !slices.Equal(got, want) {
		t.Errorf("flow snapshot fields %v, want %v", got, want)
	}
	if len(snap.Agencies) != 4 || len(snap.Edges) != 8 {
		t.Fatalf("flow snapshot: %d agencies and %d edges, want the topology's 4 and 8", len(snap.Agencies), len(snap.Edges))
	}
	if got, want := keys(t, snap.Agencies[3]), []string{"id", "name"}; !slices.Equal(got, want) {
		t.Errorf("agency fields %v, want %v", got, want)
	}
	if got, want := keys(t, snap.Edges[0]), []string{"events", "from", "handovers", "in_flight", "received", "refused", "resent", "to", "transit_ms"}; !slices.Equal(got, want) {
		t.Errorf("edge fields %v, want %v", got, want)
	}

	for path, want := range map[string][]string{
		"/api/overdue":     {"agency", "case_id", "deadline", "direction", "due", "from", "handover_id", "state", "to"},
		"/api/deadletters": {"agency", "deliveries", "event_id", "from", "handover_id", "reason", "sequence", "stream", "time"},
		"/api/streams":     {"account", "bytes", "consumers", "last_message", "messages", "name", "server", "sources"},
	} {
		rec := get(t, h, http.MethodGet, path)
		var body struct {
			Items []json.RawMessage `json:"items"`
			Time  time.Time         `json:"time"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusOK || len(body.Items) != 1 || body.Time.IsZero() {
			t.Errorf("GET %s: %d %v\n%s\nwant 200 with one item and the time", path, rec.Code, err, rec.Body)
			continue
		}
		if got := keys(t, body.Items[0]); !slices.Equal(got, want) {
			t.Errorf("GET %s: item fields %v, want %v", path, got, want)
		}
	}
}

// TestReadOnly: no route takes anything but GET and HEAD, and a refused request reads
// no source.
func TestReadOnly(t *testing.T) {
	src := newFake()
	h := New(src, Options{}).Handler()
	for _, path := range []string{"/", "/console.js", "/api/flow", "/api/flow/stream", "/api/overdue", "/api/deadletters", "/api/streams", "/api/deadletters/retry"} {
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions} {
			rec := get(t, h, method, path)
			if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s: %d, Allow %q; want 405, GET, HEAD", method, path, rec.Code, rec.Header().Get("Allow"))
			}
		}
	}
	if n := src.reads.Load(); n != 0 {
		t.Errorf("refused requests read the sources %d times", n)
	}
	if rec := get(t, h, http.MethodHead, "/api/overdue"); rec.Code != http.StatusOK {
		t.Errorf("HEAD /api/overdue: %d, want 200", rec.Code)
	}
}

// TestAnswersOnlyAsTheLoopback: a request naming another host (a page that rebound its
// own name to 127.0.0.1) is refused; the loopback's names are served.
func TestAnswersOnlyAsTheLoopback(t *testing.T) {
	h := New(newFake(), Options{}).Handler()
	for host, want := range map[string]int{
		"127.0.0.1:7180": http.StatusOK, "localhost:7180": http.StatusOK, "[::1]:7180": http.StatusOK, "localhost": http.StatusOK,
		"evil.example:7180": http.StatusForbidden, "10.0.0.5:7180": http.StatusForbidden, "": http.StatusForbidden,
	} {
		req := httptest.NewRequest(http.MethodGet, "/api/overdue", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("Host %q: %d, want %d", host, rec.Code, want)
		}
	}
	for addr, ok := range map[string]bool{
		"127.0.0.1:0": true, "[::1]:7180": true, "localhost:7180": true,
		"0.0.0.0:7180": false, ":7180": false, "192.168.1.2:7180": false, "console.example:7180": false, "127.0.0.1": false,
	} {
		if err := CheckAddr(addr); (err == nil) != ok {
			t.Errorf("CheckAddr(%q): %v, want ok %v", addr, err, ok)
		}
	}
	if ln, err := Listen("0.0.0.0:0"); err == nil {
		ln.Close()
		t.Error("Listen on every interface: want it refused")
	}
}

// TestAnUnreachableSourceSaysWhy: a source that fails answers 502 with its error, for
// the page to show on that panel.
func TestAnUnreachableSourceSaysWhy(t *testing.T) {
	src := newFake()
	src.err = errors.New("probation at 127.0.0.1:7102: connection refused")
	h := New(src, Options{}).Handler()
	for _, path := range []string{"/api/overdue", "/api/deadletters", "/api/streams"} {
		rec := get(t, h, http.MethodGet, path)
		var body struct{ Error string }
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusBadGateway || body.Error != src.err.Error() {
			t.Errorf("GET %s: %d %s, want 502 with the source's error", path, rec.Code, rec.Body)
		}
	}
}

// TestFlowIsCountedByRoute: counts, handovers, in flight and transit per route, records
// that come in either order, a route no rule names, and a record read twice.
func TestFlowIsCountedByRoute(t *testing.T) {
	c := New(newFake(), Options{})
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for i, ev := range []FlowEvent{
		{Stage: "sent", Type: "handover_referred", EventID: "e1", From: "prison", To: "probation", Time: t0},
		{Stage: "received", Type: "handover_referred", EventID: "e1", From: "prison", To: "probation", Time: t0.Add(40 * time.Millisecond)},
		// The receipt's received record is read before its sent one.
		{Stage: "received", Type: "receipt_issued", EventID: "e2", From: "probation", To: "prison", Time: t0.Add(90 * time.Millisecond)},
		{Stage: "sent", Type: "receipt_issued", EventID: "e2", From: "probation", To: "prison", Time: t0.Add(60 * time.Millisecond)},
		{Stage: "sent", Type: "handover_referred", EventID: "e3", From: "prison", To: "probation", Time: t0.Add(time.Second)},
		{Stage: "sent", Type: "handover_referred", EventID: "e4", From: "prison", To: "socialwork", Time: t0.Add(time.Second)},
		{Stage: "refused", Type: "handover_referred", EventID: "e4", From: "prison", To: "socialwork", Time: t0.Add(2 * time.Second), Reason: "bad-signature"},
		{Stage: "sent", Type: "receipt_issued", EventID: "e5", From: "pcve", To: "halfway", Time: t0},
	} {
		ev.Sequence = uint64(i + 1)
		c.flow.add(ev)
	}
	c.flow.add(FlowEvent{Sequence: 3, Stage: "sent", Type: "handover_referred", EventID: "e9", From: "prison", To: "probation"})

	var snap Snapshot
	if err := json.Unmarshal(get(t, c.Handler(), http.MethodGet, "/api/flow").Body.Bytes(), &snap); err != nil {
		t.Fatal(err)
	}
	edges := map[Route]Edge{}
	for _, e := range snap.Edges {
		edges[Route{e.From, e.To}] = e
	}
	for route, want := range map[Route]Edge{
		{"prison", "probation"}:  {Events: 2, Handovers: 2, Received: 1, InFlight: 1, TransitMillis: 40},
		{"probation", "prison"}:  {Events: 1, Received: 1, TransitMillis: 30},
		{"prison", "socialwork"}: {Events: 1, Handovers: 1, Refused: 1, TransitMillis: -1},
		{"socialwork", "prison"}: {TransitMillis: -1},
		{"pcve", "halfway"}:      {Events: 1, InFlight: 1, TransitMillis: -1},
	} {
		want.From, want.To = route.From, route.To
		if got := edges[route]; got != want {
			t.Errorf("edge %s → %s: %+v, want %+v", route.From, route.To, got, want)
		}
	}
	if snap.LastSequence != 8 || len(snap.Recent) != 8 || len(snap.Edges) != 9 {
		t.Errorf("snapshot: last %d, %d recent, %d edges; want 8, 8 and the topology's 8 and the one seen", snap.LastSequence, len(snap.Recent), len(snap.Edges))
	}
}

// TestStreamPushesTheFlowAsItComes: a browser following gets a snapshot, then each record
// with the edge it changed, and is told when the flow cannot be read.
func TestStreamPushesTheFlowAsItComes(t *testing.T) {
	src := newFake()
	src.failFlow = errors.New("nats: no servers available for connection")
	c := New(src, Options{Refresh: time.Second})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	followed := make(chan struct{})
	go func() { c.Follow(ctx); close(followed) }()
	defer func() { cancel(); <-followed }()

	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/api/flow/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q, want text/event-stream", ct)
	}
	events := sseEvents(resp.Body)
	next := func() (string, string) {
		t.Helper()
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatal("the stream ended")
			}
			return e[0], e[1]
		case <-time.After(10 * time.Second):
			t.Fatal("no event within 10s")
		}
		return "", ""
	}
	if name, data := next(); name != "snapshot" || !strings.Contains(data, `"refresh_ms":1000`) {
		t.Fatalf("first event %s %s, want the snapshot", name, data)
	}
	src.records <- FlowEvent{Sequence: 1, Stage: "sent", Type: "handover_referred", EventID: "e1", From: "prison", To: "probation", HandoverID: "ho_1"}
	name, data := next()
	var pushed struct {
		Event FlowEvent
		Edge  Edge
	}
	if err := json.Unmarshal([]byte(data), &pushed); err != nil || name != "flow" || pushed.Event.HandoverID != "ho_1" || pushed.Edge.Events != 1 || pushed.Edge.InFlight != 1 {
		t.Fatalf("event %s %s (%v), want the record with its edge counted", name, data, err)
	}
	close(src.records)
	if name, data := next(); name != "status" || !strings.Contains(data, "no servers available") {
		t.Fatalf("event %s %s, want the flow's error", name, data)
	}
}

// sseEvents reads Server-Sent Events from r as [name, data] pairs.
func sseEvents(r io.Reader) <-chan [2]string {
	out := make(chan [2]string, 16)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		var name, data string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				data = strings.TrimPrefix(line, "data: ")
			case line == "" && name != "":
				out <- [2]string{name, data}
				name, data = "", ""
			}
		}
	}()
	return out
}
