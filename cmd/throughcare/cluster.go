package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/flow"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/natsserver"
	"github.com/throughcare/throughcare/pkg/signing"
)

// clusterConfig is `throughcare cluster`: a real cluster on this machine, as the chart
// runs one. Three nats-server processes clustered on loopback, JetStream on files with
// sync_interval always, the per-agency accounts, streams and buckets at R3; and each
// agency's `throughcare serve` a process of its own, over mutual TLS.
type clusterConfig struct {
	Dir string
	// NATSServer is the nats-server binary; empty builds it from the module's own
	// nats-server (go build), once, into <dir>/bin.
	NATSServer string
	// Throughcare is the binary the services run; empty is this one.
	Throughcare string
	// BasePort places everything: NATS clients on +1..+3, routes on +11..+13, monitoring
	// on +21..+23, the i-th agency's gRPC on +31+i, health on +41+i, metrics on +51+i.
	BasePort int
	Protocol handoverFlags
	Log      io.Writer
	// routeTo, when set, is the address node from dials for its route to node to: a
	// test puts a proxy there to cut the routes of one node (a partition). Nodes then
	// advertise an address where nothing listens: what they gossip to each other is their
	// real route address otherwise, and a node told it would dial around the proxy.
	routeTo func(from, to int) string
	// maxFileStore, when set, is each node's JetStream file storage limit in place of
	// the default share of its disk: a test sets one above what a small disk holds.
	maxFileStore int64
}

func parseClusterConfig(args []string, getenv func(string) string, out io.Writer) (clusterConfig, error) {
	var c clusterConfig
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.Dir, "dir", "./.throughcare-cluster", "where the nodes keep their data, configuration, credentials and logs")
	fs.StringVar(&c.NATSServer, "nats-server", "", "nats-server binary; empty builds the module's own into <dir>/bin")
	fs.IntVar(&c.BasePort, "base-port", 7200, "NATS on base+1..3 (routes +11.., monitoring +21..), agencies' gRPC on base+31+i, health +41+i, metrics +51+i")
	fs.StringVar(&c.Protocol.ProtocolFile, "protocol", "", "sharing protocol file; empty uses the built-in default")
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	if c.BasePort < 1024 || c.BasePort > 65535-60 {
		return c, fmt.Errorf("--base-port %d: want 1024 to %d", c.BasePort, 65535-60)
	}
	return c, nil
}

// natsNodes is how many nats-server processes a local cluster runs.
const natsNodes = 3

// localCluster is a running local cluster.
type localCluster struct {
	cfg       clusterConfig
	nats      []*process
	personKey string
	// services are the service processes by name: the agency's id, or <id>-<n> for the
	// n-th replica of it.
	services map[string]*process
	// Agencies are the agencies in the protocol's order, with where each serves.
	Agencies []clusterAgency
	Certs    *certs.Bundle
	Creds    natsserver.Credentials
}

type clusterAgency struct {
	ID, Addr, HealthAddr, MetricsAddr string
	// Replica counts from 0, the first process of the agency.
	Replica int
}

// Name is the agency's process name.
func (a clusterAgency) Name() string {
	if a.Replica == 0 {
		return a.ID
	}
	return fmt.Sprintf("%s-%d", a.ID, a.Replica+1)
}

// process is one child process and where its output goes.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan error
	log  *os.File
}

func (c clusterConfig) port(offset int) string { return fmt.Sprintf("127.0.0.1:%d", c.BasePort+offset) }

// NATSURLs are the client URLs of every node, comma-separated.
func (c *localCluster) NATSURLs() string {
	urls := make([]string, natsNodes)
	for i := range urls {
		urls[i] = "nats://" + c.cfg.port(1+i)
	}
	return strings.Join(urls, ",")
}

func runCluster(ctx context.Context, cfg clusterConfig, stdout io.Writer) error {
	cfg.Log = stdout
	c, err := startCluster(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nthroughcare cluster is running (data in %s)\n", cfg.Dir)
	for i := range natsNodes {
		fmt.Fprintf(stdout, "  %-12s %s (routes %s, monitoring http://%s)\n", fmt.Sprintf("nats-%d", i+1), "nats://"+cfg.port(1+i), cfg.port(11+i), cfg.port(21+i))
	}
	for _, a := range c.Agencies {
		fmt.Fprintf(stdout, "  %-12s %s  health %s, metrics http://%s/metrics (log %s)\n", a.ID, a.Addr, a.HealthAddr, a.MetricsAddr, c.services[a.Name()].log.Name())
	}
	fmt.Fprintf(stdout, "\nOperators: go run ./cmd/throughcare streams --data-dir %s --nats-url %s\nCtrl-C stops every process.\n", cfg.Dir, c.NATSURLs())
	<-ctx.Done()
	return c.Stop()
}

// startCluster prepares what every node needs, starts the NATS nodes, waits for their
// JetStream, then starts each agency's service and waits until it serves.
func startCluster(ctx context.Context, cfg clusterConfig) (*localCluster, error) {
	sharing, err := cfg.Protocol.loadProtocol()
	if err != nil {
		return nil, err
	}
	ids := sharing.Agencies().IDs()
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "logs"), 0o700); err != nil {
		return nil, err
	}
	bundle, err := certs.Ensure(filepath.Join(cfg.Dir, "certs"), ids, time.Now())
	if err != nil {
		return nil, err
	}
	if _, _, err := signing.Ensure(filepath.Join(cfg.Dir, "keys"), ids, time.Now()); err != nil {
		return nil, err
	}
	personKey := filepath.Join(cfg.Dir, "secrets", "person-hash.key")
	if _, err := ledger.EnsurePersonKey(personKey); err != nil {
		return nil, err
	}
	creds, err := natsserver.LoadOrCreateCredentials(devCredentialsDir(cfg.Dir), sharing.Agencies())
	if err != nil {
		return nil, err
	}
	accounts, err := creds.Accounts.Conf()
	if err != nil {
		return nil, err
	}
	if cfg.NATSServer == "" {
		if cfg.NATSServer, err = buildNATSServer(ctx, filepath.Join(cfg.Dir, "bin")); err != nil {
			return nil, err
		}
	}
	if cfg.Throughcare == "" {
		if cfg.Throughcare, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	c := &localCluster{cfg: cfg, personKey: personKey, services: map[string]*process{}, Certs: bundle, Creds: creds}
	for i := range natsNodes {
		conf := filepath.Join(cfg.Dir, fmt.Sprintf("nats-%d.conf", i+1))
		if err := os.WriteFile(conf, []byte(cfg.natsConf(i, accounts)), 0o600); err != nil {
			return nil, errors.Join(err, c.Stop())
		}
		p, err := c.start(fmt.Sprintf("nats-%d", i+1), cfg.NATSServer, "-c", conf)
		if err != nil {
			return nil, errors.Join(err, c.Stop())
		}
		c.nats = append(c.nats, p)
	}
	if err := c.waitJetStream(ctx); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	if err := c.setupFlow(ctx); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	for i, id := range ids {
		a := clusterAgency{ID: id, Addr: cfg.port(31 + i), HealthAddr: cfg.port(41 + i), MetricsAddr: cfg.port(51 + i)}
		c.Agencies = append(c.Agencies, a)
		if err := c.StartService(a); err != nil {
			return nil, errors.Join(err, c.Stop())
		}
	}
	if err := c.WaitServing(ctx, c.Agencies...); err != nil {
		return nil, errors.Join(err, c.Stop())
	}
	return c, nil
}

// WaitServing waits until each of the agencies' processes serves.
func (c *localCluster) WaitServing(ctx context.Context, agencies ...clusterAgency) error {
	for _, a := range agencies {
		if err := waitServing(ctx, a.HealthAddr, c.services[a.Name()]); err != nil {
			return fmt.Errorf("%s: %w", a.Name(), err)
		}
	}
	return nil
}

// natsConf is node i's configuration: a cluster of natsNodes on loopback, JetStream that
// fsyncs every write (Jepsen found the lazy default losing acknowledged writes), and the
// accounts.
func (c clusterConfig) natsConf(i int, accounts string) string {
	var routes []string
	advertise := ""
	for j := range natsNodes {
		if j == i {
			continue
		}
		to := c.port(11 + j)
		if c.routeTo != nil {
			to = c.routeTo(i, j)
			advertise = "\n  advertise: \"127.0.0.1:1\""
		}
		routes = append(routes, fmt.Sprintf("%q", "nats-route://"+to))
	}
	limit := ""
	if c.maxFileStore > 0 {
		limit = fmt.Sprintf("\n  max_file_store: %d", c.maxFileStore)
	}
	return fmt.Sprintf(`# Written by throughcare cluster.
server_name: nats-%d
listen: %s
http: %s
jetstream {
  store_dir: %q
  sync_interval: always%s
}
cluster {
  name: throughcare
  listen: %s
  routes: [%s]%s
}
%s`, i+1, c.port(1+i), c.port(21+i), c.storeDir(i), limit, c.port(11+i), strings.Join(routes, ", "), advertise, accounts)
}

// storeDir is where node i keeps its JetStream data.
func (c clusterConfig) storeDir(i int) string {
	return filepath.Join(c.Dir, fmt.Sprintf("nats-%d", i+1))
}

// StartService starts agency a's `throughcare serve` against every NATS node, R3.
func (c *localCluster) StartService(a clusterAgency) error {
	cert, key := c.Certs.ServerFiles(a.ID)
	args := []string{"serve", "--service", a.ID, "--nats-url", c.NATSURLs(),
		"--nats-nkey-seed", c.Creds.AgencySeedFile(a.ID), "--replicas", "3",
		"--addr", a.Addr, "--health-addr", a.HealthAddr, "--metrics-addr", a.MetricsAddr,
		"--tls-ca", c.Certs.CAFile(), "--tls-cert", cert, "--tls-key", key,
		"--signing-key", filepath.Join(c.cfg.Dir, "keys", a.ID+".key"), "--keyring", filepath.Join(c.cfg.Dir, "keys", "keyring.json"),
		"--person-hash-key", c.personKey}
	if c.cfg.Protocol.ProtocolFile != "" {
		args = append(args, "--protocol", c.cfg.Protocol.ProtocolFile)
	}
	p, err := c.start(a.Name(), c.cfg.Throughcare, args...)
	if err != nil {
		return err
	}
	c.services[a.Name()] = p
	return nil
}

// start runs a child process, its output appended to <dir>/logs/<name>.log.
func (c *localCluster) start(name, bin string, args ...string) (*process, error) {
	log, err := os.OpenFile(filepath.Join(c.cfg.Dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = os.Environ()
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan error, 1), log: log}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

// KillNATS kills NATS node i (from 0) at once, as a crash would (kill -9).
func (c *localCluster) KillNATS(i int) error { return c.nats[i].kill() }

// RestartNATS starts NATS node i again on its own configuration and data.
func (c *localCluster) RestartNATS(i int) error {
	p, err := c.restart(c.nats[i])
	if err == nil {
		c.nats[i] = p
	}
	return err
}

// KillService kills the service process named name (clusterAgency.Name) with kill -9.
func (c *localCluster) KillService(name string) error { return c.services[name].kill() }

// RestartService starts the service process named name again, as it ran.
func (c *localCluster) RestartService(name string) error {
	p, err := c.restart(c.services[name])
	if err == nil {
		c.services[name] = p
	}
	return err
}

func (c *localCluster) restart(old *process) (*process, error) {
	_ = old.log.Close()
	return c.start(old.name, old.cmd.Path, old.cmd.Args[1:]...)
}

// kill ends the process at once (SIGKILL) and waits for it.
func (p *process) kill() error {
	if err := p.cmd.Process.Kill(); err != nil {
		return fmt.Errorf("kill %s: %w", p.name, err)
	}
	err := <-p.done
	p.done <- err
	return nil
}

// Stop ends every process: services first, so nothing they hold is cut off, then NATS.
func (c *localCluster) Stop() error {
	var errs []error
	for _, p := range c.services {
		errs = append(errs, p.stop(syscall.SIGTERM))
	}
	for _, p := range c.nats {
		errs = append(errs, p.stop(syscall.SIGTERM))
	}
	return errors.Join(errs...)
}

// stop signals the process and waits for it; one that does not end in 30 s is killed.
func (p *process) stop(sig syscall.Signal) error {
	defer p.log.Close()
	select {
	case err := <-p.done: // ended already (killed by a test, say)
		p.done <- err
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop in 30s; killed", p.name)
	}
}

// waitJetStream waits until the system account sees JetStream with a meta leader.
func (c *localCluster) waitJetStream(ctx context.Context) error {
	auth, err := c.Creds.SystemConnectOptions()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := func() error {
			nc, err := nats.Connect(c.NATSURLs(), append(auth, nats.Timeout(time.Second))...)
			if err != nil {
				return err
			}
			defer nc.Close()
			servers, err := jsz(ctx, nc)
			if err != nil {
				return err
			}
			for _, s := range servers {
				if s.Data.Meta == nil || s.Data.Meta.Leader == "" {
					return errors.New("no JetStream meta leader yet")
				}
			}
			return nil
		}()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("NATS cluster: %w (logs in %s)", err, filepath.Join(c.cfg.Dir, "logs"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// setupFlow creates the operators' FLOW stream at R3.
func (c *localCluster) setupFlow(ctx context.Context) error {
	auth, err := natsserver.OperatorConnectOptions(c.Creds.SeedFile(natsserver.OperatorAccount))
	if err != nil {
		return err
	}
	nc, err := nats.Connect(c.NATSURLs(), auth...)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	limits := flow.DefaultLimits
	limits.Replicas = natsNodes
	for deadline := time.Now().Add(30 * time.Second); ; {
		// Each attempt has its own timeout: a request no server answers (seen once on a
		// cluster just formed) otherwise holds the whole of ctx.
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := flow.Setup(attempt, js, limits)
		cancel()
		if err == nil || !jetStreamNotReady(err) || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitServing waits until the service's plaintext health says SERVING, or its process ends.
func waitServing(ctx context.Context, healthAddr string, p *process) error {
	conn, err := grpc.NewClient(healthAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case err := <-p.done:
			p.done <- err
			return fmt.Errorf("exited before serving: %v (log %s)", err, p.log.Name())
		default:
		}
		callCtx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := client.Check(callCtx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not serving after 90s: %v (log %s)", err, p.log.Name())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// buildNATSServer builds the module's own nats-server (the version go.mod names) into
// dir, once.
func buildNATSServer(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "nats-server")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/nats-io/nats-server/v2")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build nats-server (or give --nats-server): %v\n%s", err, out)
	}
	return bin, nil
}
