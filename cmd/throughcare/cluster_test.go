package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/ledger"
)

// startLocalCluster builds this binary and the module's nats-server, and starts
// `throughcare cluster`'s cluster on free ports in t.TempDir(); it stops with the test.
// tune, if any, adjusts the configuration first.
func startLocalCluster(t *testing.T, tune ...func(*clusterConfig)) *localCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster and the services as processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin", "throughcare")
	if out, err := exec.CommandContext(t.Context(), "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build throughcare: %v\n%s", err, out)
	}
	natsBin, err := buildNATSServer(t.Context(), filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	base, err := freeBasePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := clusterConfig{Dir: dir, NATSServer: natsBin, Throughcare: bin, BasePort: base}
	for _, f := range tune {
		f(&cfg)
	}
	// Registered first, so it runs last: after the cluster stopped, however it failed.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
		for _, l := range logs {
			t.Logf("%s:\n%s", filepath.Base(l), logTail(l, 40))
		}
	})
	c, err := startCluster(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("start the cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop the cluster: %v", err)
		}
	})
	// Before the cluster stops: where the events stood, if the test failed.
	t.Cleanup(func() {
		if t.Failed() {
			for _, a := range c.Agencies {
				t.Logf("%s's streams: %s", a.ID, flowState(c, a.ID))
			}
		}
	})
	return c
}

// agencyJetStream connects to the cluster as agency.
func agencyJetStream(c *localCluster, agency string) (jetstream.JetStream, func(), error) {
	opts, err := c.Creds.ConnectOptions(agency)
	if err != nil {
		return nil, nil, err
	}
	nc, err := nats.Connect(c.NATSURLs(), opts...)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc.Close, nil
}

// waitIndexFollowed waits until the follower of agency's handovers bucket has handled every
// change written so far.
func waitIndexFollowed(t *testing.T, c *localCluster, agency string) {
	t.Helper()
	js, closeConn, err := agencyJetStream(c, agency)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	eventually(t, time.Minute, func() (bool, string) {
		cons, err := js.Consumer(testCtx(t), "KV_"+agency+"_handovers", agency+"-handover-index")
		if err != nil {
			return false, err.Error()
		}
		info := cons.CachedInfo()
		return info.NumPending == 0 && info.NumAckPending == 0, fmt.Sprintf("%s's index follower: %d changes pending, %d unacknowledged", agency, info.NumPending, info.NumAckPending)
	})
}

// flowState says, in counts only, where an agency's events stand: its outbox, its outbox
// relay, its inbox with each source, and the inbox's and index follower's consumers.
func flowState(c *localCluster, agency string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, closeConn, err := agencyJetStream(c, agency)
	if err != nil {
		return err.Error()
	}
	defer closeConn()
	var b strings.Builder
	for _, name := range []string{eventbus.OutboxStream(agency), eventbus.InboxStream(agency)} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			fmt.Fprintf(&b, "\n  %s: %v", name, err)
			continue
		}
		st := s.CachedInfo().State
		fmt.Fprintf(&b, "\n  %s: %d messages, sequences %d..%d", name, st.Msgs, st.FirstSeq, st.LastSeq)
		for _, src := range s.CachedInfo().Sources {
			fmt.Fprintf(&b, "\n    source %s: lag %d, active %s, error %v", src.Name, src.Lag, src.Active, src.Error)
		}
	}
	for _, cons := range []struct{ stream, durable string }{
		{"KV_" + agency + "_handovers", agency + "-outbox-relay"},
		{eventbus.InboxStream(agency), agency + "-inbox"},
		{"KV_" + agency + "_handovers", agency + "-handover-index"},
	} {
		info, err := js.Consumer(ctx, cons.stream, cons.durable)
		if err != nil {
			fmt.Fprintf(&b, "\n  consumer %s: %v", cons.durable, err)
			continue
		}
		ci := info.CachedInfo()
		fmt.Fprintf(&b, "\n  consumer %s: pending %d, ack pending %d, redelivered %d, delivered up to %d, acked up to %d",
			cons.durable, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.Delivered.Stream, ci.AckFloor.Stream)
	}
	return b.String()
}

// TestJourneyOnAThreeNodeClusterWithServiceProcesses runs a referral to acceptance on
// three clustered nats-server processes, each agency's service a process of its own over
// mutual TLS and its own NATS account, with every stream and bucket at R3.
func TestJourneyOnAThreeNodeClusterWithServiceProcesses(t *testing.T) {
	c := startLocalCluster(t)
	ctx := testCtx(t)
	conns := map[string]*clusterClients{}
	for _, a := range c.Agencies {
		conn := dialAgency(t, a.Addr, clientTLS(t, c.Certs, a.ID, a.ID))
		conns[a.ID] = &clusterClients{
			handovers: throughcarev1.NewHandoverServiceClient(conn),
			cases:     throughcarev1.NewCaseServiceClient(conn),
		}
	}
	prison := throughcarev1.NewPrisonServiceClient(dialAgency(t, c.Agencies[0].Addr, clientTLS(t, c.Certs, prisonAgency, prisonAgency)))
	rc := openCase(t, prison)
	resp, err := conns[prisonAgency].cases.ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Recipient: probationAgency, Purpose: purposeSupervision})
	if err != nil {
		t.Fatalf("refer: %v", err)
	}
	id := resp.GetHandover().GetHandoverId()
	waitState(t, conns[prisonAgency].handovers, id, stateDelivered)
	if err := acknowledge(ctx, conns[probationAgency].handovers, id, "po-marko"); err != nil {
		t.Fatal(err)
	}
	if err := accept(ctx, conns[probationAgency].handovers, id, "po-marko", "po-marko"); err != nil {
		t.Fatal(err)
	}
	checkReceipts(t, "prison", waitState(t, conns[prisonAgency].handovers, id, stateAccepted), receiptDelivered, receiptAcknowledged, receiptAccepted)

	for _, a := range c.Agencies {
		checkEveryStreamReplicated(t, c, a.ID)
	}
}

// checkEveryStreamReplicated checks that every stream in agency's account, whichever part
// of the service made it, is at R3 with both followers in place: one left at R1 stops
// that agency when its node goes.
func checkEveryStreamReplicated(t *testing.T, c *localCluster, agency string) {
	t.Helper()
	js, closeConn, err := agencyJetStream(c, agency)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	ctx := testCtx(t)
	names := js.StreamNames(ctx)
	var seen []string
	for name := range names.Name() {
		seen = append(seen, name)
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info := s.CachedInfo()
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Errorf("%s's stream %s: %d replicas (%+v), want 3", agency, name, info.Config.Replicas, info.Cluster)
		}
	}
	if err := names.Err(); err != nil {
		t.Fatalf("%s's streams: %v", agency, err)
	}
	for _, want := range []string{eventbus.OutboxStream(agency), eventbus.InboxStream(agency), "KV_" + agency + "_handovers",
		"KV_" + agency + "_cases", "KV_" + agency + "_deadletters", "KV_" + agency + "_seen_events", ledger.StreamName(agency)} {
		if !slices.Contains(seen, want) {
			t.Errorf("%s's account has no stream %s (it has %v)", agency, want, seen)
		}
	}
}

// clusterClients are one agency's clients on a local cluster.
type clusterClients struct {
	handovers throughcarev1.HandoverServiceClient
	cases     throughcarev1.CaseServiceClient
}

// freeBasePort finds a base port whose whole span of 60 is free now, for tests. It looks
// below Linux's ephemeral range (32768–60999), where every outgoing connection takes its
// local port: a span inside it can lose a port to a route being dialled before the node
// meant to listen on it has started.
func freeBasePort() (int, error) {
	const low, high = 10000, 32768 - 60
	for try := 0; try < 50; try++ {
		base := low + rand.IntN(high-low)
		ok := true
		for off := 1; off <= 60 && ok; off++ {
			probe, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+off))
			if err != nil {
				ok = false
				continue
			}
			_ = probe.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, errors.New("no free span of 60 ports")
}

// logTail is the last n lines of a process's log, leaving out the services' access log
// of each call, which a test's polling fills the log with.
func logTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var kept []string
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if !strings.Contains(line, `"msg":"rpc"`) {
			kept = append(kept, line)
		}
	}
	return strings.Join(kept[max(len(kept)-n, 0):], "\n")
}
