package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/certs"
)

// operatorConfig is how an operator's command reaches every agency's service over gRPC,
// with the operator certificate: dev's by default.
type operatorConfig struct {
	DataDir  string
	BasePort int
	Protocol handoverFlags
	// Addrs are agency=host:port pairs; empty places the agencies as dev does.
	Addrs                  string
	TLSCA, TLSCert, TLSKey string
}

func (c *operatorConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.DataDir, "data-dir", "./.throughcare", "dev's data directory, for its operator certificate")
	fs.IntVar(&c.BasePort, "base-port", 7100, "dev's --base-port: where the agencies serve gRPC")
	fs.StringVar(&c.Protocol.ProtocolFile, "protocol", "", "sharing protocol file naming the agencies; empty uses the built-in default")
	fs.StringVar(&c.Addrs, "addrs", "", "agency=host:port,... of each agency's service; empty uses dev's ports")
	fs.StringVar(&c.TLSCA, "tls-ca", "", "CA certificate; empty uses dev's")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "the operator's client certificate; empty uses dev's")
	fs.StringVar(&c.TLSKey, "tls-key", "", "the operator's client key; empty uses dev's")
}

// agencyAddrs is each agency's service address, in the protocol's order.
func (c operatorConfig) agencyAddrs() ([][2]string, error) {
	sharing, err := c.Protocol.loadProtocol()
	if err != nil {
		return nil, err
	}
	var out [][2]string
	if c.Addrs == "" {
		dev := devConfig{BasePort: c.BasePort}
		for i, id := range sharing.Agencies().IDs() {
			addr, _, _ := dev.agencyAddrs(i)
			out = append(out, [2]string{id, addr})
		}
		return out, nil
	}
	for _, pair := range strings.Split(c.Addrs, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !sharing.Agencies().Has(id) || addr == "" {
			return nil, fmt.Errorf("--addrs %q: want agency=host:port, with agencies of the protocol (%s)", pair, strings.Join(sharing.Agencies().IDs(), ", "))
		}
		out = append(out, [2]string{id, addr})
	}
	return out, nil
}

// dial connects to addr as the operator.
func (c operatorConfig) dial(addr string) (*grpc.ClientConn, error) {
	dir := filepath.Join(c.DataDir, "certs")
	or := func(v, dev string) string {
		if v != "" {
			return v
		}
		return filepath.Join(dir, dev)
	}
	tlsCfg, err := certs.LoadClientTLS(or(c.TLSCA, "ca.pem"), or(c.TLSCert, filepath.Join(certs.Operator, "client.pem")), or(c.TLSKey, filepath.Join(certs.Operator, "client-key.pem")), "")
	if err != nil {
		return nil, fmt.Errorf("operator certificate (--tls-ca, --tls-cert, --tls-key): %w", err)
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
}

type overdueConfig struct {
	operatorConfig
	Agency string
	MinAge time.Duration
	Kind   string
}

func parseOverdueConfig(args []string, getenv func(string) string, out io.Writer) (overdueConfig, error) {
	var c overdueConfig
	if len(args) == 0 || args[0] != "overdue" {
		fmt.Fprint(out, "usage: throughcare handovers overdue [flags]\n\n  overdue  the handovers with a deadline passed, at every agency: metadata only\n")
		return c, errUsage
	}
	fs := flag.NewFlagSet("handovers overdue", flag.ContinueOnError)
	fs.SetOutput(out)
	c.register(fs)
	fs.StringVar(&c.Agency, "agency", "", "only the handovers this agency sent or received")
	fs.DurationVar(&c.MinAge, "min-age", 0, "only those overdue at least this long")
	fs.StringVar(&c.Kind, "deadline", "", "only this deadline: acknowledge or accept")
	if err := parseFlags(fs, args[1:], getenv); err != nil {
		return c, err
	}
	if c.Kind != "" && c.Kind != "acknowledge" && c.Kind != "accept" {
		return c, fmt.Errorf("--deadline %q: want acknowledge or accept", c.Kind)
	}
	if c.MinAge < 0 {
		return c, fmt.Errorf("--min-age %s: must not be negative", c.MinAge)
	}
	return c, nil
}

// overdueRow is one deadline passed, as one agency reports it.
type overdueRow struct {
	agency string
	h      *throughcarev1.OverdueHandover
	kind   string
	due    time.Time
}

// overdue gathers the deadlines passed at the agencies c selects, as of now, oldest first:
// `handovers overdue` prints them, the console shows them.
func (c overdueConfig) overdue(ctx context.Context, now time.Time) ([]overdueRow, error) {
	addrs, err := c.agencyAddrs()
	if err != nil {
		return nil, err
	}
	var rows []overdueRow
	for _, a := range addrs {
		if c.Agency != "" && a[0] != c.Agency {
			continue
		}
		found, err := c.overdueAt(ctx, a[0], a[1])
		if err != nil {
			return nil, err
		}
		for _, h := range found {
			for _, d := range []overdueRow{
				{a[0], h, "acknowledge", h.GetAcknowledgeDueTime().AsTime()},
				{a[0], h, "accept", h.GetAcceptDueTime().AsTime()},
			} {
				passed := d.kind == "acknowledge" && h.GetAcknowledgeOverdue() || d.kind == "accept" && h.GetAcceptOverdue()
				// A sender's own due time may lie ahead: the recipient's receipt marked it.
				if passed && (c.Kind == "" || c.Kind == d.kind) && (c.MinAge == 0 || now.Sub(d.due) >= c.MinAge) {
					rows = append(rows, d)
				}
			}
		}
	}
	slices.SortFunc(rows, func(a, b overdueRow) int { return a.due.Compare(b.due) })
	return rows, nil
}

func runOverdue(ctx context.Context, c overdueConfig, stdout io.Writer) error {
	now := time.Now()
	rows, err := c.overdue(ctx, now)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENCY\tDIRECTION\tHANDOVER\tCASE\tFROM → TO\tSTATE\tDEADLINE\tDUE\tOVERDUE FOR\t")
	for _, r := range rows {
		late := "marked by the recipient"
		if r.due.Before(now) {
			late = now.Sub(r.due).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s → %s\t%s\t%s\t%s\t%s\t\n", r.agency, short(r.h.GetDirection().String(), "DIRECTION_"),
			r.h.GetHandoverId(), r.h.GetCaseId(), r.h.GetSender(), r.h.GetRecipient(), short(r.h.GetState().String(), "HANDOVER_STATE_"),
			r.kind, r.due.Local().Format(time.DateTime), late)
	}
	if len(rows) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	return tw.Flush()
}

// overdueAt pages through agency's overdue handovers.
func (c overdueConfig) overdueAt(ctx context.Context, agency, addr string) ([]*throughcarev1.OverdueHandover, error) {
	conn, err := c.dial(addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := throughcarev1.NewHandoverServiceClient(conn)
	var all []*throughcarev1.OverdueHandover
	req := &throughcarev1.ListOverdueHandoversRequest{PageSize: 500}
	for {
		resp, err := client.ListOverdueHandovers(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("%s at %s: %w", agency, addr, err)
		}
		all = append(all, resp.GetHandovers()...)
		if resp.GetNextPageToken() == "" {
			return all, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}
