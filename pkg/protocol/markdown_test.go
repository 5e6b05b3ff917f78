package protocol

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

const (
	readmeStart = "<!-- default-protocol:start -->"
	readmeEnd   = "<!-- default-protocol:end -->"
)

// TestREADMEShowsDefaultProtocol keeps the README's table of the default protocol equal to
// the protocol the code enforces.
func TestREADMEShowsDefaultProtocol(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatalf("read README: %v", err)
	}
	want := Default().MarkdownTable()
	shown, ok := betweenMarkerLines(string(readme), readmeStart, readmeEnd)
	if !ok {
		t.Fatalf("README.md has no lines %s and %s; add them around this table:\n\n%s", readmeStart, readmeEnd, want)
	}
	if shown != want {
		t.Errorf("README.md shows an outdated default protocol; paste this between the markers:\n\n%s", want)
	}
}

// betweenMarkerLines returns the text between the line that is start and the line that is end.
func betweenMarkerLines(text, start, end string) (string, bool) {
	_, after, ok := strings.Cut(text, "\n"+start+"\n")
	if !ok {
		return "", false
	}
	if strings.HasPrefix(after, end+"\n") || after == end {
		return "", true
	}
	between, _, ok := strings.Cut(after, "\n"+end)
	if !ok {
		return "", false
	}
	return between + "\n", true
}

func TestBetweenMarkerLines(t *testing.T) {
	tests := []struct {
		name   string
		text   string
		want   string
		wantOK bool
	}{
		{"table", "intro\n<!-- s -->\n| a |\n| b |\n<!-- e -->\nrest\n", "| a |\n| b |\n", true},
		{"empty", "intro\n<!-- s -->\n<!-- e -->\n", "", true},
		{"no start", "intro\n| a |\n<!-- e -->\n", "", false},
		{"no end", "intro\n<!-- s -->\n| a |\n", "", false},
		{"marker not on its own line", "intro <!-- s -->\n| a |\n<!-- e -->\n", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := betweenMarkerLines(tt.text, "<!-- s -->", "<!-- e -->")
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("betweenMarkerLines = %q, %t; want %q, %t", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// TestPastedTableSatisfiesREADMECheck shows that pasting the table the README test prints
// between the markers is all it takes.
func TestPastedTableSatisfiesREADMECheck(t *testing.T) {
	table := Default().MarkdownTable()
	readme := "# throughcare\n\n## Default protocol\n\n" + readmeStart + "\n" + table + readmeEnd + "\n\nMore.\n"
	if got, ok := betweenMarkerLines(readme, readmeStart, readmeEnd); !ok || got != table {
		t.Errorf("betweenMarkerLines = %q, %t; want the pasted table", got, ok)
	}
}

func TestMarkdownTable(t *testing.T) {
	sp := &throughcarev1.SharingProtocol{
		ProtocolId: "table-test",
		Version:    3,
		Agencies:   []*throughcarev1.Agency{{Id: prison, DisplayName: "prison"}, {Id: socialWork, DisplayName: "social work"}},
		Rules: []*throughcarev1.SharingRule{{
			Sender:          socialWork,
			Recipient:       prison,
			Purpose:         assistance,
			Allowed:         []throughcarev1.DataCategory{assistanceCategory, identityCategory},
			ConsentRequired: []throughcarev1.DataCategory{healthCategory},
			LegalBasis:      "Act A | Act B,\nArt. 2",
			Retention:       durationpb.New(36 * 60 * 60 * 1e9),
		}},
	}
	if err := validateProtocol(sp); err != nil {
		t.Fatalf("fixture is invalid: %v", err)
	}
	want := "| from → to | purpose | may flow | only with consent | never | legal basis | retention |\n" +
		"|---|---|---|---|---|---|---|\n" +
		"| social work → prison | post-penal assistance | IDENTITY, ASSISTANCE | HEALTH | " +
		"CONTACT, LEGAL, RELEASE_PLAN, ACCOMMODATION, EDUCATION_WORK, SUBSTANCE_USE, FINANCE_ID, FAMILY, BEHAVIOUR, RISK, EXTREMISM_RISK, WORKER_SAFETY, SUPERVISION | " +
		`Act A \| Act B, Art. 2 | 36h0m0s |` + "\n"
	p, err := compile(sp)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.MarkdownTable(); got != want {
		t.Errorf("MarkdownTable =\n%s\nwant\n%s", got, want)
	}
}

func TestRetentionText(t *testing.T) {
	const day = 24 * 60 * 60
	tests := []struct {
		retention *durationpb.Duration
		want      string
	}{
		{&durationpb.Duration{Seconds: 365 * day}, "1 year"},
		{&durationpb.Duration{Seconds: 5 * 365 * day}, "5 years"},
		{&durationpb.Duration{Seconds: day}, "1 day"},
		{&durationpb.Duration{Seconds: 30 * day}, "30 days"},
		{&durationpb.Duration{Seconds: 90}, "1m30s"},
		{&durationpb.Duration{Seconds: day, Nanos: 1}, "24h0m0.000000001s"},
	}
	for _, tt := range tests {
		if got := retentionText(tt.retention); got != tt.want {
			t.Errorf("retentionText(%v) = %q, want %q", tt.retention, got, tt.want)
		}
	}
}
