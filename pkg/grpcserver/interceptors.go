package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"buf.build/go/protovalidate"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/throughcare/throughcare/pkg/fault"
)

func recoverUnary(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = recovered(log, info.FullMethod, r)
			}
		}()
		return handler(ctx, req)
	}
}

func recoverStream(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = recovered(log, info.FullMethod, r)
			}
		}()
		return handler(srv, ss)
	}
}

// recovered logs the panic's type only: its value may hold a request's personal data.
func recovered(log *zap.Logger, method string, r any) error {
	log.Error("panic in handler", zap.String("method", method), zap.String("panic_type", fmt.Sprintf("%T", r)), zap.ByteString("stack", debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

func isHealthCheck(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/")
}

func logUnary(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		if !isHealthCheck(info.FullMethod) {
			logCall(log, info.FullMethod, start, err)
		}
		return resp, err
	}
}

func logStream(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		if !isHealthCheck(info.FullMethod) {
			logCall(log, info.FullMethod, start, err)
		}
		return err
	}
}

// logCall logs the method and outcome, never the request: requests carry personal data.
func logCall(log *zap.Logger, method string, start time.Time, err error) {
	code := status.Code(err)
	level := zap.InfoLevel
	if code == codes.Internal || code == codes.Unknown || code == codes.DataLoss {
		level = zap.ErrorLevel
	}
	log.Log(level, "rpc", zap.String("method", method), zap.String("code", code.String()), zap.Duration("duration", time.Since(start)))
}

func mapErrorsUnary(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil {
			return nil, toStatus(log, info.FullMethod, err)
		}
		return resp, nil
	}
}

func mapErrorsStream(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := handler(srv, ss); err != nil {
			return toStatus(log, info.FullMethod, err)
		}
		return nil
	}
}

// toStatus is the one place where domain errors become status codes. The messages of
// domain errors name ids and fields only (see package fault) and are passed on; anything
// else is logged once here and answered with a bare Internal.
func toStatus(log *zap.Logger, method string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	var fieldErr *fault.FieldError
	switch {
	case errors.As(err, &fieldErr):
		return badRequest(fieldErr.Field+": "+fieldErr.Description, []*errdetails.BadRequest_FieldViolation{{Field: fieldErr.Field, Description: fieldErr.Description}})
	case errors.Is(err, fault.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, fault.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, fault.ErrConflict):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, fault.ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, fault.ErrPermissionDenied):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, fault.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case StoreUnreachable(err):
		log.Warn("store unreachable", zap.String("method", method), zap.Error(err))
		return status.Error(codes.Unavailable, "the store is unreachable for now (a NATS node is failing over): try again")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	log.Error("internal error", zap.String("method", method), zap.Error(err))
	return status.Error(codes.Internal, "internal error")
}

func validateUnary(v protovalidate.Validator) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := validate(v, req); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

func validateStream(v protovalidate.Validator) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &validatingStream{ServerStream: ss, validator: v})
	}
}

type validatingStream struct {
	grpc.ServerStream
	validator protovalidate.Validator
}

func (s *validatingStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return validate(s.validator, m)
}

// validate answers InvalidArgument with one BadRequest field violation per broken rule.
func validate(v protovalidate.Validator, req any) error {
	msg, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	err := v.Validate(msg)
	if err == nil {
		return nil
	}
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		// A rule that could not be evaluated is our bug, not the caller's.
		return status.Error(codes.Internal, "internal error: request validation")
	}
	violations := make([]*errdetails.BadRequest_FieldViolation, 0, len(verr.Violations))
	summary := make([]string, 0, len(verr.Violations))
	for _, violation := range verr.Violations {
		field := protovalidate.FieldPathString(violation.Proto.GetField())
		if field == "" {
			// Message-level rules are named "<field>.<rule>" in the contract.
			field, _, _ = strings.Cut(violation.Proto.GetRuleId(), ".")
		}
		description := violation.Proto.GetMessage()
		if description == "" {
			description = violation.Proto.GetRuleId()
		}
		violations = append(violations, &errdetails.BadRequest_FieldViolation{Field: field, Description: description})
		summary = append(summary, field+": "+description)
	}
	return badRequest(strings.Join(summary, "; "), violations)
}

func badRequest(msg string, violations []*errdetails.BadRequest_FieldViolation) error {
	st, err := status.New(codes.InvalidArgument, "invalid request: "+msg).WithDetails(&errdetails.BadRequest{FieldViolations: violations})
	if err != nil {
		return status.Error(codes.InvalidArgument, "invalid request: "+msg)
	}
	return st.Err()
}

// StoreUnreachable reports whether err is NATS being out of reach for a moment: a node
// failing over, a connection being re-established. The call may be retried.
func StoreUnreachable(err error) bool {
	for _, transient := range []error{nats.ErrTimeout, nats.ErrNoResponders, nats.ErrConnectionClosed, nats.ErrDisconnected,
		nats.ErrConnectionReconnecting, jetstream.ErrNoStreamResponse, jetstream.ErrNoHeartbeat} {
		if errors.Is(err, transient) {
			return true
		}
	}
	// JetStream answers 503 while a stream has no leader or its node is cut off.
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503
}
