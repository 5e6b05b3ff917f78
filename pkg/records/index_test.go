package records_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/records"
)

// stateIndex files each string under ix.state.<value>.<key>.
func stateIndex(store *records.Store[*wrapperspb.StringValue]) *records.Index[*wrapperspb.StringValue] {
	return records.NewIndex(store, func(v *wrapperspb.StringValue) []string {
		return []string{"ix.state." + v.GetValue() + "." + v.GetValue() + "-of"}
	})
}

func indexKeys(t *testing.T, store *records.Store[*wrapperspb.StringValue]) []string {
	t.Helper()
	entries, err := store.All(testContext(t), "ix.>")
	if err != nil {
		t.Fatalf("read index: %v", err)
	}
	var keys []string
	for _, e := range entries {
		keys = append(keys, e.Key)
	}
	slices.Sort(keys)
	return keys
}

// TestIndexFollowsRecord applies the index after a create, an update and a purge.
func TestIndexFollowsRecord(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	ix := records.NewIndex(store, func(v *wrapperspb.StringValue) []string { return []string{"ix.state." + v.GetValue() + ".case-1"} })

	rev, err := store.Create(ctx, "case-1", wrapperspb.String("open"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := ix.Apply(ctx, "case-1"); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if got := indexKeys(t, store); !slices.Equal(got, []string{"ix.state.open.case-1"}) {
		t.Fatalf("index after create = %v", got)
	}
	if rev, err = store.Update(ctx, "case-1", wrapperspb.String("closed"), rev); err != nil {
		t.Fatalf("update: %v", err)
	}
	for range 2 { // applying twice changes nothing more
		if err := ix.Apply(ctx, "case-1"); err != nil {
			t.Fatalf("apply: %v", err)
		}
	}
	if got := indexKeys(t, store); !slices.Equal(got, []string{"ix.state.closed.case-1"}) {
		t.Fatalf("index after update = %v", got)
	}
	if err := store.Purge(ctx, "case-1", rev); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if err := ix.Apply(ctx, "case-1"); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if got := indexKeys(t, store); len(got) != 0 {
		t.Fatalf("index after purge = %v", got)
	}
	// A record made again under the same key, while the markers of the old one last.
	if _, err := store.Create(ctx, "case-1", wrapperspb.String("open")); err != nil {
		t.Fatalf("create again: %v", err)
	}
	if err := ix.Apply(ctx, "case-1"); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if got := indexKeys(t, store); !slices.Equal(got, []string{"ix.state.open.case-1"}) {
		t.Fatalf("index after creating again = %v", got)
	}
}

// TestConcurrentAppliesSettleOnTheLatestRecord races applies against updates: once
// the writes stop and one more apply runs, the index is that of the last record.
func TestConcurrentAppliesSettleOnTheLatestRecord(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	ix := records.NewIndex(store, func(v *wrapperspb.StringValue) []string { return []string{"ix.state." + v.GetValue() + ".k"} })
	rev, err := store.Create(ctx, "k", wrapperspb.String("s0"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for range 10 {
				if err := ix.Apply(ctx, "k"); err != nil {
					t.Errorf("apply %d: %v", w, err)
				}
			}
		})
	}
	for i := 1; i <= 20; i++ {
		if rev, err = store.Update(ctx, "k", wrapperspb.String(fmt.Sprintf("s%d", i)), rev); err != nil {
			t.Fatalf("update: %v", err)
		}
	}
	wg.Wait()
	if err := ix.Apply(ctx, "k"); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if got := indexKeys(t, store); !slices.Equal(got, []string{"ix.state.s20.k"}) {
		t.Fatalf("index = %v, want only ix.state.s20.k", got)
	}
}

// TestRebuildMendsAMissingAndAnOrphanEntry loses an index entry and leaves one behind,
// as a crash between a write and its index could, and rebuilds.
func TestRebuildMendsAMissingAndAnOrphanEntry(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	ix := stateIndex(store)
	for _, v := range []string{"a", "b", "c"} {
		if _, err := store.Create(ctx, "case-"+v, wrapperspb.String(v)); err != nil {
			t.Fatalf("create: %v", err)
		}
	}
	if err := ix.Apply(ctx, "case-a"); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if err := store.SetRaw(ctx, "ix.state.z.z-of", nil); err != nil {
		t.Fatalf("orphan: %v", err)
	}
	if err := ix.Rebuild(ctx); err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	want := []string{"ix.state.a.a-of", "ix.state.b.b-of", "ix.state.c.c-of"}
	if got := indexKeys(t, store); !slices.Equal(got, want) {
		t.Fatalf("index after rebuild = %v, want %v", got, want)
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
		if err := store.SetRaw(ctx, "ix.state."+state+"."+key, nil); err != nil {
			t.Fatalf("set: %v", err)
		}
	}
	if err := store.RemoveRaw(ctx, "ix.state.open.case-04"); err != nil {
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
}

// TestMatchingListsAMovedRecordOnce reads an index in the moment a record's entry moves:
// the old entry is still there beside the new one, then only the old one points at a
// record that has moved on. The record is listed once either way, never twice or not at
// all.
func TestMatchingListsAMovedRecordOnce(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	for _, key := range []string{"ix.state.open.case-1", "ix.state.open.case-2", "ix.state.closed.case-1"} {
		if err := store.SetRaw(ctx, key, nil); err != nil {
			t.Fatalf("set %s: %v", key, err)
		}
	}
	keepAll := func(_ context.Context, entries []records.Entry) ([]records.Entry, error) { return entries, nil }
	list := func() []string {
		t.Helper()
		entries, resume, err := store.Matching(ctx, []string{"ix.state.*.*"}, false, 0, 10, keepAll)
		if err != nil || resume != 0 {
			t.Fatalf("matching: %v, resume %d", err, resume)
		}
		var got []string
		for _, e := range entries {
			got = append(got, records.RecordOf(e.Key))
		}
		return got
	}
	if got, want := list(), []string{"case-1", "case-2"}; !slices.Equal(got, want) {
		t.Errorf("with old and new entry: listed %v, want %v", got, want)
	}
	if err := store.RemoveRaw(ctx, "ix.state.closed.case-1"); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if got, want := list(), []string{"case-1", "case-2"}; !slices.Equal(got, want) {
		t.Errorf("with only the old entry: listed %v, want %v", got, want)
	}
}
