package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Package is the command the image runs.
const Package = "github.com/throughcare/throughcare/cmd/throughcare"

// BuildBinary builds a static throughcare for linux/goarch and returns its bytes. The flags
// leave the binary depending on the source and the Go version alone: no cgo (static, no
// host libc), -trimpath (no path of this checkout), no build id, and no VCS stamp (the
// revision is in the image's label; stamping also fails where git cannot read the checkout).
func BuildBinary(ctx context.Context, goarch string) ([]byte, error) {
	if err := checkArch(goarch); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "throughcare-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "throughcare")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags=-s -w -buildid=", "-o", out, Package)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build %s: %w\n%s", Package, err, stderr.Bytes())
	}
	return os.ReadFile(out)
}

// Created is the image's time: SOURCE_DATE_EPOCH if set, else the commit time of HEAD, else
// the Unix epoch, so that it follows the source and never the clock.
func Created(ctx context.Context, getenv func(string) string) (time.Time, error) {
	if s := getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970", s)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	if s, err := git(ctx, "log", "-1", "--format=%ct"); err == nil {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(n, 0).UTC(), nil
		}
	}
	return time.Unix(0, 0).UTC(), nil
}

// Revision is the commit of HEAD, or "unknown" outside a git checkout.
func Revision(ctx context.Context) string {
	if s, err := git(ctx, "rev-parse", "HEAD"); err == nil {
		return s
	}
	return "unknown"
}

// Version names the tree for the image's tag: the nearest tag or short commit, -dirty when
// the tree has changes; "dev" outside a git checkout.
func Version(ctx context.Context) string {
	if s, err := git(ctx, "describe", "--tags", "--always", "--dirty"); err == nil {
		return s
	}
	return "dev"
}

func git(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "git", args...).Output()
	s := strings.TrimSpace(string(out))
	if err == nil && s == "" {
		err = fmt.Errorf("git %s: no output", strings.Join(args, " "))
	}
	return s, err
}
