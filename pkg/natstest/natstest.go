// Package natstest runs a real embedded NATS server with JetStream for tests.
package natstest

import (
	"bytes"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// Server is an embedded server that lives as long as the test. Its methods
// are meant for the test goroutine; Restart is not safe concurrently with them.
type Server struct {
	cfg natsserver.Config
	srv *server.Server
}

// Start starts a server on a random localhost port with its store in
// t.TempDir(). It is shut down when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{cfg: natsserver.Config{
		Host:     "127.0.0.1",
		Port:     -1,
		StoreDir: t.TempDir(),
		// Tests do not survive power loss; fsync per write only slows them.
		SyncAlways: false,
	}}
	s.start(t)
	// Restart must come back on the same port so reconnecting clients find it.
	s.cfg.Port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Stop)
	return s
}

// AgencyServer is a Server with one NATS account per agency (natsserver.Accounts), as
// `throughcare dev` and production run: connections need an agency's credentials.
type AgencyServer struct {
	*Server
	Creds natsserver.Credentials
}

// StartWithAgencies starts a server with the agency accounts and fresh credentials in
// t.TempDir(). Connect and JetStream of the embedded Server have no credentials and are
// refused; use ConnectAs and JetStreamAs. tune, if any, adjusts the server configuration.
func StartWithAgencies(t testing.TB, tune ...func(*natsserver.Config)) *AgencyServer {
	t.Helper()
	return StartWithRegistry(t, protocol.Default().Agencies(), tune...)
}

// StartWithRegistry is StartWithAgencies for the agencies of another protocol.
func StartWithRegistry(t testing.TB, agencies *agency.Registry, tune ...func(*natsserver.Config)) *AgencyServer {
	t.Helper()
	creds, err := natsserver.LoadOrCreateCredentials(filepath.Join(t.TempDir(), "creds"), agencies)
	if err != nil {
		t.Fatalf("credentials: %v", err)
	}
	s := &Server{cfg: natsserver.Config{
		Host:     "127.0.0.1",
		Port:     -1,
		StoreDir: t.TempDir(),
		Accounts: &creds.Accounts,
	}}
	for _, f := range tune {
		f(&s.cfg)
	}
	s.start(t)
	s.cfg.Port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Stop)
	return &AgencyServer{Server: s, Creds: creds}
}

// ConnectAs connects with agency's credentials, like Connect otherwise.
func (s *AgencyServer) ConnectAs(t testing.TB, agency string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	auth, err := s.Creds.ConnectOptions(agency)
	if err != nil {
		t.Fatal(err)
	}
	return s.Connect(t, append(auth, opts...)...)
}

// JetStreamAs returns a JetStream context on a new connection from ConnectAs.
func (s *AgencyServer) JetStreamAs(t testing.TB, agency string) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(s.ConnectAs(t, agency))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// ConnectAsOperator connects with the operators' credentials: the FLOW stream's account.
func (s *AgencyServer) ConnectAsOperator(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	auth, err := natsserver.OperatorConnectOptions(s.Creds.SeedFile(natsserver.OperatorAccount))
	if err != nil {
		t.Fatal(err)
	}
	return s.Connect(t, append(auth, opts...)...)
}

// URL is the client URL; it stays the same across Restart.
func (s *Server) URL() string {
	return s.srv.ClientURL()
}

// Connect returns a connection that is closed when the test ends. It
// reconnects forever and quickly so it survives Restart; opts override that.
func (s *Server) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(20 * time.Millisecond),
	}, opts...)
	nc, err := nats.Connect(s.URL(), opts...)
	if err != nil {
		t.Fatalf("connect to %s: %v", s.URL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection from Connect.
func (s *Server) JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(s.Connect(t))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// Restart stops the server (if running) and starts a new one on the same
// port and store directory, returning once it accepts clients.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}

// Traffic is what a server has taken in so far.
type Traffic struct {
	// ClientMessages is what its client connections have sent it (those closed too, as
	// far as the server remembers them): publishes, API requests, acknowledgements.
	ClientMessages uint64
	// StoredWrites is the sum of every stream's last sequence, over every account: each
	// message a stream stored (a publish, a sourced copy, a removal marker) counts once,
	// whether or not it is still there.
	StoredWrites uint64
}

// Traffic reads what the server has taken in so far, for benchmarks that report what one
// operation costs in messages and writes.
func (s *Server) Traffic(t testing.TB) Traffic {
	t.Helper()
	conns, err := s.srv.Connz(&server.ConnzOptions{State: server.ConnAll, Limit: 1 << 16})
	if err != nil {
		t.Fatalf("connz: %v", err)
	}
	var tr Traffic
	for _, c := range conns.Conns {
		tr.ClientMessages += uint64(c.InMsgs)
	}
	js, err := s.srv.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		t.Fatalf("jsz: %v", err)
	}
	for _, a := range js.AccountDetails {
		for _, st := range a.Streams {
			tr.StoredWrites += st.State.LastSeq
		}
	}
	return tr
}

// Stop shuts the server down and waits until its store is released. It is
// safe to call more than once.
func (s *Server) Stop() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	// Server goroutines may log after the test ends, which a test logger turns into a panic.
	log := zap.NewNop()
	srv, err := natsserver.Start(s.cfg, log)
	if err != nil {
		t.Fatalf("start nats server: %v", err)
	}
	s.srv = srv
}

// StoreDir is the directory the server keeps its JetStream store in (its jetstream/
// subdirectory holds one directory per account).
func (s *Server) StoreDir() string { return s.cfg.StoreDir }

// FilesHolding lists the files under dir (a server's store directory, say) whose bytes
// contain marker, for tests that data is gone from disk and not only from reads.
func FilesHolding(t testing.TB, dir, marker string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(data, []byte(marker)) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("search %s: %v", dir, err)
	}
	return found
}

// Cluster is n embedded servers clustered on loopback, JetStream on each, that live as
// long as the test: for what only a replicated stream shows, such as a follower behind
// its leader.
type Cluster struct {
	Servers []*server.Server
	// routes[[2]int{from, to}] stands on the route from server from to server to.
	routes map[[2]int]*Proxy
}

// StartCluster starts n clustered servers, every route through a proxy (see Isolate),
// and waits until JetStream is ready (see ready). It skips the test in -short: a cluster
// takes seconds to elect.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skipf("starts a %d-node cluster", n)
	}
	// Clustered JetStream will not start without routes, so the route ports are chosen
	// before any server starts.
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("choose a route port: %v", err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	c := &Cluster{routes: map[[2]int]*Proxy{}}
	for i := range n {
		var routes []*url.URL
		for j := range n {
			if j != i {
				p := StartProxy(t, fmt.Sprintf("127.0.0.1:%d", ports[j]))
				c.routes[[2]int{i, j}] = p
				routes = append(routes, &url.URL{Scheme: "nats", Host: p.Addr()})
			}
		}
		srv, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			// Not advertised: told the real route addresses, servers would dial around
			// the proxies.
			Cluster: server.ClusterOpts{Name: "test", Host: "127.0.0.1", Port: ports[i], NoAdvertise: true},
			Routes:  routes,
		})
		if err != nil {
			t.Fatalf("create server %d: %v", i+1, err)
		}
		srv.Start()
		t.Cleanup(func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		})
		c.Servers = append(c.Servers, srv)
	}
	for i, srv := range c.Servers {
		if !srv.ReadyForConnections(10 * time.Second) {
			t.Fatalf("server %d not ready", i+1)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for !c.ready() {
		if time.Now().After(deadline) {
			t.Fatal("JetStream cluster not ready after 20s: no meta leader, or not every server a current peer of it")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c
}

// Isolate cuts (or mends) every route to and from server i; its clients stay connected.
func (c *Cluster) Isolate(i int, cut bool) {
	for pair, p := range c.routes {
		if pair[0] == i || pair[1] == i {
			p.SetCut(cut)
		}
	}
}

// ready reports whether the meta leader counts every server as a peer, and every server is
// current with it: until then a stream at full replication finds no placement (nats-server's
// own tests wait the same way, waitOnClusterReady).
func (c *Cluster) ready() bool {
	for _, leader := range c.Servers {
		if !leader.JetStreamIsLeader() {
			continue
		}
		if len(leader.JetStreamClusterPeers()) != len(c.Servers) {
			return false
		}
		for _, s := range c.Servers {
			if !s.JetStreamIsCurrent() {
				return false
			}
		}
		return true
	}
	return false
}

// JetStream returns a JetStream context on a connection to server i only, closed when the
// test ends.
func (c *Cluster) JetStream(t testing.TB, i int) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(c.Servers[i].ClientURL(), nats.NoReconnect())
	if err != nil {
		t.Fatalf("connect to server %d: %v", i+1, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// AnswersDirectGets reports whether server i itself answers direct gets of stream: a
// follower joins the queue of answerers only once it is (nearly) caught up, and a test
// of stale reads must wait for that.
func (c *Cluster) AnswersDirectGets(t testing.TB, i int, stream string) bool {
	t.Helper()
	srv := c.Servers[i]
	routez, err := srv.Routez(nil)
	if err != nil {
		t.Fatalf("routez of server %d: %v", i+1, err)
	}
	routes := map[uint64]bool{}
	for _, r := range routez.Routes {
		routes[r.Rid] = true
	}
	subsz, err := srv.Subsz(&server.SubszOptions{Subscriptions: true, Limit: 1 << 16, Test: "$JS.API.DIRECT.GET." + stream})
	if err != nil {
		t.Fatalf("subsz of server %d: %v", i+1, err)
	}
	for _, sub := range subsz.Subs {
		if sub.Queue != "" && !routes[sub.Cid] {
			return true
		}
	}
	return false
}
