package image

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"crypto/x509/pkix"
	"debug/buildinfo"
	"debug/elf"
	"encoding/pem"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// testCA is a PEM certificate that is the same on every call: ed25519 signatures are
// deterministic, and the key and template are fixed.
func testCA(t *testing.T, cn string) []byte {
	t.Helper()
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Unix(1<<32, 0),
		IsCA:         true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func testInputs(t *testing.T) Inputs {
	return Inputs{
		Binary:   []byte("\x7fELF not really a binary"),
		CABundle: testCA(t, "test root"),
		Arch:     "amd64",
		Created:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Revision: "0123456789abcdef0123456789abcdef01234567",
	}
}

func digest(t *testing.T, in Inputs) v1.Hash {
	t.Helper()
	img, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSameInputsSameDigestAndEachInputCounts(t *testing.T) {
	base := digest(t, testInputs(t))
	if again := digest(t, testInputs(t)); again != base {
		t.Fatalf("same inputs, two digests: %s and %s", base, again)
	}
	changes := map[string]func(*Inputs){
		"binary":   func(in *Inputs) { in.Binary = append(in.Binary, 0) },
		"CA":       func(in *Inputs) { in.CABundle = testCA(t, "other root") },
		"created":  func(in *Inputs) { in.Created = in.Created.Add(time.Second) },
		"arch":     func(in *Inputs) { in.Arch = "arm64" },
		"revision": func(in *Inputs) { in.Revision = "unknown" },
	}
	seen := map[v1.Hash]string{base: "base"}
	for what, change := range changes {
		in := testInputs(t)
		change(&in)
		d := digest(t, in)
		if other, ok := seen[d]; ok {
			t.Errorf("changing the %s gives the digest of %s: %s", what, other, d)
		}
		seen[d] = what
	}
}

func TestBuildRefusesBadInputs(t *testing.T) {
	for what, change := range map[string]func(*Inputs){
		"no binary":     func(in *Inputs) { in.Binary = nil },
		"no CA":         func(in *Inputs) { in.CABundle = nil },
		"CA is not PEM": func(in *Inputs) { in.CABundle = []byte("not a certificate") },
		"arch":          func(in *Inputs) { in.Arch = "386" },
	} {
		in := testInputs(t)
		change(&in)
		if _, err := Build(in); err == nil {
			t.Errorf("%s: built", what)
		}
	}
}

func TestConfig(t *testing.T) {
	in := testInputs(t)
	img, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("manifest %s, config %s: want OCI media types", m.MediaType, m.Config.MediaType)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCILayer {
		t.Errorf("layers %+v: want one %s", m.Layers, types.OCILayer)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	want := v1.Config{
		User:       "65532:65532",
		Entrypoint: []string{"/throughcare"},
		Cmd:        []string{"serve"},
		Env:        []string{"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.source":   "https://github.com/throughcare/throughcare",
			"org.opencontainers.image.title":    "throughcare",
			"org.opencontainers.image.revision": in.Revision,
		},
	}
	if !reflect.DeepEqual(cf.Config, want) {
		t.Errorf("config\n got %+v\nwant %+v", cf.Config, want)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s: want linux/amd64", cf.OS, cf.Architecture)
	}
	if !cf.Created.Equal(in.Created) || len(cf.History) != 1 || !cf.History[0].Created.Equal(in.Created) {
		t.Errorf("created %s, history %+v: want %s", cf.Created, cf.History, in.Created)
	}

	in.Revision = ""
	img, err = Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if cf, err = img.ConfigFile(); err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Labels["org.opencontainers.image.revision"]; got != "unknown" {
		t.Errorf("no revision: label %q, want unknown", got)
	}
}

func TestLayerFiles(t *testing.T) {
	in := testInputs(t)
	img, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()

	type file struct {
		mode int64
		body string // "" for a directory
	}
	want := map[string]file{
		"etc/":                              {0o755, ""},
		"etc/group":                         {0o644, "root:x:0:\nthroughcare:x:65532:\n"},
		"etc/passwd":                        {0o644, "root:x:0:0:root:/root:/sbin/nologin\nthroughcare:x:65532:65532:throughcare:/nonexistent:/sbin/nologin\n"},
		"etc/ssl/":                          {0o755, ""},
		"etc/ssl/certs/":                    {0o755, ""},
		"etc/ssl/certs/ca-certificates.crt": {0o644, string(in.CABundle)},
		"throughcare":                       {0o755, string(in.Binary)},
	}
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		w, ok := want[h.Name]
		if !ok {
			t.Errorf("unexpected %s", h.Name)
			continue
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		wantType := byte(tar.TypeReg)
		if w.body == "" {
			wantType = tar.TypeDir
		}
		if h.Typeflag != wantType || h.Mode != w.mode || string(body) != w.body {
			t.Errorf("%s: type %c mode %o body %q; want type %c mode %o body %q",
				h.Name, h.Typeflag, h.Mode, body, wantType, w.mode, w.body)
		}
		// Owned by root, so the service (65532) cannot change them; readable by others, so
		// it needs no root to read them; the binary executable by others.
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "root" || h.Gname != "root" {
			t.Errorf("%s: owner %d:%d (%s:%s), want 0:0 (root:root)", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if h.Mode&0o004 == 0 || h.Mode&0o022 != 0 {
			t.Errorf("%s: mode %o, want readable and not writable by others", h.Name, h.Mode)
		}
		if h.Name == "throughcare" && h.Mode&0o001 == 0 {
			t.Errorf("throughcare: mode %o, not executable by a non-root user", h.Mode)
		}
		if !h.ModTime.Equal(in.Created) || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() || len(h.PAXRecords) != 0 {
			t.Errorf("%s: mtime %s atime %s ctime %s pax %v; want mtime %s and nothing else",
				h.Name, h.ModTime, h.AccessTime, h.ChangeTime, h.PAXRecords, in.Created)
		}
		if h.Format != tar.FormatUSTAR {
			t.Errorf("%s: format %s, want USTAR", h.Name, h.Format)
		}
	}
	if len(names) != len(want) {
		t.Errorf("layer holds %v, want %d entries", names, len(want))
	}
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			t.Errorf("entries not sorted: %s before %s", names[i-1], names[i])
		}
	}
	passwd := want["etc/passwd"].body
	if !strings.Contains(passwd, "\n"+UserName+":x:65532:65532:") || !strings.Contains(passwd, ":/nonexistent:") {
		t.Errorf("passwd %q has no user 65532 with home /nonexistent", passwd)
	}
}

func TestWriteReadsBack(t *testing.T) {
	img, err := Build(testInputs(t))
	if err != nil {
		t.Fatal(err)
	}
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	// Over an earlier build's output: Write replaces it rather than adding to it.
	earlier := testInputs(t)
	earlier.Binary = []byte("an earlier build")
	old, err := Build(earlier)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, i := range []v1.Image{old, img} {
		if _, err := Write(i, dir, "throughcare:test"); err != nil {
			t.Fatal(err)
		}
	}
	blobs, err := os.ReadDir(filepath.Join(dir, "oci", "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	if len(blobs) != 3 {
		t.Errorf("layout holds %d blobs, want 3: the manifest, the config and the layer", len(blobs))
	}

	idx, err := layout.ImageIndexFromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != want {
		t.Fatalf("layout index %+v, want the one image %s", im.Manifests, want)
	}
	if got := im.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; got != "test" {
		t.Errorf("layout ref.name %q, want test", got)
	}
	fromLayout, err := idx.Image(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(fromLayout); err != nil {
		t.Errorf("layout: %v", err)
	}
	if d, err := fromLayout.Digest(); err != nil || d != want {
		t.Errorf("layout: digest %s (%v), want %s", d, err, want)
	}

	// A docker-style tarball keeps no manifest (loading makes one), so what it must keep is
	// the config, whose digest is the image id that docker and podman show, and the layers.
	tag, err := name.NewTag("throughcare:test")
	if err != nil {
		t.Fatal(err)
	}
	fromTarball, err := tarball.ImageFromPath(filepath.Join(dir, "throughcare.tar"), &tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(fromTarball); err != nil {
		t.Errorf("tarball: %v", err)
	}
	for what, get := range map[string]func(v1.Image) (any, error){
		"config digest": func(i v1.Image) (any, error) { return i.ConfigName() },
		"layers": func(i v1.Image) (any, error) {
			m, err := i.Manifest()
			if err != nil {
				return nil, err
			}
			var ds []v1.Hash
			for _, l := range m.Layers {
				ds = append(ds, l.Digest)
			}
			return ds, nil
		},
	} {
		w, err1 := get(img)
		g, err2 := get(fromTarball)
		if err1 != nil || err2 != nil || !reflect.DeepEqual(g, w) {
			t.Errorf("tarball: %s %v (%v), want %v (%v)", what, g, err2, w, err1)
		}
	}
}

func TestCreated(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "SOURCE_DATE_EPOCH" {
				return v
			}
			return ""
		}
	}
	got, err := Created(t.Context(), env("1700000000"))
	if err != nil || !got.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("SOURCE_DATE_EPOCH=1700000000: %s, %v", got, err)
	}
	for _, bad := range []string{"yesterday", "-1", "1.5"} {
		if _, err := Created(t.Context(), env(bad)); err == nil {
			t.Errorf("SOURCE_DATE_EPOCH=%s: no error", bad)
		}
	}
}

// TestReproducibleBuild builds the real binary twice, as tools/image does, and wants the
// same bytes and the same image: the proof that the whole build, not only the assembling,
// is reproducible.
func TestReproducibleBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds throughcare twice: a minute or more with a cold build cache")
	}
	var bins [2][]byte
	var digests [2]v1.Hash
	for i := range bins {
		bin, err := BuildBinary(t.Context(), "amd64")
		if err != nil {
			t.Fatal(err)
		}
		in := testInputs(t)
		in.Binary = bin
		bins[i], digests[i] = bin, digest(t, in)
	}
	if !bytes.Equal(bins[0], bins[1]) {
		t.Fatalf("two builds of one tree differ: %d and %d bytes", len(bins[0]), len(bins[1]))
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds, two digests: %s and %s", digests[0], digests[1])
	}
	first := bins[0]

	// Static: an ELF for amd64 with no program interpreter (no dynamic loader, no libc).
	f, err := elf.NewFile(bytes.NewReader(first))
	if err != nil {
		t.Fatal(err)
	}
	if f.Machine != elf.EM_X86_64 {
		t.Errorf("machine %s, want x86-64", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has a program interpreter: it is not static")
		}
	}
	// The other flags took effect: -s -w (no symbols, no DWARF), -buildid= (no build id
	// note), -trimpath (no path of this checkout), no VCS stamp.
	for _, s := range f.Sections {
		if s.Name == ".symtab" || s.Name == ".note.go.buildid" || strings.Contains(s.Name, "debug_") {
			t.Errorf("binary has section %s", s.Name)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(first, []byte(root)) {
		t.Errorf("binary holds the path %s", root)
	}
	info, err := buildinfo.Read(bytes.NewReader(first))
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
		if strings.HasPrefix(s.Key, "vcs") {
			t.Errorf("binary is stamped %s=%s", s.Key, s.Value)
		}
	}
	for k, v := range map[string]string{"-trimpath": "true", "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64"} {
		if settings[k] != v {
			t.Errorf("built with %s=%q, want %q", k, settings[k], v)
		}
	}
}
