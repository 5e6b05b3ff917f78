package grpcserver

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/certs"
)

// Caller is who is calling, as its verified client certificate says.
type Caller struct {
	// Agency is the agency whose own system calls; unspecified for an operator.
	Agency   string
	Operator bool
	// URI is the certificate's identity, such as spiffe://throughcare/agency/prison.
	URI string
}

type callerKey struct{}

// CallerFrom returns the caller that Identify found. Health checks have none.
func CallerFrom(ctx context.Context) (Caller, bool) {
	caller, ok := ctx.Value(callerKey{}).(Caller)
	return caller, ok
}

// Identify finds the caller in the client certificate that the TLS handshake verified and
// puts it in the context; a call without one is Unauthenticated. Health checks pass
// without one, for Kubernetes probes.
func Identify() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if isHealthCheck(info.FullMethod) {
			return handler(ctx, req)
		}
		caller, err := identify(ctx)
		if err != nil {
			return nil, err
		}
		return handler(context.WithValue(ctx, callerKey{}, caller), req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if isHealthCheck(info.FullMethod) {
			return handler(srv, ss)
		}
		caller, err := identify(ss.Context())
		if err != nil {
			return err
		}
		return handler(srv, &callerStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callerKey{}, caller)})
	}
	return unary, stream
}

type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callerStream) Context() context.Context { return s.ctx }

func identify(ctx context.Context) (Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Caller{}, status.Error(codes.Unauthenticated, "a client certificate is required: connect with mutual TLS")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Caller{}, status.Error(codes.Unauthenticated, "a client certificate is required: connect with mutual TLS")
	}
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Caller{}, status.Error(codes.Unauthenticated, "a client certificate verified by the throughcare CA is required")
	}
	return callerOf(info.State.VerifiedChains[0][0])
}

// callerOf reads the one throughcare identity of cert. Anything else in the certificate
// stays out of the answer: only the URI is the caller's to know.
func callerOf(cert *x509.Certificate) (Caller, error) {
	var found []Caller
	for _, uri := range cert.URIs {
		if caller, ok := parseCallerURI(uri.String()); ok {
			found = append(found, caller)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return Caller{}, status.Errorf(codes.Unauthenticated, "the client certificate names no throughcare identity: want a URI SAN %s<agency> or %s", certs.AgencyURIPrefix, certs.OperatorURI)
	default:
		// Two identities in one certificate is a mis-issue; picking one would be a guess.
		return Caller{}, status.Error(codes.Unauthenticated, "the client certificate names more than one throughcare identity")
	}
}

func parseCallerURI(uri string) (Caller, bool) {
	if uri == certs.OperatorURI {
		return Caller{Operator: true, URI: uri}, true
	}
	name, ok := strings.CutPrefix(uri, certs.AgencyURIPrefix)
	if !ok {
		return Caller{}, false
	}
	if !agency.ValidID(name) {
		return Caller{}, false
	}
	return Caller{Agency: name, URI: uri}, true
}

// OwnAgencyOnly lets through only self's own system, and operators on operatorMethods
// (full method names, read-only ones such as ListDeadLetters). Everyone else is denied,
// so a method added later is closed until someone opens it. It runs after Identify;
// health checks pass.
func OwnAgencyOnly(self string, operatorMethods []string) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	forOperators := make(map[string]bool, len(operatorMethods))
	for _, method := range operatorMethods {
		forOperators[method] = true
	}
	authorize := func(ctx context.Context, method string) error {
		if isHealthCheck(method) {
			return nil
		}
		caller, ok := CallerFrom(ctx)
		switch {
		case !ok:
			return status.Error(codes.Unauthenticated, "the caller is not identified")
		case caller.Operator:
			if forOperators[method] {
				return nil
			}
			return status.Errorf(codes.PermissionDenied, "an operator certificate may not call %s", method)
		case caller.Agency == self:
			return nil
		}
		return status.Error(codes.PermissionDenied, fmt.Sprintf("this is %s's service; the calling certificate is %s's", self, caller.Agency))
	}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := authorize(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := authorize(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	return unary, stream
}
