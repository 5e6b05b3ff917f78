package grpcserver_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/certs"
	"github.com/throughcare/throughcare/pkg/grpcserver"
)

// testAgencies are the default protocol's agencies.
var testAgencies = []string{"prison", "probation", "socialwork"}

const (
	prison       = "prison"
	getProtocol  = throughcarev1.AuditService_GetSharingProtocol_FullMethodName
	verifyLedger = throughcarev1.AuditService_VerifyLedger_FullMethodName
)

// auditStub answers two audit methods and records who reached them.
type auditStub struct {
	throughcarev1.UnimplementedAuditServiceServer

	mu      sync.Mutex
	callers []grpcserver.Caller
}

var _ throughcarev1.AuditServiceServer = (*auditStub)(nil)

func (s *auditStub) GetSharingProtocol(ctx context.Context, _ *throughcarev1.GetSharingProtocolRequest) (*throughcarev1.GetSharingProtocolResponse, error) {
	s.record(ctx)
	return &throughcarev1.GetSharingProtocolResponse{Protocol: &throughcarev1.SharingProtocol{ProtocolId: "test", Version: 1}}, nil
}

func (s *auditStub) VerifyLedger(ctx context.Context, _ *throughcarev1.VerifyLedgerRequest) (*throughcarev1.VerifyLedgerResponse, error) {
	s.record(ctx)
	return &throughcarev1.VerifyLedgerResponse{Intact: true}, nil
}

func (s *auditStub) record(ctx context.Context) {
	caller, _ := grpcserver.CallerFrom(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.callers = append(s.callers, caller)
}

// reached returns the callers that reached a handler since the last call, and forgets them.
func (s *auditStub) reached() []grpcserver.Caller {
	s.mu.Lock()
	defer s.mu.Unlock()
	callers := s.callers
	s.callers = nil
	return callers
}

// startPrison serves the stub as the prison's service over mutual TLS on loopback, with
// operators allowed GetSharingProtocol only.
func startPrison(t *testing.T, b *certs.Bundle) (string, *auditStub) {
	t.Helper()
	serverTLS, err := b.ServerTLS("prison")
	if err != nil {
		t.Fatal(err)
	}
	authorizeUnary, authorizeStream := grpcserver.OwnAgencyOnly(prison, []string{getProtocol})
	srv, err := grpcserver.New(zaptest.NewLogger(t), grpcserver.Config{
		Creds:           credentials.NewTLS(serverTLS),
		IdentifyCallers: true,
		Unary:           []grpc.UnaryServerInterceptor{authorizeUnary},
		Stream:          []grpc.StreamServerInterceptor{authorizeStream},
	})
	if err != nil {
		t.Fatal(err)
	}
	stub := &auditStub{}
	throughcarev1.RegisterAuditServiceServer(srv.Server, stub)
	srv.SetServing()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return lis.Addr().String(), stub
}

func dial(t *testing.T, addr string, clientTLS *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func callContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pki is a local set and a client configuration maker for the prison's server.
type pki struct {
	bundle *certs.Bundle
	ca     *certs.CA
}

func newPKI(t *testing.T) pki {
	t.Helper()
	b, err := certs.Ensure(t.TempDir(), testAgencies, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.LoadCA(b.CAFile(), b.CAKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	return pki{bundle: b, ca: ca}
}

// client is identity's configuration, aimed at the prison's server whoever identity is.
func (p pki) client(t *testing.T, identity string) *tls.Config {
	t.Helper()
	cfg, err := p.bundle.ClientTLS(identity)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = "prison"
	return cfg
}

// clientWith is the prison's configuration with cert in place of its own certificate.
func (p pki) clientWith(t *testing.T, cert tls.Certificate) *tls.Config {
	t.Helper()
	cfg := p.client(t, "prison")
	cfg.Certificates = []tls.Certificate{cert}
	return cfg
}

func issueClient(t *testing.T, ca *certs.CA, uri string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	cert, err := ca.IssueClient(uri, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestMutualTLSCallers(t *testing.T) {
	p := newPKI(t)
	addr, stub := startPrison(t, p.bundle)
	now := time.Now()
	stranger, err := certs.NewCA("stranger CA", now)
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := p.ca.IssueServer([]string{"prison"}, now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		clientTLS  *tls.Config
		method     string
		wantCode   codes.Code
		wantCaller grpcserver.Caller
		wantMsg    string
	}{
		{
			name: "own agency", clientTLS: p.client(t, "prison"), method: getProtocol, wantCode: codes.OK,
			wantCaller: grpcserver.Caller{Agency: prison, URI: "spiffe://throughcare/agency/prison"},
		},
		{
			name: "own agency, method not for operators", clientTLS: p.client(t, "prison"), method: verifyLedger, wantCode: codes.OK,
			wantCaller: grpcserver.Caller{Agency: prison, URI: "spiffe://throughcare/agency/prison"},
		},
		{
			name: "no client certificate", method: getProtocol, wantCode: codes.Unavailable,
			clientTLS: func() *tls.Config { c := p.client(t, "prison"); c.Certificates = nil; return c }(),
		},
		{
			name: "certificate from another CA", method: getProtocol, wantCode: codes.Unavailable,
			clientTLS: p.clientWith(t, issueClient(t, stranger, certs.AgencyURI("prison"), now.Add(-time.Hour), now.Add(time.Hour))),
		},
		{
			name: "expired certificate", method: getProtocol, wantCode: codes.Unavailable,
			clientTLS: p.clientWith(t, issueClient(t, p.ca, certs.AgencyURI("prison"), now.Add(-48*time.Hour), now.Add(-24*time.Hour))),
		},
		{
			name: "server certificate as a client", method: getProtocol, wantCode: codes.Unavailable,
			clientTLS: p.clientWith(t, serverCert),
		},
		{
			name: "our CA, no throughcare identity", method: getProtocol, wantCode: codes.Unauthenticated,
			clientTLS: p.clientWith(t, issueClient(t, p.ca, "spiffe://elsewhere/agency/prison", now.Add(-time.Hour), now.Add(time.Hour))),
			wantMsg:   "names no throughcare identity",
		},
		{
			name: "our CA, unknown agency", method: getProtocol, wantCode: codes.Unauthenticated,
			clientTLS: p.clientWith(t, issueClient(t, p.ca, certs.AgencyURI("Police!"), now.Add(-time.Hour), now.Add(time.Hour))),
		},
		{
			name: "probation", clientTLS: p.client(t, "probation"), method: getProtocol, wantCode: codes.PermissionDenied,
			wantMsg: "this is prison's service; the calling certificate is probation's",
		},
		{
			name: "social work", clientTLS: p.client(t, "socialwork"), method: verifyLedger, wantCode: codes.PermissionDenied,
			wantMsg: "the calling certificate is socialwork's",
		},
		{
			name: "operator, allowed method", clientTLS: p.client(t, certs.Operator), method: getProtocol, wantCode: codes.OK,
			wantCaller: grpcserver.Caller{Operator: true, URI: "spiffe://throughcare/operator"},
		},
		{
			name: "operator, other method", clientTLS: p.client(t, certs.Operator), method: verifyLedger, wantCode: codes.PermissionDenied,
			wantMsg: "operator",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := throughcarev1.NewAuditServiceClient(dial(t, addr, tt.clientTLS))
			ctx := callContext(t)
			var err error
			switch tt.method {
			case getProtocol:
				_, err = client.GetSharingProtocol(ctx, &throughcarev1.GetSharingProtocolRequest{})
			case verifyLedger:
				_, err = client.VerifyLedger(ctx, &throughcarev1.VerifyLedgerRequest{})
			}
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("got %v (%v), want %v", got, err, tt.wantCode)
			}
			if !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
				t.Errorf("message %q does not say %q", status.Convert(err).Message(), tt.wantMsg)
			}
			reached := stub.reached()
			if tt.wantCode != codes.OK {
				if len(reached) != 0 {
					t.Errorf("a refused call reached the handler as %+v", reached)
				}
				return
			}
			if len(reached) != 1 || reached[0] != tt.wantCaller {
				t.Errorf("handler saw callers %+v, want [%+v]", reached, tt.wantCaller)
			}
		})
	}
}

func TestHealthChecksPassWithoutIdentity(t *testing.T) {
	p := newPKI(t)
	addr, _ := startPrison(t, p.bundle)
	now := time.Now()
	tests := []struct {
		name      string
		clientTLS *tls.Config
	}{
		{"another agency", p.client(t, "probation")},
		{"no throughcare identity", p.clientWith(t, issueClient(t, p.ca, "spiffe://elsewhere/probe", now.Add(-time.Hour), now.Add(time.Hour)))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			health := healthpb.NewHealthClient(dial(t, addr, tt.clientTLS))
			resp, err := health.Check(callContext(t), &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatalf("health check: %v", err)
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health: got %v, want SERVING", resp.GetStatus())
			}
		})
	}
}

// Reflection is a stream every server registers, so it shows the stream interceptors.
func TestStreamsAreAuthenticatedAndAuthorized(t *testing.T) {
	p := newPKI(t)
	addr, _ := startPrison(t, p.bundle)
	now := time.Now()
	tests := []struct {
		name      string
		clientTLS *tls.Config
		wantCode  codes.Code
	}{
		{"own agency", p.client(t, "prison"), codes.OK},
		{"another agency", p.client(t, "probation"), codes.PermissionDenied},
		{"operator", p.client(t, certs.Operator), codes.PermissionDenied},
		{"no throughcare identity", p.clientWith(t, issueClient(t, p.ca, "spiffe://elsewhere/x", now.Add(-time.Hour), now.Add(time.Hour))), codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reflection := reflectionpb.NewServerReflectionClient(dial(t, addr, tt.clientTLS))
			stream, err := reflection.ServerReflectionInfo(callContext(t))
			if err != nil {
				t.Fatal(err)
			}
			// A refused stream may end before the request is sent: Send then says io.EOF and
			// Recv has the status.
			err = stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			_, err = stream.Recv()
			if got := status.Code(err); got != tt.wantCode {
				t.Errorf("got %v (%v), want %v", got, err, tt.wantCode)
			}
		})
	}
}

// plainAuth is a connection's auth info without TLS.
type plainAuth struct{}

func (plainAuth) AuthType() string { return "plain" }

func verifiedPeer(cert *x509.Certificate) *peer.Peer {
	state := tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}
	return &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}}
}

func certNaming(t *testing.T, uris ...string) *x509.Certificate {
	t.Helper()
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "Jane Doe"}}
	for _, uri := range uris {
		parsed, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		cert.URIs = append(cert.URIs, parsed)
	}
	return cert
}

func TestIdentifyRefuses(t *testing.T) {
	tests := []struct {
		name string
		peer *peer.Peer
	}{
		{"no peer", nil},
		{"no TLS", &peer.Peer{AuthInfo: plainAuth{}}},
		{"TLS without a verified chain", &peer.Peer{AuthInfo: credentials.TLSInfo{}}},
		{"no URI", verifiedPeer(certNaming(t))},
		{"a stranger's URI", verifiedPeer(certNaming(t, "spiffe://elsewhere/agency/prison"))},
		{"an agency prefix alone", verifiedPeer(certNaming(t, certs.AgencyURIPrefix))},
		{"two identities", verifiedPeer(certNaming(t, certs.AgencyURI("prison"), certs.OperatorURI))},
	}
	identifyUnary, _ := grpcserver.Identify()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			if tt.peer != nil {
				ctx = peer.NewContext(ctx, tt.peer)
			}
			reached := false
			_, err := identifyUnary(ctx, nil, &grpc.UnaryServerInfo{FullMethod: getProtocol}, func(context.Context, any) (any, error) {
				reached = true
				return nil, nil
			})
			if status.Code(err) != codes.Unauthenticated || reached {
				t.Fatalf("got %v, handler reached %v; want Unauthenticated before the handler", err, reached)
			}
			if strings.Contains(err.Error(), "Jane Doe") {
				t.Errorf("message %q echoes the certificate's subject", err)
			}
		})
	}
}

func TestIdentifyFindsCaller(t *testing.T) {
	tests := []struct {
		uri  string
		want grpcserver.Caller
	}{
		{certs.AgencyURI("prison"), grpcserver.Caller{Agency: prison, URI: certs.AgencyURI("prison")}},
		{certs.AgencyURI("probation"), grpcserver.Caller{Agency: "probation", URI: certs.AgencyURI("probation")}},
		{certs.AgencyURI("socialwork"), grpcserver.Caller{Agency: "socialwork", URI: certs.AgencyURI("socialwork")}},
		{certs.OperatorURI, grpcserver.Caller{Operator: true, URI: certs.OperatorURI}},
	}
	identifyUnary, _ := grpcserver.Identify()
	for _, tt := range tests {
		t.Run(tt.uri, func(t *testing.T) {
			// A second, foreign URI does not confuse it.
			ctx := peer.NewContext(t.Context(), verifiedPeer(certNaming(t, "https://example.org/someone", tt.uri)))
			var got grpcserver.Caller
			var found bool
			_, err := identifyUnary(ctx, nil, &grpc.UnaryServerInfo{FullMethod: getProtocol}, func(ctx context.Context, _ any) (any, error) {
				got, found = grpcserver.CallerFrom(ctx)
				return nil, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !found || got != tt.want {
				t.Errorf("got caller %+v (found %v), want %+v", got, found, tt.want)
			}
		})
	}
}

func TestOwnAgencyOnlyDeniesByDefault(t *testing.T) {
	tests := []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{"Identify did not run", t.Context(), codes.Unauthenticated},
		{"operator, no methods allowed", identified(t, certs.OperatorURI), codes.PermissionDenied},
		{"another agency", identified(t, certs.AgencyURI("socialwork")), codes.PermissionDenied},
	}
	authorizeUnary, _ := grpcserver.OwnAgencyOnly(prison, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reached := false
			_, err := authorizeUnary(tt.ctx, nil, &grpc.UnaryServerInfo{FullMethod: getProtocol}, func(context.Context, any) (any, error) {
				reached = true
				return nil, nil
			})
			if status.Code(err) != tt.want || reached {
				t.Errorf("got %v, handler reached %v; want %v before the handler", err, reached, tt.want)
			}
		})
	}
}

// identified is the context Identify hands on for a certificate naming uri.
func identified(t *testing.T, uri string) context.Context {
	t.Helper()
	identifyUnary, _ := grpcserver.Identify()
	ctx := peer.NewContext(t.Context(), verifiedPeer(certNaming(t, uri)))
	var handed context.Context
	if _, err := identifyUnary(ctx, nil, &grpc.UnaryServerInfo{FullMethod: getProtocol}, func(ctx context.Context, _ any) (any, error) {
		handed = ctx
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	return handed
}
