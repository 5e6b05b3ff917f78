// Package console is the operators' read-only web console: one page, served from files
// embedded in the binary, and the data feed behind it, on a loopback address. The process
// that runs it holds the operators' credentials; the browser talks to it alone.
//
// The console shows routing metadata only, and nothing else reaches it: the flow between
// agencies (from the FLOW stream's records), the handovers with a deadline passed, the
// dead letters, and the streams' health. It has no action: every route is a GET.
package console

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Source is where the console takes what it shows. Each method returns routing metadata
// only: ids, agencies, states, counts and times.
type Source interface {
	// Topology is the agencies and the directions events travel between them.
	Topology() Topology
	// FollowFlow hands record every flow record after stream sequence after (0: from the
	// start of the console's window), oldest first, until ctx ends (it returns nil) or the
	// flow cannot be read. It calls following once it reaches the stream.
	FollowFlow(ctx context.Context, after uint64, following func(), record func(FlowEvent)) error
	Overdue(ctx context.Context) ([]Overdue, error)
	// DeadLetters are the open ones: those no operator retried or discarded yet.
	DeadLetters(ctx context.Context) ([]DeadLetter, error)
	Streams(ctx context.Context) ([]Stream, error)
}

// Topology is the parties of the protocol and who sends events to whom.
type Topology struct {
	Agencies []Agency `json:"agencies"`
	Routes   []Route  `json:"routes"`
}

// Agency is one party, as the protocol names it.
type Agency struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// Route is one direction events travel in: referrals one way, receipts the other.
type Route struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// FlowEvent is one flow record: what became of one event between two agencies.
type FlowEvent struct {
	// Sequence is the record's place in the FLOW stream.
	Sequence uint64    `json:"sequence"`
	Time     time.Time `json:"time"`
	// Stage is sent, resent, received, duplicate, gap or refused.
	Stage string `json:"stage"`
	// Type is the event's: handover_referred, receipt_issued, ...
	Type       string `json:"type"`
	EventID    string `json:"event_id"`
	From       string `json:"from"`
	To         string `json:"to"`
	HandoverID string `json:"handover_id"`
	// Receipt and State are a receipt's type and the handover state it moves to.
	Receipt string `json:"receipt,omitempty"`
	State   string `json:"state,omitempty"`
	// Withheld names the categories the protocol held back from the event.
	Withheld []string `json:"withheld,omitempty"`
	// Reason is a refused event's kind of fault: bad-signature, protocol-violation, ...
	Reason string `json:"reason,omitempty"`
}

// Overdue is one deadline passed, as one agency reports it.
type Overdue struct {
	Agency     string    `json:"agency"`
	Direction  string    `json:"direction"`
	HandoverID string    `json:"handover_id"`
	CaseID     string    `json:"case_id"`
	From       string    `json:"from"`
	To         string    `json:"to"`
	State      string    `json:"state"`
	Deadline   string    `json:"deadline"` // acknowledge or accept
	Due        time.Time `json:"due"`
}

// DeadLetter is a message an agency gave up on.
type DeadLetter struct {
	Agency     string    `json:"agency"`
	Stream     string    `json:"stream"`
	Sequence   uint64    `json:"sequence"`
	Time       time.Time `json:"time"`
	From       string    `json:"from"`
	HandoverID string    `json:"handover_id"`
	EventID    string    `json:"event_id"`
	Deliveries uint64    `json:"deliveries"`
	Reason     string    `json:"reason"`
}

// Stream is one stream of one account as one server reports it: counts and times, never
// a message.
type Stream struct {
	Server    string           `json:"server"`
	Account   string           `json:"account"`
	Name      string           `json:"name"`
	Messages  uint64           `json:"messages"`
	Bytes     uint64           `json:"bytes"`
	Last      *time.Time       `json:"last_message,omitempty"`
	Sources   []StreamSource   `json:"sources"`
	Consumers []StreamConsumer `json:"consumers"`
}

// StreamSource is a stream another one copies from, and how far behind it is.
type StreamSource struct {
	Name string `json:"name"`
	Lag  uint64 `json:"lag"`
	// HeardMillis is how long ago the source was last heard from; -1 is never.
	HeardMillis int64 `json:"heard_ms"`
}

// StreamConsumer is one consumer's backlog.
type StreamConsumer struct {
	Name         string     `json:"name"`
	Pending      uint64     `json:"pending"`
	AckPending   int        `json:"ack_pending"`
	Redelivered  int        `json:"redelivered"`
	LastDelivery *time.Time `json:"last_delivery,omitempty"`
}

// Options tune a console; the zero value is the shipped one.
type Options struct {
	// Refresh is how often the page reads the overdue handovers, the dead letters and the
	// streams again. The flow is pushed as it happens.
	Refresh time.Duration
	// Since is where the flow counts start, for the page to say.
	Since time.Time
	// Recent is how many flow events the page lists.
	Recent int
	// SourceTimeout bounds one read of a source.
	SourceTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.Refresh <= 0 {
		o.Refresh = 5 * time.Second
	}
	if o.Recent <= 0 {
		o.Recent = 50
	}
	if o.SourceTimeout <= 0 {
		o.SourceTimeout = 15 * time.Second
	}
	return o
}

// Console serves the page and its data feed from one Source.
type Console struct {
	src  Source
	opts Options
	flow *flowState
}

// New is a console of src. Serve it, or run Follow and serve Handler.
func New(src Source, opts Options) *Console {
	opts = opts.withDefaults()
	return &Console{src: src, opts: opts, flow: newFlowState(src.Topology(), opts.Recent)}
}

//go:embed static
var static embed.FS

// Handler serves the page, its files and the data feed. It answers GET and HEAD, and
// only to a Host that names the loopback: a web page elsewhere that rebinds its own name
// to 127.0.0.1 gets nothing.
func (c *Console) Handler() http.Handler {
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded directory is part of the binary
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(files))
	mux.HandleFunc("GET /api/flow", c.snapshot)
	mux.HandleFunc("GET /api/flow/stream", c.stream)
	mux.HandleFunc("GET /api/overdue", list(c, c.src.Overdue))
	mux.HandleFunc("GET /api/deadletters", list(c, c.src.DeadLetters))
	mux.HandleFunc("GET /api/streams", list(c, c.src.Streams))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "the console is read-only", http.StatusMethodNotAllowed)
			return
		}
		if !loopbackHost(r.Host) {
			http.Error(w, "the console answers only as 127.0.0.1, [::1] or localhost", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// Listen listens on addr, which must be a loopback address: the console holds the
// operators' credentials and asks the browser for none.
func Listen(addr string) (net.Listener, error) {
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	return net.Listen("tcp", addr)
}

// CheckAddr refuses an address that is not host:port on the loopback.
func CheckAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("console address %q: %w", addr, err)
	}
	if !loopbackHost(host) {
		return fmt.Errorf("console address %q: only the loopback (127.0.0.1, [::1], localhost); from elsewhere, tunnel to it (ssh -L)", addr)
	}
	return nil
}

// loopbackHost reports whether host (a Host header, or a listen address's host, with or
// without a port) names the loopback.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Serve follows the flow and serves the console on ln until ctx ends.
func (c *Console) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { c.Follow(ctx) })
	defer wg.Wait()
	// Requests share ctx, so the flow's event streams end when it does, and Shutdown
	// does not wait on them.
	srv := &http.Server{Handler: c.Handler(), ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	if err := srv.Shutdown(shutdown); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Follow reads the flow into the console until ctx ends. When the flow cannot be read, the
// page is told why, and Follow tries again, waiting longer each time, from the record after
// the last one it has.
func (c *Console) Follow(ctx context.Context) {
	const first, longest = time.Second, 15 * time.Second
	wait := first
	for {
		started := time.Now()
		err := c.src.FollowFlow(ctx, c.flow.lastSequence(), c.flow.following, c.flow.add)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("the flow ended")
		}
		c.flow.failed(err)
		if time.Since(started) > longest {
			wait = first // it ran a while: this is a new failure, not the same one again
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, longest)
	}
}

// Snapshot is the flow as the console has it: what the page draws first.
type Snapshot struct {
	Agencies []Agency    `json:"agencies"`
	Edges    []Edge      `json:"edges"`
	Recent   []FlowEvent `json:"recent"`
	// LastSequence is the FLOW stream sequence of the latest record read.
	LastSequence uint64    `json:"last_sequence"`
	Since        time.Time `json:"since"`
	// FlowError is why the flow cannot be read now; empty while it can.
	FlowError     string `json:"flow_error"`
	RefreshMillis int64  `json:"refresh_ms"`
}

// Edge is what has travelled along one route since the console's window began.
type Edge struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Events counts the events sent along the route the first time; Handovers the
	// referrals among them.
	Events    uint64 `json:"events"`
	Handovers uint64 `json:"handovers"`
	Resent    uint64 `json:"resent"`
	Received  uint64 `json:"received"`
	Refused   uint64 `json:"refused"`
	// InFlight counts the events sent whose recipient has not yet reported them
	// (received, a duplicate or refused).
	InFlight int `json:"in_flight"`
	// TransitMillis is how long the latest event received took from its sending, by the
	// two agencies' clocks; -1 before the first.
	TransitMillis int64 `json:"transit_ms"`
}

func (c *Console) snapshot(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, c.flow.snapshot(c.opts))
}

// stream pushes the flow as Server-Sent Events: a snapshot first, then each record as it
// is read, with the edge it changed. A browser that falls too far behind is dropped; its
// EventSource reconnects and starts again from a snapshot.
func (c *Console) stream(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	frames, snap := c.flow.subscribe(c.opts)
	defer c.flow.unsubscribe(frames)
	if _, err := w.Write(frame("snapshot", snap)); err != nil {
		return
	}
	if rc.Flush() != nil {
		return
	}
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	for {
		var out []byte
		select {
		case <-r.Context().Done():
			return
		case f, ok := <-frames:
			if !ok {
				return
			}
			out = f
		case <-keepAlive.C:
			out = []byte(": keep-alive\n\n")
		}
		if _, err := w.Write(out); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
	}
}

// list serves one source's items as {"items": [...], "time": ...}, or its failure as a
// 502 with {"error": ...}, for the page to show which source is unreachable.
func list[T any](c *Console, get func(context.Context) ([]T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), c.opts.SourceTimeout)
		defer cancel()
		items, err := get(ctx)
		if err != nil {
			writeJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
			return
		}
		if items == nil {
			items = []T{}
		}
		writeJSON(w, http.StatusOK, struct {
			Items []T       `json:"items"`
			Time  time.Time `json:"time"`
		}{items, time.Now()})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// frame is one Server-Sent Event of JSON data.
func frame(event string, v any) []byte {
	data, err := json.Marshal(v)
	if err != nil {
		data, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "event: %s\ndata: %s\n\n", event, data)
	return b.Bytes()
}

// Bounds on what the console keeps of the flow: an event whose recipient never reports it
// stays in flight, so the set of those is capped; past the cap, new ones are not tracked.
const (
	maxInFlight = 100_000
	maxEarly    = 10_000
	// subscriberBuffer is how many frames a browser may be behind before it is dropped.
	subscriberBuffer = 1024
)

// flowState is the flow counted by route, the latest records, and the browsers following.
type flowState struct {
	mu       sync.Mutex
	agencies []Agency
	routes   []Route // in the order the page lists them: the protocol's, then any seen
	edges    map[Route]*Edge
	// sent holds the events in flight: when each was sent, by event id.
	sent map[string]time.Time
	// early holds events whose receipt was read before their sending: two agencies
	// publish records independently, so the FLOW stream may hold them in either order.
	early  map[string]time.Time
	recent []FlowEvent
	last   uint64
	err    string
	subs   map[chan []byte]struct{}
}

func newFlowState(t Topology, recent int) *flowState {
	s := &flowState{
		agencies: slices.Clone(t.Agencies),
		edges:    map[Route]*Edge{},
		sent:     map[string]time.Time{},
		early:    map[string]time.Time{},
		recent:   make([]FlowEvent, 0, recent),
		subs:     map[chan []byte]struct{}{},
	}
	for _, r := range t.Routes {
		s.edge(r)
	}
	return s
}

// edge is r's counts, made on first sight: a route no rule names still shows.
func (s *flowState) edge(r Route) *Edge {
	e, ok := s.edges[r]
	if !ok {
		e = &Edge{From: r.From, To: r.To, TransitMillis: -1}
		s.edges[r] = e
		s.routes = append(s.routes, r)
	}
	return e
}

func (s *flowState) lastSequence() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// add counts ev and pushes it, with the edge it changed, to every browser following.
func (s *flowState) add(ev FlowEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.Sequence <= s.last {
		return // already counted: a follower that started again from an older place
	}
	s.last = ev.Sequence
	if cap(s.recent) > 0 {
		if len(s.recent) == cap(s.recent) {
			s.recent = append(s.recent[:0], s.recent[1:]...)
		}
		s.recent = append(s.recent, ev)
	}
	if ev.From == "" || ev.To == "" {
		return
	}
	e := s.edge(Route{ev.From, ev.To})
	switch ev.Stage {
	case "sent", "resent":
		if ev.Stage == "sent" {
			e.Events++
			if ev.Type == "handover_referred" {
				e.Handovers++
			}
		} else {
			e.Resent++
		}
		if at, ok := s.early[ev.EventID]; ok {
			delete(s.early, ev.EventID)
			e.TransitMillis = max(at.Sub(ev.Time).Milliseconds(), 0)
		} else if _, ok := s.sent[ev.EventID]; !ok && len(s.sent) < maxInFlight {
			s.sent[ev.EventID] = ev.Time
			e.InFlight++
		}
	case "received", "duplicate", "refused":
		switch ev.Stage {
		case "received":
			e.Received++
		case "refused":
			e.Refused++
		}
		if at, ok := s.sent[ev.EventID]; ok {
			delete(s.sent, ev.EventID)
			e.InFlight--
			if ev.Stage == "received" {
				e.TransitMillis = max(ev.Time.Sub(at).Milliseconds(), 0)
			}
		} else if ev.Stage == "received" {
			if len(s.early) >= maxEarly {
				clear(s.early) // sendings from before the window: they will never come
			}
			s.early[ev.EventID] = ev.Time
		}
	}
	s.broadcast(frame("flow", struct {
		Event FlowEvent `json:"event"`
		Edge  Edge      `json:"edge"`
	}{ev, *e}))
}

// following clears the error the page shows: the flow is read again.
func (s *flowState) following() { s.setError("") }

func (s *flowState) failed(err error) { s.setError(err.Error()) }

func (s *flowState) setError(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == msg {
		return
	}
	s.err = msg
	s.broadcast(frame("status", map[string]string{"flow_error": msg}))
}

// broadcast hands f to every browser following; one too far behind is dropped. The
// caller holds s.mu.
func (s *flowState) broadcast(f []byte) {
	for ch := range s.subs {
		select {
		case ch <- f:
		default:
			delete(s.subs, ch)
			close(ch)
		}
	}
}

// subscribe is a new browser's frames and the snapshot they follow on from.
func (s *flowState) subscribe(o Options) (chan []byte, Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan []byte, subscriberBuffer)
	s.subs[ch] = struct{}{}
	return ch, s.snapshotLocked(o)
}

func (s *flowState) unsubscribe(ch chan []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.subs[ch]; ok {
		delete(s.subs, ch)
		close(ch)
	}
}

func (s *flowState) snapshot(o Options) Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked(o)
}

func (s *flowState) snapshotLocked(o Options) Snapshot {
	snap := Snapshot{
		Agencies:      slices.Clone(s.agencies),
		Edges:         make([]Edge, len(s.routes)),
		Recent:        slices.Clone(s.recent),
		LastSequence:  s.last,
		Since:         o.Since,
		FlowError:     s.err,
		RefreshMillis: o.Refresh.Milliseconds(),
	}
	for i, r := range s.routes {
		snap.Edges[i] = *s.edges[r]
	}
	return snap
}
