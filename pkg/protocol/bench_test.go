package protocol

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

// BenchmarkEnforceAndMarshal is the cost of sending a full case to social work with one
// consent: cut down in place (the sender enforces the copy it read for the call) and
// encode. Read it against BenchmarkMarshalOnly.
func BenchmarkEnforceAndMarshal(b *testing.B) {
	p := Default()
	consents := consentTo(socialWork, healthCategory)
	fresh := freshCases(b, fullCase())
	b.ReportAllocs()
	for b.Loop() {
		msg := fresh()
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
	fresh := freshCases(b, fullCase())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := proto.Marshal(fresh()); err != nil {
			b.Fatal(err)
		}
	}
}

// freshCases returns a function giving a new clone of original at each call, made with the
// timer stopped, a batch at a time, so a benchmark of an in-place change times only it.
func freshCases(b *testing.B, original proto.Message) func() proto.Message {
	var batch []proto.Message
	return func() proto.Message {
		if len(batch) == 0 {
			b.StopTimer()
			batch = make([]proto.Message, 1024)
			for i := range batch {
				batch[i] = proto.Clone(original)
			}
			b.StartTimer()
		}
		msg := batch[len(batch)-1]
		batch = batch[:len(batch)-1]
		return msg
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
