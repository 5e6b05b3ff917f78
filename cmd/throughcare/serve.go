package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/tracing"
)

// runServe runs one agency's service against an external NATS: the Kubernetes shape.
func runServe(ctx context.Context, cfg serveConfig) error {
	log, err := cfg.Log.logger()
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	log.Info("starting throughcare serve", zap.String("service", cfg.Service), zap.String("nats_url", redactURLs(cfg.NATSURL)),
		zap.String("addr", cfg.Addr), zap.String("health_addr", cfg.HealthAddr), zap.String("metrics_addr", cfg.MetricsAddr), zap.Int("replicas", cfg.Replicas),
		zap.String("nats_tls_ca", cfg.NATSTLSCA), zap.String("tls_ca", cfg.TLSCA), zap.String("tls_cert", cfg.TLSCert), zap.String("tls_key", cfg.TLSKey), zap.String("person_hash_key", cfg.PersonHashKey), zap.Bool("insecure", cfg.GRPC.Insecure),
		zap.Duration("call_timeout", cfg.GRPC.CallTimeout), zap.Int("max_inflight_per_caller", cfg.GRPC.MaxInFlightPerCaller))
	stopTracing, err := tracing.Setup(ctx, "throughcare-"+cfg.Service)
	if err != nil {
		return fmt.Errorf("tracing (OTEL_EXPORTER_OTLP_*): %w", err)
	}
	defer func() { _ = stopTracing(context.WithoutCancel(ctx)) }()
	var serverTLS *tls.Config
	if cfg.GRPC.Insecure {
		log.Warn(insecureWarning)
	} else if serverTLS, err = certs.LoadServerTLS(cfg.TLSCA, cfg.TLSCert, cfg.TLSKey); err != nil {
		return fmt.Errorf("mutual TLS (--tls-ca, --tls-cert, --tls-key): %w", err)
	}

	personKey, err := ledger.LoadPersonKey(cfg.PersonHashKey)
	if err != nil {
		return fmt.Errorf("--person-hash-key: %w", err)
	}
	log.Info("person-hash key", zap.String("file", cfg.PersonHashKey), zap.String("key_id", personKey.ID()))

	sharing, err := cfg.Handover.loadProtocol()
	if err != nil {
		return err
	}
	log.Info("sharing protocol", zap.String("protocol_id", sharing.ID()), zap.Uint32("version", sharing.Version()))
	if !sharing.Agencies().Has(cfg.Service) {
		return fmt.Errorf("--service %q: not among the protocol's agencies (%s)", cfg.Service, strings.Join(sharing.Agencies().IDs(), ", "))
	}
	key, keyring, err := cfg.Handover.loadSigning(cfg.Service)
	if err != nil {
		return err
	}
	opts := []nats.Option{
		nats.Name("throughcare-" + cfg.Service),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("nats disconnected", zap.Error(err)) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", zap.String("url", redactURLs(c.ConnectedUrl()))) }),
	}
	hc := cfg.Handover.handoverConfig(cfg.Service, sharing, cfg.Replicas)
	hc.SigningKey, hc.Keyring = key, keyring
	hc.PersonKey = personKey
	if cfg.NATSTLSCA != "" {
		// It also requires TLS, whatever the URL scheme: a server offering none is refused.
		opts = append(opts, nats.RootCAs(cfg.NATSTLSCA))
	}
	if cfg.NATSSeed != "" {
		auth, err := natsserver.AgencyConnectOptions(cfg.Service, cfg.NATSSeed)
		if err != nil {
			return err
		}
		opts = append(opts, auth...)
		hc.Topology = eventbus.AccountPerAgency
	}
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		return fmt.Errorf("connect to nats: %w", err)
	}
	defer drain(nc)
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	srv, err := startWhenJetStreamIsReady(ctx, log, func() (*agencyServer, error) {
		return startAgency(ctx, log, js, hc, cfg.GRPC.listen(cfg.Addr, cfg.HealthAddr, cfg.MetricsAddr, serverTLS))
	})
	if err != nil {
		return err
	}
	go leaveIsolatedServer(ctx, log, nc, js)
	<-ctx.Done()
	log.Info("shutting down")
	return srv.Stop()
}

// startWhenJetStreamIsReady starts the agency, and tries again while JetStream is not
// ready yet: after a whole cluster restarts, its streams elect leaders only some seconds
// after the servers answer, and a service that gave up then would only be restarted to
// try again. Any other error ends it at once.
func startWhenJetStreamIsReady(ctx context.Context, log *zap.Logger, start func() (*agencyServer, error)) (*agencyServer, error) {
	wait := time.Second
	for {
		srv, err := start()
		if err == nil || !jetStreamNotReady(err) || ctx.Err() != nil {
			return srv, err
		}
		log.Warn("JetStream is not ready yet; trying again", zap.Duration("in", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// jetStreamNotReady reports whether err is JetStream not answering yet, answering that it
// is not available for now (no stream leader yet: 503), or finding no peers to place a
// stream on, which is what a cluster answers before its leader has heard every node's
// storage; a real shortage of storage is logged at each try.
func jetStreamNotReady(err error) bool {
	var api *jetstream.APIError
	return grpcserver.StoreUnreachable(err) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &api) && (api.Code == 503 || api.ErrorCode == errCodeNoSuitablePeers))
}

// errCodeNoSuitablePeers is the server's JSClusterNoPeersErr, which the client has no
// constant for.
const errCodeNoSuitablePeers jetstream.ErrorCode = 10005

// leaveIsolatedServer moves the connection to another NATS server when JetStream stops
// answering through the one it is on while the connection itself stays up: a node cut off
// from the rest of its cluster by a partition keeps its clients, and every write through
// it fails for as long as the partition lasts. It asks every 5 s, and moves after two
// failures in a row.
func leaveIsolatedServer(ctx context.Context, log *zap.Logger, nc *nats.Conn, js jetstream.JetStream) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !nc.IsConnected() || len(nc.Servers()) < 2 {
			failures = 0
			continue
		}
		callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := js.AccountInfo(callCtx)
		cancel()
		if err == nil || !jetStreamNotReady(err) || ctx.Err() != nil {
			failures = 0
			continue
		}
		if failures++; failures < 2 {
			continue
		}
		log.Warn("JetStream does not answer through this NATS server; moving to another", zap.String("server", nc.ConnectedServerName()), zap.Error(err))
		failures = 0
		if err := nc.ForceReconnect(); err != nil {
			log.Warn("reconnect", zap.Error(err))
		}
	}
}

// drain lets pending messages finish, then closes the connection.
func drain(nc *nats.Conn) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	<-closed
}
