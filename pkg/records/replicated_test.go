package records_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/records"
)

// TestReplicatedReadsNeverMissAnAcknowledgedWrite cuts a follower off from the cluster
// and reads, through its server, records written meanwhile through the leader's: a direct
// get would be answered by the follower from where it stopped ("not found"), and an
// update or erasure built on such a read would act on a stale revision. A read may fail
// while the follower cannot reach the leader, but never answer wrong; mended, it answers.
func TestReplicatedReadsNeverMissAnAcknowledgedWrite(t *testing.T) {
	ctx := testContext(t)
	cluster := natstest.StartCluster(t, 3)
	open := func(i int) *records.Store[*wrapperspb.StringValue] {
		store, err := records.Open(ctx, cluster.JetStream(t, i), "strings", newString, records.WithReplicas(3), records.WithErasure())
		if err != nil {
			t.Fatalf("open on server %d: %v", i+1, err)
		}
		return store
	}
	open(0) // creates the stream, so that its leader can be found
	stream, err := cluster.JetStream(t, 0).Stream(ctx, "KV_strings")
	if err != nil {
		t.Fatal(err)
	}
	leader, follower := -1, -1
	for i, s := range cluster.Servers {
		if s.Name() == stream.CachedInfo().Cluster.Leader {
			leader = i
		} else if follower < 0 {
			follower = i
		}
	}
	if leader < 0 {
		t.Fatalf("no stream leader among the servers (leader %q)", stream.CachedInfo().Cluster.Leader)
	}
	writer, reader := open(leader), open(follower)
	for deadline := time.Now().Add(20 * time.Second); !cluster.AnswersDirectGets(t, follower, "KV_strings"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the follower did not join the direct-get answerers within 20s")
		}
	}

	cluster.Isolate(follower, true)
	const keys = 5
	revisions := make([]uint64, keys)
	for i := range keys {
		if revisions[i], err = writer.Create(ctx, fmt.Sprintf("k%d", i), wrapperspb.String("v")); err != nil {
			t.Fatalf("create k%d with a follower cut off: %v", i, err)
		}
	}
	read := func(i int) (uint64, error) {
		ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		_, rev, err := reader.Get(ctx, fmt.Sprintf("k%d", i))
		return rev, err
	}
	for i := range keys {
		rev, err := read(i)
		if errors.Is(err, records.ErrNotFound) || (err == nil && rev != revisions[i]) {
			t.Errorf("k%d read through the cut-off follower: revision %d, %v; want %d or a failure", i, rev, err, revisions[i])
		}
	}

	cluster.Isolate(follower, false)
	for i := range keys {
		deadline := time.Now().Add(20 * time.Second)
		for {
			rev, err := read(i)
			if err == nil && rev == revisions[i] {
				break
			}
			if errors.Is(err, records.ErrNotFound) || err == nil || time.Now().After(deadline) {
				t.Fatalf("k%d read through the mended follower: revision %d, %v; want %d", i, rev, err, revisions[i])
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestReplicatedCreatesRaceToOneWinner races two writers, on different servers, to create
// the same keys: exactly one wins each, and the other is told the key exists. A replicated
// stream refuses a write whose key another write is still being proposed for with a code
// of its own, which is a lost race like any other.
func TestReplicatedCreatesRaceToOneWinner(t *testing.T) {
	ctx := testContext(t)
	cluster := natstest.StartCluster(t, 3)
	var stores [2]*records.Store[*wrapperspb.StringValue]
	for i := range stores {
		s, err := records.Open(ctx, cluster.JetStream(t, i), "strings", newString, records.WithReplicas(3))
		if err != nil {
			t.Fatalf("open on server %d: %v", i+1, err)
		}
		stores[i] = s
	}
	for round := range 200 {
		key := fmt.Sprintf("k%d", round)
		errs := make(chan error, len(stores))
		for _, s := range stores {
			go func() { errs <- s.CreateRaw(ctx, key, []byte("v"), 0) }()
		}
		won := 0
		for range stores {
			switch err := <-errs; {
			case err == nil:
				won++
			case !errors.Is(err, records.ErrExists):
				t.Fatalf("round %d: the losing create failed with %v, want ErrExists", round, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d creates won, want 1", round, won)
		}
	}
}
