package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/signing"
)

func testDevConfig(t *testing.T, dataDir string) devConfig {
	t.Helper()
	cfg, err := parseDevConfig([]string{
		"--data-dir", dataDir, "--nats-port", "-1",
		"--base-port", "0",
	}, func(string) string { return "" }, &strings.Builder{})
	if err != nil {
		t.Fatalf("parse dev config: %v", err)
	}
	return cfg
}

// dialPlain connects without TLS: to a health port, or to a server run with --insecure.
func dialPlain(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUnaryInterceptor(declarePurpose))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// dialDev connects to a dev agency as its own system, with the certificate dev made.
func dialDev(t *testing.T, sys *devSystem, a *agencyServer) *grpc.ClientConn {
	t.Helper()
	return dialAgency(t, a.Addr(), clientTLS(t, sys.certs, a.agency, a.agency))
}

// TestDevServesAllAgenciesAndKeepsDataAcrossRestart runs the system the README's run
// command runs, on random ports, twice over the same data dir: the certificates it made
// at the first start serve the second.
func TestDevServesAllAgenciesAndKeepsDataAcrossRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := testDevConfig(t, t.TempDir())
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core))

	sys, err := startDev(ctx, log, cfg)
	if err != nil {
		t.Fatalf("start dev: %v", err)
	}
	keyFile, err := os.ReadFile(cfg.PersonHashKeyFile())
	if err != nil {
		t.Fatalf("dev's person-hash key: %v", err)
	}
	if st, err := os.Stat(cfg.PersonHashKeyFile()); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("person-hash key file: %v, %v; want mode 0600", st.Mode().Perm(), err)
	}
	keyID := sys.personKey.ID()
	for _, a := range sys.agencies {
		resp, err := healthpb.NewHealthClient(dialDev(t, sys, a)).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("%s health: got %v, %v; want SERVING", a.agency, resp.GetStatus(), err)
		}
	}
	fingerprint := sys.certs.CAFingerprint()
	prison := throughcarev1.NewPrisonServiceClient(dialDev(t, sys, sys.agencies[0]))
	opened, err := prison.OpenReleaseCase(ctx, &throughcarev1.OpenReleaseCaseRequest{
		Actor: "worker-1",
		ReleaseCase: &throughcarev1.ReleaseCase{
			Person:      &throughcarev1.Person{GivenName: "Ana", FamilyName: "Kovač", PrisonNumber: "A-1", DateOfBirth: &throughcarev1.Date{Year: 1990, Month: 5, Day: 4}},
			ReleasePlan: &throughcarev1.ReleasePlan{ReleaseType: throughcarev1.ReleaseType_RELEASE_TYPE_PAROLE, ExpectedReleaseDate: &throughcarev1.Date{Year: 2027, Month: 3, Day: 1}},
		},
	})
	if err != nil {
		t.Fatalf("open case: %v", err)
	}
	if err := sys.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	sys, err = startDev(ctx, log, cfg)
	if err != nil {
		t.Fatalf("restart dev: %v", err)
	}
	defer sys.Stop()
	if got := sys.certs.CAFingerprint(); got != fingerprint {
		t.Errorf("CA after restart: got %s, want the first start's %s", got, fingerprint)
	}
	// The same key, or every reference in the ledger so far would match no one.
	if got, err := os.ReadFile(cfg.PersonHashKeyFile()); err != nil || !bytes.Equal(got, keyFile) || sys.personKey.ID() != keyID {
		t.Errorf("person-hash key after restart: id %s (file changed: %v, err %v); want the first start's %s", sys.personKey.ID(), !bytes.Equal(got, keyFile), err, keyID)
	}
	secret := strings.TrimSpace(string(keyFile))
	for _, e := range logs.All() {
		if line := fmt.Sprint(e.Message, e.ContextMap()); strings.Contains(line, secret) {
			t.Errorf("the person-hash key is in the log: %s", line)
		}
	}
	if logs.FilterField(zap.String("key_id", keyID)).Len() != 2 {
		t.Errorf("want the key's id logged at each start, got %v", logs.FilterMessage("person-hash key").All())
	}
	prison = throughcarev1.NewPrisonServiceClient(dialDev(t, sys, sys.agencies[0]))
	got, err := prison.GetReleaseCase(ctx, &throughcarev1.GetReleaseCaseRequest{CaseId: opened.GetReleaseCase().GetCaseId()})
	if err != nil {
		t.Fatalf("get case after restart: %v", err)
	}
	if got.GetReleaseCase().GetRevision() != opened.GetReleaseCase().GetRevision() || got.GetReleaseCase().GetPerson().GetFamilyName() != "Kovač" {
		t.Errorf("after restart got %v, want the case as opened", got.GetReleaseCase())
	}
}

// syncBuffer is written by run's goroutine and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunDevPrintsBannerAndStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	done := make(chan error, 1)
	var out syncBuffer
	go func() {
		done <- run(ctx, []string{"dev", "--data-dir", dir, "--nats-port", "-1", "--log-level", "warn",
			"--base-port", "0",
		}, &out, func(string) string { return "" })
	}()
	deadline := time.Now().Add(30 * time.Second)
	wantTry := "grpcurl -cacert " + filepath.Join(dir, "certs", "ca.pem") + " -cert " + filepath.Join(dir, "certs", "prison", "client.pem") +
		" -key " + filepath.Join(dir, "certs", "prison", "client-key.pem") + " 127.0.0.1:"
	for !strings.Contains(out.String(), wantTry) {
		select {
		case err := <-done:
			t.Fatalf("run dev ended before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no banner after 30s; output so far:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run dev: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dev did not stop within 30s of cancel")
	}
}

func TestConfigFlagsWinOverEnvironmentOverDefaults(t *testing.T) {
	env := map[string]string{
		"THROUGHCARE_NATS_URL": "nats://env:4222", "THROUGHCARE_ADDR": ":9000", "THROUGHCARE_SERVICE": "probation",
		"THROUGHCARE_TLS_CA": "/etc/tc/ca.pem", "THROUGHCARE_TLS_CERT": "/etc/tc/tls.crt", "THROUGHCARE_TLS_KEY": "/etc/tc/tls.key",
		"THROUGHCARE_MAX_INFLIGHT_PER_CALLER": "8", "THROUGHCARE_PERSON_HASH_KEY": "/etc/tc/person-hash.key",
	}
	cfg, err := parseServeConfig([]string{"--addr", ":8000"}, func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if cfg.Addr != ":8000" || cfg.NATSURL != "nats://env:4222" || cfg.Service != "probation" || cfg.Replicas != 1 {
		t.Errorf("got %+v; want addr from flag, nats url and service from env, replicas default", cfg)
	}
	if cfg.TLSCA != "/etc/tc/ca.pem" || cfg.TLSCert != "/etc/tc/tls.crt" || cfg.TLSKey != "/etc/tc/tls.key" || cfg.GRPC.Insecure {
		t.Errorf("got TLS %q %q %q insecure %v; want the files from env, mutual TLS", cfg.TLSCA, cfg.TLSCert, cfg.TLSKey, cfg.GRPC.Insecure)
	}
	if cfg.PersonHashKey != "/etc/tc/person-hash.key" {
		t.Errorf("got person-hash key %q; want the file from env", cfg.PersonHashKey)
	}
	if cfg.HealthAddr != ":7110" || cfg.GRPC.CallTimeout != 30*time.Second || cfg.GRPC.MaxInFlightPerCaller != 8 {
		t.Errorf("got health %q, call timeout %s, max in flight %d; want :7110, 30s by default, 8 from env", cfg.HealthAddr, cfg.GRPC.CallTimeout, cfg.GRPC.MaxInFlightPerCaller)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--service", "Police"}, nil, "--service"},
		{nil, map[string]string{"THROUGHCARE_SERVICE": "prison", "THROUGHCARE_REPLICAS": "many"}, "THROUGHCARE_REPLICAS"},
		{[]string{"--service", "prison", "--replicas", "9"}, nil, "--replicas"},
		{[]string{"--service", "prison"}, nil, "--tls-ca (THROUGHCARE_TLS_CA) is required"},
		{[]string{"--service", "prison", "--tls-ca", "ca.pem", "--tls-key", "k.pem"}, nil, "--tls-cert (THROUGHCARE_TLS_CERT) is required"},
		{[]string{"--service", "prison", "--tls-ca", "ca.pem", "--tls-cert", "c.pem"}, nil, "--tls-key"},
		{[]string{"--service", "prison", "--insecure", "--tls-cert", "c.pem"}, nil, "--tls-cert with --insecure"},
		{[]string{"--service", "prison", "--insecure", "--max-inflight-per-caller", "0"}, nil, "--max-inflight-per-caller"},
		{[]string{"--service", "prison", "--insecure", "--call-timeout", "0s"}, nil, "--call-timeout"},
		{[]string{"--service", "prison", "--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "k.pem"}, nil, "--person-hash-key (THROUGHCARE_PERSON_HASH_KEY) is required"},
		{[]string{"--service", "prison", "--insecure"}, nil, "--person-hash-key (THROUGHCARE_PERSON_HASH_KEY) is required"},
	} {
		_, err := parseServeConfig(tc.args, func(k string) string { return tc.env[k] }, &strings.Builder{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseServeConfig(%v, %v) = %v; want an error naming %s", tc.args, tc.env, err, tc.want)
		}
	}
}

func TestRedactURLsHidesCredentials(t *testing.T) {
	got := redactURLs("nats://alice:secret@a:4222,nats://tok3n@b:4222,nats://c:4222")
	if strings.Contains(got, "secret") || strings.Contains(got, "tok3n") || strings.Contains(got, "alice") || !strings.Contains(got, "c:4222") {
		t.Errorf("redactURLs = %q; want credentials hidden and hosts kept", got)
	}
}

// freeAddr is a loopback address nothing listens on, for a command that takes an address.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

// TestServeRunsOneAgencyOverMutualTLS runs `throughcare serve` as a pod would, with the
// certificate files from a mounted secret: its own system is answered, another agency is
// refused, and probes get health in plaintext.
func TestServeRunsOneAgencyOverMutualTLS(t *testing.T) {
	ns := natstest.Start(t)
	b := testCerts(t)
	serverCert, serverKey := b.ServerFiles("prison")
	keys := t.TempDir()
	if _, _, err := signing.Ensure(keys, allAgencies, time.Now()); err != nil {
		t.Fatalf("signing keys: %v", err)
	}
	personKey := testPersonKeyFile(t)
	addr, healthAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--service", "prison", "--nats-url", ns.URL(), "--log-level", "warn",
			"--addr", addr, "--health-addr", healthAddr,
			"--signing-key", filepath.Join(keys, "prison.key"), "--keyring", filepath.Join(keys, "keyring.json")}, &strings.Builder{}, func(k string) string {
			return map[string]string{"THROUGHCARE_TLS_CA": b.CAFile(), "THROUGHCARE_TLS_CERT": serverCert, "THROUGHCARE_TLS_KEY": serverKey,
				"THROUGHCARE_PERSON_HASH_KEY": personKey}[k]
		})
	}()
	callCtx := testCtx(t)
	health := healthpb.NewHealthClient(dialPlain(t, healthAddr))
	eventually(t, 20*time.Second, func() (bool, string) {
		select {
		case err := <-done:
			t.Fatalf("serve ended before serving: %v", err)
		default:
		}
		resp, err := health.Check(callCtx, &healthpb.HealthCheckRequest{})
		return resp.GetStatus() == healthpb.HealthCheckResponse_SERVING, fmt.Sprintf("health on %s: %v, %v", healthAddr, resp.GetStatus(), err)
	})
	prison := throughcarev1.NewAuditServiceClient(dialAgency(t, addr, clientTLS(t, b, "prison", prisonAgency)))
	if _, err := prison.VerifyLedger(callCtx, &throughcarev1.VerifyLedgerRequest{}); err != nil {
		t.Errorf("the prison's own system: %v", err)
	}
	probation := throughcarev1.NewAuditServiceClient(dialAgency(t, addr, clientTLS(t, b, "probation", prisonAgency)))
	if _, err := probation.VerifyLedger(callCtx, &throughcarev1.VerifyLedgerRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("probation at the prison's service: got %v, want PermissionDenied", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30s of cancel")
	}
}

// testPersonKeyFile is a person-hash key file as a platform team would mount it.
func testPersonKeyFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "person-hash.key")
	if _, err := ledger.EnsurePersonKey(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestServeRefusesToStartWithoutItsPersonHashKey: serve never starts without a usable
// key, --insecure or not, and says which flag and which file.
func TestServeRefusesToStartWithoutItsPersonHashKey(t *testing.T) {
	keys := t.TempDir()
	if _, _, err := signing.Ensure(keys, allAgencies, time.Now()); err != nil {
		t.Fatalf("signing keys: %v", err)
	}
	write := func(name, text string, mode os.FileMode) string {
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	short := write("short.key", "0123456789abcdef\n", 0o600)
	open := write("open.key", strings.Repeat("ab", 32)+"\n", 0o644)
	missing := filepath.Join(t.TempDir(), "missing.key")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"none", nil, []string{"--person-hash-key (THROUGHCARE_PERSON_HASH_KEY) is required"}},
		{"short", []string{"--person-hash-key", short}, []string{"--person-hash-key", short, "want 64 hex digits"}},
		{"open to others", []string{"--person-hash-key", open}, []string{"--person-hash-key", open, "open to others"}},
		{"missing", []string{"--person-hash-key", missing}, []string{"--person-hash-key", missing}},
	} {
		args := append([]string{"serve", "--service", "prison", "--insecure", "--log-level", "error",
			"--nats-url", "nats://" + freeAddr(t), "--addr", "127.0.0.1:0", "--health-addr", "",
			"--signing-key", filepath.Join(keys, "prison.key"), "--keyring", filepath.Join(keys, "keyring.json")}, tc.args...)
		err := run(t.Context(), args, &strings.Builder{}, func(string) string { return "" })
		for _, want := range tc.want {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: serve = %v; want an error naming %s", tc.name, err, want)
			}
		}
	}
}

// TestCertsCommandMakesTheSetOnceAndShowsIt runs `throughcare certs` twice: the second run
// shows the set the first made, and dev then serves with it.
func TestCertsCommandMakesTheSetOnceAndShowsIt(t *testing.T) {
	dir := t.TempDir()
	var first, second strings.Builder
	for _, out := range []*strings.Builder{&first, &second} {
		if err := run(t.Context(), []string{"certs", "--data-dir", dir}, out, func(string) string { return "" }); err != nil {
			t.Fatalf("certs: %v", err)
		}
	}
	b, err := certs.Ensure(filepath.Join(dir, "certs"), allAgencies, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	clientCert, _ := b.ClientFiles("prison")
	for _, want := range []string{b.CAFingerprint(), clientCert, certs.OperatorURI} {
		if !strings.Contains(second.String(), want) {
			t.Errorf("second run's output does not show %s:\n%s", want, second.String())
		}
	}
	if first.String() != second.String() {
		t.Errorf("the second run shows another set:\n%s\nwant\n%s", second.String(), first.String())
	}
}
