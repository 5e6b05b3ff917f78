// Command asyncapi writes the event catalogue, docs/events/asyncapi.yaml: an AsyncAPI 3.0
// document of every event the agencies exchange and of the FLOW stream's records, with
// each field's data category. It is generated from the contract's descriptors and from
// eventbus's and flow's own subjects and headers, so it cannot drift from them.
//
//	go run ./tools/asyncapi          # rewrite it
//	go run ./tools/asyncapi -check   # fail if it is not what the contract generates
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	out := flag.String("out", outPath, "file to write, relative to the repository root")
	check := flag.Bool("check", false, "compare the file with what the contract generates instead of writing it")
	flag.Parse()
	if err := run(*out, *check); err != nil {
		fmt.Fprintln(os.Stderr, "asyncapi:", err)
		os.Exit(1)
	}
}

func run(path string, check bool) error {
	want, err := generate()
	if err != nil {
		return err
	}
	if check {
		return compare(path, want)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, want, 0o644)
}

// compare fails unless the file at path is want, naming the first line that differs.
func compare(path string, want []byte) error {
	got, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: run `%s` and commit it", err, regenerate)
	}
	if bytes.Equal(got, want) {
		return nil
	}
	gotLines, wantLines := bytes.Split(got, []byte("\n")), bytes.Split(want, []byte("\n"))
	line := 0
	for line < len(gotLines) && line < len(wantLines) && bytes.Equal(gotLines[line], wantLines[line]) {
		line++
	}
	return fmt.Errorf("%s differs from what the contract generates, from line %d: run `%s` and commit it", path, line+1, regenerate)
}
