package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/flow"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/signing"
)

// Short names for the agencies, states and receipts the tests use most.
const (
	prisonAgency     = "prison"
	probationAgency  = "probation"
	socialWorkAgency = "socialwork"

	stateReferred     = throughcarev1.HandoverState_HANDOVER_STATE_REFERRED
	stateDelivered    = throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED
	stateRetrieved    = throughcarev1.HandoverState_HANDOVER_STATE_RETRIEVED
	stateAcknowledged = throughcarev1.HandoverState_HANDOVER_STATE_ACKNOWLEDGED
	stateInfoReq      = throughcarev1.HandoverState_HANDOVER_STATE_INFORMATION_REQUESTED
	stateAccepted     = throughcarev1.HandoverState_HANDOVER_STATE_ACCEPTED
	stateDeclined     = throughcarev1.HandoverState_HANDOVER_STATE_DECLINED

	receiptDelivered    = throughcarev1.ReceiptType_RECEIPT_TYPE_DELIVERED
	receiptRetrieved    = throughcarev1.ReceiptType_RECEIPT_TYPE_RETRIEVED
	receiptAcknowledged = throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGED
	receiptInfoReq      = throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_REQUESTED
	receiptInfoProvided = throughcarev1.ReceiptType_RECEIPT_TYPE_INFORMATION_PROVIDED
	receiptAccepted     = throughcarev1.ReceiptType_RECEIPT_TYPE_ACCEPTED
	receiptDeclined     = throughcarev1.ReceiptType_RECEIPT_TYPE_DECLINED
	receiptAckOverdue   = throughcarev1.ReceiptType_RECEIPT_TYPE_ACKNOWLEDGE_OVERDUE

	incoming = throughcarev1.Direction_DIRECTION_INCOMING
	outgoing = throughcarev1.Direction_DIRECTION_OUTGOING
)

var allAgencies = []string{prisonAgency, probationAgency, socialWorkAgency}

// testAgencies are the default protocol's agencies.
var testAgencies = defaultProtocol().Agencies()

// testHandoverConfig is the shipped configuration with retries, ack waits and scans short
// enough for tests.
func testHandoverConfig(agency string) handover.Config {
	c := handover.DefaultConfig(agency)
	keyring, keys := testSigningKeys()
	c.SigningKey, c.Keyring = keys[agency], keyring
	c.PersonKey = testPersonKey
	c.Inbox.AckWait = 2 * time.Second
	c.Inbox.BackOff = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond}
	c.Inbox.MaxDeliver = 4
	c.Inbox.CheckInterval = 200 * time.Millisecond
	c.DeadlineScanInterval = 100 * time.Millisecond
	return c
}

// testPersonKey is the test deployment's person-hash key, the same for every agency.
var testPersonKey = ledger.GeneratePersonKey()

// testSigningKeys are the default agencies' signing keys, made once for all the tests.
var testSigningKeys = sync.OnceValues(func() (*signing.Keyring, map[string]signing.Key) {
	return makeSigningKeys(allAgencies)
})

// testSigningKeysFor are the keys of agencies: the shared ones for the default agencies,
// new ones for a system with others.
func testSigningKeysFor(agencies []string) (*signing.Keyring, map[string]signing.Key) {
	if slices.Equal(agencies, allAgencies) {
		return testSigningKeys()
	}
	return makeSigningKeys(agencies)
}

func makeSigningKeys(agencies []string) (*signing.Keyring, map[string]signing.Key) {
	keyring := new(signing.Keyring)
	keys := map[string]signing.Key{}
	for _, a := range agencies {
		k, err := signing.GenerateKey(a, time.Now())
		if err != nil {
			panic(err) // crypto/rand does not fail
		}
		keys[a] = k
		if err := keyring.Add(k.Public()); err != nil {
			panic(err)
		}
	}
	return keyring, keys
}

// defaultProtocol is the shipped default, parsed once for all the tests.
var defaultProtocol = sync.OnceValue(protocol.Default)

// systemOption changes how newSystem starts the system.
type systemOption func(*systemOptions)

type systemOptions struct {
	tune      map[string]func(*handover.Config)
	protocol  *protocol.Protocol
	level     zapcore.Level
	grpc      grpcFlags
	innermost []grpc.UnaryServerInterceptor
	// withoutTelemetry: see listen.withoutTelemetry.
	withoutTelemetry bool
}

// withConfig changes one agency's handover configuration.
func withConfig(agency string, tune func(*handover.Config)) systemOption {
	return func(o *systemOptions) { o.tune[agency] = tune }
}

// withProtocol runs the system under p, with every agency it declares, in place of the
// default protocol's three.
func withProtocol(p *protocol.Protocol) systemOption {
	return func(o *systemOptions) { o.protocol = p }
}

// withGRPC serves gRPC with flags in place of the shipped defaults.
func withGRPC(flags grpcFlags) systemOption {
	return func(o *systemOptions) { o.grpc = flags }
}

// withInnermost runs interceptors on every agency's server after authorization, next to
// the handlers: a test holds calls there.
func withInnermost(interceptors ...grpc.UnaryServerInterceptor) systemOption {
	return func(o *systemOptions) { o.innermost = append(o.innermost, interceptors...) }
}

// withoutTelemetry runs every agency with no metrics and no spans.
func withoutTelemetry() systemOption {
	return func(o *systemOptions) { o.withoutTelemetry = true }
}

// withLogLevel sets the level of the test log, e.g. warn for the load tests, whose info
// logs would cost more than the work they describe.
func withLogLevel(l zapcore.Level) systemOption {
	return func(o *systemOptions) { o.level = l }
}

// system is the three agency services on one embedded NATS, as `throughcare dev` runs
// them, each with its own NATS connection and served over real gRPC on loopback.
type system struct {
	t    testing.TB
	NATS *natstest.AgencyServer
	// JS is the test's own connection per agency, with that agency's credentials, for
	// looking at and writing to its streams directly.
	JS map[string]jetstream.JetStream
	// Certs is the local PKI every agency serves mutual TLS with; every client below calls
	// as its agency's own system.
	Certs *certs.Bundle

	Prison     throughcarev1.PrisonServiceClient
	Probation  throughcarev1.ProbationServiceClient
	SocialWork throughcarev1.SocialWorkServiceClient
	// Cases is each agency's CaseService: referral and the copies it received.
	Cases map[string]throughcarev1.CaseServiceClient
	// Handovers is each agency's HandoverService.
	Handovers map[string]throughcarev1.HandoverServiceClient
	// Agencies are the system's parties, from its protocol.
	Agencies *agency.Registry
	// Delivered counts, per handover id, every "handover delivered" each node logged: a
	// recipient logs it once per referral it stored.
	Delivered *deliveries

	log   *zap.Logger
	cfg   map[string]handover.Config
	opts  systemOptions
	mu    sync.Mutex
	nodes map[string][]*node
}

// node is one running (or stopped) process of an agency's service.
type node struct {
	name    string
	addr    string
	srv     *agencyServer
	js      jetstream.JetStream
	stopped bool
}

// newSystem starts NATS and the three agencies. Everything stops when the test ends.
func newSystem(t testing.TB, opts ...systemOption) *system {
	t.Helper()
	o := systemOptions{
		tune:  map[string]func(*handover.Config){},
		level: zapcore.InfoLevel,
		grpc:  grpcFlags{CallTimeout: defaultCallTimeout, MaxInFlightPerCaller: defaultMaxInFlightPerCaller},
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.protocol == nil {
		o.protocol = defaultProtocol()
	}
	registry := o.protocol.Agencies()
	keyring, keys := testSigningKeysFor(registry.IDs())
	sys := &system{
		t:         t,
		NATS:      natstest.StartWithRegistry(t, registry),
		JS:        map[string]jetstream.JetStream{},
		Cases:     map[string]throughcarev1.CaseServiceClient{},
		Handovers: map[string]throughcarev1.HandoverServiceClient{},
		Agencies:  registry,
		Delivered: &deliveries{nodes: map[string][]string{}},
		log:       zaptest.NewLogger(t, zaptest.Level(o.level)),
		cfg:       map[string]handover.Config{},
		opts:      o,
		nodes:     map[string][]*node{},
		Certs:     testCertsFor(t, registry.IDs()),
	}
	operator, err := jetstream.New(sys.NATS.ConnectAsOperator(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := flow.Setup(testCtx(t), operator, flow.DefaultLimits); err != nil { // as dev does
		t.Fatal(err)
	}
	for _, a := range registry.IDs() {
		sys.JS[a] = sys.NATS.JetStreamAs(t, a)
		cfg := testHandoverConfig(a)
		cfg.Protocol = o.protocol
		cfg.SigningKey, cfg.Keyring = keys[a], keyring
		cfg.Topology = eventbus.AccountPerAgency
		if tune := o.tune[a]; tune != nil {
			tune(&cfg)
		}
		sys.cfg[a] = cfg
		// As dev does: every outbox first, so no inbox waits on a missing source.
		if err := eventbus.SetupOutbox(testCtx(t), sys.JS[a], a, cfg.Limits); err != nil {
			t.Fatalf("outbox %s: %v", a, err)
		}
	}
	for _, a := range registry.IDs() {
		n := sys.startNode(a, "127.0.0.1:0")
		sys.nodes[a] = []*node{n}
		conn := dialAgency(t, n.addr, clientTLS(t, sys.Certs, a, a))
		sys.Handovers[a] = throughcarev1.NewHandoverServiceClient(conn)
		sys.Cases[a] = throughcarev1.NewCaseServiceClient(conn)
		switch a {
		case prisonAgency:
			sys.Prison = throughcarev1.NewPrisonServiceClient(conn)
		case probationAgency:
			sys.Probation = throughcarev1.NewProbationServiceClient(conn)
		case socialWorkAgency:
			sys.SocialWork = throughcarev1.NewSocialWorkServiceClient(conn)
		}
	}
	return sys
}

// testCerts is a fresh local PKI for the default agencies, as `throughcare certs` makes it.
func testCerts(t testing.TB) *certs.Bundle { return testCertsFor(t, allAgencies) }

// testCertsFor is a fresh local PKI for agencies.
func testCertsFor(t testing.TB, agencies []string) *certs.Bundle {
	t.Helper()
	b, err := certs.Ensure(t.TempDir(), agencies, time.Now())
	if err != nil {
		t.Fatalf("certs: %v", err)
	}
	return b
}

// clientTLS is identity's client configuration (an agency's name or certs.Operator) from
// b, for calling server's service: what an agency's system, or an operator, dials with.
func clientTLS(t testing.TB, b *certs.Bundle, identity string, server string) *tls.Config {
	t.Helper()
	cfg, err := b.ClientTLS(identity)
	if err != nil {
		t.Fatalf("client TLS of %s: %v", identity, err)
	}
	cfg.ServerName = server
	return cfg
}

// serverTLS is agency's server configuration from b.
func serverTLS(t testing.TB, b *certs.Bundle, agency string) *tls.Config {
	t.Helper()
	cfg, err := b.ServerTLS(agency)
	if err != nil {
		t.Fatalf("server TLS of %s: %v", agency, err)
	}
	return cfg
}

// dialAs connects to agency's (first) service as identity: its own system, another
// agency's or certs.Operator.
func (s *system) dialAs(identity string, agency string) *grpc.ClientConn {
	s.t.Helper()
	return dialAgency(s.t, s.nodes[agency][0].addr, clientTLS(s.t, s.Certs, identity, agency))
}

// declarePurpose adds the purpose every write must carry, unless the call set one itself.
func declarePurpose(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if md, _ := metadata.FromOutgoingContext(ctx); len(md.Get(grpcserver.PurposeHeader)) == 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, grpcserver.PurposeHeader, "PURPOSE_SUPERVISION")
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// dialAgency connects to an agency's gRPC server over mutual TLS. Calls wait for the
// server to be up and reconnecting is quick, so a client outlives a restart of the server
// on the same address.
func dialAgency(t testing.TB, addr string, clientTLS *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)),
		grpc.WithUnaryInterceptor(declarePurpose))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// startNode starts one process of agency's service on addr, on a NATS connection of its
// own, and stops it when the test ends unless it was stopped before.
func (s *system) startNode(agency string, addr string) *node {
	s.t.Helper()
	s.mu.Lock()
	name := fmt.Sprintf("%s-%d", agency, len(s.nodes[agency])+1)
	s.mu.Unlock()
	n, err := s.tryStartNode(agency, name, addr)
	if err != nil {
		s.t.Fatalf("start %s on %s: %v", name, addr, err)
	}
	return n
}

// tryStartNode is startNode that reports an error instead of failing the test.
func (s *system) tryStartNode(agency string, name, addr string) (*node, error) {
	js := s.NATS.JetStreamAs(s.t, agency)
	log := s.log.With(zap.String("node", name)).WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, deliveryCore{d: s.Delivered, node: name})
	}))
	l := s.opts.grpc.listen(addr, "", "127.0.0.1:0", serverTLS(s.t, s.Certs, agency))
	l.innermost = s.opts.innermost
	l.withoutTelemetry = s.opts.withoutTelemetry
	srv, err := startAgency(s.t.Context(), log, js, s.cfg[agency], l)
	if err != nil {
		js.Conn().Close()
		return nil, err
	}
	n := &node{name: name, addr: srv.Addr(), srv: srv, js: js}
	// Registered after the connection's own cleanup, so it runs before it.
	s.t.Cleanup(func() {
		if !n.stopped {
			n.stopped = true
			if err := srv.Stop(); err != nil {
				s.t.Errorf("stop %s: %v", n.name, err)
			}
		}
	})
	return n, nil
}

// Stop stops agency's first process, as a deployment would: calls in flight finish, the
// message in hand is acknowledged, then its NATS connection closes.
func (s *system) Stop(agency string) {
	s.t.Helper()
	n := s.nodes[agency][0]
	if n.stopped {
		s.t.Fatalf("stop %s: already stopped", n.name)
	}
	n.stopped = true
	if err := n.srv.Stop(); err != nil {
		s.t.Errorf("stop %s: %v", n.name, err)
	}
	n.js.Conn().Close()
}

// Start starts agency's first process again on the same address, so clients reconnect.
func (s *system) Start(agency string) {
	s.t.Helper()
	old := s.nodes[agency][0]
	if !old.stopped {
		s.t.Fatalf("start %s: still running", old.name)
	}
	// The port was just released; listening on it again may take a moment.
	eventually(s.t, 10*time.Second, func() (bool, string) {
		n, err := s.tryStartNode(agency, old.name+"-restarted", old.addr)
		if err == nil {
			s.nodes[agency][0] = n
		}
		return err == nil, fmt.Sprintf("restart %s on %s: %v", old.name, old.addr, err)
	})
}

// StartReplica starts another process of agency on a port of its own, on the same
// streams, buckets and durable consumers, and returns its HandoverService.
func (s *system) StartReplica(agency string) throughcarev1.HandoverServiceClient {
	s.t.Helper()
	n := s.startNode(agency, "127.0.0.1:0")
	s.mu.Lock()
	s.nodes[agency] = append(s.nodes[agency], n)
	s.mu.Unlock()
	return throughcarev1.NewHandoverServiceClient(dialAgency(s.t, n.addr, clientTLS(s.t, s.Certs, agency, agency)))
}

// RestartNATS stops the NATS server and starts it again on the same port and store, then
// waits until every agency reads its buckets again.
func (s *system) RestartNATS() {
	s.t.Helper()
	s.NATS.Restart(s.t)
	s.WaitReady()
}

// WaitReady waits until every agency answers a read from its bucket: NotFound for a case
// that does not exist means the store works.
func (s *system) WaitReady() {
	s.t.Helper()
	const missing = "rc_00000000000000000000000000"
	eventually(s.t, 20*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(s.t.Context(), 2*time.Second)
		defer cancel()
		_, errP := s.Prison.GetReleaseCase(ctx, &throughcarev1.GetReleaseCaseRequest{CaseId: missing})
		_, errB := s.Probation.GetSupervisionCase(ctx, &throughcarev1.GetSupervisionCaseRequest{CaseId: missing})
		_, errS := s.SocialWork.GetAssistanceCase(ctx, &throughcarev1.GetAssistanceCaseRequest{CaseId: missing})
		ok := status.Code(errP) == codes.NotFound && status.Code(errB) == codes.NotFound && status.Code(errS) == codes.NotFound
		return ok, fmt.Sprintf("reads after restart: prison %v, probation %v, social work %v; want NotFound from each", errP, errB, errS)
	})
}

// deliveries records which node logged the delivery of which handover.
type deliveries struct {
	mu    sync.Mutex
	nodes map[string][]string // handover id → node names, one per "handover delivered"
}

// Of returns the nodes that stored handoverID, one entry per time it was stored.
func (d *deliveries) Of(handoverID string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.nodes[handoverID])
}

// ByNode counts deliveries per node.
func (d *deliveries) ByNode() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	counts := map[string]int{}
	for _, ns := range d.nodes {
		for _, n := range ns {
			counts[n]++
		}
	}
	return counts
}

// deliveryCore is a zap core that sees only "handover delivered" entries.
type deliveryCore struct {
	d    *deliveries
	node string
}

func (c deliveryCore) Enabled(l zapcore.Level) bool      { return l >= zapcore.InfoLevel }
func (c deliveryCore) With([]zapcore.Field) zapcore.Core { return c }
func (c deliveryCore) Sync() error                       { return nil }

func (c deliveryCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if ent.Message == "handover delivered" {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c deliveryCore) Write(_ zapcore.Entry, fields []zapcore.Field) error {
	for _, f := range fields {
		if f.Key == "handover_id" {
			c.d.mu.Lock()
			c.d.nodes[f.String] = append(c.d.nodes[f.String], c.node)
			c.d.mu.Unlock()
		}
	}
	return nil
}

// crossAgencyWait bounds waiting for an event to reach another agency. An inbox created
// before the outbox it sources (the prison's starts first) begins sourcing it only when
// NATS retries, which in full runs was seen to take 10 to 13 seconds.
const crossAgencyWait = 20 * time.Second

// eventually polls cond until it holds, or fails the test with cond's last message.
func eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := 5 * time.Millisecond
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, msg)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting: %s", msg)
		case <-time.After(wait):
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// testCtx bounds a test's calls, so a hang fails the test instead of the whole run.
func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// date is the calendar date of tm.
func date(tm time.Time) *throughcarev1.Date {
	return &throughcarev1.Date{Year: int32(tm.Year()), Month: int32(tm.Month()), Day: int32(tm.Day())}
}

// fullReleaseCase is a realistic release case with every category the prison fills,
// expected to be released about 120 days from now.
func fullReleaseCase(n int) *throughcarev1.ReleaseCase {
	now := time.Now()
	return &throughcarev1.ReleaseCase{
		Person: &throughcarev1.Person{
			GivenName: "Ana", FamilyName: "Kovač", DateOfBirth: &throughcarev1.Date{Year: 1990, Month: 5, Day: 4},
			NationalId: fmt.Sprintf("900504-%04d", n), PrisonNumber: fmt.Sprintf("A-%05d", n),
		},
		Contact: &throughcarev1.Contact{
			Phone: "+386 1 234 5678", Email: "ana.kovac@example.org",
			Address: &throughcarev1.Address{Lines: []string{"Trubarjeva 12"}, Postcode: "1000", Locality: "Ljubljana", CountryCode: "SI"},
		},
		Sentence: &throughcarev1.Sentence{
			Offences:  []string{"Burglary of a dwelling", "Handling stolen goods"},
			StartDate: date(now.AddDate(-2, 0, 0)), SentenceEndDate: date(now.AddDate(1, 0, 0)),
			LengthDays: 1095, Court: "District Court of Ljubljana",
		},
		ReleasePlan: &throughcarev1.ReleasePlan{
			ReleaseType:         throughcarev1.ReleaseType_RELEASE_TYPE_CONDITIONAL_RELEASE,
			ExpectedReleaseDate: date(now.AddDate(0, 0, 120)),
			ReleaseAddress:      &throughcarev1.Address{Lines: []string{"Hostel Celica", "Metelkova 8"}, Postcode: "1000", Locality: "Ljubljana", CountryCode: "SI"},
		},
		Accommodation: &throughcarev1.Need{Level: throughcarev1.NeedLevel_NEED_LEVEL_HIGH, Summary: "No fixed address on release", Actions: []string{"Hostel place booked"}},
		EducationWork: &throughcarev1.Need{Level: throughcarev1.NeedLevel_NEED_LEVEL_MEDIUM, Summary: "Welding course half done", Actions: []string{"Enrol at the adult education centre"}},
		Health:        &throughcarev1.Need{Level: throughcarev1.NeedLevel_NEED_LEVEL_LOW, Summary: "Asthma, managed"},
		SubstanceUse:  &throughcarev1.Need{Level: throughcarev1.NeedLevel_NEED_LEVEL_MEDIUM, Summary: "Alcohol, abstinent in custody", Actions: []string{"Referral to a community programme"}},
		FinanceId:     &throughcarev1.Need{Level: throughcarev1.NeedLevel_NEED_LEVEL_HIGH, Summary: "ID card expired, no bank account", Actions: []string{"Apply for ID", "Open a basic account"}},
		Family:        &throughcarev1.Need{Level: throughcarev1.NeedLevel_NEED_LEVEL_LOW, Summary: "Sister in Maribor, supportive"},
		Behaviour:     &throughcarev1.Need{Level: throughcarev1.NeedLevel_NEED_LEVEL_MEDIUM, Summary: "Completed a thinking-skills programme"},
		Risk: &throughcarev1.RiskAssessment{
			Reoffending: throughcarev1.RiskLevel_RISK_LEVEL_MEDIUM, SeriousHarm: throughcarev1.RiskLevel_RISK_LEVEL_LOW,
			Summary: "Acquisitive offending linked to drinking", AssessedOn: date(now.AddDate(0, -1, 0)),
		},
		Extremism: &throughcarev1.ExtremismAssessment{
			Level: throughcarev1.RiskLevel_RISK_LEVEL_LOW, Instrument: "VERA-2R", Summary: "No concerns", AssessedOn: date(now.AddDate(0, -3, 0)),
		},
		WorkerSafety: &throughcarev1.WorkerSafetyWarning{VisitInPairs: false, OfficeVisitsOnly: true, Note: "Prefers office visits"},
	}
}

// openCase opens a full release case at the prison.
func openCase(t testing.TB, prison throughcarev1.PrisonServiceClient) *throughcarev1.ReleaseCase {
	t.Helper()
	return openCaseN(t, prison, 1)
}

// openCaseN opens a full release case whose numbers end in n.
func openCaseN(t testing.TB, prison throughcarev1.PrisonServiceClient, n int) *throughcarev1.ReleaseCase {
	t.Helper()
	rc, err := tryOpenCase(testCtx(t), prison, n)
	if err != nil {
		t.Fatalf("open case %d: %v", n, err)
	}
	return rc
}

func tryOpenCase(ctx context.Context, prison throughcarev1.PrisonServiceClient, n int) (*throughcarev1.ReleaseCase, error) {
	resp, err := prison.OpenReleaseCase(ctx, &throughcarev1.OpenReleaseCaseRequest{Actor: "prison-worker-1", ReleaseCase: fullReleaseCase(n)})
	if err != nil {
		return nil, err
	}
	if resp.GetReleaseCase().GetState() != throughcarev1.CaseState_CASE_STATE_OPEN {
		return nil, fmt.Errorf("opened case state: got %v, want OPEN", resp.GetReleaseCase().GetState())
	}
	return resp.GetReleaseCase(), nil
}

// refer refers a case from the prison and checks the answer.
func refer(t testing.TB, sys *system, caseID string, recipient string, purpose throughcarev1.Purpose) *throughcarev1.Handover {
	t.Helper()
	return referFrom(t, sys, prisonAgency, caseID, recipient, purpose)
}

// referFrom refers a case sender holds and checks the answer.
func referFrom(t testing.TB, sys *system, sender, caseID string, recipient string, purpose throughcarev1.Purpose) *throughcarev1.Handover {
	t.Helper()
	resp, err := sys.Cases[sender].ReferCase(testCtx(t), &throughcarev1.ReferCaseRequest{Actor: sender + "-worker-1", CaseId: caseID, Recipient: recipient, Purpose: purpose})
	if err != nil {
		t.Fatalf("refer %s from %s to %s: %v", caseID, sender, recipient, err)
	}
	h := resp.GetHandover()
	if h.GetState() != stateReferred || h.GetCaseId() != caseID || h.GetSender() != sender || h.GetRecipient() != recipient || h.GetPurpose() != purpose {
		t.Fatalf("refer %s: got handover %v, want REFERRED from %s to %s for %s", caseID, h, sender, recipient, purpose)
	}
	return h
}

// getHandover gets a handover; at its recipient the first read marks it retrieved.
func getHandover(t testing.TB, client throughcarev1.HandoverServiceClient, handoverID string) *throughcarev1.GetHandoverResponse {
	t.Helper()
	resp, err := client.GetHandover(testCtx(t), &throughcarev1.GetHandoverRequest{HandoverId: handoverID})
	if err != nil {
		t.Fatalf("get handover %s: %v", handoverID, err)
	}
	return resp
}

// waitState polls GetHandover until the handover is in state, and returns it then.
func waitState(t testing.TB, client throughcarev1.HandoverServiceClient, handoverID string, state throughcarev1.HandoverState) *throughcarev1.Handover {
	t.Helper()
	var h *throughcarev1.Handover
	eventually(t, 20*time.Second, func() (bool, string) {
		resp, err := client.GetHandover(testCtx(t), &throughcarev1.GetHandoverRequest{HandoverId: handoverID})
		if err != nil {
			return false, fmt.Sprintf("handover %s: %v; want state %s", handoverID, err, state)
		}
		h = resp.GetHandover()
		return h.GetState() == state, fmt.Sprintf("handover %s: got state %s, want %s (receipts %v)", handoverID, h.GetState(), state, receiptTypes(h))
	})
	return h
}

// listAll lists every handover in dir, over every page.
func listAll(t testing.TB, client throughcarev1.HandoverServiceClient, req *throughcarev1.ListHandoversRequest) []*throughcarev1.Handover {
	t.Helper()
	all, err := tryListAll(testCtx(t), client, req)
	if err != nil {
		t.Fatalf("list handovers %v: %v", req, err)
	}
	return all
}

func tryListAll(ctx context.Context, client throughcarev1.HandoverServiceClient, req *throughcarev1.ListHandoversRequest) ([]*throughcarev1.Handover, error) {
	var all []*throughcarev1.Handover
	req = &throughcarev1.ListHandoversRequest{Direction: req.GetDirection(), States: req.GetStates(), DueBefore: req.GetDueBefore(), OverdueOnly: req.GetOverdueOnly(), PageSize: 500}
	for {
		resp, err := client.ListHandovers(ctx, req)
		if err != nil {
			return nil, err
		}
		all = append(all, resp.GetHandovers()...)
		if resp.GetNextPageToken() == "" {
			return all, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// receiptTypes are the types of h's receipts, in order.
func receiptTypes(h *throughcarev1.Handover) []throughcarev1.ReceiptType {
	var types []throughcarev1.ReceiptType
	for _, r := range h.GetReceipts() {
		types = append(types, r.GetType())
	}
	return types
}

// checkReceipts fails unless h's receipts are exactly want, with sequences 1..n in order.
func checkReceipts(t testing.TB, where string, h *throughcarev1.Handover, want ...throughcarev1.ReceiptType) {
	t.Helper()
	if got := receiptTypes(h); !slices.Equal(got, want) {
		t.Errorf("%s: handover %s receipts: got %v, want %v", where, h.GetHandoverId(), got, want)
	}
	checkSequences(t, where, h)
}

// checkSequences fails unless h's receipts are numbered 1..n in order, none twice.
func checkSequences(t testing.TB, where string, h *throughcarev1.Handover) {
	t.Helper()
	for i, r := range h.GetReceipts() {
		if r.GetSequence() != uint64(i+1) {
			var seqs []uint64
			for _, r := range h.GetReceipts() {
				seqs = append(seqs, r.GetSequence())
			}
			t.Errorf("%s: handover %s receipt sequences: got %v, want 1..%d in order", where, h.GetHandoverId(), seqs, len(h.GetReceipts()))
			return
		}
	}
}

// count counts the receipts of type rt.
func count(h *throughcarev1.Handover, rt throughcarev1.ReceiptType) int {
	n := 0
	for _, r := range h.GetReceipts() {
		if r.GetType() == rt {
			n++
		}
	}
	return n
}

// parallel runs fn(i) for i in [0, n) on at most workers goroutines and returns the first
// error.
func parallel(n, workers int, fn func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan int)
	)
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// retryTransient calls fn until it succeeds or fails with something other than a
// transient error (Unavailable, Internal, DeadlineExceeded while NATS comes back, or
// NotFound while an event is on its way), at most for timeout.
func retryTransient(ctx context.Context, timeout time.Duration, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := fn(callCtx)
		cancel()
		switch status.Code(err) {
		case codes.OK:
			return nil
		case codes.Unavailable, codes.Internal, codes.DeadlineExceeded, codes.NotFound, codes.Aborted:
		default:
			return err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(fmt.Errorf("still failing after %s", timeout), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stepOnce takes a recipient step with retries: a step that was stored although its
// answer was lost (NATS restarting) is refused the second time, and is then done when the
// handover already is in the state the step leads to.
func stepOnce(ctx context.Context, client throughcarev1.HandoverServiceClient, handoverID string, to throughcarev1.HandoverState, step func(ctx context.Context) error) error {
	return retryTransient(ctx, 30*time.Second, func(ctx context.Context) error {
		err := step(ctx)
		if status.Code(err) != codes.FailedPrecondition {
			return err
		}
		resp, getErr := client.GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: handoverID})
		if getErr != nil {
			return getErr
		}
		if resp.GetHandover().GetState() == to || (to == stateAcknowledged && resp.GetHandover().GetState() == stateAccepted) {
			return nil
		}
		return err
	})
}

// acknowledge and accept are the recipient's two usual steps.
func acknowledge(ctx context.Context, client throughcarev1.HandoverServiceClient, handoverID, actor string) error {
	return stepOnce(ctx, client, handoverID, stateAcknowledged, func(ctx context.Context) error {
		_, err := client.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: actor, HandoverId: handoverID})
		return err
	})
}

func accept(ctx context.Context, client throughcarev1.HandoverServiceClient, handoverID, actor, worker string) error {
	return stepOnce(ctx, client, handoverID, stateAccepted, func(ctx context.Context) error {
		_, err := client.AcceptHandover(ctx, &throughcarev1.AcceptHandoverRequest{Actor: actor, HandoverId: handoverID, AssignedWorker: worker})
		return err
	})
}

// waitAllState waits until every handover in ids is in state at the agency behind client,
// listing rather than getting each, and returns them by id.
func waitAllState(t testing.TB, client throughcarev1.HandoverServiceClient, dir throughcarev1.Direction, ids []string, state throughcarev1.HandoverState, timeout time.Duration) map[string]*throughcarev1.Handover {
	t.Helper()
	var got map[string]*throughcarev1.Handover
	eventually(t, timeout, func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		all, err := tryListAll(ctx, client, &throughcarev1.ListHandoversRequest{Direction: dir})
		if err != nil {
			return false, fmt.Sprintf("list %s: %v", dir, err)
		}
		got = map[string]*throughcarev1.Handover{}
		for _, h := range all {
			got[h.GetHandoverId()] = h
		}
		var missing []string
		for _, id := range ids {
			if got[id].GetState() != state {
				missing = append(missing, fmt.Sprintf("%s:%s", id, got[id].GetState()))
			}
		}
		return len(missing) == 0, fmt.Sprintf("%d of %d handovers not %s, e.g. %s", len(missing), len(ids), state, strings.Join(missing[:min(3, len(missing))], ", "))
	})
	return got
}

// handoverWatch follows an agency's handovers through WatchHandovers and keeps the
// latest revision of each: waiting on it costs nothing per poll, where listing reads the
// whole bucket.
type handoverWatch struct {
	mu     sync.Mutex
	latest map[string]*throughcarev1.Handover
	err    error
}

// watchHandovers starts following client's handovers in dir from the start of its
// history; it stops when the test ends.
func watchHandovers(t testing.TB, client throughcarev1.HandoverServiceClient, dir throughcarev1.Direction) *handoverWatch {
	t.Helper()
	w := &handoverWatch{latest: map[string]*throughcarev1.Handover{}}
	stream, err := client.WatchHandovers(t.Context(), &throughcarev1.WatchHandoversRequest{})
	if err != nil {
		t.Fatalf("watch handovers: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				if t.Context().Err() == nil {
					w.mu.Lock()
					w.err = err
					w.mu.Unlock()
				}
				return
			}
			h := resp.GetHandover()
			if resp.GetDirection() != dir {
				continue
			}
			w.mu.Lock()
			if have := w.latest[h.GetHandoverId()]; have == nil || have.GetRevision() < h.GetRevision() {
				w.latest[h.GetHandoverId()] = h
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { <-done })
	return w
}

// waitAll waits until every handover in ids is in state, and returns them by id. It
// fails when no more of them reach the state for stall: it tests that nothing is lost or
// stuck, not how fast a machine is (under -race, with other packages' tests beside it, a
// thousand referrals take minutes on two cores; BenchmarkReferToDelivered measures speed).
func (w *handoverWatch) waitAll(t testing.TB, ids []string, state throughcarev1.HandoverState, stall time.Duration) map[string]*throughcarev1.Handover {
	t.Helper()
	got := map[string]*throughcarev1.Handover{}
	best, progressed := len(ids)+1, time.Now()
	for {
		w.mu.Lock()
		if w.err != nil {
			w.mu.Unlock()
			t.Fatalf("watch handovers: %v", w.err)
		}
		var missing []string
		for _, id := range ids {
			h := w.latest[id]
			got[id] = h
			if h.GetState() != state {
				missing = append(missing, fmt.Sprintf("%s:%s", id, h.GetState()))
			}
		}
		w.mu.Unlock()
		switch {
		case len(missing) == 0:
			return got
		case len(missing) < best:
			best, progressed = len(missing), time.Now()
		case time.Since(progressed) > stall:
			t.Fatalf("no progress for %s: %d of %d handovers not %s, e.g. %s", stall, len(missing), len(ids), state, strings.Join(missing[:min(3, len(missing))], ", "))
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting: %d of %d handovers not %s", len(missing), len(ids), state)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// service is agency's first process's handover service, for calls no RPC offers.
func (s *system) service(agency string) *handover.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[agency][0].srv.handovers
}

// decodeEvent decodes a message of an inbox or outbox; a notice's body is read as its
// recipient reads it, from the sender's outbox.
func decodeEvent(t testing.TB, sys *system, m *jetstream.RawStreamMsg) (*throughcarev1.Event, error) {
	t.Helper()
	data := m.Data
	if eventbus.IsNotice(m.Header, m.Data) {
		recipient := eventbus.NoticeOf(m.Subject, m.Header).Recipient
		var err error
		if data, err = eventbus.FetchBody(testCtx(t), sys.JS[recipient].Conn(), sys.cfg[recipient].Topology, recipient, m.Subject, m.Header); err != nil {
			return nil, err
		}
	}
	return eventbus.Decode(m.Subject, m.Header, data)
}

// sentLog holds every message an agency's outbox stored since it started watching, so a
// test can read the whole of an event sent as a notice after its sender deleted the body
// (on the recipient's acknowledgement).
type sentLog struct {
	mu   sync.Mutex
	msgs []jetstream.Msg
}

// watchSent starts a sentLog of agency's outbox; it stops when the test ends.
func watchSent(t testing.TB, sys *system, agency string) *sentLog {
	t.Helper()
	cons, err := sys.JS[agency].OrderedConsumer(testCtx(t), eventbus.OutboxStream(agency), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("watch %s's outbox: %v", agency, err)
	}
	l := &sentLog{}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		l.mu.Lock()
		l.msgs = append(l.msgs, msg)
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("watch %s's outbox: %v", agency, err)
	}
	t.Cleanup(cc.Stop)
	return l
}

// last is the last event sent on subject, read whole.
func (l *sentLog) last(t testing.TB, subject string) *throughcarev1.Event {
	t.Helper()
	var last jetstream.Msg
	eventually(t, 5*time.Second, func() (bool, string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, m := range l.msgs {
			if m.Subject() == subject {
				last = m
			}
		}
		return last != nil, "nothing sent on " + subject
	})
	return l.event(t, last.Subject(), last.Headers(), last.Data())
}

// event decodes a message of the outbox, read whole.
func (l *sentLog) event(t testing.TB, subject string, header nats.Header, data []byte) *throughcarev1.Event {
	t.Helper()
	var ev *throughcarev1.Event
	eventually(t, 5*time.Second, func() (bool, string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		var err error
		ev, err = l.decodeLocked(subject, header, data)
		return err == nil, fmt.Sprintf("event on %s: %v", subject, err)
	})
	return ev
}

// decodeLocked decodes an outbox message; a notice's body is the one the log holds.
func (l *sentLog) decodeLocked(subject string, header nats.Header, data []byte) (*throughcarev1.Event, error) {
	if eventbus.IsNotice(header, data) {
		n := eventbus.NoticeOf(subject, header)
		body := eventbus.BodySubject(n.Source, n.Recipient, n.EventID)
		data = nil
		for _, m := range l.msgs {
			if m.Subject() == body {
				data = m.Data()
			}
		}
		if data == nil {
			return nil, fmt.Errorf("no body of %s seen on %s", n.EventID, body)
		}
	}
	return eventbus.Decode(subject, header, data)
}

// count is how many messages were sent on subject.
func (l *sentLog) count(subject string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if m.Subject() == subject {
			n++
		}
	}
	return n
}
