package records_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/records"
)

// BenchmarkGetAtScale reads one random record of about 3 KiB with 1k, 10k and 100k
// stored: in a dense bucket (history 1, records only) and in one shaped like the
// handovers bucket (history 64, each record written 5 times, with small keys beside it).
func BenchmarkGetAtScale(b *testing.B) {
	ctx := b.Context()
	js := natstest.Start(b).JetStream(b)
	value := wrapperspb.String(strings.Repeat("x", 3000))
	for _, shape := range []struct {
		name    string
		opts    []records.Option
		writes  int
		besides int
	}{
		{"dense", nil, 1, 0},
		{"mixed", []records.Option{records.WithHistory(64)}, 5, 6},
	} {
		store, err := records.Open(ctx, js, "get_"+shape.name, newString, shape.opts...)
		if err != nil {
			b.Fatal(err)
		}
		stored := 0
		for _, n := range []int{1000, 10000, 100000} {
			for ; stored < n; stored++ {
				key := fmt.Sprintf("k%06d", stored)
				rev, err := store.Create(ctx, key, value)
				for w := 1; w < shape.writes && err == nil; w++ {
					rev, err = store.Update(ctx, key, value, rev)
				}
				for i := 0; i < shape.besides && err == nil; i++ {
					err = store.SetRaw(ctx, fmt.Sprintf("ix.s%d.%s", i, key), nil)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.Run(fmt.Sprintf("%s/stored=%d", shape.name, n), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, uint64(n)))
				for range b.N {
					if _, _, err := store.Get(ctx, fmt.Sprintf("k%06d", rng.IntN(n))); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
