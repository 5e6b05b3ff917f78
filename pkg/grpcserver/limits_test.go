package grpcserver_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/grpcserver"
)

func TestLimitPerCallerRefusesOneMoreAndOnlyThatCaller(t *testing.T) {
	const limit = 3
	limitUnary := grpcserver.LimitPerCaller(limit)
	info := &grpc.UnaryServerInfo{FullMethod: getProtocol}
	prisonCtx := identified(t, certs.AgencyURI("prison"))
	operatorCtx := identified(t, certs.OperatorURI)

	release := make(chan struct{})
	held := make(chan struct{}, limit)
	var wg sync.WaitGroup
	errs := make([]error, limit)
	for i := range limit {
		wg.Go(func() {
			_, errs[i] = limitUnary(prisonCtx, nil, info, func(context.Context, any) (any, error) {
				held <- struct{}{}
				<-release
				return nil, nil
			})
		})
	}
	for range limit {
		<-held
	}
	ok := func(context.Context, any) (any, error) { return nil, nil }
	if _, err := limitUnary(prisonCtx, nil, info, ok); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("call %d from the prison: got %v, want ResourceExhausted", limit+1, err)
	}
	if _, err := limitUnary(operatorCtx, nil, info, ok); err != nil {
		t.Errorf("the operator while the prison is at its limit: got %v, want OK", err)
	}
	health := &grpc.UnaryServerInfo{FullMethod: healthpb.Health_Check_FullMethodName}
	if _, err := limitUnary(prisonCtx, nil, health, ok); err != nil {
		t.Errorf("a health check while the prison is at its limit: got %v, want OK", err)
	}
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("held call %d: %v", i, err)
		}
	}
	if _, err := limitUnary(prisonCtx, nil, info, ok); err != nil {
		t.Errorf("after the held calls ended: got %v, want OK", err)
	}
}

func TestCapDurationBoundsUnaryCalls(t *testing.T) {
	capUnary := grpcserver.CapDuration(time.Minute)
	info := &grpc.UnaryServerInfo{FullMethod: getProtocol}
	tests := []struct {
		name string
		ctx  func() context.Context
		want time.Duration
	}{
		{"no deadline", func() context.Context { return t.Context() }, time.Minute},
		{"a later deadline", func() context.Context {
			ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
			t.Cleanup(cancel)
			return ctx
		}, time.Minute},
		{"an earlier deadline", func() context.Context {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			t.Cleanup(cancel)
			return ctx
		}, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx()
			start := time.Now()
			_, _ = capUnary(ctx, nil, info, func(ctx context.Context, _ any) (any, error) {
				deadline, ok := ctx.Deadline()
				if got := deadline.Sub(start); !ok || got > tt.want+time.Second || got < tt.want-5*time.Second {
					t.Errorf("handler's deadline in %v (set %v), want about %v", got, ok, tt.want)
				}
				return nil, nil
			})
		})
	}
}

func TestServeHealthServesHealthAloneInPlaintext(t *testing.T) {
	srv, err := grpcserver.New(zaptest.NewLogger(t), grpcserver.Config{IdentifyCallers: true})
	if err != nil {
		t.Fatal(err)
	}
	throughcarev1.RegisterAuditServiceServer(srv.Server, &auditStub{})
	srv.SetServing()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeHealth(lis) }()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(callContext(t), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: got %v, %v; want SERVING", resp.GetStatus(), err)
	}
	resp, err = healthpb.NewHealthClient(conn).Check(callContext(t), &healthpb.HealthCheckRequest{Service: "throughcare.v1.AuditService"})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health of the audit service: got %v, %v; want SERVING", resp.GetStatus(), err)
	}
	_, err = throughcarev1.NewAuditServiceClient(conn).GetSharingProtocol(callContext(t), &throughcarev1.GetSharingProtocolRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("the audit service on the health port: got %v, want Unimplemented", err)
	}

	srv.Stop()
	if err := <-served; err != nil {
		t.Errorf("serve health: %v", err)
	}
}
