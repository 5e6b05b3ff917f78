package records_test

import (
	"fmt"
	"testing"

	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/records"
)

// BenchmarkIndexReads reads index entries with 1k, 10k and 100k entries stored: a page of
// a wide index (every entry matches), a narrow one (a hundredth match), a pattern nothing
// matches (each as Page and as PageSparse), and a multi_last of one prefix. Page is flat
// where matches are dense and PageSparse where they are few; a Page of a pattern that
// matches nothing has the server look through every block.
func BenchmarkIndexReads(b *testing.B) {
	ctx := b.Context()
	store, err := records.Open(ctx, natstest.Start(b).JetStream(b), "strings", newString)
	if err != nil {
		b.Fatal(err)
	}
	stored := 0
	for _, n := range []int{1000, 10000, 100000} {
		for ; stored < n; stored++ {
			if err := store.SetRaw(ctx, fmt.Sprintf("ix.wide.s%02d.k%06d", stored%100, stored), nil); err != nil {
				b.Fatal(err)
			}
		}
		for name, read := range map[string]func() error{
			"wide-page":          func() error { _, _, err := store.Page(ctx, "ix.wide.*.*", 0, 51); return err },
			"narrow-page":        func() error { _, _, err := store.Page(ctx, "ix.wide.s07.*", 0, 51); return err },
			"empty-page":         func() error { _, _, err := store.Page(ctx, "ix.none.*", 0, 51); return err },
			"latest":             func() error { _, err := store.Latest(ctx, "ix.wide.s07.k00000*"); return err },
			"empty-page-sparse":  func() error { _, _, err := store.PageSparse(ctx, "ix.none.*", 0, 51); return err },
			"narrow-page-sparse": func() error { _, _, err := store.PageSparse(ctx, "ix.wide.s07.*", 0, 51); return err },
		} {
			b.Run(fmt.Sprintf("stored=%d/%s", n, name), func(b *testing.B) {
				for range b.N {
					if err := read(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
