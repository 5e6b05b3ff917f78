package casework_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// fakeSharer stands in for package handover: it records the plans shared and answers Err.
type fakeSharer struct {
	mu     sync.Mutex
	Err    error
	Shared []sharedPlan
}

type sharedPlan struct {
	Actor, CaseID string
	Plan          *throughcarev1.PlanShared
}

var _ cases.Sharing = (*fakeSharer)(nil)

// Readable lets every copy through unchanged: what the protocol lets through is
// package handover's business, tested there.
func (f *fakeSharer) Readable(_ context.Context, copies ...*throughcarev1.ReleaseCase) ([]*throughcarev1.ReleaseCase, error) {
	return copies, nil
}

func (f *fakeSharer) SharePlan(_ context.Context, actor, caseID string, plan *throughcarev1.PlanShared) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Shared = append(f.Shared, sharedPlan{actor, caseID, proto.CloneOf(plan)})
	return f.Err
}

func (f *fakeSharer) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Err = err
}

func (f *fakeSharer) shared() []sharedPlan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.Shared)
}

// serve serves what register registers over a store in bucket on a real embedded
// JetStream, and returns a connection to it, the store (for writing cases the way a
// handover would) and the stand-in for the handover protocol.
func serve(t *testing.T, bucket string, register func(s *grpc.Server, log *zap.Logger, store *cases.Store, sharer *fakeSharer)) (*grpc.ClientConn, *cases.Store, *fakeSharer) {
	t.Helper()
	log := zaptest.NewLogger(t)
	store, err := cases.Open(t.Context(), zaptest.NewLogger(t), natstest.Start(t).JetStream(t), bucket)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	srv, err := grpcserver.New(log, grpcserver.Config{})
	if err != nil {
		t.Fatalf("grpcserver.New: %v", err)
	}
	sharer := &fakeSharer{}
	register(srv.Server, log, store, sharer)
	srv.SetServing()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, store, sharer
}

// received is a case as a receiving agency would hold it after a referral.
func received(id string, state throughcarev1.CaseState) *throughcarev1.ReleaseCase {
	now := timestamppb.Now()
	return &throughcarev1.ReleaseCase{
		CaseId: id, State: state, Owner: "prison", CreateTime: now, UpdateTime: now,
		Person: &throughcarev1.Person{
			GivenName: "Alex", FamilyName: "Example", PrisonNumber: "A1234BC",
			DateOfBirth: &throughcarev1.Date{Year: 1990, Month: 4, Day: 17},
		},
		ReleasePlan: &throughcarev1.ReleasePlan{
			ReleaseType:         throughcarev1.ReleaseType_RELEASE_TYPE_PAROLE,
			ExpectedReleaseDate: &throughcarev1.Date{Year: 2026, Month: 9, Day: 1},
		},
		Risk: &throughcarev1.RiskAssessment{Reoffending: throughcarev1.RiskLevel_RISK_LEVEL_MEDIUM},
	}
}

func create(t *testing.T, store *cases.Store, rc *throughcarev1.ReleaseCase) *throughcarev1.ReleaseCase {
	t.Helper()
	got, err := store.Create(t.Context(), proto.CloneOf(rc))
	if err != nil {
		t.Fatalf("store create %s: %v", rc.GetCaseId(), err)
	}
	return got
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %v (%v), want %v", got, err, want)
	}
}

func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	wantCode(t, err, codes.InvalidArgument)
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	if !slices.Contains(fields, field) {
		t.Fatalf("got field violations %q, want one naming %q", fields, field)
	}
}
