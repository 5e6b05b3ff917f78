package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/records"
	"github.com/throughcare/throughcare/services/prison"
	"github.com/throughcare/throughcare/services/probation"
	"github.com/throughcare/throughcare/services/socialwork"
)

// agencyServer is one agency's service: its stores in JetStream and its gRPC server.
type agencyServer struct {
	agency    throughcarev1.Agency
	server    *grpcserver.Server
	listener  net.Listener
	served    chan error
	stopWork  context.CancelFunc
	workDone  chan error
	handovers *handover.Service
}

// agencyName is the agency as it appears in bucket names, logs and flags.
func agencyName(a throughcarev1.Agency) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(a.String(), "AGENCY_")), "_", "")
}

// startAgency opens the agency's stores and streams, registers its services, starts
// processing events and serves gRPC on addr.
func startAgency(ctx context.Context, log *zap.Logger, js jetstream.JetStream, hcfg handover.Config, addr string) (*agencyServer, error) {
	agency := hcfg.Agency
	name := agencyName(agency)
	log = log.With(zap.String("agency", name))
	store, err := cases.Open(ctx, js, name+"_cases", records.WithReplicas(hcfg.Limits.Replicas))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	handovers, err := handover.Open(ctx, log, js, store, hcfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	srv, err := grpcserver.New(log, grpcserver.Config{})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	switch agency {
	case throughcarev1.Agency_AGENCY_PRISON:
		throughcarev1.RegisterPrisonServiceServer(srv.Server, prison.New(log, store, handovers))
	case throughcarev1.Agency_AGENCY_PROBATION:
		throughcarev1.RegisterProbationServiceServer(srv.Server, probation.New(log, store, handovers))
	case throughcarev1.Agency_AGENCY_SOCIAL_WORK:
		throughcarev1.RegisterSocialWorkServiceServer(srv.Server, socialwork.New(log, store, handovers))
	default:
		return nil, fmt.Errorf("no service for agency %s", agency)
	}
	throughcarev1.RegisterHandoverServiceServer(srv.Server, handovers)
	throughcarev1.RegisterAuditServiceServer(srv.Server, ledger.NewServer(handovers.Ledger(), handovers.Protocol))

	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	a := &agencyServer{agency: agency, server: srv, listener: lis, served: make(chan error, 1), stopWork: stopWork, workDone: make(chan error, 1), handovers: handovers}
	go func() { a.workDone <- handovers.Run(workCtx) }()
	srv.SetServing()
	go func() { a.served <- srv.Serve(lis) }()
	log.Info("serving gRPC", zap.String("addr", lis.Addr().String()))
	return a, nil
}

// Addr is where the agency's gRPC server listens.
func (a *agencyServer) Addr() string { return a.listener.Addr().String() }

// Stop stops accepting calls, lets those in flight finish, then stops event processing
// (the message in hand is finished and acknowledged) and waits for both.
func (a *agencyServer) Stop() error {
	a.handovers.CloseWatches()
	a.server.Stop()
	served := <-a.served
	if errors.Is(served, net.ErrClosed) {
		served = nil
	}
	a.stopWork()
	return errors.Join(served, <-a.workDone)
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
