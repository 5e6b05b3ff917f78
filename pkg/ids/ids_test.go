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
	for i := range 2000 {
		made = append(made, New(Handover))
		if i%500 == 0 {
			time.Sleep(2 * time.Millisecond) // across milliseconds as well as within one
		}
	}
	if !slices.IsSorted(made) {
		for i := 1; i < len(made); i++ {
			if made[i] <= made[i-1] {
				t.Fatalf("id %d %q does not sort after id %d %q", i, made[i], i-1, made[i-1])
			}
		}
	}
}

func TestValidRefusesOtherShapes(t *testing.T) {
	for _, id := range []string{"", "rc_", "rc_abc", "rc.0123456789abcdefghjkmnpqrs", "rc_0123456789abcdefghjkmnpqr*", "rc_0123456789ABCDEFGHJKMNPQRS", "rc_0123456789abcdefghjkmnpqrs "} {
		if Valid(id) {
			t.Errorf("Valid(%q) = true, want false", id)
		}
	}
}
