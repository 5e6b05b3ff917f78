package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/flow"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/signing"
	"github.com/throughcare/throughcare/pkg/tracing"
)

// devSystem is everything `throughcare dev` runs in one process.
type devSystem struct {
	log      *zap.Logger
	nats     *server.Server
	conns    []*nats.Conn
	agencies []*agencyServer
	// certs is the local PKI the agencies serve mutual TLS with; nil with --insecure.
	certs *certs.Bundle
	// personKey is the deployment's person-hash key, kept in the data dir.
	personKey ledger.PersonKey
}

func runDev(ctx context.Context, cfg devConfig, stdout io.Writer) error {
	log, err := cfg.Log.logger()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	log.Info("starting throughcare dev", zap.String("data_dir", cfg.DataDir), zap.Int("nats_port", cfg.NATSPort),
		zap.Int("base_port", cfg.BasePort), zap.Bool("insecure", cfg.GRPC.Insecure),
		zap.Duration("call_timeout", cfg.GRPC.CallTimeout), zap.Int("max_inflight_per_caller", cfg.GRPC.MaxInFlightPerCaller))

	stopTracing, err := tracing.Setup(ctx, "throughcare-dev")
	if err != nil {
		return fmt.Errorf("tracing (OTEL_EXPORTER_OTLP_*): %w", err)
	}
	defer func() { _ = stopTracing(context.WithoutCancel(ctx)) }()
	sys, err := startDev(ctx, log, cfg)
	if err != nil {
		return err
	}
	printDevBanner(stdout, cfg, sys)
	<-ctx.Done()
	log.Info("shutting down")
	return sys.Stop()
}

// startDev makes or loads the local certificates, starts the embedded NATS, then every
// agency of the protocol on it.
func startDev(ctx context.Context, log *zap.Logger, cfg devConfig) (*devSystem, error) {
	sharing, err := cfg.Handover.loadProtocol()
	if err != nil {
		return nil, err
	}
	registry := sharing.Agencies()
	if n := len(registry.IDs()); n > maxDevAgencies {
		return nil, fmt.Errorf("the protocol declares %d agencies; dev places at most %d", n, maxDevAgencies)
	}
	var bundle *certs.Bundle
	if cfg.GRPC.Insecure {
		log.Warn(insecureWarning)
	} else {
		if bundle, err = certs.Ensure(cfg.CertsDir(), registry.IDs(), time.Now()); err != nil {
			return nil, err
		}
		log.Info("certificates", zap.String("dir", bundle.Dir()), zap.String("ca_sha256", bundle.CAFingerprint()))
	}
	log.Info("sharing protocol", zap.String("protocol_id", sharing.ID()), zap.Uint32("version", sharing.Version()))
	keyring, keys, err := signing.Ensure(filepath.Join(cfg.DataDir, "keys"), registry.IDs(), time.Now())
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	personKey, err := ledger.EnsurePersonKey(cfg.PersonHashKeyFile())
	if err != nil {
		return nil, err
	}
	log.Info("person-hash key", zap.String("file", cfg.PersonHashKeyFile()), zap.String("key_id", personKey.ID()))
	ncfg := natsserver.Config{
		Host:       "127.0.0.1",
		Port:       cfg.NATSPort,
		StoreDir:   filepath.Join(cfg.DataDir, "nats"),
		SyncAlways: true, // a laptop or single server has no replicas: every write is fsynced
		ServerName: "throughcare-dev",
	}
	var creds natsserver.Credentials
	topology := eventbus.SharedAccount
	if cfg.NATSAccounts {
		creds, err = natsserver.LoadOrCreateCredentials(devCredentialsDir(cfg.DataDir), registry)
		if err != nil {
			return nil, err
		}
		ncfg.Accounts = &creds.Accounts
		topology = eventbus.AccountPerAgency
		if err := writeDevNATSConf(cfg.DataDir, creds.Accounts); err != nil {
			return nil, err
		}
	}
	ns, err := natsserver.Start(ncfg, log.Named("nats"))
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	sys := &devSystem{log: log, nats: ns, certs: bundle, personKey: personKey}
	if err := sys.setupFlow(ctx, cfg, creds); err != nil {
		return nil, errors.Join(err, sys.Stop())
	}
	type devAgency struct{ agency, addr, healthAddr, metricsAddr string }
	var agencies []devAgency
	for i, id := range registry.IDs() {
		addr, healthAddr, metricsAddr := cfg.agencyAddrs(i)
		agencies = append(agencies, devAgency{id, addr, healthAddr, metricsAddr})
	}
	streams := make([]jetstream.JetStream, len(agencies))
	for i, a := range agencies {
		opts := []nats.Option{nats.Name("throughcare-dev-" + a.agency), nats.MaxReconnects(-1)}
		if cfg.NATSAccounts {
			auth, err := creds.ConnectOptions(a.agency)
			if err != nil {
				return nil, errors.Join(err, sys.Stop())
			}
			opts = append(opts, auth...)
		}
		nc, err := nats.Connect(ns.ClientURL(), opts...)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("connect %s to embedded nats: %w", a.agency, err), sys.Stop())
		}
		sys.conns = append(sys.conns, nc)
		if streams[i], err = jetstream.New(nc); err != nil {
			return nil, errors.Join(fmt.Errorf("jetstream: %w", err), sys.Stop())
		}
		// Every outbox before any inbox, so no inbox source starts on a missing stream.
		if err := eventbus.SetupOutbox(ctx, streams[i], a.agency, cfg.Handover.handoverConfig(a.agency, sharing, 1).Limits); err != nil {
			return nil, errors.Join(fmt.Errorf("%s: %w", a.agency, err), sys.Stop())
		}
	}
	for i, a := range agencies {
		js := streams[i]
		var serverTLS *tls.Config
		if bundle != nil {
			if serverTLS, err = bundle.ServerTLS(a.agency); err != nil {
				return nil, errors.Join(err, sys.Stop())
			}
		}
		hc := cfg.Handover.handoverConfig(a.agency, sharing, 1)
		hc.SigningKey, hc.Keyring = keys[a.agency], keyring
		hc.PersonKey = personKey
		hc.Topology = topology
		srv, err := startAgency(ctx, log, js, hc, cfg.GRPC.listen(a.addr, a.healthAddr, a.metricsAddr, serverTLS))
		if err != nil {
			return nil, errors.Join(err, sys.Stop())
		}
		sys.agencies = append(sys.agencies, srv)
	}
	return sys, nil
}

// setupFlow creates the operators' FLOW stream, in the operator account when each agency
// has its own, as an operator would with `throughcare events setup`.
func (s *devSystem) setupFlow(ctx context.Context, cfg devConfig, creds natsserver.Credentials) error {
	var opts []nats.Option
	if cfg.NATSAccounts {
		auth, err := natsserver.OperatorConnectOptions(creds.SeedFile(natsserver.OperatorAccount))
		if err != nil {
			return err
		}
		opts = auth
	}
	nc, err := nats.Connect(s.nats.ClientURL(), append(opts, nats.Name("throughcare-dev-operator"))...)
	if err != nil {
		return fmt.Errorf("connect as the operators: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	return flow.Setup(ctx, js, flow.DefaultLimits)
}

// Stop shuts down in order: gRPC first (calls in flight finish), then the NATS connection
// (drained, so nothing acknowledged is dropped), then the embedded server.
func (s *devSystem) Stop() error {
	err := stopAll(s.agencies)
	s.stopNATS()
	return err
}

func (s *devSystem) stopNATS() {
	for _, nc := range s.conns {
		drain(nc)
	}
	s.nats.Shutdown()
	s.nats.WaitForShutdown()
}

func printDevBanner(w io.Writer, cfg devConfig, sys *devSystem) {
	fmt.Fprintf(w, "\nthroughcare dev is running (data in %s)\n", cfg.DataDir)
	for _, a := range sys.agencies {
		name := a.handovers.Agencies().Name(a.agency)
		health := "no health port"
		if a.HealthAddr() != "" {
			health = "health " + a.HealthAddr() + " (plaintext)"
		}
		if a.MetricsAddr() != "" {
			health += ", metrics http://" + a.MetricsAddr() + "/metrics"
		}
		fmt.Fprintf(w, "  %-12s %-16s %s\n", name, a.Addr(), health)
	}
	natsAccess := "one shared account, no authentication"
	if cfg.NATSAccounts {
		natsAccess = "an account per agency; nkey seeds in " + devCredentialsDir(cfg.DataDir)
	}
	fmt.Fprintf(w, "  %-12s %s (%s)\n", "nats", sys.nats.ClientURL(), natsAccess)
	fmt.Fprintf(w, "  %-12s go run ./cmd/throughcare events tail --data-dir %s --nats-url %s (also: streams, handovers overdue, deadletters)\n", "operators", cfg.DataDir, sys.nats.ClientURL())
	first := sys.agencies[0]
	addr, who := first.Addr(), first.handovers.Agencies().Name(first.agency)
	if sys.certs == nil {
		fmt.Fprintf(w, `
gRPC is PLAINTEXT (--insecure): no certificates, no authorization.

Try:
  grpcurl -plaintext %s list
  grpcurl -plaintext -d '{"page_size": 10}' %s throughcare.v1.HandoverService/ListHandovers

Ctrl-C stops; the data stays for the next start.
`, addr, addr)
		return
	}
	tls := grpcurlTLS(sys.certs, first.agency)
	fmt.Fprintf(w, `  %-12s %s (CA SHA-256 %s)

gRPC is mutual TLS: each agency's own system calls with its client certificate,
<certs>/<agency>/client.pem; operators with <certs>/operator/client.pem.

Try, as the %s's system:
  %s %s list
  %s -d '{"page_size": 10}' %s throughcare.v1.HandoverService/ListHandovers

Ctrl-C stops; the data and certificates stay for the next start.
`, "certs", sys.certs.Dir(), sys.certs.CAFingerprint(), who, tls, addr, tls, addr)
}

// grpcurlTLS is grpcurl with identity's client certificate, trusting the bundle's CA.
func grpcurlTLS(b *certs.Bundle, identity string) string {
	cert, key := b.ClientFiles(identity)
	return fmt.Sprintf("grpcurl -cacert %s -cert %s -key %s", b.CAFile(), cert, key)
}

// devCredentialsDir holds the nkey seeds of every NATS user, one 0600 file each.
func devCredentialsDir(dataDir string) string { return filepath.Join(dataDir, "credentials") }

// writeDevNATSConf leaves the accounts configuration the embedded server runs with in the
// data dir, for reading next to deploy/nats/nats-server.conf.
func writeDevNATSConf(dataDir string, accounts natsserver.Accounts) error {
	conf, err := accounts.Conf()
	if err != nil {
		return err
	}
	path := filepath.Join(dataDir, "nats-accounts.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
