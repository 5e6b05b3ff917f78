package protocol

import (
	"errors"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
)

// TestFullCaseHoldsEveryField guards the fixture: a field it leaves empty would go untested.
func TestFullCaseHoldsEveryField(t *testing.T) {
	m := fullCase().ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		if fd := fields.Get(i); !m.Has(fd) {
			t.Errorf("fullCase leaves %s empty", fd.Name())
		}
	}
	for _, c := range allCategories {
		if caseField(c) == nil {
			t.Errorf("caseFields names no ReleaseCase field for %s", c)
		}
	}
}

func TestCategoriesFitInASet(t *testing.T) {
	values := throughcarev1.DataCategory(0).Descriptor().Values()
	for i := range values.Len() {
		if n := values.Get(i).Number(); n < 0 || n >= 64 {
			t.Errorf("%s = %d does not fit in a categorySet; widen the set", values.Get(i).Name(), n)
		}
	}
	if got, want := values.Len()-1, len(allCategories); got != want {
		t.Errorf("the contract has %d categories, the tests know %d; add the new ones to allCategories and caseFields", got, want)
	}
}

type withholding struct {
	category throughcarev1.DataCategory
	reason   throughcarev1.WithholdReason
}

func withholdingsOf(r Report) []withholding {
	var out []withholding
	for _, w := range r.Withheld {
		out = append(out, withholding{w.GetCategory(), w.GetReason()})
	}
	return out
}

func TestEnforceReleaseCase(t *testing.T) {
	p := Default()
	tests := []struct {
		name              string
		sender, recipient string
		purpose           throughcarev1.Purpose
		consents          []*throughcarev1.Consent
		wantShared        []throughcarev1.DataCategory
		wantWithheld      []withholding
	}{
		{
			name:   "prison to probation keeps everything its rule allows",
			sender: prison, recipient: probation, purpose: supervision,
			wantShared:   without(supervisionCategory, assistanceCategory),
			wantWithheld: []withholding{{supervisionCategory, notAllowed}, {assistanceCategory, notAllowed}},
		},
		{
			name:   "prison to social work without consent",
			sender: prison, recipient: socialWork, purpose: assistance,
			wantShared: []throughcarev1.DataCategory{
				identityCategory, contactCategory, releasePlanCategory, accommodationCategory,
				educationCategory, financeCategory, familyCategory, workerSafetyCategory,
			},
			wantWithheld: []withholding{
				{legalCategory, notAllowed}, {healthCategory, noConsent}, {substanceCategory, noConsent},
				{behaviourCategory, notAllowed}, {riskCategory, notAllowed}, {extremismCategory, notAllowed},
				{supervisionCategory, notAllowed}, {assistanceCategory, notAllowed},
			},
		},
		{
			name:   "prison to social work with standing consent",
			sender: prison, recipient: socialWork, purpose: assistance,
			consents: consentTo(socialWork, healthCategory, substanceCategory),
			wantShared: []throughcarev1.DataCategory{
				identityCategory, contactCategory, releasePlanCategory, accommodationCategory,
				educationCategory, healthCategory, substanceCategory, financeCategory, familyCategory,
				workerSafetyCategory,
			},
			wantWithheld: []withholding{
				{legalCategory, notAllowed}, {behaviourCategory, notAllowed}, {riskCategory, notAllowed},
				{extremismCategory, notAllowed}, {supervisionCategory, notAllowed}, {assistanceCategory, notAllowed},
			},
		},
		{
			name:   "prison to social work with consent to health only",
			sender: prison, recipient: socialWork, purpose: assistance,
			consents: consentTo(socialWork, healthCategory),
			wantShared: []throughcarev1.DataCategory{
				identityCategory, contactCategory, releasePlanCategory, accommodationCategory,
				educationCategory, healthCategory, financeCategory, familyCategory, workerSafetyCategory,
			},
			wantWithheld: []withholding{
				{legalCategory, notAllowed}, {substanceCategory, noConsent}, {behaviourCategory, notAllowed},
				{riskCategory, notAllowed}, {extremismCategory, notAllowed}, {supervisionCategory, notAllowed},
				{assistanceCategory, notAllowed},
			},
		},
		{
			name:   "prison to social work with withdrawn consent",
			sender: prison, recipient: socialWork, purpose: assistance,
			consents: withdrawn(consentTo(socialWork, healthCategory, substanceCategory)),
			wantShared: []throughcarev1.DataCategory{
				identityCategory, contactCategory, releasePlanCategory, accommodationCategory,
				educationCategory, financeCategory, familyCategory, workerSafetyCategory,
			},
			wantWithheld: []withholding{
				{legalCategory, notAllowed}, {healthCategory, noConsent}, {substanceCategory, noConsent},
				{behaviourCategory, notAllowed}, {riskCategory, notAllowed}, {extremismCategory, notAllowed},
				{supervisionCategory, notAllowed}, {assistanceCategory, notAllowed},
			},
		},
		{
			name:   "prison to social work with consent given to probation instead",
			sender: prison, recipient: socialWork, purpose: assistance,
			consents: consentTo(probation, healthCategory, substanceCategory),
			wantShared: []throughcarev1.DataCategory{
				identityCategory, contactCategory, releasePlanCategory, accommodationCategory,
				educationCategory, financeCategory, familyCategory, workerSafetyCategory,
			},
			wantWithheld: []withholding{
				{legalCategory, notAllowed}, {healthCategory, noConsent}, {substanceCategory, noConsent},
				{behaviourCategory, notAllowed}, {riskCategory, notAllowed}, {extremismCategory, notAllowed},
				{supervisionCategory, notAllowed}, {assistanceCategory, notAllowed},
			},
		},
		{
			name:   "probation to social work for coordination",
			sender: probation, recipient: socialWork, purpose: coordination,
			wantShared: []throughcarev1.DataCategory{identityCategory, contactCategory, releasePlanCategory, workerSafetyCategory, supervisionCategory},
			wantWithheld: []withholding{
				{legalCategory, notAllowed}, {accommodationCategory, notAllowed},
				{educationCategory, notAllowed}, {healthCategory, notAllowed}, {substanceCategory, notAllowed},
				{financeCategory, notAllowed}, {familyCategory, notAllowed}, {behaviourCategory, notAllowed},
				{riskCategory, notAllowed}, {extremismCategory, notAllowed}, {assistanceCategory, notAllowed},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fullCase()
			report, err := p.Enforce(got, tt.sender, tt.recipient, tt.purpose, tt.consents)
			if err != nil {
				t.Fatalf("Enforce: %v", err)
			}

			want := fullCase()
			for _, w := range tt.wantWithheld {
				clearCategories(want, w.category)
			}
			if !proto.Equal(got, want) {
				t.Errorf("Enforce left\n%v\nwant\n%v", got, want)
			}
			for _, c := range tt.wantShared {
				if !holds(got, c) {
					t.Errorf("%s was cleared, want it kept", c)
				}
			}
			if !slices.Equal(report.Shared, tt.wantShared) {
				t.Errorf("Report.Shared = %v, want %v", report.Shared, tt.wantShared)
			}
			if got := withholdingsOf(report); !slices.Equal(got, tt.wantWithheld) {
				t.Errorf("Report.Withheld = %v, want %v", got, tt.wantWithheld)
			}
			rule, _ := p.Rule(tt.sender, tt.recipient, tt.purpose)
			if report.Rule != rule {
				t.Errorf("Report.Rule = %v, want the protocol's rule %v", report.Rule, rule)
			}
		})
	}
}

func TestEnforceWithoutRule(t *testing.T) {
	p := Default()
	tests := []struct {
		name              string
		sender, recipient string
		purpose           throughcarev1.Purpose
		wantMessage       string
	}{
		{
			name:   "prison to social work for supervision",
			sender: prison, recipient: socialWork, purpose: supervision,
			wantMessage: "no rule in protocol throughcare-default v1 lets prison share with social work for PURPOSE_SUPERVISION",
		},
		{
			name:   "probation to prison for assistance",
			sender: probation, recipient: prison, purpose: assistance,
			wantMessage: "no rule in protocol throughcare-default v1 lets probation share with prison for PURPOSE_POST_PENAL_ASSISTANCE",
		},
		{
			name:   "unspecified purpose",
			sender: prison, recipient: probation, purpose: throughcarev1.Purpose_PURPOSE_UNSPECIFIED,
			wantMessage: "no rule in protocol throughcare-default v1 lets prison share with probation for PURPOSE_UNSPECIFIED",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := fullCase()
			report, err := p.Enforce(msg, tt.sender, tt.recipient, tt.purpose, consentTo(tt.recipient, allCategories...))
			checkNoRuleError(t, "Enforce", err, tt.wantMessage)
			if !proto.Equal(msg, fullCase()) {
				t.Errorf("Enforce changed the message although no rule applies:\n%v", msg)
			}
			if report.Rule != nil || report.Shared != nil || report.Withheld != nil {
				t.Errorf("Enforce reported %+v without a rule", report)
			}

			_, err = p.Check(msg, tt.sender, tt.recipient, tt.purpose, nil)
			checkNoRuleError(t, "Check", err, tt.wantMessage)
			_, err = p.RuleFor(tt.sender, tt.recipient, tt.purpose)
			checkNoRuleError(t, "RuleFor", err, tt.wantMessage)
			if rule, ok := p.Rule(tt.sender, tt.recipient, tt.purpose); ok || rule != nil {
				t.Errorf("Rule = %v, %t; want nil, false", rule, ok)
			}
		})
	}
}

func checkNoRuleError(t *testing.T, call string, err error, wantMessage string) {
	t.Helper()
	if !errors.Is(err, ErrNoRule) || !errors.Is(err, fault.ErrPermissionDenied) {
		t.Errorf("%s error = %v, want one wrapping ErrNoRule and fault.ErrPermissionDenied", call, err)
	}
	if err != nil && err.Error() != wantMessage {
		t.Errorf("%s error = %q, want %q", call, err, wantMessage)
	}
}

func TestEnforceEventEnvelope(t *testing.T) {
	occurred := &timestamppb.Timestamp{Seconds: 1_780_200_000, Nanos: 789}
	envelope := func(payload func(*throughcarev1.Event)) *throughcarev1.Event {
		e := &throughcarev1.Event{
			EventId:         "evt-1",
			Source:          prison,
			Recipient:       socialWork,
			CaseId:          "case-01HZY3K6Q4",
			HandoverId:      "hnd-1",
			OccurredAt:      occurred,
			ProtocolId:      "throughcare-default",
			ProtocolVersion: 1,
			Purpose:         assistance,
			Actor:           "worker-1",
			Signature:       []byte{1, 2, 3},
			KeyId:           "key-1",
		}
		payload(e)
		return e
	}
	referral := func(e *throughcarev1.Event) {
		e.Type = throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED
		e.Payload = &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{
			Handover: &throughcarev1.Handover{
				HandoverId:  "hnd-1",
				CaseId:      "case-01HZY3K6Q4",
				Sender:      prison,
				Recipient:   socialWork,
				Purpose:     assistance,
				State:       throughcarev1.HandoverState_HANDOVER_STATE_INFORMATION_REQUESTED,
				Receipts:    []*throughcarev1.Receipt{{Type: throughcarev1.ReceiptType_RECEIPT_TYPE_DELIVERED, Time: occurred, Sequence: 1}},
				CreateTime:  occurred,
				DeclineNote: "not in our area",
				InformationRequests: []*throughcarev1.InformationRequest{
					{RequestId: "req-1", Question: "Which address?", Answer: "The hostel.", AskTime: occurred},
				},
				WithheldCategories: []throughcarev1.DataCategory{legalCategory},
			},
			ReleaseCase: fullCase(),
		}}
	}
	planShared := func(e *throughcarev1.Event) {
		e.Type = throughcarev1.EventType_EVENT_TYPE_PLAN_SHARED
		e.Payload = &throughcarev1.Event_PlanShared{PlanShared: &throughcarev1.PlanShared{
			SupervisionPlan: fullCase().GetSupervisionPlan(),
			AssistancePlan:  fullCase().GetAssistancePlan(),
		}}
	}
	receipt := func(e *throughcarev1.Event) {
		e.Type = throughcarev1.EventType_EVENT_TYPE_RECEIPT_ISSUED
		e.Payload = &throughcarev1.Event_ReceiptIssued{ReceiptIssued: &throughcarev1.ReceiptIssued{
			Receipt:       &throughcarev1.Receipt{Type: throughcarev1.ReceiptType_RECEIPT_TYPE_DECLINED, Time: occurred},
			DeclineReason: throughcarev1.DeclineReason_DECLINE_REASON_OUT_OF_AREA,
			DeclineNote:   "the person moved abroad",
		}}
	}
	release := func(e *throughcarev1.Event) {
		e.Type = throughcarev1.EventType_EVENT_TYPE_RELEASE_RECORDED
		e.Payload = &throughcarev1.Event_ReleaseRecorded{ReleaseRecorded: &throughcarev1.ReleaseRecorded{
			Release: &throughcarev1.Release{ActualReleaseDate: date(2026, 9, 1), ReleaseAddress: fullCase().GetReleasePlan().GetReleaseAddress()},
		}}
	}

	tests := []struct {
		name              string
		event             *throughcarev1.Event
		sender, recipient string
		purpose           throughcarev1.Purpose
		// cut removes from the original what Enforce must withhold.
		cut          func(*throughcarev1.Event)
		wantShared   []throughcarev1.DataCategory
		wantWithheld []throughcarev1.DataCategory
	}{
		{
			name:   "referral to social work cuts the case inside",
			event:  envelope(referral),
			sender: prison, recipient: socialWork, purpose: assistance,
			cut: func(e *throughcarev1.Event) {
				clearCategories(e.GetHandoverReferred().GetReleaseCase(), legalCategory, healthCategory,
					substanceCategory, behaviourCategory, riskCategory, extremismCategory,
					supervisionCategory, assistanceCategory)
			},
			wantShared: []throughcarev1.DataCategory{
				identityCategory, contactCategory, releasePlanCategory, accommodationCategory,
				educationCategory, financeCategory, familyCategory, workerSafetyCategory,
			},
			wantWithheld: []throughcarev1.DataCategory{
				legalCategory, healthCategory, substanceCategory, behaviourCategory, riskCategory,
				extremismCategory, supervisionCategory, assistanceCategory,
			},
		},
		{
			name:   "a case sent back to prison keeps only the release plan and the supervision",
			event:  envelope(referral),
			sender: probation, recipient: prison, purpose: supervision,
			cut: func(e *throughcarev1.Event) {
				clearCategories(e.GetHandoverReferred().GetReleaseCase(), without(releasePlanCategory, supervisionCategory)...)
			},
			wantShared:   []throughcarev1.DataCategory{releasePlanCategory, supervisionCategory},
			wantWithheld: without(releasePlanCategory, supervisionCategory),
		},
		{
			name:   "plan shared back keeps only the plan the rule allows",
			event:  envelope(planShared),
			sender: probation, recipient: prison, purpose: supervision,
			cut: func(e *throughcarev1.Event) {
				e.GetPlanShared().AssistancePlan = nil
			},
			wantShared:   []throughcarev1.DataCategory{supervisionCategory},
			wantWithheld: []throughcarev1.DataCategory{assistanceCategory},
		},
		{
			name:   "a receipt back to the sender keeps its decline note (RELEASE_PLAN)",
			event:  envelope(receipt),
			sender: probation, recipient: prison, purpose: supervision,
			cut:        func(*throughcarev1.Event) {},
			wantShared: []throughcarev1.DataCategory{releasePlanCategory},
		},
		{
			name:   "release recorded keeps the release for social work",
			event:  envelope(release),
			sender: prison, recipient: socialWork, purpose: assistance,
			cut:        func(*throughcarev1.Event) {},
			wantShared: []throughcarev1.DataCategory{releasePlanCategory},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := proto.Clone(tt.event).(*throughcarev1.Event)
			report, err := Default().Enforce(got, tt.sender, tt.recipient, tt.purpose, nil)
			if err != nil {
				t.Fatalf("Enforce: %v", err)
			}
			want := proto.Clone(tt.event).(*throughcarev1.Event)
			tt.cut(want)
			if !proto.Equal(got, want) {
				t.Errorf("Enforce left\n%v\nwant\n%v", got, want)
			}
			if !proto.Equal(got.GetOccurredAt(), occurred) {
				t.Errorf("occurred_at = %v, want the routing timestamp kept whole: %v", got.GetOccurredAt(), occurred)
			}
			if !slices.Equal(report.Shared, tt.wantShared) {
				t.Errorf("Report.Shared = %v, want %v", report.Shared, tt.wantShared)
			}
			if got := report.WithheldCategories(); !slices.Equal(got, tt.wantWithheld) {
				t.Errorf("Report.WithheldCategories() = %v, want %v", got, tt.wantWithheld)
			}
		})
	}
}

// TestEnforceFailsClosed shows that data no marker vouches for does not flow.
func TestEnforceFailsClosed(t *testing.T) {
	p := Default()
	unknown := protowire.AppendString(protowire.AppendTag(nil, 999, protowire.BytesType), "a field from a newer contract")
	tests := []struct {
		name string
		msg  func() proto.Message
		want proto.Message
	}{
		{
			name: "fields without a marker",
			msg: func() proto.Message {
				return &storev1.HandoverRecord{
					Handover: &throughcarev1.Handover{HandoverId: "hnd-1"},
					Outbox:   []*throughcarev1.Event{{EventId: "evt-1"}},
				}
			},
			want: &storev1.HandoverRecord{},
		},
		{
			name: "extensions",
			msg: func() proto.Message {
				// FieldOptions is the one extendable message at hand; its own fields carry
				// no markers either.
				opts := &descriptorpb.FieldOptions{}
				proto.SetExtension(opts, throughcarev1.E_Category, healthCategory)
				return opts
			},
			want: &descriptorpb.FieldOptions{},
		},
		{
			name: "unknown fields at the top",
			msg: func() proto.Message {
				c := fullCase()
				c.ProtoReflect().SetUnknown(unknown)
				return c
			},
			want: func() proto.Message {
				// The rule for the check, prison to probation, does not cover the plans.
				c := fullCase()
				clearCategories(c, supervisionCategory, assistanceCategory)
				return c
			}(),
		},
		{
			name: "unknown fields inside a routing container",
			msg: func() proto.Message {
				e := &throughcarev1.Event{Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{
					Handover: &throughcarev1.Handover{HandoverId: "hnd-1"},
				}}}
				e.GetHandoverReferred().GetHandover().ProtoReflect().SetUnknown(unknown)
				return e
			},
			want: &throughcarev1.Event{Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{
				Handover: &throughcarev1.Handover{HandoverId: "hnd-1"},
			}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := tt.msg()
			excess, err := p.Check(msg, prison, probation, supervision, nil)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if !slices.Contains(excess, unspecifiedCategory) {
				t.Errorf("Check = %v, want DATA_CATEGORY_UNSPECIFIED for the unvouched data", excess)
			}
			if !proto.Equal(msg, tt.msg()) {
				t.Fatal("Check changed the message")
			}
			if _, err := p.Enforce(msg, prison, probation, supervision, nil); err != nil {
				t.Fatalf("Enforce: %v", err)
			}
			if !proto.Equal(msg, tt.want) {
				t.Errorf("Enforce left\n%v\nwant\n%v", msg, tt.want)
			}
			if excess, _ := p.Check(msg, prison, probation, supervision, nil); len(excess) != 0 {
				t.Errorf("Check after Enforce = %v, want nothing", excess)
			}
		})
	}
}

// TestEnforceConcurrently lets goroutines race to build the plans of a fresh protocol, for
// the race detector, and requires them all to cut the case alike.
func TestEnforceConcurrently(t *testing.T) {
	p := Default()
	const goroutines = 8
	results := make(chan *throughcarev1.ReleaseCase, goroutines)
	for range goroutines {
		go func() {
			c := fullCase()
			if _, err := p.Enforce(c, prison, socialWork, assistance, nil); err != nil {
				t.Error(err)
			}
			results <- c
		}()
	}
	want := fullCase()
	clearCategories(want, legalCategory, healthCategory, substanceCategory, behaviourCategory,
		riskCategory, extremismCategory, supervisionCategory, assistanceCategory)
	for range goroutines {
		if got := <-results; !proto.Equal(got, want) {
			t.Errorf("a concurrent Enforce left\n%v\nwant\n%v", got, want)
		}
	}
}

func TestCheck(t *testing.T) {
	p := Default()
	tests := []struct {
		name     string
		consents []*throughcarev1.Consent
		want     []throughcarev1.DataCategory
	}{
		{
			name: "without consent",
			want: []throughcarev1.DataCategory{
				legalCategory, healthCategory, substanceCategory, behaviourCategory, riskCategory,
				extremismCategory, supervisionCategory, assistanceCategory,
			},
		},
		{
			name:     "with standing consent",
			consents: consentTo(socialWork, healthCategory, substanceCategory),
			want: []throughcarev1.DataCategory{
				legalCategory, behaviourCategory, riskCategory, extremismCategory, supervisionCategory, assistanceCategory,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := fullCase()
			got, err := p.Check(msg, prison, socialWork, assistance, tt.consents)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Check = %v, want %v", got, tt.want)
			}
			if !proto.Equal(msg, fullCase()) {
				t.Error("Check changed the message")
			}
			if _, err := p.Enforce(msg, prison, socialWork, assistance, tt.consents); err != nil {
				t.Fatalf("Enforce: %v", err)
			}
			if got, _ := p.Check(msg, prison, socialWork, assistance, tt.consents); len(got) != 0 {
				t.Errorf("Check after Enforce = %v, want nothing", got)
			}
		})
	}
}

func TestEnforceNilMessage(t *testing.T) {
	p := Default()
	for _, msg := range []proto.Message{nil, (*throughcarev1.ReleaseCase)(nil)} {
		report, err := p.Enforce(msg, prison, probation, supervision, nil)
		if err != nil || report.Rule == nil || report.Shared != nil || report.Withheld != nil {
			t.Errorf("Enforce(%#v) = %+v, %v; want the rule and nothing shared or withheld", msg, report, err)
		}
		if excess, err := p.Check(msg, prison, probation, supervision, nil); err != nil || excess != nil {
			t.Errorf("Check(%#v) = %v, %v; want nothing", msg, excess, err)
		}
	}
}

func TestStandingConsent(t *testing.T) {
	tests := []struct {
		name      string
		consents  []*throughcarev1.Consent
		category  throughcarev1.DataCategory
		recipient string
		want      bool
	}{
		{"none", nil, healthCategory, socialWork, false},
		{"given", consentTo(socialWork, healthCategory), healthCategory, socialWork, true},
		{"among others", consentTo(socialWork, familyCategory, healthCategory), healthCategory, socialWork, true},
		{"other category", consentTo(socialWork, substanceCategory), healthCategory, socialWork, false},
		{"other recipient", consentTo(probation, healthCategory), healthCategory, socialWork, false},
		{"withdrawn", withdrawn(consentTo(socialWork, healthCategory)), healthCategory, socialWork, false},
		{"withdrawn then given again", append(withdrawn(consentTo(socialWork, healthCategory)), consentTo(socialWork, healthCategory)...), healthCategory, socialWork, true},
		{"nil entry", []*throughcarev1.Consent{nil}, healthCategory, socialWork, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StandingConsent(tt.consents, tt.category, tt.recipient); got != tt.want {
				t.Errorf("StandingConsent = %t, want %t", got, tt.want)
			}
		})
	}
}

func TestReportWithheldCategories(t *testing.T) {
	r := Report{Withheld: []*throughcarev1.Withholding{
		{Category: healthCategory, Reason: noConsent},
		{Category: riskCategory, Reason: notAllowed},
	}}
	want := []throughcarev1.DataCategory{healthCategory, riskCategory}
	if got := r.WithheldCategories(); !slices.Equal(got, want) {
		t.Errorf("WithheldCategories = %v, want %v", got, want)
	}
	if got := (Report{}).WithheldCategories(); got != nil {
		t.Errorf("WithheldCategories of an empty report = %v, want nil", got)
	}
}
