package ledger

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

const (
	// PersonKeySize is how many random bytes a person-hash key holds.
	PersonKeySize = 32
	// personHashDomain keeps person hashes apart from any other MAC under the same key.
	personHashDomain = "throughcare/v1/person\x00"
	// personKeyIDDomain names a key in logs without giving away anything of it.
	personKeyIDDomain = "throughcare/v1/person-key-id\x00"
)

// PersonKey is the deployment's secret under which the ledger refers to a person:
// HMAC-SHA-256 of the prison number. Every agency of a deployment holds the same key, so a
// subject-access request finds the same reference in each agency's ledger, while another
// deployment, or anyone who can list prison numbers, cannot tell whom a reference names.
// Losing the key makes the references already stored unmatchable.
//
// The zero PersonKey holds no key; Hash panics on it. String and GoString never show the
// key, and the key sits behind a pointer, so a PersonKey printed by mistake, even inside
// another struct's unexported field, stays secret. Compare keys by ID.
type PersonKey struct {
	secret *[PersonKeySize]byte
}

// NewPersonKey makes a key of secret, which must be PersonKeySize random bytes.
func NewPersonKey(secret []byte) (PersonKey, error) {
	if len(secret) != PersonKeySize {
		return PersonKey{}, fmt.Errorf("person-hash key: %d bytes, want %d", len(secret), PersonKeySize)
	}
	k := PersonKey{secret: new([PersonKeySize]byte)}
	copy(k.secret[:], secret)
	if *k.secret == [PersonKeySize]byte{} {
		return PersonKey{}, errors.New("person-hash key: all zero bytes, want random ones")
	}
	return k, nil
}

// GeneratePersonKey makes a new random key.
func GeneratePersonKey() PersonKey {
	k := PersonKey{secret: new([PersonKeySize]byte)}
	rand.Read(k.secret[:]) // never fails: it crashes the program first
	return k
}

// IsZero reports whether k holds no key.
func (k PersonKey) IsZero() bool { return k.secret == nil }

// Hash is what the ledger stores instead of a prison number. The number is trimmed and
// upper-cased first so that a request typed in lower case finds the same person.
func (k PersonKey) Hash(prisonNumber string) []byte {
	return k.mac(personHashDomain + strings.ToUpper(strings.TrimSpace(prisonNumber)))
}

// OfCase is the person reference of a case's ledger entries: nil for no case, or one
// without a prison number.
func (k PersonKey) OfCase(rc *throughcarev1.ReleaseCase) []byte {
	if pn := rc.GetPerson().GetPrisonNumber(); pn != "" {
		return k.Hash(pn)
	}
	return nil
}

// ID names the key, for logs: the agencies of one deployment log the same ID.
func (k PersonKey) ID() string { return hex.EncodeToString(k.mac(personKeyIDDomain)[:8]) }

func (k PersonKey) mac(message string) []byte {
	if k.IsZero() {
		panic("ledger: PersonKey used without a key")
	}
	m := hmac.New(sha256.New, k.secret[:])
	m.Write([]byte(message))
	return m.Sum(nil)
}

// String never shows the key.
func (k PersonKey) String() string {
	if k.IsZero() {
		return "PersonKey(none)"
	}
	return "PersonKey(" + k.ID() + ")"
}

// GoString never shows the key.
func (k PersonKey) GoString() string { return k.String() }

// LoadPersonKey reads a key file: 64 hex digits (e.g. `openssl rand -hex 32`), with or
// without a final newline. A file that others may read, or the group may write, is
// refused; group read is allowed, as Kubernetes grants it to fsGroup on mounted secrets.
func LoadPersonKey(path string) (PersonKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return PersonKey{}, fmt.Errorf("person-hash key: %w", err)
	}
	if st.Mode().Perm()&0o027 != 0 {
		return PersonKey{}, fmt.Errorf("person-hash key %s: open to others (mode %v); want 0600 or 0400", path, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return PersonKey{}, fmt.Errorf("person-hash key: %w", err)
	}
	// The error never quotes the file: what is in it may be the key.
	text := strings.TrimSpace(string(data))
	if len(text) != 2*PersonKeySize {
		return PersonKey{}, fmt.Errorf("person-hash key %s: %d characters, want %d hex digits (%d random bytes: openssl rand -hex %d)",
			path, len(text), 2*PersonKeySize, PersonKeySize, PersonKeySize)
	}
	secret, err := hex.DecodeString(text)
	if err != nil {
		return PersonKey{}, fmt.Errorf("person-hash key %s: not hex, want %d hex digits (openssl rand -hex %d)", path, 2*PersonKeySize, PersonKeySize)
	}
	k, err := NewPersonKey(secret)
	if err != nil {
		return PersonKey{}, fmt.Errorf("person-hash key %s: %w", path, err)
	}
	return k, nil
}

// EnsurePersonKey gives `throughcare dev` a key without any setup: it loads the key in
// path, or on first start makes one there (its directory 0700, the file 0600). It never
// replaces a key file.
func EnsurePersonKey(path string) (PersonKey, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return PersonKey{}, fmt.Errorf("person-hash key: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return PersonKey{}, fmt.Errorf("person-hash key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadPersonKey(path)
	}
	if err != nil {
		return PersonKey{}, fmt.Errorf("person-hash key: %w", err)
	}
	k := GeneratePersonKey()
	_, werr := f.WriteString(hex.EncodeToString(k.secret[:]) + "\n")
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		_ = os.Remove(path)
		return PersonKey{}, fmt.Errorf("person-hash key: write %s: %w", path, err)
	}
	return k, nil
}
