package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/metrics"
	"github.com/throughcare/throughcare/pkg/records"
	"github.com/throughcare/throughcare/services/casework"
	"github.com/throughcare/throughcare/services/prison"
)

// operatorMethods are what an operator's certificate may call on any agency's service:
// views for running the system, none of them personal data beyond metadata, and the
// handling of dead letters.
// Everything else, reflection included, is for the agency's own system only.
var operatorMethods = []string{
	throughcarev1.HandoverService_ListDeadLetters_FullMethodName,
	throughcarev1.HandoverService_ListOverdueHandovers_FullMethodName,
	throughcarev1.HandoverService_RetryDeadLetter_FullMethodName,
	throughcarev1.HandoverService_DiscardDeadLetter_FullMethodName,
	throughcarev1.AuditService_VerifyLedger_FullMethodName,
	throughcarev1.AuditService_GetSharingProtocol_FullMethodName,
}

// listen is where and how an agency serves gRPC.
type listen struct {
	Addr string
	// HealthAddr serves health alone, in plaintext, for probes; empty serves no such port.
	HealthAddr string
	// MetricsAddr serves Prometheus metrics in plaintext HTTP; empty serves none.
	MetricsAddr string
	// TLS is the server's mutual TLS; nil serves plaintext with no caller identities and so
	// no authorization (--insecure).
	TLS                  *tls.Config
	CallTimeout          time.Duration
	MaxInFlightPerCaller int
	// innermost run after authorization, next to the handlers: tests hold calls there.
	innermost []grpc.UnaryServerInterceptor
	// withoutTelemetry counts no metrics and makes no spans: the baseline that benchmarks
	// measure telemetry's cost against.
	withoutTelemetry bool
}

// agencyServer is one agency's service: its stores in JetStream and its gRPC server.
type agencyServer struct {
	agency         string
	server         *grpcserver.Server
	listener       net.Listener
	healthListener net.Listener // nil without a health port
	metrics        *http.Server // nil without a metrics port
	metricsAddr    string
	metricsServed  chan error
	served         chan error
	healthServed   chan error
	stopWork       context.CancelFunc
	workDone       chan error
	handovers      *handover.Service
}

// startAgency opens the agency's stores and streams, registers its services, starts
// processing events and serves gRPC as l says.
func startAgency(ctx context.Context, log *zap.Logger, js jetstream.JetStream, hcfg handover.Config, l listen) (*agencyServer, error) {
	agency, name := hcfg.Agency, hcfg.Agency
	log = log.With(zap.String("agency", name))
	if hcfg.Protocol == nil || !hcfg.Protocol.Agencies().Has(agency) {
		return nil, fmt.Errorf("%q is not among the protocol's agencies", agency)
	}
	if hcfg.PersonKey.IsZero() {
		return nil, fmt.Errorf("%s: no person-hash key: the ledger would refer to people without it", name)
	}
	store, err := cases.Open(ctx, log, js, name+"_cases", records.WithReplicas(hcfg.Limits.Replicas))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var handovers *handover.Service
	m := metrics.New(agency, func(ctx context.Context) (metrics.State, error) { return handovers.MetricsState(ctx) }, log)
	if !l.withoutTelemetry {
		hcfg.Metrics = m
	}
	handovers, err = handover.Open(ctx, log, js, store, hcfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	scfg := serverConfig(agency, l, recordWrite(agency, handovers.Ledger()))
	if !l.withoutTelemetry {
		scfg.OuterUnary = []grpc.UnaryServerInterceptor{m.GRPC().UnaryServerInterceptor()}
		scfg.OuterStream = []grpc.StreamServerInterceptor{m.GRPC().StreamServerInterceptor()}
		scfg.StatsHandlers = []stats.Handler{otelgrpc.NewServerHandler()}
	}
	srv, err := grpcserver.New(log, scfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// The role's own service, beside those every agency serves.
	switch hcfg.Protocol.Agencies().Role(agency) {
	case throughcarev1.AgencyRole_AGENCY_ROLE_PRISON:
		throughcarev1.RegisterPrisonServiceServer(srv.Server, prison.New(log, agency, store, handovers))
	case throughcarev1.AgencyRole_AGENCY_ROLE_PROBATION:
		throughcarev1.RegisterProbationServiceServer(srv.Server, casework.NewProbation(log, store, handovers))
	case throughcarev1.AgencyRole_AGENCY_ROLE_SOCIAL_WORK:
		throughcarev1.RegisterSocialWorkServiceServer(srv.Server, casework.NewSocialWork(log, store, handovers))
	}
	throughcarev1.RegisterCaseServiceServer(srv.Server, casework.New(log, agency, store, handovers))
	throughcarev1.RegisterHandoverServiceServer(srv.Server, handovers)
	throughcarev1.RegisterAuditServiceServer(srv.Server, ledger.NewServer(handovers.Ledger(), hcfg.PersonKey, handovers.Protocol))

	lis, err := net.Listen("tcp", l.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	var healthLis net.Listener
	if l.HealthAddr != "" {
		if healthLis, err = net.Listen("tcp", l.HealthAddr); err != nil {
			_ = lis.Close()
			return nil, fmt.Errorf("%s: listen for health: %w", name, err)
		}
	}
	var metricsLis net.Listener
	if l.MetricsAddr != "" {
		if metricsLis, err = net.Listen("tcp", l.MetricsAddr); err != nil {
			_ = lis.Close()
			if healthLis != nil {
				_ = healthLis.Close()
			}
			return nil, fmt.Errorf("%s: listen for metrics: %w", name, err)
		}
	}
	m.GRPC().InitializeMetrics(srv.Server)
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	a := &agencyServer{
		agency: agency, server: srv, listener: lis, healthListener: healthLis,
		served: make(chan error, 1), healthServed: make(chan error, 1), metricsServed: make(chan error, 1),
		stopWork: stopWork, workDone: make(chan error, 1), handovers: handovers,
	}
	if metricsLis != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", m.Handler())
		a.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		a.metricsAddr = metricsLis.Addr().String()
		go func() { a.metricsServed <- a.metrics.Serve(metricsLis) }()
		log.Info("serving metrics in plaintext", zap.String("addr", metricsLis.Addr().String()))
	} else {
		a.metricsServed <- nil
	}
	go func() { a.workDone <- handovers.Run(workCtx) }()
	srv.SetServing()
	go func() { a.served <- srv.Serve(lis) }()
	if healthLis != nil {
		go func() { a.healthServed <- srv.ServeHealth(healthLis) }()
		log.Info("serving gRPC health in plaintext", zap.String("addr", healthLis.Addr().String()))
	} else {
		a.healthServed <- nil
	}
	log.Info("serving gRPC", zap.String("addr", lis.Addr().String()), zap.Bool("mutual_tls", l.TLS != nil))
	return a, nil
}

// serverConfig is the agency's gRPC server: with mutual TLS, every caller is identified by
// its certificate and only the agency's own system (and operators, on operatorMethods)
// gets through.
// Every write must declare its purpose, and is recorded in the agency's ledger with its
// actor and purpose once it succeeds.
func serverConfig(agency string, l listen, record func(context.Context, grpcserver.Write) error) grpcserver.Config {
	cfg := grpcserver.Config{CallTimeout: l.CallTimeout, MaxInFlightPerCaller: l.MaxInFlightPerCaller}
	if l.TLS != nil {
		authorizeUnary, authorizeStream := grpcserver.OwnAgencyOnly(agency, operatorMethods)
		cfg.Creds = credentials.NewTLS(l.TLS)
		cfg.IdentifyCallers = true
		cfg.Unary = []grpc.UnaryServerInterceptor{authorizeUnary}
		cfg.Stream = []grpc.StreamServerInterceptor{authorizeStream}
	}
	cfg.Unary = append(cfg.Unary, grpcserver.RequirePurpose(), grpcserver.AuditWrites(record))
	cfg.Unary = append(cfg.Unary, l.innermost...)
	return cfg
}

// recordWrite appends a write to the agency's ledger: the method, the actor and the
// purpose, and the case or handover it touched.
func recordWrite(agency string, book *ledger.Ledger) func(context.Context, grpcserver.Write) error {
	return func(ctx context.Context, w grpcserver.Write) error {
		note := "write " + w.Method
		if w.HandoverID != "" {
			note += " on handover " + w.HandoverID
		}
		_, err := book.Append(ctx, &throughcarev1.Disclosure{
			Kind:    throughcarev1.DisclosureKind_DISCLOSURE_KIND_WRITE,
			CaseId:  w.CaseID,
			Sender:  agency,
			Purpose: w.Purpose,
			Actor:   w.Actor,
			Note:    note,
		}, "write/"+ids.New(ids.Event))
		if err != nil {
			return fmt.Errorf("record %s in the ledger: %w", w.Method, err)
		}
		return nil
	}
}

// Addr is where the agency's gRPC server listens.
func (a *agencyServer) Addr() string { return a.listener.Addr().String() }

// HealthAddr is where the agency serves plaintext health; empty when it does not.
func (a *agencyServer) HealthAddr() string {
	if a.healthListener == nil {
		return ""
	}
	return a.healthListener.Addr().String()
}

// MetricsAddr is where the agency serves metrics; empty when it does not.
func (a *agencyServer) MetricsAddr() string { return a.metricsAddr }

// Stop stops accepting calls, lets those in flight finish, then stops event processing
// (the message in hand is finished and acknowledged) and waits for both.
func (a *agencyServer) Stop() error {
	a.handovers.CloseWatches()
	a.server.Stop()
	served, healthServed := stopped(<-a.served), stopped(<-a.healthServed)
	var metricsStopped error
	if a.metrics != nil {
		metricsStopped = a.metrics.Close()
	}
	if err := <-a.metricsServed; !errors.Is(err, http.ErrServerClosed) {
		metricsStopped = errors.Join(metricsStopped, err)
	}
	a.stopWork()
	return errors.Join(served, healthServed, metricsStopped, <-a.workDone)
}

// stopped is nil for what Serve returns when the server was stopped, also when Stop came
// before Serve had begun (a start cancelled at once).
func stopped(served error) error {
	if errors.Is(served, net.ErrClosed) || errors.Is(served, grpc.ErrServerStopped) {
		return nil
	}
	return served
}

// stopAll stops the servers in parallel: each waits for its calls in flight.
func stopAll(servers []*agencyServer) error {
	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Go(func() { errs[i] = s.Stop() })
	}
	wg.Wait()
	return errors.Join(errs...)
}
