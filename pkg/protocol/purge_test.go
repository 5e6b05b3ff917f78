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
