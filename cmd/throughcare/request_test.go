package main

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// TestReferWithARequestIdIsSafeToRetry: a ReferCase retried with the same request id
// returns the handover the first made, with what was held back; one handover is sent and
// delivered. The id cannot be reused for another referral, and a malformed one is refused.
func TestReferWithARequestIdIsSafeToRetry(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	rc := openCase(t, sys.Prison)
	req := &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Recipient: socialWorkAgency, Purpose: purposeAssistance, RequestId: "cms-7f3a-0001"}
	first, err := sys.Cases[prisonAgency].ReferCase(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := sys.Cases[prisonAgency].ReferCase(ctx, req)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	id := first.GetHandover().GetHandoverId()
	if again.GetHandover().GetHandoverId() != id {
		t.Errorf("retry made handover %s, want the first's %s", again.GetHandover().GetHandoverId(), id)
	}
	if len(first.GetWithheldCategories()) == 0 || !slices.Equal(again.GetWithheldCategories(), first.GetWithheldCategories()) {
		t.Errorf("retry says %v held back, the first %v; want the same, not empty", again.GetWithheldCategories(), first.GetWithheldCategories())
	}
	waitState(t, sys.Handovers[prisonAgency], id, stateDelivered)
	if out := listAll(t, sys.Handovers[prisonAgency], &throughcarev1.ListHandoversRequest{Direction: outgoing}); len(out) != 1 {
		t.Errorf("prison outgoing: %d handovers, want 1", len(out))
	}
	checkDeliveredOnce(t, sys, socialWorkAgency, []string{id})

	other := proto.CloneOf(req)
	other.Recipient, other.Purpose = probationAgency, purposeSupervision
	_, err = sys.Cases[prisonAgency].ReferCase(ctx, other)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "request_id") {
		t.Errorf("the id for another referral: %v, want InvalidArgument naming request_id", err)
	}
	bad := proto.CloneOf(req)
	bad.RequestId = "no spaces allowed"
	if _, err := sys.Cases[prisonAgency].ReferCase(ctx, bad); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "request_id") {
		t.Errorf("a malformed id: %v, want InvalidArgument naming request_id", err)
	}
}
