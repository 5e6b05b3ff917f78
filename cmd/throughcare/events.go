package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/term"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/flow"
	"github.com/throughcare/throughcare/pkg/natsserver"
)

// eventsConfig is `throughcare events tail|setup`: the operators' view of the flow.
type eventsConfig struct {
	Action   string
	NATSURL  string
	NATSSeed string
	DataDir  string
	Output   string
	Since    string
	FromSeq  uint64
	Filter   flow.Filter
	State    string
	// Width is the terminal's, for the table; 0 finds it out.
	Width int
	// Replicas is setup's: the FLOW stream's replicas.
	Replicas int
}

func parseEventsConfig(args []string, getenv func(string) string, out io.Writer) (eventsConfig, error) {
	var c eventsConfig
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(out, eventsUsage)
		return c, errUsage
	}
	c.Action = args[0]
	fs := flag.NewFlagSet("events "+c.Action, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS to read the FLOW stream from")
	fs.StringVar(&c.NATSSeed, "nats-nkey-seed", "", "the operators' nkey seed; empty uses dev's, <data-dir>/credentials/operator.nk, if there")
	fs.StringVar(&c.DataDir, "data-dir", "./.throughcare", "dev's data directory, for its operator credentials")
	switch c.Action {
	case "tail":
		fs.StringVar(&c.Output, "output", "table", "table, or json: one JSON object a line")
		fs.StringVar(&c.Since, "since", "", "replay from this long ago (1h) or this time (RFC 3339), then follow")
		fs.Uint64Var(&c.FromSeq, "from-sequence", 0, "replay from this FLOW stream sequence, then follow")
		fs.StringVar(&c.Filter.From, "agency", "", "only events sent by this agency")
		fs.StringVar(&c.Filter.To, "to", "", "only events addressed to this agency")
		fs.StringVar(&c.Filter.CaseID, "case", "", "only events about this case")
		fs.StringVar(&c.Filter.HandoverID, "handover", "", "only events along this handover")
		fs.StringVar(&c.Filter.Type, "type", "", "only events of this type, e.g. receipt_issued")
		fs.StringVar(&c.State, "state", "", "only events that carry this handover state, e.g. delivered")
		fs.IntVar(&c.Width, "width", 0, "table width; 0 fits the terminal")
	case "setup":
		fs.IntVar(&c.Replicas, "replicas", 1, "JetStream replicas of the FLOW stream (3 on a cluster)")
	default:
		fmt.Fprintf(out, "unknown events command %q\n\n%s", c.Action, eventsUsage)
		return c, errUsage
	}
	if err := parseFlags(fs, args[1:], getenv); err != nil {
		return c, err
	}
	if c.Action == "setup" {
		if err := checkReplicas(c.Replicas); err != nil {
			return c, err
		}
	}
	if c.Output != "" && c.Output != "table" && c.Output != "json" {
		return c, fmt.Errorf("--output %q: want table or json", c.Output)
	}
	if c.Since != "" && c.FromSeq != 0 {
		return c, errors.New("--since and --from-sequence: give one")
	}
	if c.State != "" {
		v, ok := throughcarev1.HandoverState_value["HANDOVER_STATE_"+strings.ToUpper(c.State)]
		if !ok {
			return c, fmt.Errorf("--state %q: not a handover state (delivered, accepted, ...)", c.State)
		}
		c.Filter.State = throughcarev1.HandoverState(v)
	}
	if t := c.Filter.Type; t != "" {
		if _, ok := throughcarev1.EventType_value["EVENT_TYPE_"+strings.ToUpper(strings.TrimPrefix(strings.ToLower(t), "event_type_"))]; !ok {
			return c, fmt.Errorf("--type %q: not an event type (handover_referred, receipt_issued, ...)", t)
		}
	}
	return c, nil
}

const eventsUsage = `usage: throughcare events <command> [flags]

commands:
  tail    follow the events between agencies as operators see them: routing metadata only
  setup   create the operators' FLOW stream (dev does it itself)
`

// startTime is --since as a time: a duration back from now, or a time.
func (c eventsConfig) startTime(now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(c.Since); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, c.Since)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want a duration (1h) or an RFC 3339 time", c.Since)
	}
	return t, nil
}

// connect reaches the FLOW stream's account with the operators' credentials.
func (c eventsConfig) connect() (*nats.Conn, jetstream.JetStream, error) {
	seed := seedOr(c.NATSSeed, c.DataDir, natsserver.OperatorAccount)
	opts := []nats.Option{nats.Name("throughcare-events"), nats.MaxReconnects(-1)}
	if seed != "" {
		auth, err := natsserver.OperatorConnectOptions(seed)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, auth...)
	}
	nc, err := nats.Connect(c.NATSURL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", redactURLs(c.NATSURL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// seedOr is seed, or dev's seed file of account when seed is empty and the file exists.
func seedOr(seed, dataDir, account string) string {
	if seed != "" {
		return seed
	}
	if dev := filepath.Join(devCredentialsDir(dataDir), strings.ToLower(account)+".nk"); fileExists(dev) {
		return dev
	}
	return ""
}

func fileExists(path string) bool { _, err := os.Stat(path); return err == nil }

func runEvents(ctx context.Context, c eventsConfig, stdout, stderr io.Writer) error {
	nc, js, err := c.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	if c.Action == "setup" {
		limits := flow.DefaultLimits
		limits.Replicas = c.Replicas
		if err := flow.Setup(ctx, js, limits); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "stream %s ready, %d replicas\n", flow.Stream, c.Replicas)
		return nil
	}
	return tail(ctx, c, js, stdout, stderr)
}

// tail prints flow records until ctx ends.
func tail(ctx context.Context, c eventsConfig, js jetstream.JetStream, stdout, stderr io.Writer) error {
	// Buffered, and flushed whenever the replay has caught up: a long replay is not a
	// write call a record, and following live shows each record at once.
	buf := bufio.NewWriterSize(stdout, 64<<10)
	defer buf.Flush()
	out := newFlowPrinter(c, buf, stdout)
	var replayed int
	return follow(ctx, c, js, stderr, func(seq, pending uint64, r *throughcarev1.FlowRecord) error {
		if c.Filter.Matches(r) {
			if err := out.print(seq, r); err != nil {
				return err
			}
		}
		if pending == 0 {
			if err := buf.Flush(); err != nil {
				return err
			}
		}
		// Long replays say how far they have come; following live says nothing.
		if replayed++; pending > 0 && replayed%1000 == 0 {
			fmt.Fprintf(stderr, "replayed %d, %d to go\n", replayed, pending)
		}
		return nil
	})
}

// follow hands handle each flow record of the subjects c selects, with its stream
// sequence and how many records are left to replay, until ctx ends or handle fails. An
// ordered consumer resumes after the last record it delivered across reconnects and server
// restarts: no gap, no record twice. `events tail` and the console both read the flow so.
func follow(ctx context.Context, c eventsConfig, js jetstream.JetStream, stderr io.Writer, handle func(seq, pending uint64, r *throughcarev1.FlowRecord) error) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{c.Filter.Subject()}, DeliverPolicy: jetstream.DeliverNewPolicy}
	switch {
	case c.FromSeq != 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, c.FromSeq
	case c.Since != "":
		start, err := c.startTime(time.Now())
		if err != nil {
			return err
		}
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	cons, err := js.OrderedConsumer(ctx, flow.Stream, cfg)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("no %s stream here: run `throughcare events setup` with the operators' credentials", flow.Stream)
		}
		return fmt.Errorf("follow %s: %w", flow.Stream, err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("follow %s: %w", flow.Stream, err)
	}
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			msgs.Stop()
		case <-stopped:
		}
	}()
	defer close(stopped)
	for {
		msg, err := msgs.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("follow %s: %w", flow.Stream, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return err
		}
		r := new(throughcarev1.FlowRecord)
		if err := proto.Unmarshal(msg.Data(), r); err != nil {
			fmt.Fprintf(stderr, "record %d: not a flow record: %v\n", meta.Sequence.Stream, err)
			continue
		}
		if err := handle(meta.Sequence.Stream, meta.NumPending, r); err != nil {
			return err
		}
	}
}

// flowPrinter writes records as a table sized to the terminal, or as JSON lines.
type flowPrinter struct {
	json  bool
	w     io.Writer
	width int
	head  bool
	buf   []byte // one JSON line, reused
}

// newFlowPrinter writes to w; the table fits terminal, when that is one.
func newFlowPrinter(c eventsConfig, w, terminal io.Writer) *flowPrinter {
	width := c.Width
	if width == 0 {
		width = 120
		if f, ok := terminal.(*os.File); ok {
			if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 40 {
				width = cols
			}
		}
	}
	return &flowPrinter{json: c.Output == "json", w: w, width: width}
}

func (p *flowPrinter) print(seq uint64, r *throughcarev1.FlowRecord) error {
	if p.json {
		line := strconv.AppendUint(append(p.buf[:0], `{"stream_sequence":`...), seq, 10)
		line, err := flow.AppendJSON(append(line, `,"record":`...), r)
		if err != nil {
			return err
		}
		p.buf = append(line, '}', '\n')
		_, err = p.w.Write(p.buf)
		return err
	}
	if !p.head {
		if err := p.line("SEQ", "TIME", "STAGE", "TYPE", "FROM → TO", "HANDOVER", "#", "RECEIPT → STATE", "SHARED / WITHHELD / REASON"); err != nil {
			return err
		}
		p.head = true
	}
	receipt := ""
	if r.GetReceipt() != 0 || r.GetState() != 0 {
		receipt = short(r.GetReceipt().String(), "RECEIPT_TYPE_") + " → " + short(r.GetState().String(), "HANDOVER_STATE_")
	}
	detail := categories(r.GetSharedCategories())
	if w := categories(r.GetWithheldCategories()); w != "" {
		detail += " / held back: " + w
	}
	if r.GetReason() != "" {
		detail += " / " + r.GetReason()
	}
	return p.line(strconv.FormatUint(seq, 10), r.GetTime().AsTime().Local().Format("15:04:05.000"), short(r.GetStage().String(), "FLOW_STAGE_"),
		short(r.GetType().String(), "EVENT_TYPE_"), r.GetSource()+" → "+r.GetRecipient(), r.GetHandoverId(),
		strconv.FormatUint(r.GetSequence(), 10), receipt, detail)
}

// columnWidths are the table's, but for the last column, which takes what the terminal has left.
var columnWidths = [...]int{7, 12, 9, 20, 24, 30, 3, 26}

// line writes one row into the reused buffer: a replay prints a million of them.
func (p *flowPrinter) line(cols ...string) error {
	b, used := p.buf[:0], 0
	for i, c := range cols[:len(cols)-1] {
		b = append(b, c...)
		w := utf8.RuneCountInString(c)
		for ; w < columnWidths[i]; w++ {
			b = append(b, ' ')
		}
		b = append(b, ' ')
		used += w + 1
	}
	last := cols[len(cols)-1]
	if room := p.width - used; utf8.RuneCountInString(last) > room {
		last = string([]rune(last)[:max(room-1, 0)]) + "…"
	}
	b = bytes.TrimRight(append(b, last...), " ")
	p.buf = append(b, '\n')
	_, err := p.w.Write(p.buf)
	return err
}

func short(name, prefix string) string { return strings.ToLower(strings.TrimPrefix(name, prefix)) }

func categories(cs []throughcarev1.DataCategory) string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = short(c.String(), "DATA_CATEGORY_")
	}
	return strings.Join(names, ",")
}
