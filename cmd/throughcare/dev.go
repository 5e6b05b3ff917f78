package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natsserver"
)

// devSystem is everything `throughcare dev` runs in one process.
type devSystem struct {
	log      *zap.Logger
	nats     *server.Server
	conns    []*nats.Conn
	agencies []*agencyServer
}

func runDev(ctx context.Context, cfg devConfig, stdout io.Writer) error {
	log, err := cfg.Log.logger()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	log.Info("starting throughcare dev", zap.String("data_dir", cfg.DataDir), zap.Int("nats_port", cfg.NATSPort), zap.Bool("nats_accounts", cfg.NATSAccounts),
		zap.String("prison_addr", cfg.PrisonAddr), zap.String("probation_addr", cfg.ProbationAddr), zap.String("socialwork_addr", cfg.SocialWorkAddr))

	sys, err := startDev(ctx, log, cfg)
	if err != nil {
		return err
	}
	printDevBanner(stdout, cfg, sys)
	<-ctx.Done()
	log.Info("shutting down")
	return sys.Stop()
}

// devCredentialsDir holds the nkey seeds of every NATS user, one 0600 file each.
func devCredentialsDir(dataDir string) string { return filepath.Join(dataDir, "credentials") }

// startDev starts the embedded NATS, then the three agency services on it. With
// NATSAccounts (the default) the server runs one account per agency, configured as a
// production server is (deploy/nats), and each agency connects with its own nkey.
func startDev(ctx context.Context, log *zap.Logger, cfg devConfig) (*devSystem, error) {
	sharing, err := cfg.Handover.loadProtocol()
	if err != nil {
		return nil, err
	}
	log.Info("sharing protocol", zap.String("protocol_id", sharing.ID()), zap.Uint32("version", sharing.Version()))
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
		creds, err = natsserver.LoadOrCreateCredentials(devCredentialsDir(cfg.DataDir))
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
	sys := &devSystem{log: log, nats: ns}
	agencies := []struct {
		agency throughcarev1.Agency
		addr   string
	}{
		{throughcarev1.Agency_AGENCY_PRISON, cfg.PrisonAddr},
		{throughcarev1.Agency_AGENCY_PROBATION, cfg.ProbationAddr},
		{throughcarev1.Agency_AGENCY_SOCIAL_WORK, cfg.SocialWorkAddr},
	}
	streams := make([]jetstream.JetStream, len(agencies))
	for i, a := range agencies {
		opts := []nats.Option{nats.Name("throughcare-dev-" + agencyName(a.agency)), nats.MaxReconnects(-1)}
		if cfg.NATSAccounts {
			auth, err := creds.ConnectOptions(a.agency)
			if err != nil {
				return nil, errors.Join(err, sys.Stop())
			}
			opts = append(opts, auth...)
		}
		nc, err := nats.Connect(ns.ClientURL(), opts...)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("connect %s to embedded nats: %w", agencyName(a.agency), err), sys.Stop())
		}
		sys.conns = append(sys.conns, nc)
		if streams[i], err = jetstream.New(nc); err != nil {
			return nil, errors.Join(fmt.Errorf("jetstream: %w", err), sys.Stop())
		}
		// Every outbox before any inbox, so no inbox source starts on a missing stream.
		if err := eventbus.SetupOutbox(ctx, streams[i], a.agency, cfg.Handover.handoverConfig(a.agency, sharing, 1).Limits); err != nil {
			return nil, errors.Join(fmt.Errorf("%s: %w", agencyName(a.agency), err), sys.Stop())
		}
	}
	for i, a := range agencies {
		hcfg := cfg.Handover.handoverConfig(a.agency, sharing, 1)
		hcfg.Topology = topology
		srv, err := startAgency(ctx, log, streams[i], hcfg, a.addr)
		if err != nil {
			return nil, errors.Join(err, sys.Stop())
		}
		sys.agencies = append(sys.agencies, srv)
	}
	return sys, nil
}

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
	natsAccess := " (one shared account, no authentication)"
	if cfg.NATSAccounts {
		natsAccess = fmt.Sprintf(" (an account per agency; nkey seeds in %s)", devCredentialsDir(cfg.DataDir))
	}
	fmt.Fprintf(w, `
throughcare dev is running (data in %s)
  prison       %s
  probation    %s
  social work  %s
  nats         %s%s

Try:
  grpcurl -plaintext %s list
  grpcurl -plaintext -d '{"page_size": 10}' %s throughcare.v1.PrisonService/ListReleaseCases

Ctrl-C stops; the data stays for the next start.
`, cfg.DataDir, sys.agencies[0].Addr(), sys.agencies[1].Addr(), sys.agencies[2].Addr(), sys.nats.ClientURL(), natsAccess,
		sys.agencies[0].Addr(), sys.agencies[0].Addr())
}
