package probation_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

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
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/services/probation"
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

var _ probation.Handovers = (*fakeSharer)(nil)

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

// newProbation serves the probation service over a real embedded JetStream and returns a
// connected client, the service's store (for writing cases the way a handover would) and
// the stand-in for the handover protocol.
func newProbation(t *testing.T) (throughcarev1.ProbationServiceClient, *cases.Store, *fakeSharer) {
	t.Helper()
	log := zaptest.NewLogger(t)
	store, err := cases.Open(t.Context(), zaptest.NewLogger(t), natstest.Start(t).JetStream(t), "probation_cases")
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	srv, err := grpcserver.New(log, grpcserver.Config{})
	if err != nil {
		t.Fatalf("grpcserver.New: %v", err)
	}
	sharer := &fakeSharer{}
	throughcarev1.RegisterProbationServiceServer(srv.Server, probation.New(log, store, sharer))
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
	return throughcarev1.NewProbationServiceClient(conn), store, sharer
}

// received is a case as probation would hold it after a referral.
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

func TestGetSupervisionCaseUnknownIsNotFound(t *testing.T) {
	client, store, _ := newProbation(t)
	create(t, store, received("rc_known", throughcarev1.CaseState_CASE_STATE_OPEN))
	_, err := client.GetSupervisionCase(t.Context(), &throughcarev1.GetSupervisionCaseRequest{CaseId: "rc_unknown"})
	wantCode(t, err, codes.NotFound)
}

func TestGetSupervisionCaseBadID(t *testing.T) {
	client, _, _ := newProbation(t)
	for _, id := range []string{"", "rc.a", "rc_*", "rc_>", "rc a", strings.Repeat("a", 65)} {
		t.Run(id, func(t *testing.T) {
			_, err := client.GetSupervisionCase(t.Context(), &throughcarev1.GetSupervisionCaseRequest{CaseId: id})
			wantInvalid(t, err, "case_id")
		})
	}
}

func TestListSupervisionCasesEmpty(t *testing.T) {
	client, _, _ := newProbation(t)
	resp, err := client.ListSupervisionCases(t.Context(), &throughcarev1.ListSupervisionCasesRequest{})
	if err != nil {
		t.Fatalf("ListSupervisionCases: %v", err)
	}
	if n := len(resp.GetReleaseCases()); n != 0 || resp.GetNextPageToken() != "" {
		t.Errorf("got %d cases and token %q, want none and no token", n, resp.GetNextPageToken())
	}
}

func TestListSupervisionCasesBadInput(t *testing.T) {
	client, store, _ := newProbation(t)
	create(t, store, received("rc_known", throughcarev1.CaseState_CASE_STATE_OPEN))
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		name      string
		req       *throughcarev1.ListSupervisionCasesRequest
		wantField string
	}{
		{"garbage token", &throughcarev1.ListSupervisionCasesRequest{PageToken: "garbage!"}, "page_token"},
		{"token without prefix", &throughcarev1.ListSupervisionCasesRequest{PageToken: enc("rc_known")}, "page_token"},
		{"token with subject syntax", &throughcarev1.ListSupervisionCasesRequest{PageToken: enc("after:rc.>")}, "page_token"},
		{"token too long", &throughcarev1.ListSupervisionCasesRequest{PageToken: strings.Repeat("A", 257)}, "page_token"},
		{"page_size 501", &throughcarev1.ListSupervisionCasesRequest{PageSize: 501}, "page_size"},
		{"state 99", &throughcarev1.ListSupervisionCasesRequest{State: 99}, "state"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.ListSupervisionCases(t.Context(), tc.req)
			wantInvalid(t, err, tc.wantField)
		})
	}
}

func TestStoredCasesAreServed(t *testing.T) {
	client, store, _ := newProbation(t)
	want := map[string]*throughcarev1.ReleaseCase{}
	var order []string
	for i, state := range []throughcarev1.CaseState{
		throughcarev1.CaseState_CASE_STATE_OPEN,
		throughcarev1.CaseState_CASE_STATE_RELEASED,
		throughcarev1.CaseState_CASE_STATE_RELEASED,
		throughcarev1.CaseState_CASE_STATE_CLOSED,
		throughcarev1.CaseState_CASE_STATE_RELEASED,
	} {
		id := fmt.Sprintf("rc_%c", 'a'+i)
		want[id] = create(t, store, received(id, state))
		order = append(order, id)
	}

	for _, id := range order {
		resp, err := client.GetSupervisionCase(t.Context(), &throughcarev1.GetSupervisionCaseRequest{CaseId: id})
		if err != nil {
			t.Fatalf("GetSupervisionCase(%s): %v", id, err)
		}
		if got := resp.GetReleaseCase(); !proto.Equal(got, want[id]) || got.GetRevision() == 0 {
			t.Errorf("got %v, want %v with its revision", got, want[id])
		}
	}

	for _, tc := range []struct {
		name     string
		state    throughcarev1.CaseState
		pageSize int32
		wantIDs  []string
	}{
		{"all in one page", 0, 0, order},
		{"all by twos", 0, 2, order},
		{"released", throughcarev1.CaseState_CASE_STATE_RELEASED, 0, []string{"rc_b", "rc_c", "rc_e"}},
		{"released by ones", throughcarev1.CaseState_CASE_STATE_RELEASED, 1, []string{"rc_b", "rc_c", "rc_e"}},
		{"closed", throughcarev1.CaseState_CASE_STATE_CLOSED, 0, []string{"rc_d"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			token := ""
			for range len(order) + 1 {
				resp, err := client.ListSupervisionCases(t.Context(), &throughcarev1.ListSupervisionCasesRequest{PageSize: tc.pageSize, PageToken: token, State: tc.state})
				if err != nil {
					t.Fatalf("ListSupervisionCases: %v", err)
				}
				if tc.pageSize > 0 && len(resp.GetReleaseCases()) > int(tc.pageSize) {
					t.Errorf("got a page of %d, want at most %d", len(resp.GetReleaseCases()), tc.pageSize)
				}
				for _, rc := range resp.GetReleaseCases() {
					got = append(got, rc.GetCaseId())
					if !proto.Equal(rc, want[rc.GetCaseId()]) {
						t.Errorf("got %v, want %v", rc, want[rc.GetCaseId()])
					}
				}
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if !slices.Equal(got, tc.wantIDs) {
				t.Errorf("got ids %v, want %v", got, tc.wantIDs)
			}
		})
	}
}

// RecordSupervisionPlan shares the plan along the handover first and stores it only once
// that worked.
func TestRecordSupervisionPlan(t *testing.T) {
	client, store, sharer := newProbation(t)
	stored := create(t, store, received("rc_a", throughcarev1.CaseState_CASE_STATE_RELEASED))
	plan := &throughcarev1.SupervisionPlan{Officer: "P. Officer", ReportingIntervalDays: 7, LicenceConditions: []string{"Reside at approved premises"}}
	record := func(caseID string) (*throughcarev1.ReleaseCase, error) {
		resp, err := client.RecordSupervisionPlan(t.Context(), &throughcarev1.RecordSupervisionPlanRequest{Actor: "po-1", CaseId: caseID, SupervisionPlan: plan})
		return resp.GetReleaseCase(), err
	}

	// Refused by the protocol: nothing changes.
	sharer.set(fmt.Errorf("no accepted handover: %w", fault.ErrFailedPrecondition))
	_, err := record("rc_a")
	wantCode(t, err, codes.FailedPrecondition)
	if got, err := store.Get(t.Context(), "rc_a"); err != nil || !proto.Equal(got, stored) {
		t.Errorf("got stored %v (%v) after a refused share, want unchanged %v", got, err, stored)
	}

	// Unknown case: nothing is shared.
	sharer.set(nil)
	_, err = record("rc_unknown")
	wantCode(t, err, codes.NotFound)
	if n := len(sharer.shared()); n != 1 {
		t.Errorf("got %d shares, want only the refused one", n)
	}

	got, err := record("rc_a")
	if err != nil {
		t.Fatalf("RecordSupervisionPlan: %v", err)
	}
	if !proto.Equal(got.GetSupervisionPlan(), plan) || got.GetRevision() <= stored.GetRevision() {
		t.Errorf("got plan %v at revision %d, want %v after revision %d", got.GetSupervisionPlan(), got.GetRevision(), plan, stored.GetRevision())
	}
	want := proto.CloneOf(stored)
	want.SupervisionPlan, want.Revision, want.UpdateTime = plan, got.GetRevision(), got.GetUpdateTime()
	if !proto.Equal(got, want) {
		t.Errorf("got\n%v\nwant only the plan, revision and update time changed\n%v", got, want)
	}
	if now, err := store.Get(t.Context(), "rc_a"); err != nil || !proto.Equal(now, got) {
		t.Errorf("got stored %v (%v), want the response %v", now, err, got)
	}
	shares := sharer.shared()
	if last := shares[len(shares)-1]; last.Actor != "po-1" || last.CaseID != "rc_a" || !proto.Equal(last.Plan, &throughcarev1.PlanShared{SupervisionPlan: plan}) {
		t.Errorf("got share %+v, want the plan of rc_a by po-1", last)
	}
}
