package records_test

import (
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/records"
)

// TestErasureLeavesNoBytes writes, updates and purges records and then reads every file of
// the server's store: what was superseded or purged in a bucket opened WithErasure is not
// there; in a bucket without it, it is (which is why erasure exists, and shows the search
// finds what it looks for). The server is stopped before each search: shutdown writes out
// whatever it still buffered, so the files are all there is.
func TestErasureLeavesNoBytes(t *testing.T) {
	ctx := testContext(t)
	srv := natstest.Start(t)
	js := srv.JetStream(t)
	erasing, err := records.Open(ctx, js, "erasing", newString, records.WithErasure())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	plain, err := records.Open(ctx, js, "plain", newString)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	for _, store := range []*records.Store[*wrapperspb.StringValue]{erasing, plain} {
		rev, err := store.Create(ctx, "k", wrapperspb.String("first-MARKER-"+store.Name()))
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if rev, err = store.Update(ctx, "k", wrapperspb.String("second-MARKER-"+store.Name()), rev); err != nil {
			t.Fatalf("update: %v", err)
		}
		if _, err = store.Update(ctx, "k", wrapperspb.String("current-"+store.Name()), rev); err != nil {
			t.Fatalf("update: %v", err)
		}
		if revs, err := store.Revisions(ctx, "k"); err != nil || len(revs) != 1 {
			t.Fatalf("revisions of %s: %d, %v; want 1", store.Name(), len(revs), err)
		}
	}
	dir := srv.StoreDir()
	srv.Stop()
	if found := natstest.FilesHolding(t, dir, "MARKER-erasing"); len(found) > 0 {
		t.Errorf("superseded revisions of an erasing bucket are still in %v", found)
	}
	if found := natstest.FilesHolding(t, dir, "MARKER-plain"); len(found) == 0 {
		t.Errorf("superseded revisions of a plain bucket are in no file: the search finds nothing")
	}
	if found := natstest.FilesHolding(t, dir, "current-erasing"); len(found) == 0 {
		t.Errorf("the current revision is in no file")
	}

	srv.Restart(t)
	js = srv.JetStream(t)
	if erasing, err = records.Open(ctx, js, "erasing", newString, records.WithErasure()); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	_, rev, err := erasing.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if err := erasing.Purge(ctx, "k", rev); err != nil {
		t.Fatalf("purge: %v", err)
	}
	if _, _, err := erasing.Get(ctx, "k"); err == nil {
		t.Errorf("get after purge found the key")
	}
	if rev, err := erasing.Create(ctx, "k", wrapperspb.String("again")); err != nil || rev == 0 {
		t.Errorf("create after purge: %d, %v", rev, err)
	}
	if _, err := records.Open(ctx, js, "plain", newString, records.WithErasure()); err == nil {
		t.Errorf("a bucket that denies deletes opened with erasure")
	}
	srv.Stop()
	if found := natstest.FilesHolding(t, dir, "current-erasing"); len(found) > 0 {
		t.Errorf("a purged record is still in %v", found)
	}
}
