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
	"github.com/throughcare/throughcare/pkg/records"
	"github.com/throughcare/throughcare/services/prison"
	"github.com/throughcare/throughcare/services/probation"
	"github.com/throughcare/throughcare/services/socialwork"
)

// agencyServer is one agency's service: its stores in JetStream and its gRPC server.
type agencyServer struct {
	agency   throughcarev1.Agency
	server   *grpcserver.Server
	listener net.Listener
	done     chan error
}

// agencyName is the agency as it appears in bucket names, logs and flags.
func agencyName(a throughcarev1.Agency) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(a.String(), "AGENCY_")), "_", "")
}

// startAgency opens the agency's stores, registers its services and starts serving on addr.
func startAgency(ctx context.Context, log *zap.Logger, js jetstream.JetStream, agency throughcarev1.Agency, addr string, replicas int) (*agencyServer, error) {
	name := agencyName(agency)
	log = log.With(zap.String("agency", name))
	store, err := cases.Open(ctx, js, name+"_cases", records.WithReplicas(replicas))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	srv, err := grpcserver.New(log, grpcserver.Config{})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	switch agency {
	case throughcarev1.Agency_AGENCY_PRISON:
		throughcarev1.RegisterPrisonServiceServer(srv.Server, prison.New(log, store))
	case throughcarev1.Agency_AGENCY_PROBATION:
		throughcarev1.RegisterProbationServiceServer(srv.Server, probation.New(log, store))
	case throughcarev1.Agency_AGENCY_SOCIAL_WORK:
		throughcarev1.RegisterSocialWorkServiceServer(srv.Server, socialwork.New(log, store))
	default:
		return nil, fmt.Errorf("no service for agency %s", agency)
	}
	// Handovers and the audit ledger come with their own issues; until then every RPC of
	// these services answers Unimplemented.
	throughcarev1.RegisterHandoverServiceServer(srv.Server, throughcarev1.UnimplementedHandoverServiceServer{})
	throughcarev1.RegisterAuditServiceServer(srv.Server, throughcarev1.UnimplementedAuditServiceServer{})

	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	a := &agencyServer{agency: agency, server: srv, listener: lis, done: make(chan error, 1)}
	srv.SetServing()
	go func() { a.done <- srv.Serve(lis) }()
	log.Info("serving gRPC", zap.String("addr", lis.Addr().String()))
	return a, nil
}

// Addr is where the agency's gRPC server listens.
func (a *agencyServer) Addr() string { return a.listener.Addr().String() }

// Stop stops accepting calls, lets those in flight finish and waits for the server.
func (a *agencyServer) Stop() error {
	a.server.Stop()
	if err := <-a.done; err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("%s: serve: %w", agencyName(a.agency), err)
	}
	return nil
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
