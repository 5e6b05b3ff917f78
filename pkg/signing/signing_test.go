package signing_test

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/signing"
)

func TestSignedEventVerifiesAfterTheWire(t *testing.T) {
	key := generateKey(t, prison)
	ev := sign(t, referral(), key)

	if ev.GetKeyId() != key.ID {
		t.Errorf("key_id = %q, want %q", ev.GetKeyId(), key.ID)
	}
	// The signature covers exactly the documented content.
	if !ed25519.Verify(key.Public().Public, canonical(t, ev), ev.GetSignature()) {
		t.Error("signature does not cover the event with signature and key_id cleared")
	}
	verifier := signing.NewVerifier(keyringOf(t, key, generateKey(t, probation)))
	if err := verifier.Verify(received(t, ev)); err != nil {
		t.Errorf("Verify(received) = %v, want nil", err)
	}
	if err := verifier.Verify(ev); err != nil {
		t.Errorf("Verify(sent) = %v, want nil", err)
	}
}

func TestSignAgainReplacesTheSignature(t *testing.T) {
	old, current := generateKey(t, prison), generateKey(t, prison)
	ev := sign(t, sign(t, referral(), old), current)
	if err := signing.NewVerifier(keyringOf(t, current)).Verify(received(t, ev)); err != nil {
		t.Errorf("Verify after re-signing = %v, want nil", err)
	}
}

func TestSignRefusesKeyOfAnotherAgency(t *testing.T) {
	ev := referral()
	err := signing.Sign(ev, generateKey(t, probation))
	if !errors.Is(err, signing.ErrWrongAgency) {
		t.Errorf("Sign(prison event, probation key) = %v, want ErrWrongAgency", err)
	}
	if ev.GetSignature() != nil || ev.GetKeyId() != "" {
		t.Errorf("refused Sign changed the event: key_id %q, %d signature bytes", ev.GetKeyId(), len(ev.GetSignature()))
	}
}

func TestSignRefusesUnusableKey(t *testing.T) {
	good := generateKey(t, prison)
	for name, key := range map[string]signing.Key{
		"no private key":     {ID: good.ID, Agency: prison},
		"short private key":  {ID: good.ID, Agency: prison, Private: good.Private[:32]},
		"id with a dot":      {ID: "prison.2026", Agency: prison, Private: good.Private},
		"empty id":           {Agency: prison, Private: good.Private},
		"id with a wildcard": {ID: "prison-*", Agency: prison, Private: good.Private},
	} {
		t.Run(name, func(t *testing.T) {
			ev := referral()
			if err := signing.Sign(ev, key); err == nil {
				t.Errorf("Sign = nil, want an error; signature %x", ev.GetSignature())
			}
		})
	}
	if err := signing.Sign(nil, good); err == nil {
		t.Error("Sign(nil) = nil, want an error")
	}
}

func TestVerifyRefusesTamperedEvent(t *testing.T) {
	key, other := generateKey(t, prison), generateKey(t, prison)
	verifier := signing.NewVerifier(keyringOf(t, key, other))
	for name, tamper := range map[string]func(*throughcarev1.Event){
		"case id":          func(ev *throughcarev1.Event) { ev.CaseId = "rc_06h09hkdfsvyd8rtf98xswpwr5" },
		"recipient":        func(ev *throughcarev1.Event) { ev.Recipient = socialWork },
		"occurred at":      func(ev *throughcarev1.Event) { ev.OccurredAt = timestamppb.New(occurred().Add(time.Nanosecond)) },
		"withholding gone": func(ev *throughcarev1.Event) { ev.Withholdings = nil },
		"payload name": func(ev *throughcarev1.Event) {
			ev.GetHandoverReferred().GetReleaseCase().GetPerson().FamilyName = "Kovac"
		},
		"payload swapped": func(ev *throughcarev1.Event) {
			ev.Payload = &throughcarev1.Event_ConsentWithdrawn{ConsentWithdrawn: &throughcarev1.ConsentWithdrawn{}}
		},
		"signature bit":      func(ev *throughcarev1.Event) { ev.Signature[10] ^= 1 },
		"signature cut":      func(ev *throughcarev1.Event) { ev.Signature = ev.Signature[:63] },
		"other key's id":     func(ev *throughcarev1.Event) { ev.KeyId = other.ID },
		"unknown field":      func(ev *throughcarev1.Event) { appendUnknown(ev, 99, protowire.VarintType, 1) },
		"signature as field": func(ev *throughcarev1.Event) { appendUnknown(ev, 30, protowire.VarintType, 1) },
	} {
		t.Run(name, func(t *testing.T) {
			ev := received(t, sign(t, referral(), key))
			tamper(ev)
			if err := verifier.Verify(received(t, ev)); !errors.Is(err, signing.ErrBadSignature) {
				t.Errorf("Verify = %v, want ErrBadSignature", err)
			}
		})
	}
}

// appendUnknown adds a varint field the generated code does not know under that wire type.
func appendUnknown(ev *throughcarev1.Event, num protowire.Number, typ protowire.Type, v uint64) {
	raw := protowire.AppendTag(ev.ProtoReflect().GetUnknown(), num, typ)
	ev.ProtoReflect().SetUnknown(protowire.AppendVarint(raw, v))
}

func TestVerifyErrorsNameOnlyTheEventID(t *testing.T) {
	ev := received(t, sign(t, referral(), generateKey(t, prison)))
	ev.GetHandoverReferred().GetReleaseCase().GetPerson().GivenName = "Ana-Marija"
	err := signing.NewVerifier(keyringOf(t, generateKey(t, prison))).Verify(ev)
	if err == nil {
		t.Fatal("Verify = nil, want an error")
	}
	if !strings.Contains(err.Error(), ev.GetEventId()) {
		t.Errorf("error %q does not name event %s", err, ev.GetEventId())
	}
	for _, leak := range []string{ev.GetCaseId(), ev.GetKeyId(), "Kovač", "Ana"} {
		if strings.Contains(err.Error(), leak) {
			t.Errorf("error %q contains %q", err, leak)
		}
	}
}

func TestVerifyRefusesUnsignedEvent(t *testing.T) {
	key := generateKey(t, prison)
	verifier := signing.NewVerifier(keyringOf(t, key))
	for name, ev := range map[string]*throughcarev1.Event{
		"never signed": referral(),
		"no signature": func() *throughcarev1.Event { ev := sign(t, referral(), key); ev.Signature = nil; return ev }(),
		"no key id":    func() *throughcarev1.Event { ev := sign(t, referral(), key); ev.KeyId = ""; return ev }(),
		"nil":          nil,
	} {
		t.Run(name, func(t *testing.T) {
			if err := verifier.Verify(ev); !errors.Is(err, signing.ErrUnsigned) {
				t.Errorf("Verify = %v, want ErrUnsigned", err)
			}
		})
	}
}

func TestVerifyRefusesAnotherAgencysKey(t *testing.T) {
	probationKey := generateKey(t, probation)
	// Probation signs an event that claims to come from the prison, with its own valid key.
	ev := referral()
	ev.KeyId = probationKey.ID
	ev.Signature = ed25519.Sign(probationKey.Private, canonical(t, ev))

	verifier := signing.NewVerifier(keyringOf(t, generateKey(t, prison), probationKey))
	if err := verifier.Verify(received(t, ev)); !errors.Is(err, signing.ErrWrongAgency) {
		t.Errorf("Verify = %v, want ErrWrongAgency", err)
	}
}

func TestVerifyRefusesUnknownKey(t *testing.T) {
	ev := sign(t, referral(), generateKey(t, prison))
	verifier := signing.NewVerifier(keyringOf(t, generateKey(t, prison), generateKey(t, probation)))
	if err := verifier.Verify(received(t, ev)); !errors.Is(err, signing.ErrUnknownKey) {
		t.Errorf("Verify = %v, want ErrUnknownKey", err)
	}
	if err := signing.NewVerifier(nil).Verify(received(t, ev)); !errors.Is(err, signing.ErrUnknownKey) {
		t.Errorf("Verify with no keyring = %v, want ErrUnknownKey", err)
	}
}

func TestRotationKeepsOldEventsAndRefusesNewOnesFromTheOldKey(t *testing.T) {
	old := generateKey(t, prison)
	keyring := keyringOf(t, old)
	before := received(t, sign(t, referral(), old))

	// Rotate: the new key joins the keyring, the old one stays but is retired now.
	rotatedAt := occurred().Add(time.Hour)
	current := generateKey(t, prison)
	if err := keyring.Add(current.Public()); err != nil {
		t.Fatalf("add new key: %v", err)
	}
	if err := keyring.Retire(old.ID, rotatedAt); err != nil {
		t.Fatalf("retire old key: %v", err)
	}
	verifier := signing.NewVerifier(keyring)

	at := func(tm time.Time, key signing.Key) *throughcarev1.Event {
		ev := referral()
		ev.OccurredAt = timestamppb.New(tm)
		return received(t, sign(t, ev, key))
	}
	for _, tc := range []struct {
		name string
		ev   *throughcarev1.Event
		want error
	}{
		{"old key, before rotation", before, nil},
		{"old key, at rotation", at(rotatedAt, old), nil},
		{"old key, after rotation", at(rotatedAt.Add(time.Nanosecond), old), signing.ErrKeyExpired},
		{"old key, no occurred_at", func() *throughcarev1.Event {
			ev := referral()
			ev.OccurredAt = nil
			return received(t, sign(t, ev, old))
		}(), signing.ErrKeyExpired},
		{"new key, after rotation", at(rotatedAt.Add(time.Minute), current), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := verifier.Verify(tc.ev); !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Errorf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVerifierIsNotChangedByLaterKeyringChanges(t *testing.T) {
	key := generateKey(t, prison)
	keyring := keyringOf(t, key)
	verifier := signing.NewVerifier(keyring)
	if err := keyring.Retire(key.ID, occurred().Add(-time.Hour)); err != nil {
		t.Fatalf("retire: %v", err)
	}
	if err := verifier.Verify(sign(t, referral(), key)); err != nil {
		t.Errorf("Verify with the verifier made before retiring = %v, want nil", err)
	}
	if err := signing.NewVerifier(keyring).Verify(sign(t, referral(), key)); !errors.Is(err, signing.ErrKeyExpired) {
		t.Errorf("Verify with a new verifier = %v, want ErrKeyExpired", err)
	}
}

// A newer sender's fields arrive as unknown fields; the receiver marshals them again after
// its known fields, which is where the sender put them when their numbers are higher.
func TestVerifyKeepsFieldsOfNewerSender(t *testing.T) {
	key := generateKey(t, prison)
	sent := referral()
	// Event field 40 and Handover field 50, as a newer sender's code would write them.
	appendUnknown(sent, 40, protowire.VarintType, 7)
	handover := sent.GetHandoverReferred().GetHandover().ProtoReflect()
	handover.SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 50, protowire.VarintType), 9))
	sign(t, sent, key)

	got := received(t, sent)
	if len(got.ProtoReflect().GetUnknown()) == 0 || len(got.GetHandoverReferred().GetHandover().ProtoReflect().GetUnknown()) == 0 {
		t.Fatal("the receiver dropped the unknown fields")
	}
	if err := signing.NewVerifier(keyringOf(t, key)).Verify(got); err != nil {
		t.Errorf("Verify = %v, want nil", err)
	}
	// And once more through a relay that decodes and re-encodes the event.
	if err := signing.NewVerifier(keyringOf(t, key)).Verify(received(t, got)); err != nil {
		t.Errorf("Verify after a relay = %v, want nil", err)
	}
}

// The known limit: a new field numbered between existing ones is written in order by the
// sender but after the known fields by an older receiver, so the bytes differ.
func TestVerifyRefusesNewFieldNumberedBetweenKnownOnes(t *testing.T) {
	key := generateKey(t, prison)
	head := referral()
	payload := &throughcarev1.Event{Payload: head.Payload}
	head.Payload = nil
	// The newer sender's encoding: fields 1-14, then its new field 15, then the payload.
	var content []byte
	content = append(content, marshal(t, head)...)
	content = protowire.AppendVarint(protowire.AppendTag(content, 15, protowire.VarintType), 1)
	content = append(content, marshal(t, payload)...)
	wire := protowire.AppendBytes(protowire.AppendTag(content, 30, protowire.BytesType), ed25519.Sign(key.Private, content))
	wire = protowire.AppendString(protowire.AppendTag(wire, 31, protowire.BytesType), key.ID)

	ev := decode(t, wire)
	if !proto.Equal(ev.GetHandoverReferred(), referral().GetHandoverReferred()) {
		t.Fatal("the hand-made encoding does not decode to the referral")
	}
	if err := signing.NewVerifier(keyringOf(t, key)).Verify(ev); !errors.Is(err, signing.ErrBadSignature) {
		t.Errorf("Verify = %v, want ErrBadSignature (if nil, the encoder now keeps unknown fields in place: update the package comment)", err)
	}
}
