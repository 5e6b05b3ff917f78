// Package grpcserver builds the gRPC server every agency service runs on: one interceptor
// chain (recovery, logging, error mapping, validation, then the caller's own), health and
// reflection. The mapping from domain errors to status codes lives here and nowhere else.
package grpcserver

import (
	"fmt"

	"buf.build/go/protovalidate"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
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
	// Unary and Stream run after validation, innermost: authorization and the like.
	Unary  []grpc.UnaryServerInterceptor
	Stream []grpc.StreamServerInterceptor
}

// Server is a gRPC server with health and reflection registered.
type Server struct {
	*grpc.Server
	Health *health.Server
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
	unary := append([]grpc.UnaryServerInterceptor{
		recoverUnary(log),
		logUnary(log),
		mapErrorsUnary(log),
		validateUnary(validator),
	}, cfg.Unary...)
	stream := append([]grpc.StreamServerInterceptor{
		recoverStream(log),
		logStream(log),
		mapErrorsStream(log),
		validateStream(validator),
	}, cfg.Stream...)
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	}
	if cfg.Creds != nil {
		opts = append(opts, grpc.Creds(cfg.Creds))
	}
	s := &Server{Server: grpc.NewServer(opts...), Health: health.NewServer()}
	healthpb.RegisterHealthServer(s.Server, s.Health)
	reflection.Register(s.Server)
	return s, nil
}

// SetServing marks every registered service, and the server as a whole, as serving.
func (s *Server) SetServing() {
	s.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for name := range s.GetServiceInfo() {
		s.Health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
}

// Stop marks the server not serving, lets calls in flight finish, then stops.
func (s *Server) Stop() {
	s.Health.Shutdown()
	s.GracefulStop()
}
