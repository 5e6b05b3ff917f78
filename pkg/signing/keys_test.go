package signing_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/signing"
)

// testAgencies are the default protocol's agencies.
var testAgencies = protocol.Default().Agencies()

func TestGenerateKeyIDNamesAgencyDayAndKey(t *testing.T) {
	for agency, want := range map[string]*regexp.Regexp{
		prison:     regexp.MustCompile(`^prison-20261122-[0-9a-f]{16}$`),
		probation:  regexp.MustCompile(`^probation-20261122-[0-9a-f]{16}$`),
		socialWork: regexp.MustCompile(`^socialwork-20261122-[0-9a-f]{16}$`),
	} {
		a, b := generateKey(t, agency), generateKey(t, agency)
		if !want.MatchString(a.ID) || a.Agency != agency {
			t.Errorf("GenerateKey(%s) = %s of %s, want an id matching %s", agency, a.ID, a.Agency, want)
		}
		if a.ID == b.ID || a.Private.Equal(b.Private) {
			t.Errorf("two keys for %s on one day are the same: %s, %s", agency, a.ID, b.ID)
		}
	}
	for _, agency := range []string{"", "Prison", "social_work", "socialwork.x"} {
		if key, err := signing.GenerateKey(agency, occurred()); err == nil {
			t.Errorf("GenerateKey(%v) = %s, want an error", agency, key.ID)
		}
	}
}

// Key ids and file names spell agencies as subjects do, without importing eventbus.
func TestKeyIDsStartWithTheAgencySubjectToken(t *testing.T) {
	for _, agency := range testAgencies.IDs() {
		if id := generateKey(t, agency).ID; !strings.HasPrefix(id, agency+"-") {
			t.Errorf("key id %s does not start with %s-", id, agency)
		}
	}
}

func TestKeyringAddRefusesConflictsAndBadKeys(t *testing.T) {
	key := generateKey(t, prison)
	keyring := keyringOf(t, key)
	if err := keyring.Add(key.Public()); err != nil {
		t.Errorf("adding the same key again = %v, want nil", err)
	}
	other := generateKey(t, prison).Public()
	for name, pub := range map[string]signing.PublicKey{
		"another key under a known id":   {ID: key.ID, Agency: prison, Public: other.Public},
		"a known key for another agency": {ID: key.ID, Agency: probation, Public: key.Public().Public},
		"no agency":                      {ID: "x-1", Public: other.Public},
		"id with a space":                {ID: "prison 1", Agency: prison, Public: other.Public},
		"short public key":               {ID: "prison-short", Agency: prison, Public: other.Public[:31]},
	} {
		if err := keyring.Add(pub); err == nil {
			t.Errorf("Add(%s) = nil, want an error", name)
		}
	}
	if got, ok := keyring.Lookup(key.ID); !ok || !got.Public.Equal(key.Public().Public) {
		t.Errorf("Lookup(%s) = %v, %t after refused adds; want the original key", key.ID, got, ok)
	}
	if err := keyring.Add(signing.Key{ID: "prison-nokey", Agency: prison}.Public()); err == nil {
		t.Error("Add(public half of an empty key) = nil, want an error")
	}
	if err := keyring.Retire("prison-unknown", occurred()); err == nil {
		t.Error("Retire(unknown id) = nil, want an error")
	}
}

func TestKeyringSaveLoadRoundTrip(t *testing.T) {
	keys := []signing.Key{generateKey(t, prison), generateKey(t, prison), generateKey(t, probation), generateKey(t, socialWork)}
	keyring := keyringOf(t, keys...)
	retiredAt := time.Date(2026, 11, 22, 10, 0, 0, 5, time.FixedZone("CET", 3600))
	if err := keyring.Retire(keys[0].ID, retiredAt); err != nil {
		t.Fatalf("retire: %v", err)
	}
	path := filepath.Join(t.TempDir(), "keyring.json")
	if err := keyring.Save(path); err != nil {
		t.Fatalf("save: %v", err)
	}
	loaded, err := signing.LoadKeyring(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	for _, key := range keys {
		want, _ := keyring.Lookup(key.ID)
		got, ok := loaded.Lookup(key.ID)
		if !ok || got.ID != want.ID || got.Agency != want.Agency || !got.Public.Equal(want.Public) || !got.NotAfter.Equal(want.NotAfter) {
			t.Errorf("loaded %s = %+v, %t; want %+v", key.ID, got, ok, want)
		}
	}
	// Saving what was loaded gives the same file: the format is stable for diffs.
	again := filepath.Join(t.TempDir(), "keyring.json")
	if err := loaded.Save(again); err != nil {
		t.Fatalf("save again: %v", err)
	}
	first, _ := os.ReadFile(path)
	second, _ := os.ReadFile(again)
	if !bytes.Equal(first, second) {
		t.Errorf("saving a loaded keyring changed the file:\n%s\nwant\n%s", second, first)
	}
	if strings.Count(string(first), "not_after") != 1 {
		t.Errorf("file lists not_after for other than the one retired key:\n%s", first)
	}
}

func TestLoadKeyringNamesFileAndProblem(t *testing.T) {
	pub := base64.StdEncoding.EncodeToString(generateKey(t, prison).Public().Public)
	entry := func(agency, id, key string) string {
		return `{"keys": [{"agency": "` + agency + `", "key_id": "` + id + `", "public_key": "` + key + `"}]}`
	}
	for name, tc := range map[string]struct{ content, problem string }{
		"not JSON":          {"agency: AGENCY_PRISON", "invalid character"},
		"misspelt field":    {`{"keys": [{"agency": "AGENCY_PRISON", "key_id": "prison-1", "public_key": "` + pub + `", "notafter": "2026-01-01T00:00:00Z"}]}`, "notafter"},
		"bad not_after":     {`{"keys": [{"agency": "AGENCY_PRISON", "key_id": "prison-1", "public_key": "` + pub + `", "not_after": "yesterday"}]}`, "yesterday"},
		"no keys":           {`{"keys": []}`, "no keys"},
		"empty":             {``, "EOF"},
		"two values":        {entry("AGENCY_PRISON", "prison-1", pub) + `{}`, "more than one"},
		"malformed agency":  {entry("Police!", "police-1", pub), `"Police!"`},
		"agency token":      {entry("social_work", "sw-1", pub), `"social_work"`},
		"id with a dot":     {entry("AGENCY_PRISON", "prison.1", pub), "prison.1"},
		"public key base64": {entry("AGENCY_PRISON", "prison-1", "not base64!"), "not base64"},
		"short public key":  {entry("AGENCY_PRISON", "prison-1", base64.StdEncoding.EncodeToString(make([]byte, 31))), "31 bytes"},
		"id listed twice": {`{"keys": [{"agency": "AGENCY_PRISON", "key_id": "prison-1", "public_key": "` + pub + `"},
			{"agency": "AGENCY_PRISON", "key_id": "prison-1", "public_key": "` + pub + `"}]}`, "listed twice"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keyring.json")
			if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := signing.LoadKeyring(path)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.problem) {
				t.Errorf("LoadKeyring = %v, want an error naming %s and %q", err, path, tc.problem)
			}
		})
	}
	missing := filepath.Join(t.TempDir(), "missing.json")
	if _, err := signing.LoadKeyring(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("LoadKeyring(missing) = %v, want ErrNotExist naming the file", err)
	}
}

func TestPrivateKeySaveLoadRoundTrip(t *testing.T) {
	key := generateKey(t, socialWork)
	path := filepath.Join(t.TempDir(), "socialwork.key")
	if err := signing.SavePrivateKey(path, key); err != nil {
		t.Fatalf("save: %v", err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode = %v, want 0600", perm)
	}
	got, err := signing.LoadPrivateKey(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if got.ID != key.ID || got.Agency != key.Agency || !got.Private.Equal(key.Private) {
		t.Errorf("loaded %s of %s, want %s of %s with the same private key", got.ID, got.Agency, key.ID, key.Agency)
	}

	before, _ := os.ReadFile(path)
	if err := signing.SavePrivateKey(path, generateKey(t, socialWork)); !errors.Is(err, fs.ErrExist) {
		t.Errorf("saving over an existing key = %v, want ErrExist", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("a refused save changed the key file")
	}
}

// Operators inspect and make keys with openssl, which refuses headers inside the block.
func TestPrivateKeyFileWorksWithOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("no openssl on PATH")
	}
	dir := t.TempDir()
	key := generateKey(t, prison)
	ours := filepath.Join(dir, "ours.key")
	if err := signing.SavePrivateKey(ours, key); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(openssl, "pkey", "-in", ours, "-noout").CombinedOutput(); err != nil {
		t.Errorf("openssl pkey -in %s: %v\n%s", ours, err, out)
	}

	theirs, err := exec.Command(openssl, "genpkey", "-algorithm", "ed25519").Output()
	if err != nil {
		t.Fatalf("openssl genpkey: %v", err)
	}
	path := filepath.Join(dir, "theirs.key")
	content := append([]byte("Agency: AGENCY_PRISON\nKey-Id: prison-2026-11\n"), theirs...)
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := signing.LoadPrivateKey(path)
	if err != nil || got.ID != "prison-2026-11" || got.Agency != prison {
		t.Errorf("LoadPrivateKey(openssl key) = %s of %s, %v; want prison-2026-11 of %s", got.ID, got.Agency, err, prison)
	}
}

func TestLoadPrivateKeyNamesFileAndProblem(t *testing.T) {
	key := generateKey(t, prison)
	ed25519DER, err := x509.MarshalPKCS8PrivateKey(key.Private)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	block := func(typ string, der []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	}
	labels := "Agency: AGENCY_PRISON\nKey-Id: prison-1\n"
	for name, tc := range map[string]struct{ content, problem string }{
		"empty":            {"", "no PEM block"},
		"raw base64":       {base64.StdEncoding.EncodeToString(ed25519DER), "no PEM block"},
		"other PEM type":   {labels + block("OPENSSH PRIVATE KEY", ed25519DER), "OPENSSH PRIVATE KEY"},
		"not PKCS#8":       {labels + block("PRIVATE KEY", []byte("garbage")), "not PKCS#8"},
		"ECDSA key":        {labels + block("PRIVATE KEY", ecDER), "ecdsa"},
		"no labels":        {block("PRIVATE KEY", ed25519DER), "Agency line"},
		"malformed agency": {"Agency: Police!\nKey-Id: police-1\n" + block("PRIVATE KEY", ed25519DER), "Police!"},
		"no key id":        {"Agency: AGENCY_PRISON\n" + block("PRIVATE KEY", ed25519DER), "Key-Id line"},
		"key id with dot":  {"Agency: AGENCY_PRISON\nKey-Id: prison.1\n" + block("PRIVATE KEY", ed25519DER), "prison.1"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "prison.key")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := signing.LoadPrivateKey(path)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.problem) {
				t.Errorf("LoadPrivateKey = %v, want an error naming %s and %q", err, path, tc.problem)
			}
		})
	}
}

func TestEnsureMakesKeysOnceAndLoadsThemAfter(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	agencies := []string{prison, probation, socialWork}
	keyring, keys, err := signing.Ensure(dir, agencies, occurred())
	if err != nil {
		t.Fatalf("first Ensure: %v", err)
	}
	files := readDir(t, dir)
	for _, name := range []string{"prison.key", "probation.key", "socialwork.key", "keyring.json"} {
		if _, ok := files[name]; !ok {
			t.Errorf("Ensure made no %s; dir has %v", name, files)
		}
	}
	if len(files) != 4 {
		t.Errorf("dir holds %d files, want 4: %v", len(files), files)
	}

	again, keysAgain, err := signing.Ensure(dir, agencies, occurred().Add(24*time.Hour))
	if err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	for _, agency := range agencies {
		first, second := keys[agency], keysAgain[agency]
		if first.ID != second.ID || !first.Private.Equal(second.Private) {
			t.Errorf("%s key changed from %s to %s", agency, first.ID, second.ID)
		}
		// Events signed with the key verify with the keyring from either call.
		ev := referral()
		ev.Source = agency
		sign(t, ev, second)
		for _, k := range []*signing.Keyring{keyring, again} {
			if err := signing.NewVerifier(k).Verify(ev); err != nil {
				t.Errorf("Verify(%s event) = %v", agency, err)
			}
		}
	}
	if after := readDir(t, dir); !maps.Equal(files, after) {
		t.Errorf("second Ensure changed files:\n%v\nwant\n%v", after, files)
	}
}

func TestEnsureKeepsExistingKeysAndAddsMissingOnes(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := signing.Ensure(dir, []string{prison}, occurred()); err != nil {
		t.Fatal(err)
	}
	// An operator-provided probation key is used as it is.
	provided := generateKey(t, probation)
	if err := signing.SavePrivateKey(filepath.Join(dir, "probation.key"), provided); err != nil {
		t.Fatal(err)
	}
	prisonKey, _ := os.ReadFile(filepath.Join(dir, "prison.key"))

	keyring, keys, err := signing.Ensure(dir, []string{prison, probation, socialWork}, occurred())
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if got := keys[probation]; got.ID != provided.ID || !got.Private.Equal(provided.Private) {
		t.Errorf("probation key = %s, want the provided %s", got.ID, provided.ID)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "prison.key")); !bytes.Equal(after, prisonKey) {
		t.Error("Ensure rewrote prison.key")
	}
	loaded, err := signing.LoadKeyring(filepath.Join(dir, "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range keys {
		for name, k := range map[string]*signing.Keyring{"returned": keyring, "saved": loaded} {
			if _, ok := k.Lookup(key.ID); !ok {
				t.Errorf("%s keyring lacks %s", name, key.ID)
			}
		}
	}
}

func TestEnsureRefusesKeyFileOfAnotherAgency(t *testing.T) {
	dir := t.TempDir()
	if err := signing.SavePrivateKey(filepath.Join(dir, "prison.key"), generateKey(t, probation)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := signing.Ensure(dir, []string{prison}, occurred()); err == nil || !strings.Contains(err.Error(), "prison.key") {
		t.Errorf("Ensure = %v, want an error naming prison.key", err)
	}
}

// readDir returns each file's content and mode.
func readDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := make(map[string]string)
	for _, entry := range entries {
		info, err := entry.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, entry.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[entry.Name()] = info.Mode().String() + "\n" + string(data)
	}
	return files
}
