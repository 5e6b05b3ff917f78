package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	throughcareagency "github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/records"
)

// Key is an agency's private signing key.
type Key struct {
	// ID names the key in events' key_id; subject-safe, e.g. "prison-20261105-1a2b3c4d5e6f7a8b".
	ID      string
	Agency  string
	Private ed25519.PrivateKey
}

// PublicKey is what receivers hold of another agency's key.
type PublicKey struct {
	ID     string
	Agency string
	Public ed25519.PublicKey
	// NotAfter is when the key was retired: events occurring after it are refused.
	// Zero means the key is current.
	NotAfter time.Time
}

// Public returns the public half of k; its Public is nil if k holds no valid private key.
func (k Key) Public() PublicKey {
	pub := PublicKey{ID: k.ID, Agency: k.Agency}
	if len(k.Private) == ed25519.PrivateKeySize {
		pub.Public = k.Private.Public().(ed25519.PublicKey)
	}
	return pub
}

// GenerateKey makes a new key for agency. Its id is the agency, the day it was made, and
// the start of the public key's SHA-256, so keys made on the same day still differ.
func GenerateKey(agency string, now time.Time) (Key, error) {
	token, err := agencyToken(agency)
	if err != nil {
		return Key{}, fmt.Errorf("generate key: %w", err)
	}
	public, private, err := ed25519.GenerateKey(nil)
	if err != nil {
		return Key{}, fmt.Errorf("generate key for %s: %w", agency, err)
	}
	sum := sha256.Sum256(public)
	id := token + "-" + now.UTC().Format("20060102") + "-" + hex.EncodeToString(sum[:8])
	return Key{ID: id, Agency: agency, Private: private}, nil
}

// agencyToken checks that agency is an agency id, which key ids and file names start with.
func agencyToken(agency string) (string, error) {
	if !throughcareagency.ValidID(agency) {
		return "", fmt.Errorf("%q is not an agency id", agency)
	}
	return agency, nil
}

// agencyOfLabel reads the agency a key file or keyring names: its id, or the enum name
// files written before agencies were ids hold (AGENCY_SOCIAL_WORK is socialwork).
func agencyOfLabel(label string) string {
	if id, legacy := strings.CutPrefix(label, "AGENCY_"); legacy {
		return strings.ReplaceAll(strings.ToLower(id), "_", "")
	}
	return label
}

// validKeyID reports whether id is safe as a NATS subject token and a KV key.
func validKeyID(id string) bool { return records.ValidKey(id) }

// Keyring holds the public keys of every agency, old ones included, so events signed
// before a rotation still verify. The zero value is an empty keyring. It is not safe for
// concurrent changes; a Verifier works on its own copy.
type Keyring struct {
	keys map[string]PublicKey
}

// Add puts pub on the keyring. Adding a key again is a no-op; another key under a known
// id is refused.
func (k *Keyring) Add(pub PublicKey) error {
	if _, err := agencyToken(pub.Agency); err != nil {
		return fmt.Errorf("add key %q: %w", pub.ID, err)
	}
	if !validKeyID(pub.ID) {
		return fmt.Errorf("add key %q: id must be 1-128 of A-Z a-z 0-9 _ -", pub.ID)
	}
	if len(pub.Public) != ed25519.PublicKeySize {
		return fmt.Errorf("add key %s: public key is %d bytes, want %d", pub.ID, len(pub.Public), ed25519.PublicKeySize)
	}
	if known, ok := k.keys[pub.ID]; ok {
		if known.Agency != pub.Agency || !known.Public.Equal(pub.Public) || !known.NotAfter.Equal(pub.NotAfter) {
			return fmt.Errorf("add key %s: the keyring holds a different key under that id", pub.ID)
		}
		return nil
	}
	if k.keys == nil {
		k.keys = make(map[string]PublicKey)
	}
	pub.Public = bytes.Clone(pub.Public)
	k.keys[pub.ID] = pub
	return nil
}

// Retire marks the key id as no longer used for events occurring after notAfter. The
// key stays on the keyring so earlier events still verify.
func (k *Keyring) Retire(id string, notAfter time.Time) error {
	pub, ok := k.keys[id]
	if !ok {
		return fmt.Errorf("retire key %q: not on the keyring", id)
	}
	pub.NotAfter = notAfter
	k.keys[id] = pub
	return nil
}

// Lookup returns the key with the given id.
func (k *Keyring) Lookup(id string) (PublicKey, bool) {
	pub, ok := k.keys[id]
	return pub, ok
}

// keyringFile is the keyring as distributed with the configuration, e.g.
//
//	{"keys": [{"agency": "prison", "key_id": "prison-20261105-1a2b3c4d5e6f7a8b",
//	           "public_key": "<base64>", "not_after": "2026-11-05T00:00:00Z"}]}
type keyringFile struct {
	Keys []keyringEntry `json:"keys"`
}

type keyringEntry struct {
	Agency    string    `json:"agency"`
	KeyID     string    `json:"key_id"`
	PublicKey string    `json:"public_key"`
	NotAfter  time.Time `json:"not_after,omitzero"`
}

// LoadKeyring reads a keyring file written by Save or by hand. Unknown fields are refused,
// so a misspelt not_after cannot silently keep a retired key current.
func LoadKeyring(path string) (*Keyring, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load keyring: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var file keyringFile
	if err := dec.Decode(&file); err != nil {
		return nil, fmt.Errorf("keyring %s: %w", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("keyring %s: more than one JSON value", path)
	}
	if len(file.Keys) == 0 {
		return nil, fmt.Errorf("keyring %s lists no keys", path)
	}
	keyring := new(Keyring)
	for i, entry := range file.Keys {
		pub := PublicKey{ID: entry.KeyID, Agency: agencyOfLabel(entry.Agency), NotAfter: entry.NotAfter}
		pub.Public, err = base64.StdEncoding.DecodeString(entry.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("keyring %s: key %d (%q): public_key is not base64", path, i, entry.KeyID)
		}
		if _, dup := keyring.Lookup(pub.ID); dup {
			return nil, fmt.Errorf("keyring %s: key %d: id %q is listed twice", path, i, entry.KeyID)
		}
		if err := keyring.Add(pub); err != nil {
			return nil, fmt.Errorf("keyring %s: key %d (agency %q): %w", path, i, entry.Agency, err)
		}
	}
	return keyring, nil
}

// Save writes the keyring, sorted by key id, replacing path in one rename so a reader
// never sees half a file.
func (k *Keyring) Save(path string) error {
	ids := slices.Sorted(maps.Keys(k.keys))
	file := keyringFile{Keys: make([]keyringEntry, 0, len(ids))}
	for _, id := range ids {
		pub := k.keys[id]
		file.Keys = append(file.Keys, keyringEntry{
			Agency:    pub.Agency,
			KeyID:     pub.ID,
			PublicKey: base64.StdEncoding.EncodeToString(pub.Public),
			NotAfter:  pub.NotAfter.UTC(),
		})
	}
	data, err := json.MarshalIndent(file, "", "  ")
	if err != nil {
		return fmt.Errorf("save keyring %s: %w", path, err)
	}
	if err := writeFileAtomic(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("save keyring %s: %w", path, err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// The agency and key id, which PKCS#8 has no room for, go in "Name: value" lines of
// explanatory text before the PEM block (RFC 7468, section 5.2). PEM headers inside the
// block would be tidier, but openssl refuses them on a PRIVATE KEY block.
const (
	pemType     = "PRIVATE KEY"
	pemBegin    = "-----BEGIN "
	labelAgency = "Agency"
	labelKeyID  = "Key-Id"
)

// SavePrivateKey writes key as a PKCS#8 "PRIVATE KEY" PEM block, readable by its owner
// only, preceded by its agency and key id. It never replaces an existing file.
func SavePrivateKey(path string, key Key) error {
	if len(key.Private) != ed25519.PrivateKeySize {
		return fmt.Errorf("save private key %s: not an Ed25519 private key", path)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key.Private)
	if err != nil {
		return fmt.Errorf("save private key %s: %w", path, err)
	}
	text := fmt.Appendf(nil, "%s: %s\n%s: %s\n", labelAgency, key.Agency, labelKeyID, key.ID)
	text = append(text, pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der})...)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("save private key: %w", err)
	}
	_, err = f.Write(text)
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("save private key %s: %w", path, err)
	}
	return nil
}

// LoadPrivateKey reads a key written by SavePrivateKey. A key made elsewhere (openssl
// genpkey -algorithm ed25519) needs the "Agency: <agency id>" and "Key-Id: ..." lines
// added above it.
func LoadPrivateKey(path string) (Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("load private key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return Key{}, fmt.Errorf("private key %s: no PEM block", path)
	}
	if block.Type != pemType {
		return Key{}, fmt.Errorf("private key %s: PEM block is %q, want %q", path, block.Type, pemType)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return Key{}, fmt.Errorf("private key %s: not PKCS#8: %w", path, err)
	}
	private, ok := parsed.(ed25519.PrivateKey)
	if !ok {
		return Key{}, fmt.Errorf("private key %s: holds a %T, want an Ed25519 key", path, parsed)
	}
	labels := make(map[string]string)
	before, _, _ := bytes.Cut(data, []byte(pemBegin))
	for line := range strings.Lines(string(before)) {
		if name, value, ok := strings.Cut(line, ":"); ok {
			labels[strings.TrimSpace(name)] = strings.TrimSpace(value)
		}
	}
	key := Key{
		ID:      labels[labelKeyID],
		Agency:  agencyOfLabel(labels[labelAgency]),
		Private: private,
	}
	if _, err := agencyToken(key.Agency); err != nil {
		return Key{}, fmt.Errorf("private key %s: %s line %q does not name an agency id such as prison", path, labelAgency, labels[labelAgency])
	}
	if !validKeyID(key.ID) {
		return Key{}, fmt.Errorf("private key %s: %s line %q is not 1-128 of A-Z a-z 0-9 _ -", path, labelKeyID, key.ID)
	}
	return key, nil
}

// Ensure gives `throughcare dev` a key per agency without any setup: on first start it
// makes dir/<agency>.key for each agency and dir/keyring.json with their public keys;
// later it loads them. It never replaces a key file; it only adds missing keys to the
// keyring.
func Ensure(dir string, agencies []string, now time.Time) (*Keyring, map[string]Key, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("ensure keys: %w", err)
	}
	keyringPath := filepath.Join(dir, "keyring.json")
	keyring, err := LoadKeyring(keyringPath)
	if errors.Is(err, fs.ErrNotExist) {
		keyring, err = new(Keyring), nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("ensure keys: %w", err)
	}
	keys := make(map[string]Key, len(agencies))
	added := false
	for _, agency := range agencies {
		key, err := ensureKey(dir, agency, now)
		if err != nil {
			return nil, nil, fmt.Errorf("ensure keys: %w", err)
		}
		pub := key.Public()
		known, ok := keyring.Lookup(pub.ID)
		switch {
		case !ok:
			if err := keyring.Add(pub); err != nil {
				return nil, nil, fmt.Errorf("ensure keys: %w", err)
			}
			added = true
		case known.Agency != pub.Agency || !known.Public.Equal(pub.Public):
			return nil, nil, fmt.Errorf("ensure keys: keyring %s holds another public key for %s", keyringPath, pub.ID)
		}
		keys[agency] = key
	}
	if added {
		if err := keyring.Save(keyringPath); err != nil {
			return nil, nil, fmt.Errorf("ensure keys: %w", err)
		}
	}
	return keyring, keys, nil
}

// ensureKey loads agency's key from dir, making it first if there is none.
func ensureKey(dir string, agency string, now time.Time) (Key, error) {
	token, err := agencyToken(agency)
	if err != nil {
		return Key{}, err
	}
	path := filepath.Join(dir, token+".key")
	key, err := LoadPrivateKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		if key, err = GenerateKey(agency, now); err != nil {
			return Key{}, err
		}
		err = SavePrivateKey(path, key)
	}
	if err != nil {
		return Key{}, err
	}
	if key.Agency != agency {
		return Key{}, fmt.Errorf("private key %s belongs to %s, want %s", path, key.Agency, agency)
	}
	return key, nil
}
