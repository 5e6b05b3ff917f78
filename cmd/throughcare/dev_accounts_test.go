package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/signing"
)

// TestDevRunsAnAccountPerAgency: `throughcare dev` generates credentials, runs the
// embedded server with an account per agency and connects each service with its own
// key; a referral still reaches its recipient, across the accounts.
func TestDevRunsAnAccountPerAgency(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dataDir := t.TempDir()
	cfg := testDevConfig(t, dataDir)
	if !cfg.NATSAccounts {
		t.Fatal("dev runs without NATS accounts by default")
	}
	sys, err := startDev(ctx, zaptest.NewLogger(t), cfg)
	if err != nil {
		t.Fatalf("start dev: %v", err)
	}
	defer sys.Stop()

	creds := natsserver.Credentials{Dir: devCredentialsDir(dataDir)}
	for _, f := range []string{creds.AgencySeedFile(prisonAgency), creds.AgencySeedFile(probationAgency), creds.AgencySeedFile(socialWorkAgency), creds.SeedFile(natsserver.SystemAccount)} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("seed %s: %v, %v; want a 0600 file", f, st, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dataDir, "nats-accounts.conf")); err != nil {
		t.Errorf("accounts configuration: %v", err)
	}
	if nc, err := nats.Connect(sys.nats.ClientURL(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Error("the embedded server accepted a connection without credentials")
	}
	opts, err := creds.ConnectOptions(probationAgency)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(sys.nats.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("connect as probation: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.KeyValue(ctx, "prison_cases"); err == nil {
		t.Error("probation's credentials opened prison_cases")
	}
	if _, err := js.KeyValue(ctx, "probation_cases"); err != nil {
		t.Errorf("probation's credentials cannot open probation_cases: %v", err)
	}

	prisonConn := dialDev(t, sys, sys.agencies[0])
	rc := openCase(t, throughcarev1.NewPrisonServiceClient(prisonConn))
	resp, err := throughcarev1.NewCaseServiceClient(prisonConn).ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(),
		Recipient: probationAgency, Purpose: throughcarev1.Purpose_PURPOSE_SUPERVISION})
	if err != nil {
		t.Fatalf("refer: %v", err)
	}
	probation := throughcarev1.NewHandoverServiceClient(dialDev(t, sys, sys.agencies[1]))
	waitState(t, probation, resp.GetHandover().GetHandoverId(), stateRetrieved)
	// The first read at probation is a receipt, which travels back to the prison.
	waitState(t, throughcarev1.NewHandoverServiceClient(dialDev(t, sys, sys.agencies[0])), resp.GetHandover().GetHandoverId(), stateRetrieved)
}

// TestServeConnectsWithItsSeedIntoItsAccount runs `throughcare serve` against a server
// configured with the agency accounts: the prison service's streams appear in the
// prison's account, its inbox sourcing through the imports.
func TestServeConnectsWithItsSeedIntoItsAccount(t *testing.T) {
	srv := natstest.StartWithAgencies(t)
	keys := t.TempDir()
	if _, _, err := signing.Ensure(keys, testAgencies.IDs(), time.Now()); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"THROUGHCARE_NATS_NKEY_SEED": srv.Creds.AgencySeedFile(prisonAgency)}
	cfg, err := parseServeConfig([]string{"--service", "prison", "--nats-url", srv.URL(), "--addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0",
		"--insecure", "--log-level", "error", "--signing-key", filepath.Join(keys, "prison.key"), "--keyring", filepath.Join(keys, "keyring.json"),
		"--person-hash-key", testPersonKeyFile(t)},
		func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if cfg.NATSSeed != env["THROUGHCARE_NATS_NKEY_SEED"] {
		t.Fatalf("seed file %q, want it from the environment", cfg.NATSSeed)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- runServe(ctx, cfg) }()

	js := srv.JetStreamAs(t, prisonAgency)
	eventually(t, 20*time.Second, func() (bool, string) {
		s, err := js.Stream(t.Context(), eventbus.InboxStream(prisonAgency))
		if err != nil {
			return false, err.Error()
		}
		info, err := s.Info(t.Context())
		if err != nil {
			return false, err.Error()
		}
		for _, src := range info.Config.Sources {
			if src.External == nil || src.External.APIPrefix != eventbus.External(agencyOf(src.Name), prisonAgency).APIPrefix {
				return false, fmt.Sprintf("source %s: external %+v", src.Name, src.External)
			}
		}
		if len(info.Config.Sources) != 2 {
			return false, fmt.Sprintf("%d sources", len(info.Config.Sources))
		}
		// The inbox consumer exists once the service runs.
		_, err = js.Consumer(t.Context(), eventbus.InboxStream(prisonAgency), "prison-inbox")
		return err == nil, fmt.Sprintf("inbox consumer: %v", err)
	})
	cancel()
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
}

func agencyOf(outbox string) string {
	for _, a := range testAgencies.IDs() {
		if eventbus.OutboxStream(a) == outbox {
			return a
		}
	}
	return ""
}

// TestDevWithoutAccountsSharesOneOpenAccount: --nats-accounts=false keeps the former
// shape, one account without authentication, and no credentials are generated.
func TestDevWithoutAccountsSharesOneOpenAccount(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dataDir := t.TempDir()
	cfg, err := parseDevConfig([]string{
		"--data-dir", dataDir, "--nats-port", "-1", "--nats-accounts=false",
		"--base-port", "0",
	}, func(string) string { return "" }, &strings.Builder{})
	if err != nil {
		t.Fatalf("parse dev config: %v", err)
	}
	sys, err := startDev(ctx, zaptest.NewLogger(t), cfg)
	if err != nil {
		t.Fatalf("start dev: %v", err)
	}
	defer sys.Stop()
	if _, err := os.Stat(devCredentialsDir(dataDir)); !os.IsNotExist(err) {
		t.Errorf("credentials dir: %v; want none", err)
	}
	nc, err := nats.Connect(sys.nats.ClientURL())
	if err != nil {
		t.Fatalf("connect without credentials: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, bucket := range []string{"prison_cases", "probation_cases", "socialwork_cases"} {
		if _, err := js.KeyValue(ctx, bucket); err != nil {
			t.Errorf("bucket %s in the shared account: %v", bucket, err)
		}
	}
	prisonConn := dialDev(t, sys, sys.agencies[0])
	rc := openCase(t, throughcarev1.NewPrisonServiceClient(prisonConn))
	resp, err := throughcarev1.NewCaseServiceClient(prisonConn).ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(),
		Recipient: probationAgency, Purpose: throughcarev1.Purpose_PURPOSE_SUPERVISION})
	if err != nil {
		t.Fatalf("refer: %v", err)
	}
	waitState(t, throughcarev1.NewHandoverServiceClient(dialDev(t, sys, sys.agencies[0])), resp.GetHandover().GetHandoverId(), stateDelivered)
}
