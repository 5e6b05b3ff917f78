package flow

import (
	"testing"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// Every field of a flow record, at any depth, is routing metadata: an operator is shown
// no data category, whatever the record holds.
func TestFlowRecordHoldsRoutingMetadataOnly(t *testing.T) {
	var walk func(md protoreflect.MessageDescriptor, path string)
	walk = func(md protoreflect.MessageDescriptor, path string) {
		fields := md.Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			m := protocol.MarkerOf(fd)
			if !m.Routing || m.Category != throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED {
				t.Errorf("%s.%s: marker %+v, want routing and no category", path, fd.Name(), m)
			}
			if fd.Message() != nil && fd.Message().FullName().Parent() == "throughcare.v1" {
				walk(fd.Message(), path+"."+string(fd.Name()))
			}
		}
	}
	walk((&throughcarev1.FlowRecord{}).ProtoReflect().Descriptor(), "FlowRecord")
}

func TestRecordOfAReferralShowsWhatWasSharedAndHeldBack(t *testing.T) {
	ev := &throughcarev1.Event{
		EventId: "ev_1", Type: throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED, Source: "prison", Recipient: "socialwork",
		CaseId: "rc_1", HandoverId: "ho_1", Sequence: 1, ProtocolId: "default", ProtocolVersion: 3,
		Withholdings: []*throughcarev1.Withholding{{Category: throughcarev1.DataCategory_DATA_CATEGORY_RISK}},
		Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{
			Handover:    &throughcarev1.Handover{State: throughcarev1.HandoverState_HANDOVER_STATE_REFERRED},
			ReleaseCase: &throughcarev1.ReleaseCase{CaseId: "rc_1", Person: &throughcarev1.Person{GivenName: "Ana"}},
		}},
	}
	r := Record(ev, throughcarev1.FlowStage_FLOW_STAGE_SENT, time.Unix(100, 0))
	if got := r.GetSharedCategories(); len(got) != 1 || got[0] != throughcarev1.DataCategory_DATA_CATEGORY_IDENTITY {
		t.Errorf("shared %v, want identity", got)
	}
	if got := r.GetWithheldCategories(); len(got) != 1 || got[0] != throughcarev1.DataCategory_DATA_CATEGORY_RISK {
		t.Errorf("withheld %v, want risk", got)
	}
	if r.GetState() != throughcarev1.HandoverState_HANDOVER_STATE_REFERRED || r.GetSequence() != 1 || r.GetProtocolVersion() != 3 {
		t.Errorf("record %v", r)
	}
	if got, want := Subject("prison", r), "flow.prison.sent.prison.socialwork.handover_referred"; got != want {
		t.Errorf("subject %q, want %q", got, want)
	}
}

func TestFilterSelectsBySubjectAndChecksTheRest(t *testing.T) {
	if got, want := (Filter{}).Subject(), "flow.*.*.*.*.*"; got != want {
		t.Errorf("empty filter: %q, want %q", got, want)
	}
	if got, want := (Filter{To: "probation", Type: "EVENT_TYPE_RECEIPT_ISSUED"}).Subject(), "flow.*.*.*.probation.receipt_issued"; got != want {
		t.Errorf("filter: %q, want %q", got, want)
	}
	r := &throughcarev1.FlowRecord{CaseId: "rc_1", HandoverId: "ho_1", State: throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED}
	for _, tc := range []struct {
		f    Filter
		want bool
	}{
		{Filter{}, true},
		{Filter{CaseID: "rc_1", HandoverID: "ho_1", State: throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED}, true},
		{Filter{CaseID: "rc_2"}, false},
		{Filter{HandoverID: "ho_2"}, false},
		{Filter{State: throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED}, false},
	} {
		if got := tc.f.Matches(r); got != tc.want {
			t.Errorf("%+v matches = %v, want %v", tc.f, got, tc.want)
		}
	}
}
