package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/natsserver"
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

	prison := throughcarev1.NewPrisonServiceClient(dial(t, sys.agencies[0].Addr()))
	rc := openCase(t, prison)
	resp, err := prison.ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(),
		Recipient: probationAgency, Purpose: throughcarev1.Purpose_PURPOSE_SUPERVISION})
	if err != nil {
		t.Fatalf("refer: %v", err)
	}
	probation := throughcarev1.NewHandoverServiceClient(dial(t, sys.agencies[1].Addr()))
	waitState(t, probation, resp.GetHandover().GetHandoverId(), stateRetrieved)
	// The first read at probation is a receipt, which travels back to the prison.
	waitState(t, throughcarev1.NewHandoverServiceClient(dial(t, sys.agencies[0].Addr())), resp.GetHandover().GetHandoverId(), stateRetrieved)
}
