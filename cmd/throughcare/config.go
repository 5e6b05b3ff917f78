package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
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
}

func (c *handoverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.ProtocolFile, "protocol", "", "sharing protocol file (.textproto or .yaml); empty uses the built-in default")
	fs.StringVar(&c.SigningKeyFile, "signing-key", "", "this agency's private signing key (serve; dev makes its own under the data dir)")
	fs.StringVar(&c.KeyringFile, "keyring", "", "every agency's public signing keys (serve; dev makes its own under the data dir)")
	fs.DurationVar(&c.AcknowledgeWithin, "acknowledge-within", 48*time.Hour, "how long after delivery a handover must be acknowledged")
	fs.DurationVar(&c.AcceptBeforeRelease, "accept-before-release", 14*24*time.Hour, "how long before the expected release a handover must be accepted")
	fs.DurationVar(&c.DeadlineScanInterval, "deadline-scan-interval", time.Minute, "how often overdue handovers are looked for")
}

func (c handoverFlags) validate() error {
	for name, d := range map[string]time.Duration{"--acknowledge-within": c.AcknowledgeWithin, "--accept-before-release": c.AcceptBeforeRelease, "--deadline-scan-interval": c.DeadlineScanInterval} {
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
func (c handoverFlags) loadSigning(agency throughcarev1.Agency) (signing.Key, *signing.Keyring, error) {
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
func (c handoverFlags) handoverConfig(agency throughcarev1.Agency, p *protocol.Protocol, replicas int) handover.Config {
	hc := handover.DefaultConfig(agency)
	hc.AcknowledgeWithin, hc.AcceptBeforeRelease, hc.DeadlineScanInterval = c.AcknowledgeWithin, c.AcceptBeforeRelease, c.DeadlineScanInterval
	hc.Protocol = p
	hc.Limits.Replicas = replicas
	return hc
}

type devConfig struct {
	DataDir        string
	NATSPort       int
	PrisonAddr     string
	ProbationAddr  string
	SocialWorkAddr string
	Handover       handoverFlags
	Log            logConfig
}

func parseDevConfig(args []string, getenv func(string) string, out io.Writer) (devConfig, error) {
	var c devConfig
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.DataDir, "data-dir", "./.throughcare", "where the embedded NATS keeps its data")
	fs.IntVar(&c.NATSPort, "nats-port", 4222, "port of the embedded NATS on 127.0.0.1 (-1 picks a free one)")
	fs.StringVar(&c.PrisonAddr, "prison-addr", "127.0.0.1:7101", "gRPC address of the prison service")
	fs.StringVar(&c.ProbationAddr, "probation-addr", "127.0.0.1:7102", "gRPC address of the probation service")
	fs.StringVar(&c.SocialWorkAddr, "socialwork-addr", "127.0.0.1:7103", "gRPC address of the social-work service")
	c.Handover.register(fs)
	c.Log.register(fs, "console")
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	if c.DataDir == "" {
		return c, errors.New("--data-dir: must not be empty")
	}
	return c, c.Handover.validate()
}

type serveConfig struct {
	Service  string
	Agency   throughcarev1.Agency
	NATSURL  string
	Addr     string
	Replicas int
	Handover handoverFlags
	Log      logConfig
}

// agencies maps --service values to agencies.
var agencies = map[string]throughcarev1.Agency{
	"prison":     throughcarev1.Agency_AGENCY_PRISON,
	"probation":  throughcarev1.Agency_AGENCY_PROBATION,
	"socialwork": throughcarev1.Agency_AGENCY_SOCIAL_WORK,
}

func parseServeConfig(args []string, getenv func(string) string, out io.Writer) (serveConfig, error) {
	var c serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.Service, "service", "", "which agency's service: prison, probation or socialwork")
	fs.StringVar(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
	fs.StringVar(&c.Addr, "addr", ":7100", "gRPC listen address")
	fs.IntVar(&c.Replicas, "replicas", 1, "JetStream replicas of the service's buckets (3 on a cluster)")
	c.Handover.register(fs)
	c.Log.register(fs, "json")
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	agency, ok := agencies[c.Service]
	if !ok {
		return c, fmt.Errorf("--service %q: want prison, probation or socialwork", c.Service)
	}
	c.Agency = agency
	if c.Replicas < 1 || c.Replicas > 5 {
		return c, fmt.Errorf("--replicas %d: want 1 to 5", c.Replicas)
	}
	return c, c.Handover.validate()
}

// parseFlags parses args, then fills every flag not given on the command line from its
// THROUGHCARE_* environment variable: flags win over the environment, which wins over
// defaults.
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
