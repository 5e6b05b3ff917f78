package ledger_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/throughcare/throughcare/pkg/ledger"
)

func TestPersonKeyHash(t *testing.T) {
	a := testPersonKey.Hash("A1234BC")
	if len(a) != sha256.Size {
		t.Fatalf("len = %d, want %d", len(a), sha256.Size)
	}
	if !bytes.Equal(a, testPersonKey.Hash(" a1234bc ")) {
		t.Error("case and spaces change the hash")
	}
	if bytes.Equal(a, testPersonKey.Hash("A1234BD")) {
		t.Error("two numbers hash the same")
	}
	// An unkeyed hash of the number, with or without the old domain prefix, would let
	// anyone who can list prison numbers find whom it names.
	for _, unkeyed := range []string{"A1234BC", "throughcare/v1/person\x00A1234BC"} {
		if sum := sha256.Sum256([]byte(unkeyed)); bytes.Equal(a, sum[:]) {
			t.Errorf("person hash is the unkeyed SHA-256 of %q", unkeyed)
		}
	}
}

// TestPersonKeysOfTwoDeployments: the same prison number gets other references in two
// deployments, and the same in every agency of one (they hold the same key bytes).
func TestPersonKeysOfTwoDeployments(t *testing.T) {
	secretA, secretB := bytes.Repeat([]byte{0xa1}, ledger.PersonKeySize), bytes.Repeat([]byte{0xb2}, ledger.PersonKeySize)
	prison, err := ledger.NewPersonKey(secretA)
	if err != nil {
		t.Fatal(err)
	}
	probation, err := ledger.NewPersonKey(secretA)
	if err != nil {
		t.Fatal(err)
	}
	elsewhere, err := ledger.NewPersonKey(secretB)
	if err != nil {
		t.Fatal(err)
	}
	const number = "A1234BC"
	if !bytes.Equal(prison.Hash(number), probation.Hash(number)) || prison.ID() != probation.ID() {
		t.Error("two agencies with the same key: references differ")
	}
	if bytes.Equal(prison.Hash(number), elsewhere.Hash(number)) || prison.ID() == elsewhere.ID() {
		t.Error("two deployments with different keys: same reference")
	}
}

func TestNewPersonKeyRefusesBadSecrets(t *testing.T) {
	for name, secret := range map[string][]byte{
		"short":    make([]byte, ledger.PersonKeySize-1),
		"long":     bytes.Repeat([]byte{1}, ledger.PersonKeySize+1),
		"all zero": make([]byte, ledger.PersonKeySize),
		"none":     nil,
	} {
		if _, err := ledger.NewPersonKey(secret); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestPersonKeyNeverShowsTheSecret(t *testing.T) {
	secret := bytes.Repeat([]byte{0x5c}, ledger.PersonKeySize)
	k, err := ledger.NewPersonKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	exported := struct{ Key ledger.PersonKey }{k}
	unexported := struct{ key ledger.PersonKey }{k}
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q"} {
		for _, v := range []any{k, &k, exported, &exported, unexported, &unexported} {
			out := fmt.Sprintf(format, v)
			if strings.Contains(strings.ToLower(out), hex.EncodeToString(secret)[:16]) || strings.Contains(out, string(secret[:8])) {
				t.Errorf("Sprintf(%q) shows the secret: %s", format, out)
			}
		}
	}
	if !strings.Contains(k.String(), k.ID()) {
		t.Errorf("String() = %q; want it to name the key by ID %s", k.String(), k.ID())
	}
}

func writeKeyFile(t *testing.T, text string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "person-hash.key")
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadPersonKey(t *testing.T) {
	secret := bytes.Repeat([]byte{0x3e}, ledger.PersonKeySize)
	want, err := ledger.NewPersonKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o600, 0o400, 0o640} {
		got, err := ledger.LoadPersonKey(writeKeyFile(t, hex.EncodeToString(secret)+"\n", mode))
		if err != nil {
			t.Fatalf("mode %v: %v", mode, err)
		}
		if got.ID() != want.ID() {
			t.Errorf("mode %v: loaded %v, want %v", mode, got, want)
		}
	}
	good := hex.EncodeToString(secret)
	for _, tc := range []struct {
		name, text string
		mode       os.FileMode
		want       string
	}{
		{"short", good[:62], 0o600, "want 64 hex digits"},
		{"raw bytes", string(secret), 0o600, "want 64 hex digits"},
		{"not hex", "zz" + good[2:], 0o600, "not hex"},
		{"all zero", strings.Repeat("0", 64), 0o600, "all zero"},
		{"empty", "", 0o600, "want 64 hex digits"},
		{"open to others", good, 0o644, "open to others"},
		{"group may write", good, 0o620, "open to others"},
	} {
		path := writeKeyFile(t, tc.text, tc.mode)
		_, err := ledger.LoadPersonKey(path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: got %v; want an error naming %s and saying %q", tc.name, err, path, tc.want)
			continue
		}
		if len(tc.text) > 8 && strings.Contains(err.Error(), tc.text[2:10]) {
			t.Errorf("%s: the error quotes the file: %v", tc.name, err)
		}
	}
	missing := filepath.Join(t.TempDir(), "nope.key")
	if _, err := ledger.LoadPersonKey(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: got %v; want an error naming %s", err, missing)
	}
}

// TestEnsurePersonKeyKeepsItsKey is dev across restarts: the key made at the first start
// is the one loaded at the next, so old references still match.
func TestEnsurePersonKeyKeepsItsKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets", "person-hash.key")
	first, err := ledger.EnsurePersonKey(path)
	if err != nil {
		t.Fatalf("first: %v", err)
	}
	second, err := ledger.EnsurePersonKey(path)
	if err != nil {
		t.Fatalf("second: %v", err)
	}
	if first.ID() != second.ID() || !bytes.Equal(first.Hash("A1234BC"), second.Hash("A1234BC")) {
		t.Errorf("second start has key %v, want the first's %v", second, first)
	}
	if loaded, err := ledger.LoadPersonKey(path); err != nil || loaded.ID() != first.ID() {
		t.Errorf("LoadPersonKey of dev's file = %v, %v; want %v (serve reads what dev writes)", loaded, err, first)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
	// Another deployment (another data dir) makes another key.
	other, err := ledger.EnsurePersonKey(filepath.Join(t.TempDir(), "person-hash.key"))
	if err != nil {
		t.Fatal(err)
	}
	if other.ID() == first.ID() {
		t.Error("two data dirs got the same key")
	}
	// A damaged key file is an error, never silently replaced.
	if err := os.WriteFile(path, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ledger.EnsurePersonKey(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("damaged key file: got %v; want an error naming %s", err, path)
	}
}

func TestZeroPersonKeyRefusesToHash(t *testing.T) {
	var zero ledger.PersonKey
	if !zero.IsZero() || testPersonKey.IsZero() {
		t.Fatalf("IsZero: zero %v, generated %v", zero.IsZero(), testPersonKey.IsZero())
	}
	defer func() {
		if recover() == nil {
			t.Error("Hash with the zero key: no panic; an unkeyed reference would be stored")
		}
	}()
	zero.Hash("A1234BC")
}
