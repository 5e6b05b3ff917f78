// Command throughcare is the one binary of throughcare. `dev` runs the whole system in one
// process with an embedded NATS; `serve` runs one agency's service against an external NATS,
// which is how it runs on Kubernetes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Getenv)
	stop()
	if err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, "throughcare:", err)
		}
		os.Exit(1)
	}
}

const usage = `usage: throughcare <command> [flags]

commands:
  dev     run the whole system in one process: embedded NATS and the three agency services
  serve   run one agency's service against an external NATS (--service, --nats-url, --tls-*, --person-hash-key)
  certs   create the local CA and certificates that dev uses (in <data-dir>/certs), or show them
  events  operators: tail the events between agencies, routing metadata only (events tail -h)
  streams operators: every account's streams, consumers, sources and lag; resends
  handovers overdue   operators: every agency's handovers with a deadline passed
  deadletters         operators: list, show, retry or discard what an agency gave up on
  console             operators: a read-only web page on 127.0.0.1 only: the flow, overdue, dead letters, streams
  cluster             a real cluster here: 3 clustered nats-server processes, each agency's serve its own process

Run 'throughcare <command> -h' for the flags of a command. Every flag can also be set with
an environment variable: --data-dir is THROUGHCARE_DATA_DIR.
`

var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return errUsage
	}
	switch args[0] {
	case "dev":
		cfg, err := parseDevConfig(args[1:], getenv, stdout)
		if err != nil {
			return err
		}
		return runDev(ctx, cfg, stdout)
	case "serve":
		cfg, err := parseServeConfig(args[1:], getenv, stdout)
		if err != nil {
			return err
		}
		return runServe(ctx, cfg)
	case "certs":
		cfg, err := parseCertsConfig(args[1:], getenv, stdout)
		if err != nil {
			return err
		}
		return runCerts(cfg, stdout)
	case "events":
		cfg, err := parseEventsConfig(args[1:], getenv, stdout)
		if err != nil {
			return err
		}
		return runEvents(ctx, cfg, stdout, os.Stderr)
	case "streams":
		cfg, err := parseStreamsConfig(args[1:], getenv, stdout)
		if err != nil {
			return err
		}
		return runStreams(ctx, cfg, stdout)
	case "handovers":
		cfg, err := parseOverdueConfig(args[1:], getenv, stdout)
		if err != nil {
			return err
		}
		return runOverdue(ctx, cfg, stdout)
	case "deadletters":
		cfg, err := parseDeadLettersConfig(args[1:], getenv, stdout)
		if err != nil {
			return err
		}
		return runDeadLetters(ctx, cfg, stdout)
	case "console":
		cfg, err := parseConsoleConfig(args[1:], getenv, stdout)
		if err != nil {
			return err
		}
		return runConsole(ctx, cfg, stdout)
	case "cluster":
		cfg, err := parseClusterConfig(args[1:], getenv, stdout)
		if err != nil {
			return err
		}
		return runCluster(ctx, cfg, stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stdout, "unknown command %q\n\n%s", args[0], usage)
	return errUsage
}
