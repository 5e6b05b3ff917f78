package main

// Tests of the OWASP API Security Top 10 (2023) risks that the gRPC edge answers for:
// each agency's service is served over mutual TLS, knows its caller by the client
// certificate and lets only the agency's own system (and operators, on a few read-only
// methods) call it.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/certs"
)

// dialOnce connects with creds and fails calls at once when the connection cannot be
// made, so that a refused handshake shows as Unavailable instead of a wait.
func dialOnce(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithUnaryInterceptor(declarePurpose))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// shortCtx bounds a call that is expected to be answered at once.
func shortCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// withCert is the prison's client configuration with cert in place of its own.
func withCert(t *testing.T, b *certs.Bundle, cert tls.Certificate) *tls.Config {
	t.Helper()
	cfg := clientTLS(t, b, "prison", prisonAgency)
	cfg.Certificates = []tls.Certificate{cert}
	return cfg
}

func issue(t *testing.T, ca *certs.CA, uri string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	cert, err := ca.IssueClient(uri, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// reflectionCode lists services through reflection, as grpcurl does first, and returns
// the code of the answer.
func reflectionCode(ctx context.Context, conn *grpc.ClientConn) codes.Code {
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return status.Code(err)
	}
	// A refused stream may end before the request is sent: Send then says io.EOF and Recv
	// has the status.
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil && !errors.Is(err, io.EOF) {
		return status.Code(err)
	}
	_, err = stream.Recv()
	return status.Code(err)
}

// API2:2023 Broken Authentication. Only a certificate from the throughcare CA, valid now
// and naming a throughcare identity, gets a call answered; a valid certificate of another
// agency is known and refused.
func TestAPI2BrokenAuthenticationIsRefused(t *testing.T) {
	sys := newSystem(t)
	prisonAddr := sys.nodes[prisonAgency][0].addr
	now := time.Now()
	ca, err := certs.LoadCA(sys.Certs.CAFile(), sys.Certs.CAKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := certs.NewCA("throughcare local CA", now) // same name, other key
	if err != nil {
		t.Fatal(err)
	}
	noCert := clientTLS(t, sys.Certs, "prison", prisonAgency)
	noCert.Certificates = nil

	tests := []struct {
		name  string
		creds credentials.TransportCredentials
		req   *throughcarev1.OpenReleaseCaseRequest
		want  codes.Code
		msg   string
	}{
		{"plaintext", insecure.NewCredentials(), validOpen(), codes.Unavailable, ""},
		{"no client certificate", credentials.NewTLS(noCert), validOpen(), codes.Unavailable, ""},
		{"a certificate from another CA", credentials.NewTLS(withCert(t, sys.Certs, issue(t, stranger, certs.AgencyURI("prison"), now.Add(-time.Hour), now.Add(time.Hour)))), validOpen(), codes.Unavailable, ""},
		{"an expired certificate", credentials.NewTLS(withCert(t, sys.Certs, issue(t, ca, certs.AgencyURI("prison"), now.Add(-48*time.Hour), now.Add(-24*time.Hour)))), validOpen(), codes.Unavailable, ""},
		{"a certificate not yet valid", credentials.NewTLS(withCert(t, sys.Certs, issue(t, ca, certs.AgencyURI("prison"), now.Add(24*time.Hour), now.Add(48*time.Hour)))), validOpen(), codes.Unavailable, ""},
		// Authentication comes before validation: a stranger learns nothing of the
		// request's shape, not even that this one is invalid.
		{"our CA but no throughcare identity, invalid request", credentials.NewTLS(withCert(t, sys.Certs, issue(t, ca, "spiffe://elsewhere/agency/prison", now.Add(-time.Hour), now.Add(time.Hour)))), &throughcarev1.OpenReleaseCaseRequest{}, codes.Unauthenticated, "names no throughcare identity"},
		{"probation's valid certificate", credentials.NewTLS(clientTLS(t, sys.Certs, "probation", prisonAgency)), validOpen(), codes.PermissionDenied, "this is prison's service; the calling certificate is probation's"},
		{"the operator's valid certificate", credentials.NewTLS(clientTLS(t, sys.Certs, certs.Operator, prisonAgency)), validOpen(), codes.PermissionDenied, "operator"},
		{"the prison's own certificate", credentials.NewTLS(clientTLS(t, sys.Certs, "prison", prisonAgency)), validOpen(), codes.OK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prison := throughcarev1.NewPrisonServiceClient(dialOnce(t, prisonAddr, tt.creds))
			_, err := prison.OpenReleaseCase(shortCtx(t), tt.req)
			if got := status.Code(err); got != tt.want {
				t.Fatalf("got %v (%v), want %v", got, err, tt.want)
			}
			if !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Errorf("message %q does not say %q", status.Convert(err).Message(), tt.msg)
			}
		})
	}
	// Only the prison's own call opened a case.
	list, err := sys.Prison.ListReleaseCases(testCtx(t), &throughcarev1.ListReleaseCasesRequest{PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetReleaseCases()); n != 1 {
		t.Errorf("the prison holds %d cases, want the 1 its own system opened", n)
	}
}

// validOpen is a request to open a case that the prison's own system would make.
func validOpen() *throughcarev1.OpenReleaseCaseRequest {
	return &throughcarev1.OpenReleaseCaseRequest{Actor: "prison-worker-1", ReleaseCase: fullReleaseCase(7)}
}

// API5:2023 Broken Function Level Authorization. Every method of an agency's service is
// its own system's; an operator may call only the read-only operator methods.
func TestAPI5FunctionLevelAuthorization(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	rc := openCase(t, sys.Prison)
	h := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION)
	waitHeld(t, sys.Handovers[probationAgency], h.GetHandoverId())

	socialWorkAtPrison := throughcarev1.NewPrisonServiceClient(sys.dialAs("socialwork", prisonAgency))
	release := &throughcarev1.RecordReleaseRequest{Actor: "sw-ana", CaseId: rc.GetCaseId(), Release: &throughcarev1.Release{ActualReleaseDate: date(time.Now())}}
	if _, err := socialWorkAtPrison.RecordRelease(ctx, release); status.Code(err) != codes.PermissionDenied {
		t.Errorf("social work's RecordRelease at the prison: got %v, want PermissionDenied", err)
	}
	probationAtPrison := sys.dialAs("probation", prisonAgency)
	if _, err := throughcarev1.NewHandoverServiceClient(probationAtPrison).GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: h.GetHandoverId()}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("probation reading its handover at the prison's service: got %v, want PermissionDenied", err)
	}
	if got := reflectionCode(ctx, probationAtPrison); got != codes.PermissionDenied {
		t.Errorf("probation listing the prison's services: got %v, want PermissionDenied", got)
	}
	got, err := sys.Prison.GetReleaseCase(ctx, &throughcarev1.GetReleaseCaseRequest{CaseId: rc.GetCaseId()})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetReleaseCase().GetRevision() != rc.GetRevision() || got.GetReleaseCase().GetState() != rc.GetState() {
		t.Errorf("after the refused release the case is %s at revision %d, want %s at %d", got.GetReleaseCase().GetState(), got.GetReleaseCase().GetRevision(), rc.GetState(), rc.GetRevision())
	}

	operator := sys.dialAs(certs.Operator, probationAgency)
	operatorH := throughcarev1.NewHandoverServiceClient(operator)
	operatorAudit := throughcarev1.NewAuditServiceClient(operator)
	call := func(fn func() error) codes.Code { return status.Code(fn()) }
	tests := []struct {
		method string
		code   codes.Code
		want   codes.Code
	}{
		{"AcknowledgeHandover", call(func() error {
			_, err := operatorH.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: "ops", HandoverId: h.GetHandoverId()})
			return err
		}), codes.PermissionDenied},
		{"GetHandover", call(func() error {
			_, err := operatorH.GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: h.GetHandoverId()})
			return err
		}), codes.PermissionDenied},
		{"ListDisclosures", call(func() error {
			_, err := operatorAudit.ListDisclosures(ctx, &throughcarev1.ListDisclosuresRequest{PrisonNumber: rc.GetPerson().GetPrisonNumber()})
			return err
		}), codes.PermissionDenied},
		{"WatchHandovers", call(func() error {
			stream, err := operatorH.WatchHandovers(ctx, &throughcarev1.WatchHandoversRequest{})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		}), codes.PermissionDenied},
		{"reflection", reflectionCode(ctx, operator), codes.PermissionDenied},
		{"VerifyLedger", call(func() error {
			_, err := operatorAudit.VerifyLedger(ctx, &throughcarev1.VerifyLedgerRequest{})
			return err
		}), codes.OK},
		{"GetSharingProtocol", call(func() error {
			_, err := operatorAudit.GetSharingProtocol(ctx, &throughcarev1.GetSharingProtocolRequest{})
			return err
		}), codes.OK},
		{"ListDeadLetters", call(func() error {
			_, err := operatorH.ListDeadLetters(ctx, &throughcarev1.ListDeadLettersRequest{})
			return err
		}), codes.OK},
	}
	for _, tt := range tests {
		if tt.code != tt.want {
			t.Errorf("operator's %s at probation: got %v, want %v", tt.method, tt.code, tt.want)
		}
	}
	if got := getHandover(t, sys.Handovers[probationAgency], h.GetHandoverId()).GetHandover().GetState(); got == stateAcknowledged {
		t.Errorf("the operator's refused acknowledgement was applied: handover is %s", got)
	}
	// The agency's own system lists its services, as grpcurl does.
	if got := reflectionCode(ctx, sys.dialAs("socialwork", socialWorkAgency)); got != codes.OK {
		t.Errorf("social work listing its own services: got %v, want OK", got)
	}
}

// API1:2023 Broken Object Level Authorization. An agency's service holds only what was
// sent to it: another agency's handover or a case never referred to it is not found,
// whatever id the caller guesses.
func TestAPI1ObjectLevelAuthorization(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	toSocialWork := openCase(t, sys.Prison)
	neverReferred := openCaseN(t, sys.Prison, 2)
	h := refer(t, sys, toSocialWork.GetCaseId(), socialWorkAgency, throughcarev1.Purpose_PURPOSE_POST_PENAL_ASSISTANCE)
	waitHeld(t, sys.Handovers[socialWorkAgency], h.GetHandoverId())

	probationH := sys.Handovers[probationAgency]
	if _, err := probationH.GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: h.GetHandoverId()}); status.Code(err) != codes.NotFound {
		t.Errorf("probation getting social work's handover: got %v, want NotFound", err)
	}
	if _, err := probationH.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: "po-marko", HandoverId: h.GetHandoverId()}); status.Code(err) != codes.NotFound {
		t.Errorf("probation acknowledging social work's handover: got %v, want NotFound", err)
	}
	for _, rc := range []*throughcarev1.ReleaseCase{toSocialWork, neverReferred} {
		if _, err := sys.Probation.GetSupervisionCase(ctx, &throughcarev1.GetSupervisionCaseRequest{CaseId: rc.GetCaseId()}); status.Code(err) != codes.NotFound {
			t.Errorf("probation getting case %s, never referred to it: got %v, want NotFound", rc.GetCaseId(), err)
		}
	}
	if all := listAll(t, probationH, &throughcarev1.ListHandoversRequest{Direction: incoming}); len(all) != 0 {
		t.Errorf("probation lists %d incoming handovers, want none", len(all))
	}
	if _, err := sys.SocialWork.GetAssistanceCase(ctx, &throughcarev1.GetAssistanceCaseRequest{CaseId: neverReferred.GetCaseId()}); status.Code(err) != codes.NotFound {
		t.Errorf("social work getting a case never referred to it: got %v, want NotFound", err)
	}
}

// waitHeld waits until the agency behind client holds handoverID: its recipient has
// stored it.
func waitHeld(t *testing.T, client throughcarev1.HandoverServiceClient, handoverID string) {
	t.Helper()
	eventually(t, 20*time.Second, func() (bool, string) {
		_, err := client.GetHandover(testCtx(t), &throughcarev1.GetHandoverRequest{HandoverId: handoverID})
		return err == nil, fmt.Sprintf("handover %s: %v; want it held", handoverID, err)
	})
}

// holdCalls holds every call to method, once it is authorized, until release: a slow
// call that the test controls.
type holdCalls struct {
	method  string
	held    atomic.Int64
	release chan struct{}
}

func newHoldCalls(method string) *holdCalls {
	return &holdCalls{method: method, release: make(chan struct{})}
}

func (h *holdCalls) interceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if info.FullMethod == h.method {
		h.held.Add(1)
		defer h.held.Add(-1)
		select {
		case <-h.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return handler(ctx, req)
}

// API4:2023 Unrestricted Resource Consumption. A request over 1 MiB is refused before it
// is read; one agency's flood of slow calls is cut at its limit and starves no one else.
func TestAPI4ResourceConsumptionIsBounded(t *testing.T) {
	hold := newHoldCalls(throughcarev1.PrisonService_GetReleaseCase_FullMethodName)
	sys := newSystem(t, withInnermost(hold.interceptor), withLogLevel(zapcore.WarnLevel))
	ctx := testCtx(t)

	t.Run("oversize request", func(t *testing.T) {
		big := validOpen()
		big.ReleaseCase.Accommodation.Summary = strings.Repeat("x", 2<<20)
		if _, err := sys.Prison.OpenReleaseCase(ctx, big); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("a 2 MiB request: got %v, want ResourceExhausted", err)
		}
	})

	t.Run("flood from one agency", func(t *testing.T) {
		const limit, flood = defaultMaxInFlightPerCaller, defaultMaxInFlightPerCaller + 16
		const missing = "rc_00000000000000000000000000"
		codesSeen := make([]codes.Code, flood)
		var wg sync.WaitGroup
		for i := range flood {
			wg.Go(func() {
				_, err := sys.Prison.GetReleaseCase(ctx, &throughcarev1.GetReleaseCaseRequest{CaseId: missing})
				codesSeen[i] = status.Code(err)
			})
		}
		// The limit's worth are held; the rest come back at once, refused.
		eventually(t, 20*time.Second, func() (bool, string) {
			n := hold.held.Load()
			return n == limit, fmt.Sprintf("%d calls held, want %d", n, limit)
		})
		// While the prison's system is at its limit, its other calls wait their turn too,
		// but the operator on the same service and probation on its own are answered.
		if _, err := sys.Prison.ListReleaseCases(ctx, &throughcarev1.ListReleaseCasesRequest{PageSize: 1}); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("the prison's other call at its limit: got %v, want ResourceExhausted", err)
		}
		operatorAtPrison := throughcarev1.NewAuditServiceClient(sys.dialAs(certs.Operator, prisonAgency))
		if _, err := operatorAtPrison.VerifyLedger(ctx, &throughcarev1.VerifyLedgerRequest{}); err != nil {
			t.Errorf("the operator at the flooded prison service: got %v, want OK", err)
		}
		if _, err := sys.Probation.ListSupervisionCases(ctx, &throughcarev1.ListSupervisionCasesRequest{PageSize: 1}); err != nil {
			t.Errorf("probation during the prison's flood: got %v, want OK", err)
		}
		close(hold.release)
		wg.Wait()
		counts := map[codes.Code]int{}
		for _, c := range codesSeen {
			counts[c]++
		}
		if counts[codes.NotFound] != limit || counts[codes.ResourceExhausted] != flood-limit {
			t.Errorf("flood of %d: got %v, want %d answered (NotFound) and %d ResourceExhausted", flood, counts, limit, flood-limit)
		}
		if _, err := sys.Prison.GetReleaseCase(ctx, &throughcarev1.GetReleaseCaseRequest{CaseId: missing}); status.Code(err) != codes.NotFound {
			t.Errorf("after the flood: got %v, want NotFound", err)
		}
	})
}

// API4:2023 again: a unary call ends at the server's cap, whatever deadline its client set.
func TestCallTimeoutEndsASlowCall(t *testing.T) {
	hold := newHoldCalls(throughcarev1.PrisonService_GetReleaseCase_FullMethodName)
	sys := newSystem(t, withInnermost(hold.interceptor), withLogLevel(zapcore.WarnLevel),
		withGRPC(grpcFlags{CallTimeout: 300 * time.Millisecond, MaxInFlightPerCaller: defaultMaxInFlightPerCaller}))
	start := time.Now()
	// The client's own deadline is far later: only the server's cap can end the call.
	_, err := sys.Prison.GetReleaseCase(shortCtx(t), &throughcarev1.GetReleaseCaseRequest{CaseId: "rc_00000000000000000000000000"})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("a call held past the cap: got %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the held call took %s; the cap is 300ms", took)
	}
}

// Kubernetes probes cannot present a client certificate: each agency answers health in
// plaintext on a port of its own, which serves nothing else.
func TestHealthPortServesHealthAloneInPlaintext(t *testing.T) {
	cfg := testDevConfig(t, t.TempDir())
	sys, err := startDev(t.Context(), zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)), cfg)
	if err != nil {
		t.Fatalf("start dev: %v", err)
	}
	t.Cleanup(func() { _ = sys.Stop() })
	ctx := shortCtx(t)
	for _, a := range sys.agencies {
		health := healthpb.NewHealthClient(dialPlain(t, a.HealthAddr()))
		for _, service := range []string{"", "throughcare.v1.HandoverService"} {
			resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("%s health of %q on %s: got %v, %v; want SERVING", a.agency, service, a.HealthAddr(), resp.GetStatus(), err)
			}
		}
	}
	healthPort := dialPlain(t, sys.agencies[0].HealthAddr())
	if _, err := throughcarev1.NewPrisonServiceClient(healthPort).ListReleaseCases(ctx, &throughcarev1.ListReleaseCasesRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("PrisonService on the health port: got %v, want Unimplemented", err)
	}
	if _, err := throughcarev1.NewAuditServiceClient(healthPort).VerifyLedger(ctx, &throughcarev1.VerifyLedgerRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("AuditService on the health port: got %v, want Unimplemented", err)
	}
	if got := reflectionCode(ctx, healthPort); got != codes.Unimplemented {
		t.Errorf("reflection on the health port: got %v, want Unimplemented", got)
	}
	// The main port stays mutual TLS only.
	if _, err := healthpb.NewHealthClient(dialPlain(t, sys.agencies[0].Addr())).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("plaintext health on the main port: got %v, want Unavailable", err)
	}
}

// --insecure serves plaintext, without certificates, and says so once at start.
func TestInsecureServesPlaintextAndWarns(t *testing.T) {
	dir := t.TempDir()
	cfg := testDevConfig(t, dir)
	cfg.GRPC.Insecure = true
	core, logs := observer.New(zapcore.WarnLevel)
	log := zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel), zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return zapcore.NewTee(c, core) })))
	sys, err := startDev(t.Context(), log, cfg)
	if err != nil {
		t.Fatalf("start dev: %v", err)
	}
	t.Cleanup(func() { _ = sys.Stop() })
	if sys.certs != nil {
		t.Errorf("--insecure made certificates in %s", sys.certs.Dir())
	}
	if warnings := logs.FilterMessage(insecureWarning).FilterLevelExact(zapcore.WarnLevel).Len(); warnings != 1 {
		t.Errorf("got %d warnings %q, want 1", warnings, insecureWarning)
	}
	ctx := shortCtx(t)
	prison := throughcarev1.NewPrisonServiceClient(dialPlain(t, sys.agencies[0].Addr()))
	if _, err := prison.OpenReleaseCase(ctx, validOpen()); err != nil {
		t.Errorf("plaintext call with --insecure: %v", err)
	}
	// Anyone may call anything: there is no caller to authorize.
	if _, err := throughcarev1.NewHandoverServiceClient(dialPlain(t, sys.agencies[1].Addr())).ListHandovers(ctx, &throughcarev1.ListHandoversRequest{Direction: incoming}); err != nil {
		t.Errorf("plaintext call to probation with --insecure: %v", err)
	}
}

// API3:2023 Broken Object Property Level Authorization. The server owns a case's id, state,
// owner and times: a client that sets them is not believed. (What each recipient may see
// of a case is the sharing protocol's, tested with the journeys.)
func TestAPI3ServerOwnedPropertiesAreNotTheClients(t *testing.T) {
	sys := newSystem(t, withLogLevel(zapcore.WarnLevel))
	req := validOpen()
	req.ReleaseCase.CaseId = "rc_chosen_by_the_client"
	req.ReleaseCase.State = throughcarev1.CaseState_CASE_STATE_RELEASED
	req.ReleaseCase.Owner = probationAgency
	resp, err := sys.Prison.OpenReleaseCase(testCtx(t), req)
	if err != nil {
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("open with server-owned fields set: got %v, want them ignored or InvalidArgument", err)
		}
		return
	}
	rc := resp.GetReleaseCase()
	if rc.GetCaseId() == req.GetReleaseCase().GetCaseId() || rc.GetState() != throughcarev1.CaseState_CASE_STATE_OPEN || rc.GetOwner() != prisonAgency {
		t.Errorf("opened case %s, %s, owner %s; want a server-made id, OPEN, owned by the prison", rc.GetCaseId(), rc.GetState(), rc.GetOwner())
	}
}

// API8:2023 Security Misconfiguration. Only TLS 1.3 is spoken, and a refusal names no
// internals.
func TestAPI8OnlyTLS13(t *testing.T) {
	sys := newSystem(t, withLogLevel(zapcore.WarnLevel))
	old := clientTLS(t, sys.Certs, "prison", prisonAgency)
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	prison := throughcarev1.NewPrisonServiceClient(dialOnce(t, sys.nodes[prisonAgency][0].addr, credentials.NewTLS(old)))
	if _, err := prison.ListReleaseCases(shortCtx(t), &throughcarev1.ListReleaseCasesRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("TLS 1.2: got %v, want Unavailable", err)
	}
	_, err := throughcarev1.NewPrisonServiceClient(sys.dialAs("probation", prisonAgency)).ListReleaseCases(shortCtx(t), &throughcarev1.ListReleaseCasesRequest{})
	if msg := status.Convert(err).Message(); strings.Contains(msg, "/") || strings.Contains(msg, "spiffe") {
		t.Errorf("a refusal says %q: want no method paths or identities beyond the agency names", msg)
	}
}
