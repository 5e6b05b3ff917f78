package protocol

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

// BenchmarkEnforceAndMarshal is the cost of sending a full case to social work with one
// consent: clone, cut down, encode. Read it against BenchmarkMarshalOnly.
func BenchmarkEnforceAndMarshal(b *testing.B) {
	p := Default()
	original := fullCase()
	consents := consentTo(socialWork, healthCategory)
	b.ReportAllocs()
	for b.Loop() {
		msg := proto.Clone(original)
		if _, err := p.Enforce(msg, prison, socialWork, assistance, consents); err != nil {
			b.Fatal(err)
		}
		if _, err := proto.Marshal(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMarshalOnly is the same send without the protocol.
func BenchmarkMarshalOnly(b *testing.B) {
	original := fullCase()
	b.ReportAllocs()
	for b.Loop() {
		msg := proto.Clone(original)
		if _, err := proto.Marshal(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnforce is the protocol's own share: Enforce on a fresh clone each time, with
// the clone's cost subtracted by reading it against BenchmarkClone.
func BenchmarkEnforce(b *testing.B) {
	p := Default()
	original := fullCase()
	consents := consentTo(socialWork, healthCategory)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Enforce(proto.Clone(original), prison, socialWork, assistance, consents); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClone(b *testing.B) {
	original := fullCase()
	b.ReportAllocs()
	for b.Loop() {
		proto.Clone(original)
	}
}

// BenchmarkCheck is the recipient's check of a case that is within the rule.
func BenchmarkCheck(b *testing.B) {
	p := Default()
	consents := consentTo(socialWork, healthCategory)
	msg := fullCase()
	if _, err := p.Enforce(msg, prison, socialWork, assistance, consents); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if excess, err := p.Check(msg, prison, socialWork, assistance, consents); err != nil || len(excess) != 0 {
			b.Fatal(excess, err)
		}
	}
}
