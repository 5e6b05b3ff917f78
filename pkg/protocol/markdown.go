package protocol

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/durationpb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// MarkdownTable renders the rules as a Markdown table in the shape of PRODUCT.md's, one row
// per rule in protocol order, so documentation can show the protocol the code enforces.
// "never" lists every category the rule neither allows nor lets flow with consent.
func (p *Protocol) MarkdownTable() string {
	var every categorySet
	values := throughcarev1.DataCategory(0).Descriptor().Values()
	for i := range values.Len() {
		if n := values.Get(i).Number(); n != 0 {
			every |= categoryBit(throughcarev1.DataCategory(n))
		}
	}
	var b strings.Builder
	b.WriteString("| from → to | purpose | may flow | only with consent | never | legal basis | retention |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	for _, r := range p.proto.GetRules() {
		allowed, consent := setOf(r.GetAllowed()), setOf(r.GetConsentRequired())
		fmt.Fprintf(&b, "| %s → %s | %s | %s | %s | %s | %s | %s |\n",
			p.agencies.Name(r.GetSender()), p.agencies.Name(r.GetRecipient()), purposeName(r.GetPurpose()),
			categoryList(allowed), categoryList(consent), categoryList(every&^allowed&^consent),
			markdownCell(r.GetLegalBasis()), retentionText(r.GetRetention()))
	}
	return b.String()
}

// categoryList writes a set as PRODUCT.md does, with a dash for none.
func categoryList(s categorySet) string {
	categories := s.categories()
	if len(categories) == 0 {
		return "—"
	}
	names := make([]string, len(categories))
	for i, c := range categories {
		names[i] = categoryName(c)
	}
	return strings.Join(names, ", ")
}

// markdownCell keeps free text from breaking the table.
func markdownCell(text string) string {
	text = strings.ReplaceAll(text, "|", `\|`)
	return strings.Join(strings.Fields(text), " ")
}

const (
	secondsPerDay  = 24 * 60 * 60
	secondsPerYear = 365 * secondsPerDay
)

// retentionText says a retention period the way a protocol states it, in whole years or
// days where it is one.
func retentionText(d *durationpb.Duration) string {
	seconds := d.GetSeconds()
	switch {
	case d.GetNanos() != 0 || seconds <= 0:
		return d.AsDuration().String()
	case seconds%secondsPerYear == 0:
		return countOf(seconds/secondsPerYear, "year")
	case seconds%secondsPerDay == 0:
		return countOf(seconds/secondsPerDay, "day")
	default:
		return d.AsDuration().String()
	}
}

func countOf(n int64, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}
