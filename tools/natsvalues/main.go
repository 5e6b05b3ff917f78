// Command natsvalues writes deploy/nats/helm-values.yaml, the values of the official NATS
// Helm chart (nats-io/k8s, helm/charts/nats) for throughcare: a three-node JetStream
// cluster with the per-agency accounts of the sharing protocol's agencies. The accounts
// are natsserver.ConfTemplate's, the very configuration `throughcare dev` runs, turned
// into the chart's YAML; a test fails when the committed file differs from what this
// writes.
//
//	go run ./tools/natsvalues                      # the built-in default protocol
//	go run ./tools/natsvalues -protocol deploy/protocol/with-pcve.textproto -out -
package main

import (
	"bytes"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"text/template"

	"github.com/nats-io/nats-server/v2/conf"
	"sigs.k8s.io/yaml"

	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// DefaultOut is where the values are committed.
const DefaultOut = "deploy/nats/helm-values.yaml"

// UsersConfigMap holds the users' public nkeys, one key per environment variable.
const UsersConfigMap = "throughcare-nats-users"

//go:embed values.yaml.tmpl
var valuesTemplate string

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "natsvalues:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("natsvalues", flag.ContinueOnError)
	protocolFile := fs.String("protocol", "", "sharing protocol whose agencies get accounts; empty uses the built-in default")
	out := fs.String("out", DefaultOut, "file to write; - for stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	p := protocol.Default()
	if *protocolFile != "" {
		var err error
		if p, err = protocol.Load(*protocolFile); err != nil {
			return err
		}
	}
	version, err := natsServerVersion()
	if err != nil {
		return err
	}
	b, err := Values(p.Agencies(), *protocolFile, version)
	if err != nil {
		return err
	}
	if *out == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(*out, b, 0o644)
}

// natsServerVersion is the nats-server this module builds against (go.mod), without the
// v: the server image the values run is the one the tests and `throughcare cluster` run.
func natsServerVersion() (string, error) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "", errors.New("no build information: build with module support")
	}
	for _, d := range info.Deps {
		if d.Path == "github.com/nats-io/nats-server/v2" {
			return strings.TrimPrefix(d.Version, "v"), nil
		}
	}
	return "", errors.New("github.com/nats-io/nats-server/v2 is not a dependency of this build")
}

// Accounts are the environment variables holding each user's public nkey, in the
// protocol's order, then the system and operator accounts'.
func Accounts(agencies *agency.Registry) []string {
	var accounts []string
	for _, id := range agencies.IDs() {
		accounts = append(accounts, natsserver.AccountName(id))
	}
	return append(accounts, natsserver.SystemAccount, natsserver.OperatorAccount)
}

// Values renders the chart's values for agencies. protocolFile only names the source in
// the file's header.
func Values(agencies *agency.Registry, protocolFile, natsVersion string) ([]byte, error) {
	accounts, err := accountsYAML(agencies)
	if err != nil {
		return nil, err
	}
	var env []string
	for _, a := range Accounts(agencies) {
		env = append(env, natsserver.NKeyEnv(a))
	}
	source := "the built-in default protocol"
	if protocolFile != "" {
		source = protocolFile
	}
	tmpl, err := template.New("values").Funcs(template.FuncMap{"indent": indent}).Parse(valuesTemplate)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err = tmpl.Execute(&b, map[string]any{
		"Source": source, "Agencies": strings.Join(agencies.IDs(), ", "), "Accounts": accounts,
		"Env": env, "UsersConfigMap": UsersConfigMap, "NATSVersion": natsVersion,
		"SystemAccount": natsserver.SystemAccount,
	})
	return b.Bytes(), err
}

// accountsYAML is ConfTemplate's accounts block as YAML for the chart's config.merge. The
// server's own parser reads the template; each $THROUGHCARE_<ACCOUNT>_NKEY reference
// becomes "<< $THROUGHCARE_<ACCOUNT>_NKEY >>", which the chart writes unquoted, so the
// server still reads the key from its environment.
func accountsYAML(agencies *agency.Registry) (string, error) {
	text := natsserver.ConfTemplate(agencies)
	// No reference is part of another: each ends in _NKEY.
	for _, a := range Accounts(agencies) {
		ref := "$" + natsserver.NKeyEnv(a)
		if !strings.Contains(text, ref) {
			return "", fmt.Errorf("the accounts template does not read %s", ref)
		}
		text = strings.ReplaceAll(text, ref, `"<< `+ref+` >>"`)
	}
	parsed, err := conf.Parse(text)
	if err != nil {
		return "", fmt.Errorf("natsserver.ConfTemplate does not parse: %w", err)
	}
	if parsed["system_account"] != natsserver.SystemAccount {
		return "", fmt.Errorf("system_account %v, want %s", parsed["system_account"], natsserver.SystemAccount)
	}
	y, err := yaml.Marshal(map[string]any{"accounts": parsed["accounts"]})
	if err != nil {
		return "", err
	}
	return string(y), nil
}

// indent prefixes every line but empty ones with n spaces.
func indent(n int, s string) string {
	pad := strings.Repeat(" ", n)
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = pad + l
		}
	}
	return strings.Join(lines, "\n")
}
