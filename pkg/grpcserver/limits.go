package grpcserver

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// LimitPerCaller lets each caller have at most limit unary calls in flight and refuses one
// more with ResourceExhausted at once, rather than queueing it: a flood from one agency's
// system then costs that agency only, and its client backs off. Callers are told apart by
// the identity Identify found, so it runs after Identify; calls with none (a server
// without IdentifyCallers) share one limit. Health checks are not counted.
func LimitPerCaller(limit int) grpc.UnaryServerInterceptor {
	var (
		mu       sync.Mutex
		inFlight = map[string]int{} // caller URI → calls in flight; only callers with some
	)
	release := func(key string) {
		mu.Lock()
		defer mu.Unlock()
		if inFlight[key]--; inFlight[key] == 0 {
			delete(inFlight, key)
		}
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if isHealthCheck(info.FullMethod) {
			return handler(ctx, req)
		}
		caller, _ := CallerFrom(ctx)
		key := caller.URI
		mu.Lock()
		if inFlight[key] >= limit {
			mu.Unlock()
			return nil, status.Errorf(codes.ResourceExhausted, "too many calls in flight from this caller (at most %d); retry with backoff", limit)
		}
		inFlight[key]++
		mu.Unlock()
		defer release(key)
		return handler(ctx, req)
	}
}

// CapDuration ends a unary call after d, whatever deadline its client set or did not set:
// a client that forgets one must not hold a handler, a NATS request and a slot of its limit
// for ever. A client's earlier deadline still wins.
func CapDuration(d time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return handler(ctx, req)
	}
}
