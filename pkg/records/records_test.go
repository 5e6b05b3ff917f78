package records_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
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

// recordsAll reads every record through Records, limit at a time.
func recordsAll(t *testing.T, store *records.Store[*wrapperspb.StringValue], limit int) []records.Record[*wrapperspb.StringValue] {
	t.Helper()
	var got []records.Record[*wrapperspb.StringValue]
	var after uint64
	for range 10000 {
		page, resume, err := store.Records(testContext(t), after, limit)
		if err != nil {
			t.Fatalf("records after %d: %v", after, err)
		}
		got = append(got, page...)
		if resume == 0 {
			return got
		}
		after = resume
	}
	t.Fatal("paging does not end")
	return nil
}

// TestRecordsPageInRevisionOrder lists records oldest write first: an updated record moves
// to the end, a page resumes after the last revision it returned, and index entries are
// never listed as records.
func TestRecordsPageInRevisionOrder(t *testing.T) {
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))

	if got := recordsAll(t, store, 10); len(got) != 0 {
		t.Fatalf("records of an empty bucket = %v", got)
	}
	keys := []string{"c", "a", "B", "b-2", "b_1", "b"}
	revs := map[string]uint64{}
	for _, key := range keys {
		rev, err := store.Create(ctx, key, wrapperspb.String("value-"+key))
		if err != nil {
			t.Fatalf("create %s: %v", key, err)
		}
		revs[key] = rev
	}
	if err := store.SetRaw(ctx, "ix.all.a", nil); err != nil {
		t.Fatalf("index entry: %v", err)
	}
	rev, err := store.Update(ctx, "a", wrapperspb.String("value-a2"), revs["a"])
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	revs["a"] = rev

	want := []string{"c", "B", "b-2", "b_1", "b", "a"}
	for _, limit := range []int{1, 2, 100} {
		var got []string
		for _, r := range recordsAll(t, store, limit) {
			got = append(got, r.Key)
			wantValue := "value-" + r.Key
			if r.Key == "a" {
				wantValue = "value-a2"
			}
			if r.Msg.GetValue() != wantValue || r.Revision != revs[r.Key] {
				t.Errorf("record %s = %q@%d, want %q@%d", r.Key, r.Msg.GetValue(), r.Revision, wantValue, revs[r.Key])
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("pages of %d: keys = %v, want %v", limit, got, want)
		}
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
	if got := recordsAll(t, store, 10); len(got) != 0 {
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

func TestManyRecordsInPages(t *testing.T) {
	const count = 1000
	ctx := testContext(t)
	store := openStrings(t, natstest.Start(t).JetStream(t))
	for i := range count {
		key := fmt.Sprintf("case-%04d", i)
		if _, err := store.Create(ctx, key, wrapperspb.String(key)); err != nil {
			t.Fatalf("create %s: %v", key, err)
		}
	}
	got := recordsAll(t, store, 300)
	if len(got) != count {
		t.Fatalf("listed %d records, want %d", len(got), count)
	}
	for i, r := range got {
		if want := fmt.Sprintf("case-%04d", i); r.Key != want || r.Msg.GetValue() != want {
			t.Fatalf("record %d = %s:%q, want %s", i, r.Key, r.Msg.GetValue(), want)
		}
	}
}

func TestPurgeRemovesKeyAndHistoryOnlyAtExpectedRevision(t *testing.T) {
	for _, erasure := range []bool{false, true} {
		t.Run(fmt.Sprintf("erasure=%v", erasure), func(t *testing.T) { testPurge(t, erasure) })
	}
}

func testPurge(t *testing.T, erasure bool) {
	ctx := context.Background()
	srv := natstest.Start(t)
	opts := []records.Option{records.WithHistory(5)}
	if erasure {
		opts = append(opts, records.WithErasure())
	}
	store, err := records.Open(ctx, srv.JetStream(t), "purge_test", func() *wrapperspb.StringValue { return new(wrapperspb.StringValue) }, opts...)
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

// TestReadsTakeEveryAnswerTheirRequestCanHave reads the most one request can answer:
// a Latest over maxLatest (1024) keys, and the revisions of a key with a whole batch of
// them (64, the most history a bucket keeps). Each request's answers are held in a channel sized to what it asked
// for, and an answer that does not fit is dropped: a size too small loses entries.
func TestReadsTakeEveryAnswerTheirRequestCanHave(t *testing.T) {
	ctx := testContext(t)
	js := natstest.Start(t).JetStream(t)
	store, err := records.Open(ctx, js, "answers", newString, records.WithHistory(64))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	const keys = 1024
	for i := range keys {
		if err := store.SetRaw(ctx, fmt.Sprintf("ix.all.k%04d", i), []byte("x")); err != nil {
			t.Fatalf("set %d: %v", i, err)
		}
	}
	if got, err := store.Latest(ctx, "ix.all.*"); err != nil || len(got) != keys {
		t.Errorf("Latest over %d keys: %d entries, %v", keys, len(got), err)
	}
	const revisions = 64
	rev, err := store.Create(ctx, "k", wrapperspb.String("0"))
	for i := 1; i < revisions && err == nil; i++ {
		rev, err = store.Update(ctx, "k", wrapperspb.String(strconv.Itoa(i)), rev)
	}
	if err != nil {
		t.Fatalf("write k: %v", err)
	}
	revs, err := store.Revisions(ctx, "k")
	if err != nil || len(revs) != revisions {
		t.Fatalf("Revisions of a key written %d times: %d, %v", revisions, len(revs), err)
	}
	for i, r := range revs {
		got := new(wrapperspb.StringValue)
		if err := proto.Unmarshal(r.Data, got); err != nil || got.GetValue() != strconv.Itoa(i) {
			t.Fatalf("revision %d holds %v (%v), want %q", i, got, err, strconv.Itoa(i))
		}
	}
}
