package casework_test

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/services/casework"
)

// newProbation serves the probation service over a real embedded JetStream and returns a
// connected client, the service's store (for writing cases the way a handover would) and
// the stand-in for the handover protocol.
func newProbation(t *testing.T) (throughcarev1.ProbationServiceClient, *cases.Store, *fakeSharer) {
	t.Helper()
	conn, store, sharer := serve(t, "probation_cases", func(s *grpc.Server, log *zap.Logger, store *cases.Store, sharer *fakeSharer) {
		throughcarev1.RegisterProbationServiceServer(s, casework.NewProbation(log, store, sharer))
	})
	return throughcarev1.NewProbationServiceClient(conn), store, sharer
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

func TestStoredSupervisionCasesAreServed(t *testing.T) {
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
