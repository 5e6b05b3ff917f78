// Package signing lets each agency sign the events it sends and lets a receiver check,
// before anything else reads an event, that the source agency really made it.
//
// A sender calls Sign just before publishing. A receiver decodes the event, calls
// Verifier.Verify, then ReplayGuard.Check, and only then hands it to its handler; an
// error from either is final for that event.
//
// A signature is Ed25519 over the event as deterministic protobuf with signature and
// key_id cleared. The receiver only has the decoded message, so it marshals it again: the
// sender's and receiver's encoders must produce the same bytes. That holds within this
// codebase's protobuf-go version; it is not a promise across protobuf versions or
// languages (a sender writing unpacked repeated fields, say, would not verify).
//
// Fields a newer sender adds are kept by proto.Unmarshal as unknown fields and marshaled
// again after the known ones, so they verify as long as a new field takes a number above
// every field its message already has. A new field numbered between existing ones moves
// to the end on the receiver, and the event fails with ErrBadSignature until the receiver
// is upgraded.
package signing

import (
	"crypto/ed25519"
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// Verify's errors, for errors.Is. Every one means the event must not be processed.
var (
	ErrUnsigned     = errors.New("event is not signed")
	ErrUnknownKey   = errors.New("event is signed with an unknown key")
	ErrWrongAgency  = errors.New("event is signed with another agency's key")
	ErrBadSignature = errors.New("event signature does not match its content")
	ErrKeyExpired   = errors.New("event occurred after its signing key was retired")
)

// The Event fields a signature leaves out; a test checks them against the descriptor.
const (
	signatureField protowire.Number = 30
	keyIDField     protowire.Number = 31
)

// Sign sets ev's key_id and signature. It refuses a key of another agency than ev's source.
func Sign(ev *throughcarev1.Event, key Key) error {
	if ev == nil {
		return errors.New("sign: no event")
	}
	if ev.GetSource() != key.Agency {
		return fmt.Errorf("sign event %s: source %s, key %s of %s: %w", ev.GetEventId(), ev.GetSource(), key.ID, key.Agency, ErrWrongAgency)
	}
	if len(key.Private) != ed25519.PrivateKeySize || !validKeyID(key.ID) {
		return fmt.Errorf("sign event %s: key %q is not a usable Ed25519 key", ev.GetEventId(), key.ID)
	}
	msg, err := signedBytes(ev)
	if err != nil {
		return fmt.Errorf("sign event %s: %w", ev.GetEventId(), err)
	}
	ev.KeyId = key.ID
	ev.Signature = ed25519.Sign(key.Private, msg)
	return nil
}

// Verifier checks signatures against the public keys of a keyring. It is safe for
// concurrent use.
type Verifier struct {
	keys map[string]PublicKey
}

// NewVerifier copies keyring, so later changes to it (a rotation) need a new Verifier.
func NewVerifier(keyring *Keyring) *Verifier {
	v := &Verifier{keys: make(map[string]PublicKey)}
	if keyring != nil {
		for id, pub := range keyring.keys {
			v.keys[id] = pub
		}
	}
	return v
}

// Verify returns nil if ev was signed by a current key of its source agency. Errors carry
// only the event id: the rest of an unverified event is not to be trusted, even in logs.
//
// A retired key still verifies the events that occurred up to its NotAfter. Since
// occurred_at is what the signer says, a leaked retired key can still sign backdated
// events; ReplayGuard refuses events older than its MaxAge, which bounds that to MaxAge
// after retirement. Drop a key from the keyring once that has passed.
func (v *Verifier) Verify(ev *throughcarev1.Event) error {
	id := ev.GetEventId()
	if len(ev.GetSignature()) == 0 || ev.GetKeyId() == "" {
		return fmt.Errorf("event %q: %w", id, ErrUnsigned)
	}
	pub, ok := v.keys[ev.GetKeyId()]
	if !ok {
		return fmt.Errorf("event %q: %w", id, ErrUnknownKey)
	}
	if pub.Agency != ev.GetSource() {
		return fmt.Errorf("event %q: %w", id, ErrWrongAgency)
	}
	msg, err := signedBytes(ev)
	if err != nil || !ed25519.Verify(pub.Public, msg, ev.GetSignature()) {
		return fmt.Errorf("event %q: %w", id, ErrBadSignature)
	}
	// Checked after the signature, so occurred_at is the signer's own word.
	if !pub.NotAfter.IsZero() && (ev.GetOccurredAt() == nil || ev.GetOccurredAt().AsTime().After(pub.NotAfter)) {
		return fmt.Errorf("event %q: %w", id, ErrKeyExpired)
	}
	return nil
}

// signedBytes is what a signature covers: ev as deterministic protobuf with signature and
// key_id cleared. The two fields are cut from the encoding instead of cleared on ev, so
// Verify never writes to the event it checks (nor clones it). That gives the same bytes as
// clearing: deterministic marshaling writes each set field on its own, and an empty proto3
// string or bytes field is not written at all.
func signedBytes(ev *throughcarev1.Event) ([]byte, error) {
	full, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	signed := make([]byte, 0, len(full))
	for rest := full; len(rest) > 0; {
		num, typ, tagLen := protowire.ConsumeTag(rest)
		if tagLen < 0 {
			return nil, fmt.Errorf("encode: %w", protowire.ParseError(tagLen))
		}
		valueLen := protowire.ConsumeFieldValue(num, typ, rest[tagLen:])
		if valueLen < 0 {
			return nil, fmt.Errorf("encode: %w", protowire.ParseError(valueLen))
		}
		// Only the bytes-typed fields are ours: an unknown field 30 of another wire type
		// stays in, as it would when marshaling a cleared event.
		if typ != protowire.BytesType || (num != signatureField && num != keyIDField) {
			signed = append(signed, rest[:tagLen+valueLen]...)
		}
		rest = rest[tagLen+valueLen:]
	}
	return signed, nil
}
