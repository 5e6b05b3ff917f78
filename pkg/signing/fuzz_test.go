package signing_test

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/signing"
)

// fuzzKeys are fixed, so the committed seeds in testdata/fuzz/FuzzVerify stay validly
// signed: signed-referral is referral() signed with the prison key, tampered-referral the
// same with the family name changed, wrong-agency the referral signed with the probation
// key; the other files are inputs `go test -fuzz=FuzzVerify` found interesting.
func fuzzKeys() (prisonKey, probationKey signing.Key) {
	return seededKey(prison, "prison-fuzz", 1), seededKey(probation, "probation-fuzz", 2)
}

// FuzzVerify feeds Verify events decoded from arbitrary bytes. It must never panic, must
// refuse with one of its own errors, and may accept only what the prison key really signed.
func FuzzVerify(f *testing.F) {
	prisonKey, probationKey := fuzzKeys()
	verifier := signing.NewVerifier(keyringOf(f, prisonKey, probationKey))

	signed := sign(f, referral(), prisonKey)
	tampered := proto.CloneOf(signed)
	tampered.GetHandoverReferred().GetReleaseCase().GetPerson().FamilyName = "Kovac"
	f.Add(marshal(f, signed))
	f.Add(marshal(f, tampered))
	f.Add([]byte{})

	refusals := []error{signing.ErrUnsigned, signing.ErrUnknownKey, signing.ErrWrongAgency, signing.ErrBadSignature, signing.ErrKeyExpired}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev := new(throughcarev1.Event)
		if proto.Unmarshal(data, ev) != nil {
			return
		}
		err := verifier.Verify(ev)
		if err != nil {
			for _, refusal := range refusals {
				if errors.Is(err, refusal) {
					return
				}
			}
			t.Fatalf("Verify = %v, want one of the package's refusals", err)
		}
		// Accepted: Ed25519 signatures are deterministic, so the right key must make
		// exactly this signature over the documented content.
		key := prisonKey
		if ev.GetKeyId() == probationKey.ID {
			key = probationKey
		}
		if ev.GetKeyId() != key.ID || ev.GetSource() != key.Agency || !bytes.Equal(ed25519.Sign(key.Private, canonical(t, ev)), ev.GetSignature()) {
			t.Fatalf("Verify accepted an event %s did not sign: key_id %q, source %s", key.ID, ev.GetKeyId(), ev.GetSource())
		}
	})
}

// The hand-made seeds must keep exercising the paths their names promise.
func TestFuzzSeedsStillMeanWhatTheirNamesSay(t *testing.T) {
	prisonKey, probationKey := fuzzKeys()
	verifier := signing.NewVerifier(keyringOf(t, prisonKey, probationKey))
	for name, want := range map[string]error{
		"signed-referral":   nil,
		"tampered-referral": signing.ErrBadSignature,
		"wrong-agency":      signing.ErrWrongAgency,
		"empty":             signing.ErrUnsigned,
	} {
		t.Run(name, func(t *testing.T) {
			ev := decode(t, readSeed(t, filepath.Join("testdata", "fuzz", "FuzzVerify", name)))
			if err := verifier.Verify(ev); !errors.Is(err, want) || (err == nil) != (want == nil) {
				t.Errorf("Verify = %v, want %v", err, want)
			}
		})
	}
}

// readSeed reads a one-value corpus file as `go test -fuzz` writes it.
func readSeed(t *testing.T, path string) []byte {
	t.Helper()
	content, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	header, value, _ := strings.Cut(strings.TrimSpace(string(content)), "\n")
	quoted, ok := strings.CutPrefix(value, "[]byte(")
	quoted, ok2 := strings.CutSuffix(quoted, ")")
	data, err := strconv.Unquote(quoted)
	if header != "go test fuzz v1" || !ok || !ok2 || err != nil {
		t.Fatalf("%s is not a []byte corpus file: %v", path, err)
	}
	return []byte(data)
}
