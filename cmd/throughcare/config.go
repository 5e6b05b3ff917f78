package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/signing"
)

// logConfig is shared by every command.
type logConfig struct {
	Format string // json or console
	Level  string
}

func (c *logConfig) register(fs *flag.FlagSet, defaultFormat string) {
	fs.StringVar(&c.Format, "log-format", defaultFormat, "log format: json or console")
	fs.StringVar(&c.Level, "log-level", "info", "log level: debug, info, warn or error")
}

func (c logConfig) logger() (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	var zc zap.Config
	switch c.Format {
	case "json":
		zc = zap.NewProductionConfig()
	case "console":
		zc = zap.NewDevelopmentConfig()
		zc.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	default:
		return nil, fmt.Errorf("--log-format %q: want json or console", c.Format)
	}
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.DisableStacktrace = true
	return zc.Build()
}

// handoverFlags are the sharing protocol and the handover deadlines, shared by every
// command that runs agencies.
type handoverFlags struct {
	ProtocolFile         string
	SigningKeyFile       string
	KeyringFile          string
	AcknowledgeWithin    time.Duration
	AcceptBeforeRelease  time.Duration
	DeadlineScanInterval time.Duration
	ResendAfter          time.Duration
}

func (c *handoverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.ProtocolFile, "protocol", "", "sharing protocol file (.textproto or .yaml); empty uses the built-in default")
	fs.StringVar(&c.SigningKeyFile, "signing-key", "", "this agency's private signing key (serve; dev makes its own under the data dir)")
	fs.StringVar(&c.KeyringFile, "keyring", "", "every agency's public signing keys (serve; dev makes its own under the data dir)")
	fs.DurationVar(&c.AcknowledgeWithin, "acknowledge-within", 48*time.Hour, "how long after delivery a handover must be acknowledged")
	fs.DurationVar(&c.AcceptBeforeRelease, "accept-before-release", 14*24*time.Hour, "how long before the expected release a handover must be accepted")
	fs.DurationVar(&c.DeadlineScanInterval, "deadline-scan-interval", time.Minute, "how often overdue handovers are looked for")
	fs.DurationVar(&c.ResendAfter, "resend-after", 2*time.Minute, "how long an event may go unacknowledged by the other agency before it is re-sent")
}

func (c handoverFlags) validate() error {
	for name, d := range map[string]time.Duration{"--acknowledge-within": c.AcknowledgeWithin, "--accept-before-release": c.AcceptBeforeRelease, "--deadline-scan-interval": c.DeadlineScanInterval, "--resend-after": c.ResendAfter} {
		if d <= 0 {
			return fmt.Errorf("%s %s: must be positive", name, d)
		}
	}
	return nil
}

// loadProtocol reads the protocol file, or returns the built-in default. A bad file stops
// start-up with the file, the line and the reason.
func (c handoverFlags) loadProtocol() (*protocol.Protocol, error) {
	if c.ProtocolFile == "" {
		return protocol.Default(), nil
	}
	p, err := protocol.Load(c.ProtocolFile)
	if err != nil {
		return nil, fmt.Errorf("--protocol: %w", err)
	}
	return p, nil
}

// loadSigning reads this agency's signing key and the agencies' keyring.
func (c handoverFlags) loadSigning(agency string) (signing.Key, *signing.Keyring, error) {
	if c.SigningKeyFile == "" || c.KeyringFile == "" {
		return signing.Key{}, nil, errors.New("--signing-key and --keyring: both are required, every event is signed")
	}
	key, err := signing.LoadPrivateKey(c.SigningKeyFile)
	if err != nil {
		return signing.Key{}, nil, fmt.Errorf("--signing-key: %w", err)
	}
	if key.Agency != agency {
		return signing.Key{}, nil, fmt.Errorf("--signing-key %s: the key is %s's, not %s's", c.SigningKeyFile, key.Agency, agency)
	}
	keyring, err := signing.LoadKeyring(c.KeyringFile)
	if err != nil {
		return signing.Key{}, nil, fmt.Errorf("--keyring: %w", err)
	}
	return key, keyring, nil
}

// handoverConfig is the agency's handover settings with these flags.
func (c handoverFlags) handoverConfig(agency string, p *protocol.Protocol, replicas int) handover.Config {
	hc := handover.DefaultConfig(agency)
	hc.AcknowledgeWithin, hc.AcceptBeforeRelease, hc.DeadlineScanInterval = c.AcknowledgeWithin, c.AcceptBeforeRelease, c.DeadlineScanInterval
	hc.ResendAfter = c.ResendAfter
	hc.Protocol = p
	hc.Limits.Replicas = replicas
	return hc
}

// Server-side bounds on gRPC calls: deadlines are the client's to set, these only stop a
// client that sets none, or floods, from holding the service.
const (
	defaultCallTimeout          = 30 * time.Second
	defaultMaxInFlightPerCaller = 64
)

// grpcFlags are how every command that runs agencies serves gRPC: mutual TLS unless
// --insecure, and the server's bounds on calls.
type grpcFlags struct {
	Insecure             bool
	CallTimeout          time.Duration
	MaxInFlightPerCaller int
}

func (c *grpcFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&c.Insecure, "insecure", false, "serve gRPC in plaintext, with no client certificates and so no authorization: for a laptop only")
	fs.DurationVar(&c.CallTimeout, "call-timeout", defaultCallTimeout, "longest a unary gRPC call may run, whatever the client's deadline")
	fs.IntVar(&c.MaxInFlightPerCaller, "max-inflight-per-caller", defaultMaxInFlightPerCaller, "unary gRPC calls one caller (client certificate) may have in flight; more are refused with RESOURCE_EXHAUSTED")
}

func (c grpcFlags) validate() error {
	if c.CallTimeout <= 0 {
		return fmt.Errorf("--call-timeout %s: must be positive", c.CallTimeout)
	}
	if c.MaxInFlightPerCaller < 1 {
		return fmt.Errorf("--max-inflight-per-caller %d: must be at least 1", c.MaxInFlightPerCaller)
	}
	return nil
}

// listen is where and how an agency serves gRPC: its own config for startAgency.
func (c grpcFlags) listen(addr, healthAddr, metricsAddr string, serverTLS *tls.Config) listen {
	return listen{Addr: addr, HealthAddr: healthAddr, MetricsAddr: metricsAddr, TLS: serverTLS, CallTimeout: c.CallTimeout, MaxInFlightPerCaller: c.MaxInFlightPerCaller}
}

// insecureWarning is logged once at start by a command run with --insecure.
const insecureWarning = "gRPC is served in plaintext (--insecure): no client certificates, so every caller may call every method of every agency; use it on a laptop only"

type devConfig struct {
	DataDir      string
	NATSPort     int
	NATSAccounts bool
	// BasePort places the agencies, in the protocol's order: the i-th serves gRPC on
	// BasePort+1+i, health on BasePort+11+i and metrics on BasePort+21+i. Zero picks free
	// ports.
	BasePort int
	GRPC     grpcFlags
	Handover handoverFlags
	Log      logConfig
}

// maxDevAgencies is how many agencies dev's port scheme places before health ports collide.
const maxDevAgencies = 10

// agencyAddrs are where the i-th agency of the protocol serves gRPC, health and metrics
// in dev.
func (c devConfig) agencyAddrs(i int) (addr, healthAddr, metricsAddr string) {
	if c.BasePort == 0 {
		return "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	}
	at := func(offset int) string { return fmt.Sprintf("127.0.0.1:%d", c.BasePort+offset+i) }
	return at(1), at(11), at(21)
}

// CertsDir is where dev keeps its local CA and certificates.
func (c devConfig) CertsDir() string { return filepath.Join(c.DataDir, "certs") }

// PersonHashKeyFile is where dev keeps the deployment's person-hash key.
func (c devConfig) PersonHashKeyFile() string {
	return filepath.Join(c.DataDir, "secrets", "person-hash.key")
}

func parseDevConfig(args []string, getenv func(string) string, out io.Writer) (devConfig, error) {
	var c devConfig
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.DataDir, "data-dir", "./.throughcare", "where the embedded NATS keeps its data")
	fs.IntVar(&c.NATSPort, "nats-port", 4222, "port of the embedded NATS on 127.0.0.1 (-1 picks a free one)")
	fs.BoolVar(&c.NATSAccounts, "nats-accounts", true, "run one NATS account per agency, each service with its own nkey (credentials in <data-dir>/credentials); false shares one unauthenticated account")
	fs.IntVar(&c.BasePort, "base-port", 7100, "ports of the agencies on 127.0.0.1, in the protocol's order: the i-th (from 0) serves gRPC on base+1+i, plaintext health on base+11+i and metrics on base+21+i; 0 picks free ports")
	c.GRPC.register(fs)
	c.Handover.register(fs)
	c.Log.register(fs, "console")
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	if c.DataDir == "" {
		return c, errors.New("--data-dir: must not be empty")
	}
	if c.BasePort < 0 || c.BasePort > 65535-3*maxDevAgencies {
		return c, fmt.Errorf("--base-port %d: want 0 to %d", c.BasePort, 65535-3*maxDevAgencies)
	}
	return c, errors.Join(c.GRPC.validate(), c.Handover.validate())
}

// certsConfig is `throughcare certs`: the local CA and certificates that dev uses.
type certsConfig struct {
	DataDir string
	// Protocol names the agencies to issue for: each gets a server and a client certificate.
	Protocol handoverFlags
}

// CertsDir is where the certificates go: the same place as dev's.
func (c certsConfig) CertsDir() string { return devConfig{DataDir: c.DataDir}.CertsDir() }

func parseCertsConfig(args []string, getenv func(string) string, out io.Writer) (certsConfig, error) {
	var c certsConfig
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.DataDir, "data-dir", "./.throughcare", "data directory; the certificates go in its certs/")
	fs.StringVar(&c.Protocol.ProtocolFile, "protocol", "", "sharing protocol file whose agencies get certificates; empty uses the built-in default")
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	if c.DataDir == "" {
		return c, errors.New("--data-dir: must not be empty")
	}
	return c, nil
}

type serveConfig struct {
	// Service is the agency's id.
	Service string
	NATSURL string
	// NATSSeed is the agency user's nkey seed file; set, the service runs in its own
	// NATS account (deploy/nats) and its inbox sources through imports.
	NATSSeed string
	// NATSTLSCA is the PEM file of the CA that NATS's server certificate is checked
	// against; empty checks it against the system's roots.
	NATSTLSCA  string
	Addr       string
	HealthAddr string
	// MetricsAddr serves Prometheus metrics in plaintext HTTP; empty serves none.
	MetricsAddr string
	TLSCA       string
	TLSCert     string
	TLSKey      string
	// PersonHashKey is the file of the deployment's person-hash key.
	PersonHashKey string
	Replicas      int
	GRPC          grpcFlags
	Handover      handoverFlags
	Log           logConfig
}

func parseServeConfig(args []string, getenv func(string) string, out io.Writer) (serveConfig, error) {
	var c serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.Service, "service", "", "which agency's service: the id of one of the protocol's agencies (prison, probation or socialwork in the default protocol)")
	fs.StringVar(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
	fs.StringVar(&c.NATSSeed, "nats-nkey-seed", "", "file holding the service's NATS user nkey seed (mode 0600); set when NATS runs an account per agency (deploy/nats)")
	fs.StringVar(&c.NATSTLSCA, "nats-tls-ca", "", "PEM file of the CA that NATS's server certificate is checked against (a private CA, such as cert-manager's); empty uses the system's roots")
	fs.StringVar(&c.Addr, "addr", ":7100", "gRPC listen address (mutual TLS)")
	fs.StringVar(&c.HealthAddr, "health-addr", ":7110", "plaintext gRPC health address for probes, serving nothing else; empty for none")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", ":7120", "plaintext HTTP address serving Prometheus metrics at /metrics; empty for none")
	fs.StringVar(&c.TLSCA, "tls-ca", "", "PEM file of the CA whose client certificates are accepted")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM file of the service's server certificate")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM file of the server certificate's key")
	fs.StringVar(&c.PersonHashKey, "person-hash-key", "", "file of the deployment's person-hash key, 64 hex digits (openssl rand -hex 32), mode 0600 or 0400: the same in every agency; required")
	fs.IntVar(&c.Replicas, "replicas", 1, "JetStream replicas of the service's buckets (3 on a cluster)")
	c.GRPC.register(fs)
	c.Handover.register(fs)
	c.Log.register(fs, "json")
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	if !agency.ValidID(c.Service) {
		return c, fmt.Errorf("--service %q: want the id of one of the protocol's agencies (prison, probation or socialwork in the default protocol)", c.Service)
	}
	if err := checkReplicas(c.Replicas); err != nil {
		return c, err
	}
	if err := c.validateTLS(); err != nil {
		return c, err
	}
	return c, errors.Join(c.validatePersonHashKey(), c.GRPC.validate(), c.Handover.validate())
}

// validatePersonHashKey wants the key file always, --insecure or not: without it the ledger
// could not refer to people.
func (c serveConfig) validatePersonHashKey() error {
	if c.PersonHashKey == "" {
		return fmt.Errorf("--person-hash-key (%s) is required: the file of the deployment's secret that the ledger refers to people under, the same for every agency; make it once with openssl rand -hex 32", envName("person-hash-key"))
	}
	return nil
}

// validateTLS wants all three files for mutual TLS, or none of them with --insecure.
func (c serveConfig) validateTLS() error {
	files := []struct{ flag, value, what string }{
		{"tls-ca", c.TLSCA, "the CA whose client certificates are accepted"},
		{"tls-cert", c.TLSCert, "the service's server certificate"},
		{"tls-key", c.TLSKey, "the server certificate's key"},
	}
	for _, f := range files {
		switch {
		case c.GRPC.Insecure && f.value != "":
			return fmt.Errorf("--%s with --insecure: choose mutual TLS or plaintext", f.flag)
		case !c.GRPC.Insecure && f.value == "":
			return fmt.Errorf("--%s (%s) is required: %s, PEM; or --insecure to serve plaintext", f.flag, envName(f.flag), f.what)
		}
	}
	return nil
}

// parseFlags parses args, then fills every flag not given on the command line from its
// THROUGHCARE_* environment variable: flags win over the environment, which wins over
// defaults.
// checkReplicas refuses a --replicas JetStream would not take.
func checkReplicas(n int) error {
	if n < 1 || n > 5 {
		return fmt.Errorf("--replicas %d: want 1 to 5", n)
	}
	return nil
}

func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errUsage
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		name := envName(f.Name)
		if v := getenv(name); v != "" {
			if setErr := fs.Set(f.Name, v); setErr != nil {
				err = fmt.Errorf("%s: %w", name, setErr)
			}
		}
	})
	return err
}

func envName(flagName string) string {
	return "THROUGHCARE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// redactURLs hides credentials (user, password or token) in NATS URLs before they are logged.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("REDACTED")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}
