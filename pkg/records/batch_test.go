package records_test

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/records"
)

// TestBatchIsAllOrNothing commits a record with its index entries, then a batch whose
// record revision is stale: nothing of the second batch is stored.
func TestBatchIsAllOrNothing(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))

	revs, err := store.Batch().Put("case-1", wrapperspb.String("open"), 0).Set("ix.state.open.case-1", nil).Commit(ctx)
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
	if len(revs) != 2 || revs[1] != revs[0]+1 {
		t.Fatalf("revisions = %v, want two consecutive", revs)
	}
	got, rev, err := store.Get(ctx, "case-1")
	if err != nil || got.GetValue() != "open" || rev != revs[0] {
		t.Fatalf("get = %q@%d, %v; want open@%d", got.GetValue(), rev, err, revs[0])
	}

	_, err = store.Batch().Put("case-1", wrapperspb.String("closed"), rev+7).Remove("ix.state.open.case-1").Set("ix.state.closed.case-1", nil).Commit(ctx)
	if !errors.Is(err, records.ErrRevisionMismatch) {
		t.Fatalf("stale batch: err = %v, want ErrRevisionMismatch", err)
	}
	if _, err := store.Batch().Put("case-1", wrapperspb.String("again"), 0).Commit(ctx); !errors.Is(err, records.ErrExists) {
		t.Fatalf("second create: err = %v, want ErrExists", err)
	}
	index, err := store.Latest(ctx, "ix.state.>")
	if err != nil {
		t.Fatalf("latest: %v", err)
	}
	if len(index) != 1 || index[0].Key != "ix.state.open.case-1" {
		t.Fatalf("index after a refused batch = %v, want only ix.state.open.case-1", index)
	}

	if _, err := store.Batch().Put("case-1", wrapperspb.String("closed"), rev).Remove("ix.state.open.case-1").Set("ix.state.closed.case-1", nil).Commit(ctx); err != nil {
		t.Fatalf("batch: %v", err)
	}
	index, err = store.Latest(ctx, "ix.state.>")
	if err != nil {
		t.Fatalf("latest: %v", err)
	}
	if len(index) != 1 || index[0].Key != "ix.state.closed.case-1" {
		t.Fatalf("index = %v, want only ix.state.closed.case-1", index)
	}
}

// TestPageReadsInRevisionOrder pages through index entries matching a pattern, skipping
// removed ones and those of other patterns.
func TestPageReadsInRevisionOrder(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	for i := range 25 {
		state := []string{"open", "closed"}[i%2]
		key := fmt.Sprintf("case-%02d", i)
		if _, err := store.Batch().Put(key, wrapperspb.String(state), 0).Set("ix.state."+state+"."+key, nil).Commit(ctx); err != nil {
			t.Fatalf("commit: %v", err)
		}
	}
	if _, err := store.Batch().Remove("ix.state.open.case-04").Commit(ctx); err != nil {
		t.Fatalf("remove: %v", err)
	}
	var got []string
	var after uint64
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		entries, resume, err := store.Page(ctx, "ix.state.open.*", after, 4)
		if err != nil {
			t.Fatalf("page: %v", err)
		}
		for _, e := range entries {
			got = append(got, e.Key)
		}
		if resume == 0 {
			break
		}
		after = resume
	}
	var want []string
	for i := 0; i < 25; i += 2 {
		if i != 4 {
			want = append(want, fmt.Sprintf("ix.state.open.case-%02d", i))
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("paged %v\nwant    %v", got, want)
	}
	recs, resume, err := store.Records(ctx, 0, 100)
	if err != nil || resume != 0 || len(recs) != 25 {
		t.Errorf("records = %d (resume %d, %v), want all 25 and the end", len(recs), resume, err)
	}
}
