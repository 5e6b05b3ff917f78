// Package image assembles the container image of the throughcare binary from scratch, with
// no Docker daemon and no base image, so that the same inputs always give the same digest.
package image

import (
	"archive/tar"
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What the image holds and how it runs.
const (
	BinaryPath   = "/throughcare"
	CABundlePath = "/etc/ssl/certs/ca-certificates.crt"
	UID          = 65532
	UserName     = "throughcare"
	Source       = "https://github.com/throughcare/throughcare"
)

// Inputs is everything the image is made of: equal Inputs give an equal digest.
type Inputs struct {
	Binary   []byte    // the static linux throughcare executable
	CABundle []byte    // PEM certificates, for outbound TLS that trusts public CAs
	Arch     string    // GOARCH the binary was built for: amd64 or arm64
	Created  time.Time // the image's creation time and every file's mtime
	Revision string    // the git commit the binary was built from
}

// Build assembles the image: one layer holding the binary, the user and the CA bundle.
func Build(in Inputs) (v1.Image, error) {
	if len(in.Binary) == 0 {
		return nil, errors.New("no binary")
	}
	if err := CheckCABundle(in.CABundle); err != nil {
		return nil, err
	}
	if err := checkArch(in.Arch); err != nil {
		return nil, err
	}
	if in.Revision == "" {
		in.Revision = "unknown"
	}
	// UTC, or the config would carry this machine's zone; whole seconds, as tar keeps them.
	created := in.Created.UTC().Truncate(time.Second)

	tarBytes, err := layerTar(in.Binary, in.CABundle, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, err
	}

	// empty.Image has Docker media types; an OCI image needs OCI ones throughout.
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: "go run ./tools/image"},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	cf.OS = "linux"
	cf.Architecture = in.Arch
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", UID, UID),
		Entrypoint: []string{BinaryPath},
		// serve is the one-agency command a deployment runs; its flags come from
		// THROUGHCARE_* variables or are appended to the command.
		Cmd:        []string{"serve"},
		Env:        []string{"SSL_CERT_FILE=" + CABundlePath},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.source":   Source,
			"org.opencontainers.image.title":    "throughcare",
			"org.opencontainers.image.revision": in.Revision,
		},
	}
	return mutate.ConfigFile(img, cf)
}

// CheckCABundle wants at least one PEM certificate, so that a wrong file fails the build
// rather than every TLS connection of the service.
func CheckCABundle(pem []byte) error {
	if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		return errors.New("CA bundle holds no PEM certificate")
	}
	return nil
}

func checkArch(arch string) error {
	if arch != "amd64" && arch != "arm64" {
		return fmt.Errorf("arch %q: want amd64 or arm64", arch)
	}
	return nil
}

// layerTar writes the layer's files in sorted order, all owned by root and readable by
// everyone: the service runs as 65532, reads what it needs and can change none of it.
func layerTar(binary, caBundle []byte, mtime time.Time) ([]byte, error) {
	uid := fmt.Sprint(UID)
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n" +
		UserName + ":x:" + uid + ":" + uid + ":" + UserName + ":/nonexistent:/sbin/nologin\n"
	group := "root:x:0:\n" + UserName + ":x:" + uid + ":\n"
	entries := []struct {
		name string
		mode int64
		body []byte // nil for a directory
	}{
		{"etc/", 0o755, nil},
		{"etc/group", 0o644, []byte(group)},
		{"etc/passwd", 0o644, []byte(passwd)},
		{"etc/ssl/", 0o755, nil},
		{"etc/ssl/certs/", 0o755, nil},
		{strings.TrimPrefix(CABundlePath, "/"), 0o644, caBundle},
		{strings.TrimPrefix(BinaryPath, "/"), 0o755, binary},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			Size:    int64(len(e.body)),
			ModTime: mtime,
			Uname:   "root",
			Gname:   "root",
			// USTAR: no PAX records, so no access or change times sneak in.
			Format: tar.FormatUSTAR,
		}
		h.Typeflag = tar.TypeReg
		if e.body == nil {
			h.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Paths are where Write put the image.
type Paths struct {
	Layout  string // OCI image layout directory
	Tarball string // docker load / podman load tarball
}

// Write puts the image under dir as an OCI layout (dir/oci) and a tarball
// (dir/throughcare.tar) tagged tag, replacing earlier ones: the layout is made anew so that
// no blob of an earlier build stays in it.
func Write(img v1.Image, dir, tag string) (Paths, error) {
	ref, err := name.NewTag(tag)
	if err != nil {
		return Paths{}, fmt.Errorf("tag %q: %w", tag, err)
	}
	p := Paths{Layout: filepath.Join(dir, "oci"), Tarball: filepath.Join(dir, "throughcare.tar")}
	if err := os.RemoveAll(p.Layout); err != nil {
		return Paths{}, err
	}
	lp, err := layout.Write(p.Layout, empty.Index)
	if err != nil {
		return Paths{}, err
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref.TagStr(),
	})); err != nil {
		return Paths{}, err
	}
	if err := tarball.WriteToFile(p.Tarball, ref, img); err != nil {
		return Paths{}, err
	}
	return p, nil
}
