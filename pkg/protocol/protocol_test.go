package protocol

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// TestDefaultProtocolLoads guards Default's panic: the embedded file must always parse.
func TestDefaultProtocolLoads(t *testing.T) {
	if _, err := Parse(defaultProtocolName, defaultProtocolFile); err != nil {
		t.Fatalf("embedded default protocol does not load:\n%v", err)
	}
	p := Default()
	if got, want := p.ID(), "throughcare-default"; got != want {
		t.Errorf("ID() = %q, want %q", got, want)
	}
	if got, want := p.Version(), uint32(1); got != want {
		t.Errorf("Version() = %d, want %d", got, want)
	}
	want := []string{prison, probation, socialWork}
	if got := p.Agencies().IDs(); !slices.Equal(got, want) {
		t.Errorf("agencies = %v, want %v", got, want)
	}
}

// TestDefaultProtocolMatchesProduct holds the default protocol to PRODUCT.md's table.
func TestDefaultProtocolMatchesProduct(t *testing.T) {
	const year = 365 * 24 * 60 * 60
	tests := []struct {
		sender, recipient string
		purpose           throughcarev1.Purpose
		allowed, consent  []throughcarev1.DataCategory
		retentionSeconds  int64
	}{
		{
			sender: prison, recipient: probation, purpose: supervision,
			allowed: []throughcarev1.DataCategory{
				identityCategory, contactCategory, legalCategory, releasePlanCategory,
				accommodationCategory, educationCategory, healthCategory, substanceCategory,
				financeCategory, familyCategory, behaviourCategory, riskCategory, extremismCategory,
				workerSafetyCategory,
			},
			retentionSeconds: 5 * year,
		},
		{
			sender: prison, recipient: socialWork, purpose: assistance,
			allowed: []throughcarev1.DataCategory{
				identityCategory, contactCategory, releasePlanCategory, accommodationCategory,
				educationCategory, financeCategory, familyCategory, workerSafetyCategory,
			},
			consent:          []throughcarev1.DataCategory{healthCategory, substanceCategory},
			retentionSeconds: 3 * year,
		},
		{
			sender: probation, recipient: prison, purpose: supervision,
			allowed:          []throughcarev1.DataCategory{releasePlanCategory, supervisionCategory},
			retentionSeconds: 5 * year,
		},
		{
			sender: probation, recipient: socialWork, purpose: coordination,
			allowed:          []throughcarev1.DataCategory{identityCategory, contactCategory, releasePlanCategory, supervisionCategory, workerSafetyCategory},
			retentionSeconds: 3 * year,
		},
		{
			sender: socialWork, recipient: probation, purpose: coordination,
			allowed:          []throughcarev1.DataCategory{identityCategory, contactCategory, releasePlanCategory, assistanceCategory, workerSafetyCategory},
			retentionSeconds: 3 * year,
		},
		{
			sender: socialWork, recipient: prison, purpose: assistance,
			allowed:          []throughcarev1.DataCategory{releasePlanCategory, assistanceCategory},
			retentionSeconds: 3 * year,
		},
	}
	p := Default()
	if got, want := len(p.Proto().GetRules()), len(tests); got != want {
		t.Errorf("default protocol has %d rules, PRODUCT.md %d", got, want)
	}
	for _, tt := range tests {
		name := p.Agencies().Name(tt.sender) + " to " + p.Agencies().Name(tt.recipient) + " for " + purposeName(tt.purpose)
		t.Run(name, func(t *testing.T) {
			rule, ok := p.Rule(tt.sender, tt.recipient, tt.purpose)
			if !ok {
				t.Fatal("no rule")
			}
			if got := slices.Sorted(slices.Values(rule.GetAllowed())); !slices.Equal(got, slices.Sorted(slices.Values(tt.allowed))) {
				t.Errorf("allowed = %v, want %v", got, tt.allowed)
			}
			if got := slices.Sorted(slices.Values(rule.GetConsentRequired())); !slices.Equal(got, slices.Sorted(slices.Values(tt.consent))) {
				t.Errorf("consent_required = %v, want %v", got, tt.consent)
			}
			if !strings.Contains(rule.GetLegalBasis(), "Art.") {
				t.Errorf("legal_basis = %q, want a citation of an article", rule.GetLegalBasis())
			}
			if got := rule.GetRetention(); got.GetSeconds() != tt.retentionSeconds || got.GetNanos() != 0 {
				t.Errorf("retention = %v, want %ds", got, tt.retentionSeconds)
			}
		})
	}
}

func TestYAMLDefaultEqualsTextproto(t *testing.T) {
	p, err := Load(filepath.Join("testdata", "default.yaml"))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := p.Proto(), Default().Proto(); !proto.Equal(got, want) {
		t.Errorf("testdata/default.yaml loads as\n%v\nwant default.textproto's\n%v", got, want)
	}
}

// TestParseAcceptsEveryExtension shows each supported name reaches a decoder.
func TestParseAcceptsEveryExtension(t *testing.T) {
	yamlData, err := os.ReadFile(filepath.Join("testdata", "default.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"protocol.textproto", defaultProtocolFile},
		{"protocol.txtpb", defaultProtocolFile},
		{"protocol.txt", defaultProtocolFile},
		{"PROTOCOL.TEXTPROTO", defaultProtocolFile},
		{"protocol.yaml", yamlData},
		{"protocol.yml", yamlData},
	} {
		if _, err := Parse(tt.name, tt.data); err != nil {
			t.Errorf("Parse(%q): %v", tt.name, err)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.yaml")
	_, err := Load(path)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Errorf("Load = %v, want a not-exist error naming %s", err, path)
	}
}

func TestProtoReturnsACopy(t *testing.T) {
	p := Default()
	p.Proto().Rules[0].Allowed = nil
	if len(p.Proto().GetRules()[0].GetAllowed()) == 0 {
		t.Error("changing Proto()'s result changed the protocol")
	}
}

const validTextproto = `protocol_id: "test"
version: 1
agencies: [{id: "prison" display_name: "prison"}, {id: "probation" display_name: "probation"}]
rules {
  sender: "prison"
  recipient: "probation"
  purpose: PURPOSE_SUPERVISION
  allowed: [DATA_CATEGORY_IDENTITY]
  legal_basis: "Law on Probation, Art. 12"
  retention { seconds: 3600 }
}
`

const validYAML = `protocol_id: test
version: 1
agencies: [{id: prison, display_name: prison}, {id: probation, display_name: probation}]
rules:
  - sender: prison
    recipient: probation
    purpose: PURPOSE_SUPERVISION
    allowed: [DATA_CATEGORY_IDENTITY]
    legal_basis: Law on Probation, Art. 12
    retention: 3600s
`

const secondRuleYAML = `  - sender: prison
    recipient: probation
    purpose: PURPOSE_SUPERVISION
    legal_basis: Law on Probation, Art. 13
    retention: 60s
`

const secondRuleTextproto = `rules {
  sender: "prison"
  recipient: "probation"
  purpose: PURPOSE_SUPERVISION
  legal_basis: "Law on Probation, Art. 13"
  retention { seconds: 60 }
}
`

func TestParseValidFixtures(t *testing.T) {
	for name, data := range map[string]string{"ok.textproto": validTextproto, "ok.yaml": validYAML} {
		if _, err := Parse(name, []byte(data)); err != nil {
			t.Errorf("Parse(%s): %v", name, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		file string
		data string
		// want holds lines the error must contain: the file, the position where known,
		// and the reason.
		want []string
	}{
		{
			name: "textproto syntax error",
			file: "bad.textproto",
			data: strings.Replace(validTextproto, `recipient: "probation"`, `recipient "probation"`, 1),
			want: []string{"bad.textproto:6:3: syntax error: missing field separator :"},
		},
		{
			name: "textproto unknown field",
			file: "bad.textproto",
			data: strings.Replace(validTextproto, "version:", "versoin:", 1),
			want: []string{"bad.textproto:2:1: unknown field: versoin"},
		},
		{
			name: "yaml syntax error",
			file: "bad.yaml",
			data: strings.Replace(validYAML, "version: 1", "  version: 1", 1),
			want: []string{"bad.yaml:2: mapping values are not allowed in this context"},
		},
		{
			name: "yaml unknown category",
			file: "bad.yaml",
			data: strings.Replace(validYAML, "DATA_CATEGORY_IDENTITY", "DATA_CATEGORY_IDENTIFY", 1),
			want: []string{`bad.yaml:8:15: unknown enum value "DATA_CATEGORY_IDENTIFY"`},
		},
		{
			name: "textproto unknown category",
			file: "bad.textproto",
			data: strings.Replace(validTextproto, "DATA_CATEGORY_IDENTITY", "DATA_CATEGORY_IDENTIFY", 1),
			want: []string{"bad.textproto:8:13: invalid value for enum", "DATA_CATEGORY_IDENTIFY"},
		},
		{
			name: "yaml duplicate rule",
			file: "bad.yaml",
			data: validYAML + secondRuleYAML,
			want: []string{"bad.yaml:11:5: rules[1]: rules[0] already lets prison share with probation for PURPOSE_SUPERVISION; merge the two rules (protocol.rule_unique)"},
		},
		{
			name: "textproto duplicate rule",
			file: "bad.textproto",
			data: validTextproto + secondRuleTextproto,
			want: []string{"bad.textproto: rules[1]: rules[0] already lets prison share with probation for PURPOSE_SUPERVISION; merge the two rules (protocol.rule_unique)"},
		},
		{
			name: "yaml sender is recipient",
			file: "bad.yaml",
			data: strings.Replace(validYAML, "recipient: probation", "recipient: prison", 1),
			want: []string{"bad.yaml:5:5: rules[0]: sender and recipient must be two different agencies (rule.agencies)"},
		},
		{
			name: "textproto sender is recipient",
			file: "bad.textproto",
			data: strings.Replace(validTextproto, `recipient: "probation"`, `recipient: "prison"`, 1),
			want: []string{"bad.textproto: rules[0]: sender and recipient must be two different agencies (rule.agencies)"},
		},
		{
			name: "yaml empty legal basis",
			file: "bad.yaml",
			data: strings.Replace(validYAML, "legal_basis: Law on Probation, Art. 12", `legal_basis: ""`, 1),
			want: []string{"bad.yaml:9:18: rules[0].legal_basis: must be at least 1 characters (string.min_len)"},
		},
		{
			name: "textproto empty legal basis",
			file: "bad.textproto",
			data: strings.Replace(validTextproto, `legal_basis: "Law on Probation, Art. 12"`, `legal_basis: ""`, 1),
			want: []string{"bad.textproto: rules[0].legal_basis: must be at least 1 characters (string.min_len)"},
		},
		{
			name: "yaml missing retention",
			file: "bad.yaml",
			data: strings.Replace(validYAML, "    retention: 3600s\n", "", 1),
			want: []string{"bad.yaml:5:5: rules[0].retention: value is required (required)"},
		},
		{
			name: "textproto missing retention",
			file: "bad.textproto",
			data: strings.Replace(validTextproto, "  retention { seconds: 3600 }\n", "", 1),
			want: []string{"bad.textproto: rules[0].retention: value is required (required)"},
		},
		{
			name: "yaml agency that did not sign",
			file: "bad.yaml",
			data: strings.Replace(validYAML, "recipient: probation", "recipient: socialwork", 1),
			want: []string{"bad.yaml:6:16: rules[0].recipient: \"socialwork\" is not among the protocol's agencies (protocol.rule_signed)"},
		},
		{
			name: "textproto agency that did not sign",
			file: "bad.textproto",
			data: strings.Replace(validTextproto, `sender: "prison"`, `sender: "socialwork"`, 1),
			want: []string{"bad.textproto: rules[0].sender: \"socialwork\" is not among the protocol's agencies (protocol.rule_signed)"},
		},
		{
			name: "category both allowed and with consent",
			file: "bad.textproto",
			data: strings.Replace(validTextproto, "allowed: [DATA_CATEGORY_IDENTITY]", "allowed: [DATA_CATEGORY_IDENTITY]\n  consent_required: [DATA_CATEGORY_IDENTITY]", 1),
			want: []string{"bad.textproto: rules[0]: a category is either allowed or needs consent, not both (rule.disjoint)"},
		},
		{
			name: "several problems at once",
			file: "bad.yaml",
			data: strings.Replace(strings.Replace(validYAML, "version: 1", "version: 0", 1), `legal_basis: Law on Probation, Art. 12`, `legal_basis: ""`, 1),
			want: []string{
				"bad.yaml:2:10: version: must be greater than 0 (uint32.gt)",
				"bad.yaml:9:18: rules[0].legal_basis: must be at least 1 characters (string.min_len)",
			},
		},
		{
			name: "unknown extension",
			file: "protocol.json",
			data: `{"protocol_id": "test"}`,
			want: []string{`protocol.json: unsupported protocol file extension ".json": use .textproto, .txtpb, .txt, .yaml or .yml`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(tt.file, []byte(tt.data))
			if err == nil {
				t.Fatalf("Parse = %v, want an error", p)
			}
			msg := err.Error()
			for _, want := range tt.want {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not contain %q; got:\n%s", want, msg)
				}
			}
			for _, line := range strings.Split(msg, "\n") {
				if !strings.HasPrefix(line, tt.file+":") {
					t.Errorf("error line %q does not start with the file name %s", line, tt.file)
				}
			}
		})
	}
}
