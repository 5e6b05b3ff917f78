package eventbus

import (
	"testing"
	"time"
)

func TestSourceAlertsReportInactiveAndGrowingLag(t *testing.T) {
	a := SourceAlerts{MaxSilence: 10 * time.Second, MaxLag: 100}
	for _, tc := range []struct {
		name    string
		st      SourceStatus
		prevLag uint64
		seen    bool
		want    string
	}{
		{"healthy", SourceStatus{Active: time.Second}, 0, true, ""},
		{"never heard from", SourceStatus{Active: -1}, 0, false, "inbox source inactive"},
		{"silent too long", SourceStatus{Active: 11 * time.Second}, 0, true, "inbox source inactive"},
		{"error", SourceStatus{Active: time.Second, Error: "stream not found"}, 0, true, "inbox source inactive"},
		{"lag under the limit", SourceStatus{Active: time.Second, Lag: 100}, 50, true, ""},
		{"lag above the limit, first check", SourceStatus{Active: time.Second, Lag: 101}, 0, false, "inbox source lag growing"},
		{"lag above the limit and growing", SourceStatus{Active: time.Second, Lag: 500}, 400, true, "inbox source lag growing"},
		{"lag above the limit but shrinking", SourceStatus{Active: time.Second, Lag: 400}, 500, true, ""},
	} {
		got, bad := a.check(tc.st, tc.prevLag, tc.seen)
		if got != tc.want || bad != (tc.want != "") {
			t.Errorf("%s: check = %q, %v; want %q", tc.name, got, bad, tc.want)
		}
	}
}
