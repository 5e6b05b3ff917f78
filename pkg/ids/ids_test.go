package ids

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNewIsValidSubjectSafeAndUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 10000 {
		id := New(Case)
		if !Valid(id) {
			t.Fatalf("New made %q, which Valid refuses", id)
		}
		if strings.ContainsAny(id, ".*> \t") {
			t.Fatalf("id %q is not subject-safe", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}

func TestLaterIDsSortLater(t *testing.T) {
	var made []string
	for range 5 {
		made = append(made, New(Handover))
		time.Sleep(2 * time.Millisecond)
	}
	if !slices.IsSorted(made) {
		t.Errorf("ids made in order do not sort in order: %v", made)
	}
}

func TestValidRefusesOtherShapes(t *testing.T) {
	for _, id := range []string{"", "rc_", "rc_abc", "rc.0123456789abcdefghjkmnpqrs", "rc_0123456789abcdefghjkmnpqr*", "rc_0123456789ABCDEFGHJKMNPQRS", "rc_0123456789abcdefghjkmnpqrs "} {
		if Valid(id) {
			t.Errorf("Valid(%q) = true, want false", id)
		}
	}
}
