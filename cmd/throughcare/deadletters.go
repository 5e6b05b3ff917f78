package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/prototext"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// deadLettersConfig is `throughcare deadletters list|show|retry|discard`.
type deadLettersConfig struct {
	operatorConfig
	Action   string
	Agency   string
	Stream   string
	Sequence uint64
	Note     string
	All      bool
}

const deadLettersUsage = `usage: throughcare deadletters <command> [flags]

commands:
  list     the dead letters of every agency (--agency for one; --all with those resolved)
  show     one dead letter in full: --agency, --stream, --sequence
  retry    ask its sender to send again what the agency has not received: --agency, --stream, --sequence [--note]
  discard  leave it, on purpose, recorded in the ledger: --agency, --stream, --sequence, --note
`

func parseDeadLettersConfig(args []string, getenv func(string) string, out io.Writer) (deadLettersConfig, error) {
	var c deadLettersConfig
	if len(args) == 0 {
		fmt.Fprint(out, deadLettersUsage)
		return c, errUsage
	}
	c.Action = args[0]
	switch c.Action {
	case "list", "show", "retry", "discard":
	default:
		fmt.Fprintf(out, "unknown deadletters command %q\n\n%s", c.Action, deadLettersUsage)
		return c, errUsage
	}
	fs := flag.NewFlagSet("deadletters "+c.Action, flag.ContinueOnError)
	fs.SetOutput(out)
	c.register(fs)
	fs.StringVar(&c.Agency, "agency", "", "the agency holding the dead letter")
	if c.Action == "list" {
		fs.BoolVar(&c.All, "all", false, "also those retried or discarded")
	} else {
		fs.StringVar(&c.Stream, "stream", "", "the stream the message failed in, as list shows it (INBOX_PROBATION)")
		fs.Uint64Var(&c.Sequence, "sequence", 0, "its sequence in that stream, as list shows it")
	}
	if c.Action == "retry" || c.Action == "discard" {
		fs.StringVar(&c.Note, "note", "", "why, for the ledger; name no person")
	}
	if err := parseFlags(fs, args[1:], getenv); err != nil {
		return c, err
	}
	if c.Action != "list" {
		switch {
		case c.Agency == "":
			return c, errors.New("--agency: which agency holds the dead letter")
		case c.Stream == "" || c.Sequence == 0:
			return c, errors.New("--stream and --sequence: which dead letter, as list shows them")
		}
	}
	if c.Action == "discard" && c.Note == "" {
		return c, errors.New("--note: why it is discarded, for the ledger")
	}
	return c, nil
}

// agencyDL is one dead letter, and the agency that holds it.
type agencyDL struct {
	agency string
	dl     *throughcarev1.DeadLetter
}

// deadLetters gathers every dead letter of the agencies c selects, resolved ones too:
// `deadletters list` and `show` print them, the console shows them.
func (c deadLettersConfig) deadLetters(ctx context.Context) ([]agencyDL, error) {
	addrs, err := c.agencyAddrs()
	if err != nil {
		return nil, err
	}
	var rows []agencyDL
	found := false
	for _, a := range addrs {
		if c.Agency != "" && a[0] != c.Agency {
			continue
		}
		found = true
		conn, err := c.dial(a[1])
		if err != nil {
			return nil, err
		}
		client := throughcarev1.NewHandoverServiceClient(conn)
		req := &throughcarev1.ListDeadLettersRequest{PageSize: 500}
		for {
			resp, err := client.ListDeadLetters(ctx, req)
			if err != nil {
				conn.Close()
				return nil, fmt.Errorf("%s at %s: %w", a[0], a[1], err)
			}
			for _, dl := range resp.GetDeadLetters() {
				rows = append(rows, agencyDL{a[0], dl})
			}
			if resp.GetNextPageToken() == "" {
				break
			}
			req.PageToken = resp.GetNextPageToken()
		}
		conn.Close()
	}
	if !found {
		return nil, fmt.Errorf("--agency %q: not among the agencies", c.Agency)
	}
	return rows, nil
}

// resolveDeadLetter retries or discards one dead letter at c.Agency.
func resolveDeadLetter(ctx context.Context, c deadLettersConfig, stdout io.Writer) error {
	addrs, err := c.agencyAddrs()
	if err != nil {
		return err
	}
	i := slices.IndexFunc(addrs, func(a [2]string) bool { return a[0] == c.Agency })
	if i < 0 {
		return fmt.Errorf("--agency %q: not among the agencies", c.Agency)
	}
	conn, err := c.dial(addrs[i][1])
	if err != nil {
		return err
	}
	defer conn.Close()
	client := throughcarev1.NewHandoverServiceClient(conn)
	if c.Action == "retry" {
		resp, err := client.RetryDeadLetter(ctx, &throughcarev1.RetryDeadLetterRequest{Stream: c.Stream, Sequence: c.Sequence, Note: c.Note})
		if err != nil {
			return fmt.Errorf("%s: %w", c.Agency, err)
		}
		fmt.Fprintf(stdout, "retried %s/%d at %s: %s asked to send it again\n", c.Stream, c.Sequence, c.Agency, resp.GetDeadLetter().GetSource())
		return nil
	}
	if _, err := client.DiscardDeadLetter(ctx, &throughcarev1.DiscardDeadLetterRequest{Stream: c.Stream, Sequence: c.Sequence, Note: c.Note}); err != nil {
		return fmt.Errorf("%s: %w", c.Agency, err)
	}
	fmt.Fprintf(stdout, "discarded %s/%d at %s\n", c.Stream, c.Sequence, c.Agency)
	return nil
}

func runDeadLetters(ctx context.Context, c deadLettersConfig, stdout io.Writer) error {
	if c.Action == "retry" || c.Action == "discard" {
		return resolveDeadLetter(ctx, c, stdout)
	}
	rows, err := c.deadLetters(ctx)
	if err != nil {
		return err
	}
	if c.Action == "show" {
		for _, r := range rows {
			if r.dl.GetStream() == c.Stream && r.dl.GetSequence() == c.Sequence {
				fmt.Fprint(stdout, prototext.MarshalOptions{Multiline: true}.Format(r.dl))
				return nil
			}
		}
		return fmt.Errorf("no dead letter %s/%d at %s", c.Stream, c.Sequence, c.Agency)
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENCY\tSTREAM\tSEQUENCE\tTIME\tFROM\tHANDOVER\tEVENT\tDELIVERIES\tSTATUS\tREASON\t")
	shown := 0
	for _, r := range rows {
		dl := r.dl
		if !c.All && dl.GetStatus() != throughcarev1.DeadLetterStatus_DEAD_LETTER_STATUS_UNSPECIFIED {
			continue
		}
		status := short(dl.GetStatus().String(), "DEAD_LETTER_STATUS_")
		if status == "unspecified" {
			status = "open"
		}
		reason := dl.GetReason()
		if len(reason) > 60 {
			reason = reason[:59] + "…"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t\n", r.agency, dl.GetStream(), dl.GetSequence(),
			dl.GetTime().AsTime().Local().Format(time.DateTime), dl.GetSource(), dl.GetHandoverId(), dl.GetEventId(), dl.GetDeliveries(), status, reason)
		shown++
	}
	if shown == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	return tw.Flush()
}
