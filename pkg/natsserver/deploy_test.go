package natsserver_test

import (
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/throughcare/throughcare/pkg/natsserver"
)

const deployConf = "../../deploy/nats/nats-server.conf"

// The production template holds exactly the accounts dev runs with.
func TestDeployTemplateHoldsTheGeneratedAccounts(t *testing.T) {
	b, err := os.ReadFile(deployConf)
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "# --- BEGIN generated accounts (natsserver.ConfTemplate) ---\n", "# --- END generated accounts ---\n"
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("%s: no generated accounts block", deployConf)
	}
	if got, want := s[i+len(begin):j], natsserver.ConfTemplate(testAgencies); got != want {
		t.Errorf("%s: the accounts block differs from natsserver.ConfTemplate(testAgencies); replace it with:\n%s", deployConf, want)
	}
}

// The template is a valid server configuration once the public keys are in the
// environment.
func TestDeployTemplateParses(t *testing.T) {
	creds, err := natsserver.LoadOrCreateCredentials(t.TempDir(), testAgencies)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range testAgencies.IDs() {
		t.Setenv(natsserver.NKeyEnv(natsserver.AccountName(a)), creds.Accounts.Users[a])
	}
	t.Setenv(natsserver.NKeyEnv(natsserver.SystemAccount), creds.Accounts.SystemUser)
	t.Setenv(natsserver.NKeyEnv(natsserver.OperatorAccount), creds.Accounts.OperatorUser)
	opts, err := server.ProcessConfigFile(deployConf)
	if err != nil {
		t.Fatalf("parse %s: %v", deployConf, err)
	}
	if len(opts.Nkeys) != 5 {
		t.Errorf("%d nkey users, want 5", len(opts.Nkeys))
	}
	if !opts.JetStream || opts.SystemAccount != natsserver.SystemAccount {
		t.Errorf("jetstream %v, system account %q", opts.JetStream, opts.SystemAccount)
	}
}
