// Package natstest runs a real embedded NATS server with JetStream for tests.
package natstest

import (
	"bytes"
	"io/fs"
	"net"
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
