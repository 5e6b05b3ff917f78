package prison_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// TestBadInput sends requests that break one rule of the contract each, and checks that the
// answer is InvalidArgument naming the field, and that nothing was written.
func TestBadInput(t *testing.T) {
	h := newPrison(t)
	existing := h.open(t, fullCase())
	id, rev := existing.GetCaseId(), existing.GetRevision()

	// open sends a case built from a valid minimal case by edit.
	open := func(edit func(rc *throughcarev1.ReleaseCase)) func(context.Context) error {
		return func(ctx context.Context) error {
			rc := minimalCase()
			edit(rc)
			_, err := h.Client.OpenReleaseCase(ctx, &throughcarev1.OpenReleaseCaseRequest{Actor: "cw-1", ReleaseCase: rc})
			return err
		}
	}
	openReq := func(req *throughcarev1.OpenReleaseCaseRequest) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := h.Client.OpenReleaseCase(ctx, req)
			return err
		}
	}
	// update sends a valid update of the existing case, changed by edit.
	update := func(edit func(req *throughcarev1.UpdateReleaseCaseRequest)) func(context.Context) error {
		return func(ctx context.Context) error {
			req := &throughcarev1.UpdateReleaseCaseRequest{
				Actor: "cw-1", CaseId: id, ExpectedRevision: rev,
				ReleaseCase: &throughcarev1.ReleaseCase{Health: need(throughcarev1.NeedLevel_NEED_LEVEL_LOW, "fine")},
				UpdateMask:  &fieldmaskpb.FieldMask{Paths: []string{"health"}},
			}
			edit(req)
			_, err := h.Client.UpdateReleaseCase(ctx, req)
			return err
		}
	}
	mask := func(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }
	get := func(caseID string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := h.Client.GetReleaseCase(ctx, &throughcarev1.GetReleaseCaseRequest{CaseId: caseID})
			return err
		}
	}
	closeCase := func(req *throughcarev1.CloseReleaseCaseRequest) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := h.Client.CloseReleaseCase(ctx, req)
			return err
		}
	}
	list := func(req *throughcarev1.ListReleaseCasesRequest) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := h.Client.ListReleaseCases(ctx, req)
			return err
		}
	}

	tests := []struct {
		name      string
		call      func(context.Context) error
		wantField string
	}{
		// OpenReleaseCase: required parts.
		{"open without release_case", openReq(&throughcarev1.OpenReleaseCaseRequest{Actor: "cw-1"}), "release_case"},
		{"open without person", open(func(rc *throughcarev1.ReleaseCase) { rc.Person = nil }), "release_case"},
		{"open without release_plan", open(func(rc *throughcarev1.ReleaseCase) { rc.ReleasePlan = nil }), "release_case"},
		{"open with empty given_name", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.GivenName = "" }), "release_case.person.given_name"},
		{"open with 201-char given_name", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.GivenName = strings.Repeat("a", 201) }), "release_case.person.given_name"},
		{"open with empty family_name", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.FamilyName = "" }), "release_case.person.family_name"},
		{"open with empty prison_number", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.PrisonNumber = "" }), "release_case.person.prison_number"},
		{"open without date_of_birth", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.DateOfBirth = nil }), "release_case.person.date_of_birth"},
		{"open without expected_release_date", open(func(rc *throughcarev1.ReleaseCase) { rc.ReleasePlan.ExpectedReleaseDate = nil }), "release_case.release_plan.expected_release_date"},

		// Dates. A day that does not exist in its month breaks the Date message rule, which
		// is reported at the date field; a month or day out of range breaks a field rule.
		{"open with 30 February", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.DateOfBirth = date(2001, 2, 30) }), "release_case.person.date_of_birth"},
		{"open with 29 February 2025", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.DateOfBirth = date(2025, 2, 29) }), "release_case.person.date_of_birth"},
		{"open with 29 February 1900", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.DateOfBirth = date(1900, 2, 29) }), "release_case.person.date_of_birth"},
		{"open with 31 April", open(func(rc *throughcarev1.ReleaseCase) { rc.ReleasePlan.ExpectedReleaseDate = date(2026, 4, 31) }), "release_case.release_plan.expected_release_date"},
		{"open with month 13", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.DateOfBirth = date(2001, 13, 1) }), "release_case.person.date_of_birth.month"},
		{"open with month 0", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.DateOfBirth = date(2001, 0, 1) }), "release_case.person.date_of_birth.month"},
		{"open with day 0", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.DateOfBirth = date(2001, 1, 0) }), "release_case.person.date_of_birth.day"},
		{"open with year 1899", open(func(rc *throughcarev1.ReleaseCase) { rc.Person.DateOfBirth = date(1899, 1, 1) }), "release_case.person.date_of_birth.year"},
		{"open with bad sentence date", open(func(rc *throughcarev1.ReleaseCase) {
			rc.Sentence = &throughcarev1.Sentence{StartDate: date(2023, 6, 31)}
		}), "release_case.sentence.start_date"},

		// Enums.
		{"open with release_type 99", open(func(rc *throughcarev1.ReleaseCase) { rc.ReleasePlan.ReleaseType = 99 }), "release_case.release_plan.release_type"},
		{"open with release_type unspecified", open(func(rc *throughcarev1.ReleaseCase) { rc.ReleasePlan.ReleaseType = 0 }), "release_case.release_plan.release_type"},
		{"open with need level 99", open(func(rc *throughcarev1.ReleaseCase) { rc.Health = &throughcarev1.Need{Level: 99} }), "release_case.health.level"},
		{"open with risk level 99", open(func(rc *throughcarev1.ReleaseCase) {
			rc.Risk = &throughcarev1.RiskAssessment{SeriousHarm: 99}
		}), "release_case.risk.serious_harm"},

		// Actor.
		{"open without actor", openReq(&throughcarev1.OpenReleaseCaseRequest{ReleaseCase: minimalCase()}), "actor"},
		{"open with actor containing space", openReq(&throughcarev1.OpenReleaseCaseRequest{Actor: "case worker", ReleaseCase: minimalCase()}), "actor"},
		{"open with 129-char actor", openReq(&throughcarev1.OpenReleaseCaseRequest{Actor: strings.Repeat("a", 129), ReleaseCase: minimalCase()}), "actor"},

		// Server-owned and other agencies' fields.
		{"open with case_id", open(func(rc *throughcarev1.ReleaseCase) { rc.CaseId = "rc_mine" }), "release_case"},
		{"open with revision", open(func(rc *throughcarev1.ReleaseCase) { rc.Revision = 7 }), "release_case"},
		{"open with state", open(func(rc *throughcarev1.ReleaseCase) { rc.State = throughcarev1.CaseState_CASE_STATE_OPEN }), "release_case"},
		{"open with owner", open(func(rc *throughcarev1.ReleaseCase) { rc.Owner = "prison" }), "release_case"},
		{"open with create_time", open(func(rc *throughcarev1.ReleaseCase) { rc.CreateTime = timestamppb.Now() }), "release_case"},
		{"open with update_time", open(func(rc *throughcarev1.ReleaseCase) { rc.UpdateTime = timestamppb.Now() }), "release_case"},
		{"open with supervision_plan", open(func(rc *throughcarev1.ReleaseCase) { rc.SupervisionPlan = &throughcarev1.SupervisionPlan{Officer: "x"} }), "release_case"},
		{"open with assistance_plan", open(func(rc *throughcarev1.ReleaseCase) { rc.AssistancePlan = &throughcarev1.AssistancePlan{Worker: "x"} }), "release_case"},
		{"open with consents", open(func(rc *throughcarev1.ReleaseCase) {
			rc.Consents = []*throughcarev1.Consent{{Category: throughcarev1.DataCategory_DATA_CATEGORY_HEALTH, Recipient: "probation"}}
		}), "release_case"},

		// Sizes and formats.
		{"open with 100 KB health summary", open(func(rc *throughcarev1.ReleaseCase) {
			rc.Health = need(throughcarev1.NeedLevel_NEED_LEVEL_LOW, strings.Repeat("x", 100<<10))
		}), "release_case.health.summary"},
		{"open with 4001-char risk summary", open(func(rc *throughcarev1.ReleaseCase) {
			rc.Risk = &throughcarev1.RiskAssessment{Summary: strings.Repeat("é", 4001)}
		}), "release_case.risk.summary"},
		{"open with 21 accommodation actions", open(func(rc *throughcarev1.ReleaseCase) {
			rc.Accommodation = need(throughcarev1.NeedLevel_NEED_LEVEL_LOW, "", strings.Split(strings.Repeat("act,", 21)[:4*21-1], ",")...)
		}), "release_case.accommodation.actions"},
		{"open with empty offence", open(func(rc *throughcarev1.ReleaseCase) {
			rc.Sentence = &throughcarev1.Sentence{Offences: []string{"Theft", ""}}
		}), "release_case.sentence.offences[1]"},
		{"open with negative sentence length", open(func(rc *throughcarev1.ReleaseCase) { rc.Sentence = &throughcarev1.Sentence{LengthDays: -1} }), "release_case.sentence.length_days"},
		{"open with bad email", open(func(rc *throughcarev1.ReleaseCase) { rc.Contact = &throughcarev1.Contact{Email: "not an email"} }), "release_case.contact.email"},
		{"open with address without lines", open(func(rc *throughcarev1.ReleaseCase) {
			rc.Contact = &throughcarev1.Contact{Address: &throughcarev1.Address{Postcode: "AB1 2CD"}}
		}), "release_case.contact.address.lines"},
		{"open with lower-case country code", open(func(rc *throughcarev1.ReleaseCase) {
			rc.ReleasePlan.ReleaseAddress = &throughcarev1.Address{Lines: []string{"1 Road"}, CountryCode: "gb"}
		}), "release_case.release_plan.release_address.country_code"},

		// Case ids: NATS subject syntax and anything else outside [A-Za-z0-9_-]{1,64}.
		{"get with empty id", get(""), "case_id"},
		{"get with dot", get("rc_a.b"), "case_id"},
		{"get with star", get("rc_*"), "case_id"},
		{"get with greater-than", get("rc_>"), "case_id"},
		{"get with space", get("rc_a b"), "case_id"},
		{"get with 65-char id", get(strings.Repeat("a", 65)), "case_id"},
		{"update with dot in id", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.CaseId = id + ".x" }), "case_id"},
		{"update with wildcard id", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.CaseId = ">" }), "case_id"},
		{"close with star id", closeCase(&throughcarev1.CloseReleaseCaseRequest{Actor: "cw-1", CaseId: "*", ExpectedRevision: rev}), "case_id"},
		{"close with space in id", closeCase(&throughcarev1.CloseReleaseCaseRequest{Actor: "cw-1", CaseId: id + " ", ExpectedRevision: rev}), "case_id"},

		// UpdateReleaseCase.
		{"update without actor", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.Actor = "" }), "actor"},
		{"update at revision 0", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.ExpectedRevision = 0 }), "expected_revision"},
		{"update without release_case", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.ReleaseCase = nil }), "release_case"},
		{"update without update_mask", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.UpdateMask = nil }), "update_mask"},
		{"update with empty update_mask", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.UpdateMask = mask() }), "update_mask"},
		{"update with unknown path", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.UpdateMask = mask("health", "nonsense") }), "update_mask"},
		{"update with nested path", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.UpdateMask = mask("person.given_name") }), "update_mask"},
		{"update with server-owned path", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.UpdateMask = mask("state") }), "update_mask"},
		{"update with other agency's path", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.UpdateMask = mask("supervision_plan") }), "update_mask"},
		{"update with consents path", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.UpdateMask = mask("consents") }), "update_mask"},
		{"update clearing person", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.UpdateMask = mask("health", "person") }), "release_case"},
		{"update clearing release_plan", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.UpdateMask = mask("release_plan") }), "release_case"},
		{"update with state", update(func(r *throughcarev1.UpdateReleaseCaseRequest) {
			r.ReleaseCase.State = throughcarev1.CaseState_CASE_STATE_CLOSED
		}), "release_case"},
		{"update with revision", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.ReleaseCase.Revision = rev + 1 }), "release_case"},
		{"update with case_id", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.ReleaseCase.CaseId = id }), "release_case"},
		{"update with create_time", update(func(r *throughcarev1.UpdateReleaseCaseRequest) { r.ReleaseCase.CreateTime = timestamppb.Now() }), "release_case"},
		{"update with 100 KB health summary", update(func(r *throughcarev1.UpdateReleaseCaseRequest) {
			r.ReleaseCase.Health.Summary = strings.Repeat("x", 100<<10)
		}), "release_case.health.summary"},
		{"update with Feb 30 in an unmasked field", update(func(r *throughcarev1.UpdateReleaseCaseRequest) {
			r.ReleaseCase.Risk = &throughcarev1.RiskAssessment{AssessedOn: date(2026, 2, 30)}
		}), "release_case.risk.assessed_on"},
		{"update with person missing its name", update(func(r *throughcarev1.UpdateReleaseCaseRequest) {
			r.ReleaseCase.Person = &throughcarev1.Person{DateOfBirth: date(1990, 1, 1), FamilyName: "X", PrisonNumber: "Y"}
			r.UpdateMask = mask("person")
		}), "release_case.person.given_name"},

		// CloseReleaseCase.
		{"close without actor", closeCase(&throughcarev1.CloseReleaseCaseRequest{CaseId: id, ExpectedRevision: rev}), "actor"},
		{"close at revision 0", closeCase(&throughcarev1.CloseReleaseCaseRequest{Actor: "cw-1", CaseId: id}), "expected_revision"},

		// ListReleaseCases.
		{"list with negative page_size", list(&throughcarev1.ListReleaseCasesRequest{PageSize: -1}), "page_size"},
		{"list with page_size 501", list(&throughcarev1.ListReleaseCasesRequest{PageSize: 501}), "page_size"},
		{"list with state 99", list(&throughcarev1.ListReleaseCasesRequest{State: 99}), "state"},
		{"list with garbage page_token", list(&throughcarev1.ListReleaseCasesRequest{PageToken: "garbage"}), "page_token"},
		{"list with 30 February", list(&throughcarev1.ListReleaseCasesRequest{ExpectedReleaseFrom: date(2026, 2, 30)}), "expected_release_from"},
		{"list with month 13", list(&throughcarev1.ListReleaseCasesRequest{ExpectedReleaseTo: date(2026, 13, 1)}), "expected_release_to.month"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seq := h.lastSeq(t)
			wantInvalid(t, tc.call(t.Context()), tc.wantField)
			if got := h.lastSeq(t); got != seq {
				t.Errorf("got bucket sequence %d, want %d: a refused request stored something", got, seq)
			}
		})
	}

	// Nothing but the one valid case is stored, and it is as it was.
	all := h.stored(t)
	if len(all) != 1 || !proto.Equal(all[0], existing) {
		t.Errorf("got stored cases %v, want only %v", all, existing)
	}
}
