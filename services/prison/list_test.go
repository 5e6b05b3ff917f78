package prison_test

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// caseIDs returns the ids of cs in order.
func caseIDs(cs []*throughcarev1.ReleaseCase) []string {
	out := make([]string, len(cs))
	for i, rc := range cs {
		out[i] = rc.GetCaseId()
	}
	return out
}

// openInOrder opens n cases, one per millisecond so that creation order is well defined
// (see waitNextMillisecond), and returns them in creation order.
func openInOrder(t *testing.T, h *harness, n int) []*throughcarev1.ReleaseCase {
	t.Helper()
	var opened []*throughcarev1.ReleaseCase
	for i := range n {
		waitNextMillisecond()
		rc := minimalCase()
		rc.Person.PrisonNumber = "P" + string(rune('A'+i))
		opened = append(opened, h.open(t, rc))
	}
	return opened
}

func TestListReleaseCasesPages(t *testing.T) {
	for _, tc := range []struct {
		cases, pageSize int
		wantSizes       []int
	}{
		{cases: 7, pageSize: 3, wantSizes: []int{3, 3, 1}},
		{cases: 6, pageSize: 3, wantSizes: []int{3, 3}}, // a full last page has no token
		{cases: 7, pageSize: 0, wantSizes: []int{7}},    // 0 means the default, 50
		{cases: 2, pageSize: 500, wantSizes: []int{2}},
		{cases: 0, pageSize: 3, wantSizes: []int{0}},
	} {
		t.Run("", func(t *testing.T) {
			h := newPrison(t)
			opened := openInOrder(t, h, tc.cases)

			var seen []*throughcarev1.ReleaseCase
			var sizes []int
			token := ""
			for page := 0; ; page++ {
				if page > len(tc.wantSizes) {
					t.Fatalf("got more than %d pages (sizes so far %v), want %v", len(tc.wantSizes), sizes, tc.wantSizes)
				}
				resp, err := h.Client.ListReleaseCases(t.Context(), &throughcarev1.ListReleaseCasesRequest{PageSize: int32(tc.pageSize), PageToken: token})
				if err != nil {
					t.Fatalf("page %d: %v", page, err)
				}
				sizes = append(sizes, len(resp.GetReleaseCases()))
				seen = append(seen, resp.GetReleaseCases()...)
				token = resp.GetNextPageToken()
				if token == "" {
					break
				}
			}
			if !slices.Equal(sizes, tc.wantSizes) {
				t.Errorf("got page sizes %v, want %v", sizes, tc.wantSizes)
			}
			if got, want := caseIDs(seen), caseIDs(opened); !slices.Equal(got, want) {
				t.Errorf("got ids\n%v\nwant, in creation order,\n%v", got, want)
			}
			for i := range min(len(seen), len(opened)) {
				if !proto.Equal(seen[i], opened[i]) {
					t.Errorf("got listed case %v, want %v", seen[i], opened[i])
				}
			}
		})
	}
}

// The listing is in id order, and ids sort by creation time even within one millisecond.
func TestListReleaseCasesCreationOrderWithinOneMillisecond(t *testing.T) {
	h := newPrison(t)
	var opened []string
	for range 30 {
		opened = append(opened, h.open(t, minimalCase()).GetCaseId())
	}
	if got := caseIDs(h.stored(t)); !slices.Equal(got, opened) {
		t.Errorf("got ids\n%v\nwant, in creation order,\n%v", got, opened)
	}
}

func TestListReleaseCasesFilters(t *testing.T) {
	h := newPrison(t)
	byDate := map[string]*throughcarev1.ReleaseCase{}
	for _, d := range []*throughcarev1.Date{
		date(2026, 2, 28), date(2026, 3, 1), date(2026, 3, 15), date(2026, 3, 31), date(2026, 4, 1), date(2027, 3, 1),
	} {
		rc := minimalCase()
		rc.ReleasePlan.ExpectedReleaseDate = d
		byDate[dateKey(d)] = h.open(t, rc)
	}
	// Close the 15 March case.
	mid := byDate["2026-03-15"]
	resp, err := h.Client.CloseReleaseCase(t.Context(), &throughcarev1.CloseReleaseCaseRequest{Actor: "cw-1", CaseId: mid.GetCaseId(), ExpectedRevision: mid.GetRevision()})
	if err != nil {
		t.Fatalf("close: %v", err)
	}
	byDate["2026-03-15"] = resp.GetReleaseCase()

	tests := []struct {
		name     string
		state    throughcarev1.CaseState
		from, to *throughcarev1.Date
		want     []string // expected release dates of the cases listed
	}{
		{"all", 0, nil, nil, []string{"2026-02-28", "2026-03-01", "2026-03-15", "2026-03-31", "2026-04-01", "2027-03-01"}},
		{"open", throughcarev1.CaseState_CASE_STATE_OPEN, nil, nil, []string{"2026-02-28", "2026-03-01", "2026-03-31", "2026-04-01", "2027-03-01"}},
		{"closed", throughcarev1.CaseState_CASE_STATE_CLOSED, nil, nil, []string{"2026-03-15"}},
		{"released", throughcarev1.CaseState_CASE_STATE_RELEASED, nil, nil, nil},
		{"march inclusive", 0, date(2026, 3, 1), date(2026, 3, 31), []string{"2026-03-01", "2026-03-15", "2026-03-31"}},
		{"from only", 0, date(2026, 3, 31), nil, []string{"2026-03-31", "2026-04-01", "2027-03-01"}},
		{"to only", 0, nil, date(2026, 3, 1), []string{"2026-02-28", "2026-03-01"}},
		{"one day", 0, date(2026, 4, 1), date(2026, 4, 1), []string{"2026-04-01"}},
		{"year matters", 0, date(2027, 1, 1), nil, []string{"2027-03-01"}},
		{"empty window", 0, date(2026, 3, 2), date(2026, 3, 14), nil},
		{"from after to", 0, date(2026, 4, 1), date(2026, 3, 1), nil},
		{"open in march", throughcarev1.CaseState_CASE_STATE_OPEN, date(2026, 3, 1), date(2026, 3, 31), []string{"2026-03-01", "2026-03-31"}},
		{"closed in april", throughcarev1.CaseState_CASE_STATE_CLOSED, date(2026, 4, 1), date(2026, 4, 30), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Page by one so filtering and paging are checked together.
			var got []*throughcarev1.ReleaseCase
			token := ""
			for range len(tc.want) + 1 {
				resp, err := h.Client.ListReleaseCases(t.Context(), &throughcarev1.ListReleaseCasesRequest{
					PageSize: 1, PageToken: token, State: tc.state, ExpectedReleaseFrom: tc.from, ExpectedReleaseTo: tc.to,
				})
				if err != nil {
					t.Fatalf("ListReleaseCases: %v", err)
				}
				got = append(got, resp.GetReleaseCases()...)
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if token != "" {
				t.Fatalf("got a token after %d pages, want %d matches", len(tc.want)+1, len(tc.want))
			}
			var gotDates []string
			for _, rc := range got {
				gotDates = append(gotDates, dateKey(rc.GetReleasePlan().GetExpectedReleaseDate()))
				if want := byDate[dateKey(rc.GetReleasePlan().GetExpectedReleaseDate())]; !proto.Equal(rc, want) {
					t.Errorf("got %v, want %v", rc, want)
				}
			}
			slices.Sort(gotDates) // listing is by id, not by date
			if !slices.Equal(gotDates, tc.want) {
				t.Errorf("got cases expected on %v, want %v", gotDates, tc.want)
			}
		})
	}
}

func dateKey(d *throughcarev1.Date) string {
	return fmt.Sprintf("%04d-%02d-%02d", d.GetYear(), d.GetMonth(), d.GetDay())
}

func TestListReleaseCasesBadPageToken(t *testing.T) {
	h := newPrison(t)
	opened := h.open(t, minimalCase())
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		name, token string
	}{
		{"not base64", "!!not-a-token!!"},
		{"base64 of a case id", enc(opened.GetCaseId())},
		{"base64 of text", enc("page 2 please")},
		{"empty key", enc("after:")},
		{"key with dot", enc("after:rc.x")},
		{"key with wildcard", enc("after:>")},
		{"longer than 256", strings.Repeat("A", 257)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.Client.ListReleaseCases(t.Context(), &throughcarev1.ListReleaseCasesRequest{PageToken: tc.token})
			wantInvalid(t, err, "page_token")
		})
	}
}
