// Command image builds the container image of throughcare with no Docker daemon and no base
// image: go run ./tools/image (or make image). It writes an OCI layout and a tarball that
// docker load and podman load read, and prints the digest; the same tree, Go version and CA
// bundle give the same digest. The assembling is in pkg/image.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/throughcare/throughcare/pkg/image"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	out := flag.String("out", "build/image", "directory for the OCI layout (oci/) and the tarball (throughcare.tar)")
	arch := flag.String("arch", "amd64", "GOARCH of the image: amd64 or arm64")
	caPath := flag.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "PEM CA bundle to ship at "+image.CABundlePath)
	tag := flag.String("tag", "", "tag in the tarball (default throughcare:<git describe>)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	if *tag == "" {
		*tag = "throughcare:" + image.Version(ctx)
	}

	ca, err := os.ReadFile(*caPath)
	if err != nil {
		return fmt.Errorf("CA bundle: %w (install ca-certificates or pass -ca-bundle)", err)
	}
	if err := image.CheckCABundle(ca); err != nil {
		return fmt.Errorf("%s: %w", *caPath, err)
	}
	created, err := image.Created(ctx, os.Getenv)
	if err != nil {
		return err
	}
	bin, err := image.BuildBinary(ctx, *arch)
	if err != nil {
		return err
	}
	img, err := image.Build(image.Inputs{
		Binary: bin, CABundle: ca, Arch: *arch, Created: created, Revision: image.Revision(ctx),
	})
	if err != nil {
		return err
	}
	paths, err := image.Write(img, *out, *tag)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	config, err := img.ConfigName()
	if err != nil {
		return err
	}
	fmt.Printf("digest  %s\nconfig  %s (the image id once loaded)\nlayout  %s\ntarball %s (%s)\n",
		digest, config, paths.Layout, paths.Tarball, *tag)
	return nil
}
