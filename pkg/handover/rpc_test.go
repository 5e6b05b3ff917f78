package handover

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

func TestMatchesFiltersByDirectionStateAndDeadline(t *testing.T) {
	now := time.Now()
	soon, later := timestamppb.New(now.Add(time.Hour)), timestamppb.New(now.Add(48*time.Hour))
	in := throughcarev1.Direction_DIRECTION_INCOMING
	h := &throughcarev1.Handover{State: throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED, AcknowledgeDueTime: soon, AcceptDueTime: later}
	for _, tc := range []struct {
		name string
		req  *throughcarev1.ListHandoversRequest
		dir  throughcarev1.Direction
		h    *throughcarev1.Handover
		want bool
	}{
		{"direction", &throughcarev1.ListHandoversRequest{Direction: in}, in, h, true},
		{"other direction", &throughcarev1.ListHandoversRequest{Direction: throughcarev1.Direction_DIRECTION_OUTGOING}, in, h, false},
		{"state listed", &throughcarev1.ListHandoversRequest{Direction: in, States: []throughcarev1.HandoverState{throughcarev1.HandoverState_HANDOVER_STATE_RETRIEVED, throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED}}, in, h, true},
		{"state not listed", &throughcarev1.ListHandoversRequest{Direction: in, States: []throughcarev1.HandoverState{throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED}}, in, h, false},
		{"overdue only, not overdue", &throughcarev1.ListHandoversRequest{Direction: in, OverdueOnly: true}, in, h, false},
		{"overdue only, overdue", &throughcarev1.ListHandoversRequest{Direction: in, OverdueOnly: true}, in, &throughcarev1.Handover{State: throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED, AcceptOverdue: true}, true},
		{"due before the ack deadline passes", &throughcarev1.ListHandoversRequest{Direction: in, DueBefore: timestamppb.New(now.Add(2 * time.Hour))}, in, h, true},
		{"nothing due before", &throughcarev1.ListHandoversRequest{Direction: in, DueBefore: timestamppb.New(now)}, in, h, false},
		{"finished is never due", &throughcarev1.ListHandoversRequest{Direction: in, DueBefore: timestamppb.New(now.Add(72 * time.Hour))}, in, &throughcarev1.Handover{State: throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED, AcceptDueTime: later}, false},
	} {
		if got := matches(tc.req, tc.dir, tc.h); got != tc.want {
			t.Errorf("%s: matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}
