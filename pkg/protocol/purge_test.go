package protocol

import (
	"slices"
	"testing"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

func TestPurgeClearsOnlyTheNamedCategories(t *testing.T) {
	rc := &throughcarev1.ReleaseCase{
		CaseId:       "rc_1",
		Person:       &throughcarev1.Person{GivenName: "Ana"},
		Health:       &throughcarev1.Need{Summary: "diabetes"},
		SubstanceUse: &throughcarev1.Need{Summary: "none"},
		Consents:     []*throughcarev1.Consent{{Category: throughcarev1.DataCategory_DATA_CATEGORY_HEALTH}},
	}
	ev := &throughcarev1.Event{Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{ReleaseCase: rc}}}

	got := Purge(ev, []throughcarev1.DataCategory{throughcarev1.DataCategory_DATA_CATEGORY_HEALTH, throughcarev1.DataCategory_DATA_CATEGORY_RISK})

	if want := []throughcarev1.DataCategory{throughcarev1.DataCategory_DATA_CATEGORY_HEALTH}; !slices.Equal(got, want) {
		t.Errorf("Purge reported %v, want %v (only categories it found)", got, want)
	}
	if rc.GetHealth() != nil {
		t.Error("health survived the purge")
	}
	if rc.GetSubstanceUse() == nil || rc.GetPerson() == nil || rc.GetCaseId() != "rc_1" || len(rc.GetConsents()) != 1 {
		t.Errorf("Purge cleared more than health: %v", rc)
	}
}

func TestPresentListsWhatIsSetAndChangesNothing(t *testing.T) {
	rc := &throughcarev1.ReleaseCase{
		CaseId: "rc_1",
		Person: &throughcarev1.Person{GivenName: "Ana"},
		Health: &throughcarev1.Need{Summary: "diabetes"},
	}
	ev := &throughcarev1.Event{CaseId: "rc_1", Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{ReleaseCase: rc}}}
	got := Present(ev)
	want := []throughcarev1.DataCategory{throughcarev1.DataCategory_DATA_CATEGORY_IDENTITY, throughcarev1.DataCategory_DATA_CATEGORY_HEALTH}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Present = %v, want %v", got, want)
	}
	if rc.GetHealth() == nil || rc.GetPerson() == nil {
		t.Error("Present cleared a field")
	}
	if !CarriesPersonalData(ev) || CarriesPersonalData(&throughcarev1.Event{CaseId: "rc_1"}) {
		t.Error("CarriesPersonalData: want true for the referral, false for routing metadata only")
	}
}
