package records_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/records"
)

func newString() *wrapperspb.StringValue { return new(wrapperspb.StringValue) }

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openStrings(t *testing.T, js jetstream.JetStream) *records.Store[*wrapperspb.StringValue] {
	t.Helper()
	store, err := records.Open(testContext(t), js, "strings", newString)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return store
}

func TestCreateGetUpdate(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))

	rev, err := store.Create(ctx, "case-1", wrapperspb.String("draft"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := store.Create(ctx, "case-1", wrapperspb.String("again")); !errors.Is(err, records.ErrExists) {
		t.Errorf("second create: err = %v, want ErrExists", err)
	}

	got, gotRev, err := store.Get(ctx, "case-1")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.GetValue() != "draft" || gotRev != rev {
		t.Errorf("get = %q@%d, want %q@%d", got.GetValue(), gotRev, "draft", rev)
	}

	newRev, err := store.Update(ctx, "case-1", wrapperspb.String("released"), rev)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if newRev <= rev {
		t.Errorf("revision after update = %d, want > %d", newRev, rev)
	}
	got, gotRev, err = store.Get(ctx, "case-1")
	if err != nil {
		t.Fatalf("get after update: %v", err)
	}
	if got.GetValue() != "released" || gotRev != newRev {
		t.Errorf("get = %q@%d, want %q@%d", got.GetValue(), gotRev, "released", newRev)
	}
}

func TestMissingKey(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))

	if _, _, err := store.Get(ctx, "missing"); !errors.Is(err, records.ErrNotFound) {
		t.Errorf("get: err = %v, want ErrNotFound", err)
	}
	for _, rev := range []uint64{0, 1, 99} {
		if _, err := store.Update(ctx, "missing", wrapperspb.String("x"), rev); !errors.Is(err, records.ErrNotFound) {
			t.Errorf("update from revision %d: err = %v, want ErrNotFound", rev, err)
		}
	}
	// Update must never create the key.
	if _, _, err := store.Get(ctx, "missing"); !errors.Is(err, records.ErrNotFound) {
		t.Errorf("get after updates: err = %v, want ErrNotFound", err)
	}
}

func TestStaleUpdateChangesNothing(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))

	staleRev, err := store.Create(ctx, "case-1", wrapperspb.String("v1"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	currentRev, err := store.Update(ctx, "case-1", wrapperspb.String("v2"), staleRev)
	if err != nil {
		t.Fatalf("update: %v", err)
	}

	for _, rev := range []uint64{0, staleRev, currentRev + 1} {
		if _, err := store.Update(ctx, "case-1", wrapperspb.String("lost"), rev); !errors.Is(err, records.ErrRevisionMismatch) {
			t.Errorf("update from revision %d: err = %v, want ErrRevisionMismatch", rev, err)
		}
	}
	got, gotRev, err := store.Get(ctx, "case-1")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.GetValue() != "v2" || gotRev != currentRev {
		t.Errorf("get = %q@%d, want %q@%d", got.GetValue(), gotRev, "v2", currentRev)
	}
}

func TestConcurrentUpdatesFromSameRevision(t *testing.T) {
	const writers = 50
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	rev, err := store.Create(ctx, "case-1", wrapperspb.String("start"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		winners  []string
		failures []error
	)
	for i := range writers {
		wg.Go(func() {
			value := fmt.Sprintf("writer-%d", i)
			_, err := store.Update(ctx, "case-1", wrapperspb.String(value), rev)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				winners = append(winners, value)
			case !errors.Is(err, records.ErrRevisionMismatch):
				failures = append(failures, err)
			}
		})
	}
	wg.Wait()

	if len(failures) > 0 {
		t.Fatalf("unexpected errors: %v", failures)
	}
	if len(winners) != 1 {
		t.Fatalf("winners = %v, want exactly one", winners)
	}
	got, _, err := store.Get(ctx, "case-1")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.GetValue() != winners[0] {
		t.Errorf("stored %q, want the winner %q", got.GetValue(), winners[0])
	}
}

func TestConcurrentReadModifyWriteLosesNothing(t *testing.T) {
	const writers = 50
	ctx := testContext(t)
	store, err := records.Open(ctx, natstest.Start(t).JetStream(t), "counters",
		func() *wrapperspb.Int64Value { return new(wrapperspb.Int64Value) })
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if _, err := store.Create(ctx, "counter", wrapperspb.Int64(0)); err != nil {
		t.Fatalf("create: %v", err)
	}

	increment := func() error {
		for {
			counter, rev, err := store.Get(ctx, "counter")
			if err != nil {
				return err
			}
			_, err = store.Update(ctx, "counter", wrapperspb.Int64(counter.GetValue()+1), rev)
			if !errors.Is(err, records.ErrRevisionMismatch) {
				return err
			}
		}
	}
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() { errs <- increment() })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("increment: %v", err)
		}
	}

	counter, _, err := store.Get(ctx, "counter")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if counter.GetValue() != writers {
		t.Errorf("counter = %d, want %d", counter.GetValue(), writers)
	}
}

type listed struct {
	key   string
	value string
	rev   uint64
}

func listAll(t *testing.T, store *records.Store[*wrapperspb.StringValue], afterKey string, limit int) []listed {
	t.Helper()
	var got []listed
	err := store.List(testContext(t), afterKey, func(key string, msg *wrapperspb.StringValue, rev uint64) (bool, error) {
		got = append(got, listed{key: key, value: msg.GetValue(), rev: rev})
		return len(got) < limit, nil
	})
	if err != nil {
		t.Fatalf("list after %q: %v", afterKey, err)
	}
	return got
}

func TestListOrderAndPaging(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))

	if got := listAll(t, store, "", 10); len(got) != 0 {
		t.Fatalf("list empty bucket = %v", got)
	}

	// Created out of order; one key updated so its revision is newest.
	keys := []string{"c", "a", "B", "b-2", "b_1", "b"}
	revs := map[string]uint64{}
	for _, key := range keys {
		rev, err := store.Create(ctx, key, wrapperspb.String("value-"+key))
		if err != nil {
			t.Fatalf("create %s: %v", key, err)
		}
		revs[key] = rev
	}
	rev, err := store.Update(ctx, "a", wrapperspb.String("value-a2"), revs["a"])
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	revs["a"] = rev

	want := slices.Sorted(slices.Values(keys)) // B a b b-2 b_1 c
	all := listAll(t, store, "", len(keys)+1)
	var gotKeys []string
	for _, item := range all {
		gotKeys = append(gotKeys, item.key)
		wantValue := "value-" + item.key
		if item.key == "a" {
			wantValue = "value-a2"
		}
		if item.value != wantValue || item.rev != revs[item.key] {
			t.Errorf("listed %s = %q@%d, want %q@%d", item.key, item.value, item.rev, wantValue, revs[item.key])
		}
	}
	if !slices.Equal(gotKeys, want) {
		t.Fatalf("keys = %v, want %v", gotKeys, want)
	}

	// Page through two at a time, resuming after the last key seen.
	var paged []string
	after := ""
	for {
		page := listAll(t, store, after, 2)
		if len(page) == 0 {
			break
		}
		for _, item := range page {
			paged = append(paged, item.key)
		}
		after = page[len(page)-1].key
	}
	if !slices.Equal(paged, want) {
		t.Errorf("paged keys = %v, want %v", paged, want)
	}

	// afterKey need not exist: start at the next key that does.
	if got := listAll(t, store, "b0", 10); len(got) != 2 || got[0].key != "b_1" {
		t.Errorf("list after b0 = %v, want b_1 and c", got)
	}
}

func TestListReturnsCallbackError(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	for _, key := range []string{"a", "b"} {
		if _, err := store.Create(ctx, key, wrapperspb.String(key)); err != nil {
			t.Fatalf("create %s: %v", key, err)
		}
	}
	stop := errors.New("stop")
	calls := 0
	err := store.List(ctx, "", func(string, *wrapperspb.StringValue, uint64) (bool, error) {
		calls++
		return true, stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("list = %v after %d calls, want %v after 1", err, calls, stop)
	}
}

func TestInvalidKeysRejected(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	tooLong := string(slices.Repeat([]byte("k"), 129))
	for _, key := range []string{"", "a.b", "a*", "a>", ">", "a b", " ", "a/b", "ä", tooLong} {
		if _, err := store.Create(ctx, key, wrapperspb.String("x")); !errors.Is(err, records.ErrInvalidKey) {
			t.Errorf("create %q: err = %v, want ErrInvalidKey", key, err)
		}
		if _, _, err := store.Get(ctx, key); !errors.Is(err, records.ErrInvalidKey) {
			t.Errorf("get %q: err = %v, want ErrInvalidKey", key, err)
		}
		if _, err := store.Update(ctx, key, wrapperspb.String("x"), 1); !errors.Is(err, records.ErrInvalidKey) {
			t.Errorf("update %q: err = %v, want ErrInvalidKey", key, err)
		}
	}
	if got := listAll(t, store, "", 10); len(got) != 0 {
		t.Errorf("bucket holds %v after invalid writes", got)
	}
	longest := string(slices.Repeat([]byte("k"), 128))
	if _, err := store.Create(ctx, longest, wrapperspb.String("x")); err != nil {
		t.Errorf("create 128-byte key: %v", err)
	}
}

func TestOpenRejectsInvalidBucket(t *testing.T) {
	js := natstest.Start(t).JetStream(t)
	for _, bucket := range []string{"", "a.b", "a*", "a>", "a b"} {
		if _, err := records.Open(testContext(t), js, bucket, newString); err == nil {
			t.Errorf("open %q: want error", bucket)
		}
	}
	if _, err := records.Open(testContext(t), js, "ok", newString, records.WithReplicas(0)); err == nil {
		t.Error("open with 0 replicas: want error")
	}
}

func TestRecordsSurviveRestart(t *testing.T) {
	srv := natstest.Start(t)
	ctx := testContext(t)
	store := openStrings(t, srv.JetStream(t))
	rev, err := store.Create(ctx, "case-1", wrapperspb.String("kept"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}

	srv.Restart(t)

	store = openStrings(t, srv.JetStream(t))
	got, gotRev, err := store.Get(ctx, "case-1")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if !proto.Equal(got, wrapperspb.String("kept")) || gotRev != rev {
		t.Errorf("get = %v@%d, want %q@%d", got, gotRev, "kept", rev)
	}
}

func TestListManyRecords(t *testing.T) {
	const count = 1000
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	for i := range count {
		key := fmt.Sprintf("case-%04d", count-1-i)
		if _, err := store.Create(ctx, key, wrapperspb.String(key)); err != nil {
			t.Fatalf("create %s: %v", key, err)
		}
	}

	got := listAll(t, store, "", count+1)
	if len(got) != count {
		t.Fatalf("listed %d records, want %d", len(got), count)
	}
	for i, item := range got {
		if want := fmt.Sprintf("case-%04d", i); item.key != want || item.value != want {
			t.Fatalf("record %d = %s:%q, want %s", i, item.key, item.value, want)
		}
	}
}

func TestPurgeRemovesKeyAndHistoryOnlyAtExpectedRevision(t *testing.T) {
	ctx := context.Background()
	srv := natstest.Start(t)
	store, err := records.Open(ctx, srv.JetStream(t), "purge_test", func() *wrapperspb.StringValue { return new(wrapperspb.StringValue) }, records.WithHistory(5))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	rev, err := store.Create(ctx, "k", wrapperspb.String("v1"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	rev2, err := store.Update(ctx, "k", wrapperspb.String("v2"), rev)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if err := store.Purge(ctx, "k", rev); !errors.Is(err, records.ErrRevisionMismatch) {
		t.Fatalf("purge at stale revision: got %v, want ErrRevisionMismatch", err)
	}
	if _, _, err := store.Get(ctx, "k"); err != nil {
		t.Fatalf("a refused purge removed the key: %v", err)
	}
	if err := store.Purge(ctx, "k", rev2); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if _, _, err := store.Get(ctx, "k"); !errors.Is(err, records.ErrNotFound) {
		t.Errorf("get after purge: got %v, want ErrNotFound", err)
	}
	var seen []string
	watchCtx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_ = store.Watch(watchCtx, 0, func(_ string, v *wrapperspb.StringValue, _ uint64) error {
		seen = append(seen, v.GetValue())
		return nil
	})
	if len(seen) != 0 {
		t.Errorf("history after purge still holds %v", seen)
	}
}
