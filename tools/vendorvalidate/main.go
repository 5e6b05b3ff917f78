// Command vendorvalidate writes buf/validate/validate.proto from the descriptor compiled into
// the protovalidate Go module. There is no route to the Buf Schema Registry from our machines,
// so the vendored .proto is derived from the very module our generated code links against,
// which keeps the two from drifting apart.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"github.com/jhump/protoreflect/desc"
	"github.com/jhump/protoreflect/desc/protoprint"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: vendorvalidate OUTPUT_DIR")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "vendorvalidate:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	fd, err := desc.WrapFile(validatepb.File_buf_validate_validate_proto)
	if err != nil {
		return fmt.Errorf("wrap descriptor: %w", err)
	}
	p := protoprint.Printer{Compact: false, SortElements: false, Indent: "  "}
	path := filepath.Join(out, fd.GetName())
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(f, "// Derived by tools/vendorvalidate from the descriptor in the Go module\n// buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go. Do not edit.\n// Copyright 2023-2026 Buf Technologies, Inc. Licensed under the Apache License, Version 2.0:\n// see LICENSE beside this file.\n\n"); err != nil {
		return err
	}
	if err := p.PrintProtoFile(fd, f); err != nil {
		f.Close()
		return fmt.Errorf("print %s: %w", fd.GetName(), err)
	}
	return f.Close()
}
