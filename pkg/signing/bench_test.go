package signing_test

import (
	"crypto/ed25519"
	"testing"

	"github.com/throughcare/throughcare/pkg/signing"
)

func BenchmarkSign(b *testing.B) {
	key := generateKey(b, prison)
	ev := referral()
	for b.Loop() {
		if err := signing.Sign(ev, key); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(marshal(b, ev))), "event-bytes")
}

// BenchmarkVerify has a raw Ed25519 baseline over the same bytes alongside, so the cost
// of re-marshaling the envelope shows as the difference.
func BenchmarkVerify(b *testing.B) {
	key := generateKey(b, prison)
	ev := received(b, sign(b, referral(), key))
	b.Run("event", func(b *testing.B) {
		verifier := signing.NewVerifier(keyringOf(b, key, generateKey(b, probation), generateKey(b, socialWork)))
		for b.Loop() {
			if err := verifier.Verify(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ed25519-only", func(b *testing.B) {
		public, content := key.Public().Public, canonical(b, ev)
		for b.Loop() {
			if !ed25519.Verify(public, content, ev.GetSignature()) {
				b.Fatal("signature does not verify")
			}
		}
	})
}
