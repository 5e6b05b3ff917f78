// Package grpcserver builds the gRPC server every agency service runs on: one interceptor
// chain (recovery, logging, error mapping, authentication, limits, validation, then the
// caller's own: authorization), health and reflection, and a plaintext port that serves
// health alone. The mapping from domain errors to status codes lives here and nowhere else.
package grpcserver

import (
	"fmt"
	"net"
	"time"

	"buf.build/go/protovalidate"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/stats"
)

// DefaultMaxRecvMsgSize bounds a request. The largest legitimate request, a release case
// with every text field full, is well under it.
const DefaultMaxRecvMsgSize = 1 << 20

// Config tunes a Server. The zero value is usable.
type Config struct {
	// MaxRecvMsgSize bounds a request in bytes; 0 means DefaultMaxRecvMsgSize.
	MaxRecvMsgSize int
	// Creds secures the transport; nil serves plaintext.
	Creds credentials.TransportCredentials
	// IdentifyCallers requires every call but a health check to come with a verified
	// client certificate naming a throughcare identity, and hands the caller on (see
	// Identify). It runs after error mapping and before validation, so that a stranger
	// learns nothing about the shape of a valid request.
	IdentifyCallers bool
	// MaxInFlightPerCaller bounds the unary calls one caller may have in flight; one more
	// is refused with ResourceExhausted, so that a flood from one caller does not starve
	// the others. 0 means no bound. Without IdentifyCallers every call is one caller's.
	MaxInFlightPerCaller int
	// CallTimeout caps how long a unary call may run, whatever deadline its client set
	// (or did not set); 0 means no cap. Streams are not capped: a watch lasts.
	CallTimeout time.Duration
	// Unary and Stream run after validation, innermost: authorization and the like.
	Unary  []grpc.UnaryServerInterceptor
	Stream []grpc.StreamServerInterceptor
	// OuterUnary and OuterStream run first but for panic recovery: metrics, which must
	// see every call with the code it ended with.
	OuterUnary  []grpc.UnaryServerInterceptor
	OuterStream []grpc.StreamServerInterceptor
	// StatsHandlers see every call from its start: tracing.
	StatsHandlers []stats.Handler
}

// Server is a gRPC server with health and reflection registered, and a second,
// plaintext server that shares its health and serves nothing else (see ServeHealth).
type Server struct {
	*grpc.Server
	Health     *health.Server
	healthOnly *grpc.Server
}

// New returns a server with the standard interceptor chain. Register services on it, then
// mark them serving with Health.SetServingStatus.
func New(log *zap.Logger, cfg Config) (*Server, error) {
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("protovalidate: %w", err)
	}
	if cfg.MaxRecvMsgSize == 0 {
		cfg.MaxRecvMsgSize = DefaultMaxRecvMsgSize
	}
	unary := append(append([]grpc.UnaryServerInterceptor{recoverUnary(log)}, cfg.OuterUnary...), logUnary(log), mapErrorsUnary(log))
	stream := append(append([]grpc.StreamServerInterceptor{recoverStream(log)}, cfg.OuterStream...), logStream(log), mapErrorsStream(log))
	if cfg.IdentifyCallers {
		identifyUnary, identifyStream := Identify()
		unary = append(unary, identifyUnary)
		stream = append(stream, identifyStream)
	}
	if cfg.MaxInFlightPerCaller > 0 {
		unary = append(unary, LimitPerCaller(cfg.MaxInFlightPerCaller))
	}
	if cfg.CallTimeout > 0 {
		unary = append(unary, CapDuration(cfg.CallTimeout))
	}
	unary = append(append(unary, validateUnary(validator)), cfg.Unary...)
	stream = append(append(stream, validateStream(validator)), cfg.Stream...)
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	}
	if cfg.Creds != nil {
		opts = append(opts, grpc.Creds(cfg.Creds))
	}
	for _, h := range cfg.StatsHandlers {
		opts = append(opts, grpc.StatsHandler(h))
	}
	s := &Server{
		Server: grpc.NewServer(opts...),
		Health: health.NewServer(),
		// A health check is a few bytes; nothing bigger has any business on this port.
		healthOnly: grpc.NewServer(grpc.MaxRecvMsgSize(maxHealthMsgSize)),
	}
	healthpb.RegisterHealthServer(s.Server, s.Health)
	reflection.Register(s.Server)
	healthpb.RegisterHealthServer(s.healthOnly, s.Health)
	return s, nil
}

const maxHealthMsgSize = 4 << 10

// ServeHealth serves the health service, and nothing else, in plaintext on lis until
// Stop: Kubernetes gRPC probes cannot present a client certificate. It answers as the
// main server's health does, since both share Health. It returns nil once stopped.
func (s *Server) ServeHealth(lis net.Listener) error {
	return s.healthOnly.Serve(lis)
}

// SetServing marks every registered service, and the server as a whole, as serving.
func (s *Server) SetServing() {
	s.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for name := range s.GetServiceInfo() {
		s.Health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
}

// Stop marks the server not serving, lets calls in flight finish, then stops, and stops
// the health port with it.
func (s *Server) Stop() {
	s.Health.Shutdown()
	s.GracefulStop()
	s.healthOnly.Stop()
}
