package grpcserver

import (
	"context"
	"strings"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// PurposeHeader is the metadata every write carries: why the case worker acts, as a
// throughcare.v1.Purpose name such as PURPOSE_SUPERVISION.
const PurposeHeader = "x-throughcare-purpose"

// IsWrite reports whether a method changes records about people: every method of the
// contract but the reads (Get, List, Watch, Verify) and the operators' handling of dead
// letters, which is plumbing, has no case worker's purpose, and records itself.
func IsWrite(fullMethod string) bool {
	if !strings.HasPrefix(fullMethod, "/throughcare.") {
		return false // health, reflection
	}
	name := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
	if strings.HasSuffix(name, "DeadLetter") {
		return false
	}
	for _, read := range []string{"Get", "List", "Watch", "Verify"} {
		if strings.HasPrefix(name, read) {
			return false
		}
	}
	return true
}

type purposeKey struct{}

// PurposeFrom is the purpose a write declared, once RequirePurpose let it through.
func PurposeFrom(ctx context.Context) (throughcarev1.Purpose, bool) {
	p, ok := ctx.Value(purposeKey{}).(throughcarev1.Purpose)
	return p, ok
}

// RequirePurpose refuses a write without a known purpose in PurposeHeader, naming the
// header, and puts the purpose in the context of the ones it lets through.
func RequirePurpose() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !IsWrite(info.FullMethod) {
			return handler(ctx, req)
		}
		md, _ := metadata.FromIncomingContext(ctx)
		values := md.Get(PurposeHeader)
		var purpose throughcarev1.Purpose
		if len(values) == 1 {
			purpose = throughcarev1.Purpose(throughcarev1.Purpose_value[values[0]])
		}
		if purpose == throughcarev1.Purpose_PURPOSE_UNSPECIFIED {
			description := "every write must carry exactly one purpose, such as PURPOSE_SUPERVISION, PURPOSE_POST_PENAL_ASSISTANCE or PURPOSE_COORDINATION"
			return nil, badRequest(PurposeHeader+": "+description, []*errdetails.BadRequest_FieldViolation{{Field: PurposeHeader, Description: description}})
		}
		return handler(context.WithValue(ctx, purposeKey{}, purpose), req)
	}
}

// Write is one successful write, for the audit ledger: who, why and what it touched.
type Write struct {
	Method  string
	Actor   string
	Purpose throughcarev1.Purpose
	// CaseID and HandoverID are the records the request named, when it named them.
	CaseID, HandoverID string
}

// AuditWrites calls record after every successful write. A write whose record fails is
// answered with the error, so no change goes unrecorded without the caller knowing.
func AuditWrites(record func(ctx context.Context, w Write) error) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil || !IsWrite(info.FullMethod) {
			return resp, err
		}
		purpose, _ := PurposeFrom(ctx)
		w := Write{Method: info.FullMethod, Purpose: purpose}
		if msg, ok := req.(proto.Message); ok {
			w.Actor, w.CaseID, w.HandoverID = stringField(msg, "actor"), stringField(msg, "case_id"), stringField(msg, "handover_id")
		}
		if w.CaseID == "" {
			// A case opened by this write is named in the response.
			if msg, ok := resp.(proto.Message); ok {
				if rc := messageField(msg, "release_case"); rc != nil {
					w.CaseID = stringField(rc, "case_id")
				}
			}
		}
		if err := record(ctx, w); err != nil {
			return nil, err
		}
		return resp, nil
	}
}

func stringField(msg proto.Message, name protoreflect.Name) string {
	m := msg.ProtoReflect()
	if fd := m.Descriptor().Fields().ByName(name); fd != nil && fd.Kind() == protoreflect.StringKind {
		return m.Get(fd).String()
	}
	return ""
}

func messageField(msg proto.Message, name protoreflect.Name) proto.Message {
	m := msg.ProtoReflect()
	if fd := m.Descriptor().Fields().ByName(name); fd != nil && fd.Message() != nil && m.Has(fd) {
		return m.Get(fd).Message().Interface()
	}
	return nil
}
