package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// A clusterFault is one fault of the suite: inject breaks the cluster while referrals go
// on; heal, if any, mends it once every referral has been made.
type clusterFault struct {
	name string
	// setup prepares the cluster before it starts: a proxy on the routes, a small disk.
	setup func(t *testing.T, cfg *clusterConfig) *faultRig
	// secondProbation runs a second probation process beside the first.
	secondProbation bool
	inject, heal    func(t *testing.T, c *localCluster, rig *faultRig)
}

// faultRig is what a fault's setup left for inject and heal.
type faultRig struct {
	routes *routeProxies
	disk   string // a node's store on a small tmpfs
	killed int    // the node a kill took down
}

// faultNode is the node the faults pick when any one will do.
const faultNode = 1

var clusterFaults = []clusterFault{
	{
		name:   "kill -9 a NATS node",
		inject: func(t *testing.T, c *localCluster, _ *faultRig) { must(t, c.KillNATS(faultNode)) },
		heal:   func(t *testing.T, c *localCluster, _ *faultRig) { must(t, c.RestartNATS(faultNode)) },
	},
	{
		// A node lost for good (its disk with it): two of three replicas carry on.
		name:   "kill -9 a NATS node, never restarted",
		inject: func(t *testing.T, c *localCluster, _ *faultRig) { must(t, c.KillNATS(faultNode)) },
	},
	{
		name: "kill -9 the outbox's stream leader",
		inject: func(t *testing.T, c *localCluster, rig *faultRig) {
			rig.killed = nodeIndex(t, streamLeader(t, c, prisonAgency, eventbus.OutboxStream(prisonAgency)))
			must(t, c.KillNATS(rig.killed))
		},
		heal: func(t *testing.T, c *localCluster, rig *faultRig) { must(t, c.RestartNATS(rig.killed)) },
	},
	{
		name:            "kill -9 a service process, its second replica running",
		secondProbation: true,
		inject:          func(t *testing.T, c *localCluster, _ *faultRig) { must(t, c.KillService(probationAgency)) },
	},
	{
		name: "restart of everything (kill -9 of every process)",
		inject: func(t *testing.T, c *localCluster, _ *faultRig) {
			for _, a := range c.Agencies {
				must(t, c.KillService(a.Name()))
			}
			for i := range natsNodes {
				must(t, c.KillNATS(i))
			}
			for i := range natsNodes {
				must(t, c.RestartNATS(i))
			}
			must(t, c.waitJetStream(t.Context()))
			for _, a := range c.Agencies {
				must(t, c.RestartService(a.Name()))
			}
			must(t, c.WaitServing(t.Context(), c.Agencies...))
		},
	},
	{
		name: "partition isolating a NATS node",
		setup: func(t *testing.T, cfg *clusterConfig) *faultRig {
			p := startRouteProxies(t, *cfg)
			cfg.routeTo = p.addr
			return &faultRig{routes: p}
		},
		inject: func(t *testing.T, c *localCluster, rig *faultRig) {
			rig.routes.isolate(faultNode, true)
			waitRoutes(t, c, faultNode, 0)
		},
		heal: func(t *testing.T, c *localCluster, rig *faultRig) { rig.routes.isolate(faultNode, false) },
	},
	{
		name: "full disk on a NATS node",
		setup: func(t *testing.T, cfg *clusterConfig) *faultRig {
			// JetStream is told it has more than the disk holds, as when a volume is
			// smaller than the limit configured: the disk fills before JetStream's limit.
			cfg.maxFileStore = 8 << 30
			return &faultRig{disk: smallDisk(t, cfg.storeDir(faultNode), 512<<20)}
		},
		inject: func(t *testing.T, _ *localCluster, rig *faultRig) { fillDisk(t, rig.disk) },
		// What an operator does: free the disk and restart the node, whose JetStream shut
		// itself down at the first write that failed.
		heal: func(t *testing.T, c *localCluster, rig *faultRig) {
			must(t, os.Remove(filepath.Join(rig.disk, "filler")))
			must(t, c.KillNATS(faultNode))
			must(t, c.RestartNATS(faultNode))
		},
	},
}

// TestClusterFaultsLoseNothing runs referrals on a 3-node cluster with the services as
// processes and injects one fault of clusterFaults half way: every referral must end
// DELIVERED with one delivered receipt, and probation must hold each handover once. A
// ReferCase that fails during the fault is retried with its request id, as a
// case-management system would, which makes no second handover.
//
// Each fault logs a line of the fault table (lost, doubled, retried calls, time from the
// fault until the last handover was delivered). THROUGHCARE_FAULTS=1 runs every fault;
// without it, the first alone runs, with fewer referrals, in the test command.
func TestClusterFaultsLoseNothing(t *testing.T) {
	faults, n := clusterFaults[:1], 8
	if os.Getenv("THROUGHCARE_FAULTS") != "" {
		faults, n = clusterFaults, 40
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) { runClusterFault(t, f, n) })
	}
}

func runClusterFault(t *testing.T, f clusterFault, n int) {
	rig := &faultRig{}
	c := startLocalCluster(t, func(cfg *clusterConfig) {
		if f.setup != nil {
			rig = f.setup(t, cfg)
		}
	})
	ctx := testCtx(t)
	prisonConn := dialAgency(t, c.Agencies[0].Addr, clientTLS(t, c.Certs, prisonAgency, prisonAgency))
	prison, prisonCases := throughcarev1.NewPrisonServiceClient(prisonConn), throughcarev1.NewCaseServiceClient(prisonConn)
	prisonH := throughcarev1.NewHandoverServiceClient(prisonConn)
	probationAddr := c.Agencies[1].Addr
	if f.secondProbation {
		probationAddr = startReplica(t, c, probationAgency).Addr // the first is killed
	}
	probationH := throughcarev1.NewHandoverServiceClient(dialAgency(t, probationAddr, clientTLS(t, c.Certs, probationAgency, probationAgency)))

	cases := make([]*throughcarev1.ReleaseCase, n)
	for i := range cases {
		cases[i] = openCaseN(t, prison, i+1)
	}
	var ids []string
	var injected time.Time
	retried := 0
	for i, rc := range cases {
		if i == n/2 {
			injected = time.Now()
			f.inject(t, c, rig)
		}
		req := &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Recipient: probationAgency, Purpose: purposeSupervision, RequestId: fmt.Sprintf("fault-%d", i)}
		var resp *throughcarev1.ReferCaseResponse
		for start := time.Now(); ; {
			callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			var err error
			resp, err = prisonCases.ReferCase(callCtx, req)
			cancel()
			if err == nil {
				break
			}
			if time.Since(start) > 2*time.Minute {
				t.Fatalf("refer %d: still failing after 2m: %v", i, err)
			}
			if retried++; retried%20 == 1 {
				t.Logf("refer %d: %v; retrying", i, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		ids = append(ids, resp.GetHandover().GetHandoverId())
	}
	if f.heal != nil {
		f.heal(t, c, rig)
	}
	// Every referral answered is stored: read each by id, which needs no index, before
	// the list below, which does; a failure then says which of the two lost it.
	for _, id := range ids {
		eventually(t, time.Minute, func() (bool, string) {
			callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := prisonH.GetHandover(callCtx, &throughcarev1.GetHandoverRequest{HandoverId: id})
			return err == nil, fmt.Sprintf("handover %s, referred and answered, not readable at the prison: %v", id, err)
		})
	}
	delivered := waitAllState(t, prisonH, outgoing, ids, stateDelivered, 3*time.Minute) // a bound against a hang
	recovered := time.Since(injected)
	for _, id := range ids {
		checkReceipts(t, "prison", delivered[id], receiptDelivered)
	}
	// An index entry a killed writer had not yet put in place is mended by the follower of
	// the bucket's change stream once the dead process's delivery of that change times
	// out: the list is whole when the follower has caught up.
	waitIndexFollowed(t, c, probationAgency)
	held := map[string]int{}
	for _, h := range listAll(t, probationH, &throughcarev1.ListHandoversRequest{Direction: incoming}) {
		held[h.GetHandoverId()]++
	}
	lost, doubled := 0, 0
	for _, id := range ids {
		switch held[id] {
		case 0:
			lost++
			_, err := probationH.GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: id})
			t.Errorf("probation does not list handover %s; read by id: %v", id, err)
		case 1:
		default:
			doubled += held[id] - 1
		}
		delete(held, id)
	}
	doubled += len(held) // handovers no referral asked for: a retry that made a second one
	if lost != 0 || doubled != 0 {
		t.Errorf("probation: %d handovers lost, %d doubled", lost, doubled)
	}
	t.Logf("fault table | %s | %d referrals | %d lost | %d doubled | %d ReferCase calls retried | all delivered %s after the fault |",
		f.name, n, lost, doubled, retried, recovered.Round(100*time.Millisecond))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// startReplica starts a second process of agency beside the first, on free ports.
func startReplica(t *testing.T, c *localCluster, agency string) clusterAgency {
	t.Helper()
	second := clusterAgency{ID: agency, Addr: freeAddr(t), HealthAddr: freeAddr(t), MetricsAddr: freeAddr(t), Replica: 1}
	must(t, c.StartService(second))
	must(t, c.WaitServing(t.Context(), second))
	return second
}

// streamLeader is the server name of stream's leader, asked as agency.
func streamLeader(t *testing.T, c *localCluster, agency, stream string) string {
	t.Helper()
	js, closeConn, err := agencyJetStream(c, agency)
	must(t, err)
	defer closeConn()
	s, err := js.Stream(t.Context(), stream)
	must(t, err)
	info, err := s.Info(t.Context())
	must(t, err)
	if info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("stream %s has no leader", stream)
	}
	return info.Cluster.Leader
}

// nodeIndex is the index of the node with server name name (nats-1 is 0).
func nodeIndex(t *testing.T, name string) int {
	t.Helper()
	var i int
	if _, err := fmt.Sscanf(name, "nats-%d", &i); err != nil || i < 1 || i > natsNodes {
		t.Fatalf("server %q is not one of the cluster's nodes", name)
	}
	return i - 1
}

// waitRoutes waits until node i's monitoring reports want routes.
func waitRoutes(t *testing.T, c *localCluster, i, want int) {
	t.Helper()
	eventually(t, 20*time.Second, func() (bool, string) {
		resp, err := http.Get("http://" + c.cfg.port(21+i) + "/routez")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var r struct {
			NumRoutes int `json:"num_routes"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return false, err.Error()
		}
		return r.NumRoutes == want, fmt.Sprintf("nats-%d has %d routes, want %d", i+1, r.NumRoutes, want)
	})
}

// routeProxies stand on every route between two nodes, one a direction, so that a test
// can cut one node off from the others (a partition) with its clients still connected.
type routeProxies struct {
	proxies map[[2]int]*natstest.Proxy
}

func startRouteProxies(t *testing.T, cfg clusterConfig) *routeProxies {
	t.Helper()
	r := &routeProxies{proxies: map[[2]int]*natstest.Proxy{}}
	for from := range natsNodes {
		for to := range natsNodes {
			if from == to {
				continue
			}
			r.proxies[[2]int{from, to}] = natstest.StartProxy(t, cfg.port(11+to))
		}
	}
	return r
}

func (r *routeProxies) addr(from, to int) string {
	return r.proxies[[2]int{from, to}].Addr()
}

// isolate cuts (or mends) every route to and from node i.
func (r *routeProxies) isolate(i int, cut bool) {
	for pair, p := range r.proxies {
		if pair[0] == i || pair[1] == i {
			p.SetCut(cut)
		}
	}
}

// smallDisk mounts a tmpfs of size bytes at dir for the test (root only).
func smallDisk(t *testing.T, dir string, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a small disk needs root, to mount a tmpfs")
	}
	must(t, os.MkdirAll(dir, 0o700))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs at %s: %v\n%s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes a file in dir until the disk is full.
func fillDisk(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	must(t, err)
	defer f.Close()
	block := make([]byte, 1<<20)
	for {
		if _, err := f.Write(block); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatalf("fill %s: %v", dir, err)
		}
	}
}
