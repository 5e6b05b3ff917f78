package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/console"
)

// consoleConfig is `throughcare console`: the read-only web console, on the loopback, with
// what the operators' commands read: the flow as `events tail`, the overdue handovers as
// `handovers overdue`, the dead letters as `deadletters list`, the streams as `streams`.
type consoleConfig struct {
	operatorConfig
	Addr         string
	NATSURL      string
	NATSSeed     string
	SystemSeed   string
	Since        string
	Refresh      time.Duration
	RecentEvents int
}

const consoleUsage = `usage: throughcare console [flags]

Serves the operators' console, read-only, at http://127.0.0.1:7180/ (--addr): the flow
between the agencies as a picture, the handovers overdue, the dead letters and the streams'
health; routing metadata only. It holds the operator's certificate and NATS credentials
and asks the browser for none, so it listens on the loopback alone; from another machine,
tunnel to it (ssh -L 7180:127.0.0.1:7180 host).

flags:
`

func parseConsoleConfig(args []string, getenv func(string) string, out io.Writer) (consoleConfig, error) {
	var c consoleConfig
	fs := flag.NewFlagSet("console", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, consoleUsage)
		fs.PrintDefaults()
	}
	c.register(fs)
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:7180", "where to serve the console: a loopback address only")
	fs.StringVar(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS to read the FLOW stream and the streams' report from")
	fs.StringVar(&c.NATSSeed, "nats-nkey-seed", "", "the operators' nkey seed; empty uses dev's, <data-dir>/credentials/operator.nk, if there")
	fs.StringVar(&c.SystemSeed, "sys-nkey-seed", "", "the system account's nkey seed, for the streams' health; empty uses dev's, <data-dir>/credentials/sys.nk, if there")
	fs.StringVar(&c.Since, "since", "1h", "count the flow from this long ago (1h) or this time (RFC 3339)")
	fs.DurationVar(&c.Refresh, "refresh", 5*time.Second, "how often the page reads the overdue handovers, dead letters and streams again")
	fs.IntVar(&c.RecentEvents, "recent", 50, "how many of the latest flow events the page lists")
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	if err := console.CheckAddr(c.Addr); err != nil {
		return c, fmt.Errorf("--addr: %w", err)
	}
	if _, err := c.events(0).startTime(time.Now()); err != nil {
		return c, err
	}
	if c.Refresh < 100*time.Millisecond {
		return c, fmt.Errorf("--refresh %s: at least 100ms", c.Refresh)
	}
	if c.RecentEvents < 1 {
		return c, fmt.Errorf("--recent %d: at least 1", c.RecentEvents)
	}
	return c, nil
}

// events is how the console reads the flow: as `events tail --since` would, or from the
// record after sequence after.
func (c consoleConfig) events(after uint64) eventsConfig {
	ec := eventsConfig{NATSURL: c.NATSURL, NATSSeed: c.NATSSeed, DataDir: c.DataDir, Since: c.Since}
	if after > 0 {
		ec.Since, ec.FromSeq = "", after+1
	}
	return ec
}

func (c consoleConfig) streams() streamsConfig {
	return streamsConfig{NATSURL: c.NATSURL, SystemSeed: c.SystemSeed, OperatorSeed: c.NATSSeed, DataDir: c.DataDir}
}

func runConsole(ctx context.Context, c consoleConfig, stdout io.Writer) error {
	ln, err := console.Listen(c.Addr)
	if err != nil {
		return err
	}
	return serveConsole(ctx, c, ln, stdout)
}

// serveConsole serves the console on ln until ctx ends.
func serveConsole(ctx context.Context, c consoleConfig, ln net.Listener, stdout io.Writer) error {
	src, err := newConsoleSource(c)
	if err != nil {
		ln.Close()
		return err
	}
	defer src.Close()
	since, _ := c.events(0).startTime(time.Now())
	con := console.New(src, console.Options{Refresh: c.Refresh, Since: since, Recent: c.RecentEvents})
	fmt.Fprintf(stdout, "operator console on http://%s/ (read-only; Ctrl-C to stop)\n", ln.Addr())
	return con.Serve(ctx, ln)
}

// consoleSource is the console's console.Source: the operators' commands' own gathering.
type consoleSource struct {
	c        consoleConfig
	registry *agency.Registry

	mu  sync.Mutex
	sys *nats.Conn // the system account's, made on first use and kept
}

func newConsoleSource(c consoleConfig) (*consoleSource, error) {
	p, err := c.Protocol.loadProtocol()
	if err != nil {
		return nil, err
	}
	if _, err := c.agencyAddrs(); err != nil {
		return nil, err
	}
	return &consoleSource{c: c, registry: p.Agencies()}, nil
}

func (s *consoleSource) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sys != nil {
		s.sys.Close()
	}
}

// Topology is the protocol's agencies, and for each two that exchange events both
// directions: referrals go one way, receipts come back.
func (s *consoleSource) Topology() console.Topology {
	var t console.Topology
	for _, id := range s.registry.IDs() {
		t.Agencies = append(t.Agencies, console.Agency{ID: id, Name: s.registry.Name(id)})
		for _, peer := range s.registry.Peers(id) {
			t.Routes = append(t.Routes, console.Route{From: id, To: peer})
		}
	}
	return t
}

func (s *consoleSource) FollowFlow(ctx context.Context, after uint64, following func(), record func(console.FlowEvent)) error {
	ec := s.c.events(after)
	nc, js, err := ec.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	following()
	return follow(ctx, ec, js, io.Discard, func(seq, _ uint64, r *throughcarev1.FlowRecord) error {
		record(flowEvent(seq, r))
		return nil
	})
}

// flowEvent is what the console shows of a flow record: every field of which is routing
// metadata.
func flowEvent(seq uint64, r *throughcarev1.FlowRecord) console.FlowEvent {
	ev := console.FlowEvent{
		Sequence: seq, Time: r.GetTime().AsTime(), EventID: r.GetEventId(),
		Stage: short(r.GetStage().String(), "FLOW_STAGE_"), Type: short(r.GetType().String(), "EVENT_TYPE_"),
		From: r.GetSource(), To: r.GetRecipient(), HandoverID: r.GetHandoverId(), Reason: r.GetReason(),
	}
	if r.GetReceipt() != 0 {
		ev.Receipt = short(r.GetReceipt().String(), "RECEIPT_TYPE_")
	}
	if r.GetState() != 0 {
		ev.State = short(r.GetState().String(), "HANDOVER_STATE_")
	}
	if w := categories(r.GetWithheldCategories()); w != "" {
		ev.Withheld = strings.Split(w, ",")
	}
	return ev
}

func (s *consoleSource) Overdue(ctx context.Context) ([]console.Overdue, error) {
	rows, err := overdueConfig{operatorConfig: s.c.operatorConfig}.overdue(ctx, time.Now())
	if err != nil {
		return nil, err
	}
	out := make([]console.Overdue, len(rows))
	for i, r := range rows {
		out[i] = console.Overdue{
			Agency: r.agency, Direction: short(r.h.GetDirection().String(), "DIRECTION_"),
			HandoverID: r.h.GetHandoverId(), CaseID: r.h.GetCaseId(), From: r.h.GetSender(), To: r.h.GetRecipient(),
			State: short(r.h.GetState().String(), "HANDOVER_STATE_"), Deadline: r.kind, Due: r.due,
		}
	}
	return out, nil
}

// DeadLetters are the open ones, as `deadletters list` shows them: a resolved one needs
// no operator.
func (s *consoleSource) DeadLetters(ctx context.Context) ([]console.DeadLetter, error) {
	rows, err := deadLettersConfig{operatorConfig: s.c.operatorConfig}.deadLetters(ctx)
	if err != nil {
		return nil, err
	}
	var out []console.DeadLetter
	for _, r := range rows {
		dl := r.dl
		if dl.GetStatus() != throughcarev1.DeadLetterStatus_DEAD_LETTER_STATUS_UNSPECIFIED {
			continue
		}
		out = append(out, console.DeadLetter{
			Agency: r.agency, Stream: dl.GetStream(), Sequence: dl.GetSequence(), Time: dl.GetTime().AsTime(),
			From: dl.GetSource(), HandoverID: dl.GetHandoverId(), EventID: dl.GetEventId(), Deliveries: dl.GetDeliveries(), Reason: dl.GetReason(),
		})
	}
	return out, nil
}

// Streams is every account's streams, as `throughcare streams` reports them, on a system
// account connection kept across calls.
func (s *consoleSource) Streams(ctx context.Context) ([]console.Stream, error) {
	nc, err := s.systemConn()
	if err != nil {
		return nil, err
	}
	if !nc.IsConnected() {
		return nil, fmt.Errorf("NATS at %s: %s", redactURLs(s.c.NATSURL), strings.ToLower(nc.Status().String()))
	}
	servers, err := jsz(ctx, nc)
	if err != nil {
		return nil, err
	}
	var out []console.Stream
	for _, srv := range servers {
		for _, acc := range srv.Data.AccountDetails {
			for _, st := range acc.Streams {
				out = append(out, streamHealth(srv.Server.Name, acc.Name, st))
			}
		}
	}
	slices.SortFunc(out, func(a, b console.Stream) int {
		return strings.Compare(a.Server+"\x00"+a.Account+"\x00"+a.Name, b.Server+"\x00"+b.Account+"\x00"+b.Name)
	})
	return out, nil
}

func (s *consoleSource) systemConn() (*nats.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sys != nil && !s.sys.IsClosed() {
		return s.sys, nil
	}
	nc, err := s.c.streams().connectSystem(nats.Name("throughcare-console"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, err
	}
	s.sys = nc
	return nc, nil
}

func streamHealth(server, account string, st server.StreamDetail) console.Stream {
	out := console.Stream{
		Server: server, Account: account, Name: st.Name, Messages: st.State.Msgs, Bytes: st.State.Bytes,
		Sources: []console.StreamSource{}, Consumers: []console.StreamConsumer{},
	}
	if !st.State.LastTime.IsZero() {
		out.Last = &st.State.LastTime
	}
	for _, src := range st.Sources {
		heard := int64(-1)
		if src.Active >= 0 {
			heard = src.Active.Milliseconds()
		}
		out.Sources = append(out.Sources, console.StreamSource{Name: src.Name, Lag: src.Lag, HeardMillis: heard})
	}
	for _, cons := range st.Consumer {
		if cons == nil {
			continue
		}
		var last *time.Time
		if cons.Delivered.Last != nil && !cons.Delivered.Last.IsZero() {
			last = cons.Delivered.Last
		}
		out.Consumers = append(out.Consumers, console.StreamConsumer{
			Name: cons.Name, Pending: cons.NumPending, AckPending: cons.NumAckPending, Redelivered: cons.NumRedelivered, LastDelivery: last,
		})
	}
	return out
}
