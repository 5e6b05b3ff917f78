package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/throughcare/throughcare/pkg/flow"
	"github.com/throughcare/throughcare/pkg/natsserver"
)

// streamsConfig is `throughcare streams`: every account's streams and consumers, as the
// NATS system account sees them (counts and times, never a message), and the resends the
// flow records count.
type streamsConfig struct {
	NATSURL      string
	SystemSeed   string
	OperatorSeed string
	DataDir      string
}

func parseStreamsConfig(args []string, getenv func(string) string, out io.Writer) (streamsConfig, error) {
	var c streamsConfig
	fs := flag.NewFlagSet("streams", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS to report on")
	fs.StringVar(&c.SystemSeed, "sys-nkey-seed", "", "the system account's nkey seed; empty uses dev's, <data-dir>/credentials/sys.nk, if there")
	fs.StringVar(&c.OperatorSeed, "nats-nkey-seed", "", "the operators' nkey seed, to count resends; empty uses dev's, if there")
	fs.StringVar(&c.DataDir, "data-dir", "./.throughcare", "dev's data directory, for its credentials")
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	return c, nil
}

// jszResponse is one server's answer to $SYS.REQ.SERVER.PING.JSZ.
type jszResponse struct {
	Server server.ServerInfo `json:"server"`
	Data   *server.JSInfo    `json:"data"`
	Error  *server.ApiError  `json:"error"`
}

func runStreams(ctx context.Context, c streamsConfig, stdout io.Writer) error {
	nc, err := c.connectSystem(nats.Name("throughcare-streams"))
	if err != nil {
		return err
	}
	defer nc.Close()
	servers, err := jsz(ctx, nc)
	if err != nil {
		return err
	}
	resends, err := c.resends(ctx)
	if err != nil {
		fmt.Fprintf(stdout, "resends not counted: %v\n\n", err)
	}
	printStreams(stdout, servers, resends, time.Now())
	return nil
}

// connectSystem reaches NATS as the system account: the one that sees every account's
// streams and consumers.
func (c streamsConfig) connectSystem(opts ...nats.Option) (*nats.Conn, error) {
	seed := seedOr(c.SystemSeed, c.DataDir, natsserver.SystemAccount)
	if seed == "" {
		return nil, errors.New("--sys-nkey-seed: the system account's seed is needed to see every account's streams")
	}
	auth, err := nats.NkeyOptionFromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("--sys-nkey-seed: %w", err)
	}
	nc, err := nats.Connect(c.NATSURL, append([]nats.Option{auth}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redactURLs(c.NATSURL), err)
	}
	return nc, nil
}

// jsz asks every server for its accounts' streams and consumers and gathers the answers
// that come within a moment of the first.
func jsz(ctx context.Context, nc *nats.Conn) ([]jszResponse, error) {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, err := json.Marshal(server.JSzOptions{Accounts: true, Streams: true, Consumer: true, Config: true})
	if err != nil {
		return nil, err
	}
	if err := nc.PublishRequest("$SYS.REQ.SERVER.PING.JSZ", inbox, req); err != nil {
		return nil, err
	}
	var out []jszResponse
	wait := 5 * time.Second
	for ctx.Err() == nil {
		msg, err := sub.NextMsg(wait)
		if err != nil {
			if len(out) > 0 {
				return out, nil // the others have answered, or are not coming
			}
			return nil, fmt.Errorf("no server answered the JetStream report: %w", err)
		}
		var r jszResponse
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			return nil, fmt.Errorf("JetStream report: %w", err)
		}
		if r.Error != nil {
			return nil, fmt.Errorf("JetStream report from %s: %s", r.Server.Name, r.Error.Description)
		}
		out = append(out, r)
		wait = 300 * time.Millisecond
	}
	return nil, ctx.Err()
}

// resends counts the resent events by sender and recipient, from the FLOW stream's
// subject counts: no record is read.
func (c streamsConfig) resends(ctx context.Context) (map[string]uint64, error) {
	ec := eventsConfig{NATSURL: c.NATSURL, NATSSeed: seedOr(c.OperatorSeed, c.DataDir, natsserver.OperatorAccount), DataDir: c.DataDir}
	nc, js, err := ec.connect()
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	stream, err := js.Stream(ctx, flow.Stream)
	if err != nil {
		return nil, err
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter("flow.*.resent.>"))
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for subject, n := range info.State.Subjects {
		// flow.<publisher>.resent.<source>.<recipient>.<type>
		if t := strings.Split(subject, "."); len(t) == 6 {
			out[t[3]+" → "+t[4]] += n
		}
	}
	return out, nil
}

func printStreams(w io.Writer, servers []jszResponse, resends map[string]uint64, now time.Time) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return now.Sub(t).Round(time.Second).String() + " ago"
	}
	for _, srv := range servers {
		fmt.Fprintf(tw, "server %s\n", srv.Server.Name)
		accounts := srv.Data.AccountDetails
		slices.SortFunc(accounts, func(a, b *server.AccountDetail) int { return strings.Compare(a.Name, b.Name) })
		for _, acc := range accounts {
			fmt.Fprintf(tw, "\naccount %s\n", acc.Name)
			fmt.Fprintln(tw, "  STREAM\tMESSAGES\tBYTES\tLAST MESSAGE\t")
			slices.SortFunc(acc.Streams, func(a, b server.StreamDetail) int { return strings.Compare(a.Name, b.Name) })
			for _, st := range acc.Streams {
				fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\t\n", st.Name, st.State.Msgs, st.State.Bytes, ago(st.State.LastTime))
				for _, src := range st.Sources {
					active := "never"
					if src.Active >= 0 {
						active = src.Active.Round(time.Millisecond).String() + " ago"
					}
					fmt.Fprintf(tw, "    ← source %s\tlag %d\theard %s\t\n", src.Name, src.Lag, active)
				}
				for _, cons := range st.Consumer {
					fmt.Fprintf(tw, "    consumer %s\tpending %d\tack pending %d\tredelivered %d\tlast delivery %s\t\n",
						cons.Name, cons.NumPending, cons.NumAckPending, cons.NumRedelivered, ago(lastTime(cons.Delivered.Last)))
				}
			}
		}
	}
	if len(resends) > 0 {
		fmt.Fprintln(tw, "\nRESENT\tEVENTS\t")
		keys := make([]string, 0, len(resends))
		for k := range resends {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%d\t\n", k, resends[k])
		}
	}
	_ = tw.Flush()
}

func lastTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}
