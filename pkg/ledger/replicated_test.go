package ledger_test

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// TestReplicatedSameDisclosureFromTwoReplicasIsStoredOnce appends the same disclosure from
// two service replicas at once, on different servers of a cluster, as a retried read does:
// a replicated stream refuses the second while the first is still being proposed, and the
// second must then wait for the first and return it, not fail.
func TestReplicatedSameDisclosureFromTwoReplicasIsStoredOnce(t *testing.T) {
	ctx := testContext(t)
	replicas := replicasOnACluster(t)
	const rounds = 100
	for n := 1; n <= rounds; n++ {
		d := disclosure(n, fmt.Sprintf("case-%d", n), "A1234BC")
		type result struct {
			entry *throughcarev1.Disclosure
			err   error
		}
		results := make(chan result, len(replicas))
		for _, l := range replicas {
			go func() {
				entry, err := l.Append(ctx, d, dedupeID(d))
				results <- result{entry, err}
			}()
		}
		a, b := <-results, <-results
		if a.err != nil || b.err != nil {
			t.Fatalf("disclosure %d appended twice at once: %v; %v", n, a.err, b.err)
		}
		if !proto.Equal(a.entry, b.entry) {
			t.Fatalf("disclosure %d: the replicas returned different entries, %d and %d", n, a.entry.GetSequence(), b.entry.GetSequence())
		}
	}
	mustVerifyIntact(t, replicas[0], rounds)
}

// replicasOnACluster starts a 3-node cluster and opens the ledger, at R3, through two
// service replicas on different servers.
func replicasOnACluster(t *testing.T) [2]*ledger.Ledger {
	t.Helper()
	cluster := natstest.StartCluster(t, 3)
	var replicas [2]*ledger.Ledger
	for i := range replicas {
		l, err := ledger.Open(testContext(t), cluster.JetStream(t, i), agency, 3)
		if err != nil {
			t.Fatalf("open on server %d: %v", i+1, err)
		}
		replicas[i] = l
	}
	return replicas
}

func TestReplicatedConcurrentAppendsFromTwoReplicasDoNotFork(t *testing.T) {
	replicas := replicasOnACluster(t)
	checkConcurrentAppendsDoNotFork(t, replicas[0], replicas[1])
}
