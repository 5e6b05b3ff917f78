// Package socialwork is the social-work service: the cases the prison referred to it, and the
// post-penal assistance it gives.
package socialwork

import (
	"context"

	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
)

// Handovers is social work's side of the handover protocol that its service calls.
type Handovers = cases.Sharing

// Server implements throughcare.v1.SocialWorkService.
type Server struct {
	throughcarev1.UnimplementedSocialWorkServiceServer
	log    *zap.Logger
	copies *cases.Copies
}

var _ throughcarev1.SocialWorkServiceServer = (*Server)(nil)

// New returns the social-work service over its store of received cases and its side of the
// handovers.
func New(log *zap.Logger, store *cases.Store, handovers Handovers) *Server {
	return &Server{log: log, copies: cases.NewCopies(store, handovers)}
}

func (s *Server) GetAssistanceCase(ctx context.Context, req *throughcarev1.GetAssistanceCaseRequest) (*throughcarev1.GetAssistanceCaseResponse, error) {
	rc, err := s.copies.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.GetAssistanceCaseResponse{ReleaseCase: rc}, nil
}

func (s *Server) ListAssistanceCases(ctx context.Context, req *throughcarev1.ListAssistanceCasesRequest) (*throughcarev1.ListAssistanceCasesResponse, error) {
	page, next, err := s.copies.List(ctx, req.GetState(), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.ListAssistanceCasesResponse{ReleaseCases: page, NextPageToken: next}, nil
}

// RecordAssistancePlan shares the assistance plan with the prison along the accepted
// handover, then keeps it on social work's copy.
func (s *Server) RecordAssistancePlan(ctx context.Context, req *throughcarev1.RecordAssistancePlanRequest) (*throughcarev1.RecordAssistancePlanResponse, error) {
	rc, err := s.copies.RecordPlan(ctx, req.GetActor(), req.GetCaseId(), &throughcarev1.PlanShared{AssistancePlan: req.GetAssistancePlan()})
	if err != nil {
		return nil, err
	}
	s.log.Info("assistance plan recorded", zap.String("case_id", rc.GetCaseId()), zap.String("actor", req.GetActor()))
	return &throughcarev1.RecordAssistancePlanResponse{ReleaseCase: rc}, nil
}
