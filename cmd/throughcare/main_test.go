package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

func testDevConfig(t *testing.T, dataDir string) devConfig {
	t.Helper()
	cfg, err := parseDevConfig([]string{
		"--data-dir", dataDir, "--nats-port", "-1",
		"--prison-addr", "127.0.0.1:0", "--probation-addr", "127.0.0.1:0", "--socialwork-addr", "127.0.0.1:0",
	}, func(string) string { return "" }, &strings.Builder{})
	if err != nil {
		t.Fatalf("parse dev config: %v", err)
	}
	return cfg
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestDevServesAllAgenciesAndKeepsDataAcrossRestart runs the system the README's run
// command runs, on random ports, twice over the same data dir.
func TestDevServesAllAgenciesAndKeepsDataAcrossRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := testDevConfig(t, t.TempDir())

	sys, err := startDev(ctx, zaptest.NewLogger(t), cfg)
	if err != nil {
		t.Fatalf("start dev: %v", err)
	}
	for _, a := range sys.agencies {
		resp, err := healthpb.NewHealthClient(dial(t, a.Addr())).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("%s health: got %v, %v; want SERVING", agencyName(a.agency), resp.GetStatus(), err)
		}
	}
	prison := throughcarev1.NewPrisonServiceClient(dial(t, sys.agencies[0].Addr()))
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

	sys, err = startDev(ctx, zaptest.NewLogger(t), cfg)
	if err != nil {
		t.Fatalf("restart dev: %v", err)
	}
	defer sys.Stop()
	prison = throughcarev1.NewPrisonServiceClient(dial(t, sys.agencies[0].Addr()))
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
			"--prison-addr", "127.0.0.1:0", "--probation-addr", "127.0.0.1:0", "--socialwork-addr", "127.0.0.1:0"}, &out, func(string) string { return "" })
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "grpcurl -plaintext 127.0.0.1:") {
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
	env := map[string]string{"THROUGHCARE_NATS_URL": "nats://env:4222", "THROUGHCARE_ADDR": ":9000", "THROUGHCARE_SERVICE": "probation"}
	cfg, err := parseServeConfig([]string{"--addr", ":8000"}, func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if cfg.Addr != ":8000" || cfg.NATSURL != "nats://env:4222" || cfg.Agency != throughcarev1.Agency_AGENCY_PROBATION || cfg.Replicas != 1 {
		t.Errorf("got %+v; want addr from flag, nats url and service from env, replicas default", cfg)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--service", "police"}, nil, "--service"},
		{nil, map[string]string{"THROUGHCARE_SERVICE": "prison", "THROUGHCARE_REPLICAS": "many"}, "THROUGHCARE_REPLICAS"},
		{[]string{"--service", "prison", "--replicas", "9"}, nil, "--replicas"},
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
