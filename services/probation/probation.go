// Package probation is the probation service: the cases the prison referred to it, and the
// supervision it gives after release.
package probation

import (
	"context"

	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
)

// Handovers is probation's side of the handover protocol that its service calls.
type Handovers = cases.Sharing

// Server implements throughcare.v1.ProbationService.
type Server struct {
	throughcarev1.UnimplementedProbationServiceServer
	log    *zap.Logger
	copies *cases.Copies
}

var _ throughcarev1.ProbationServiceServer = (*Server)(nil)

// New returns the probation service over its store of received cases and its side of the
// handovers.
func New(log *zap.Logger, store *cases.Store, handovers Handovers) *Server {
	return &Server{log: log, copies: cases.NewCopies(store, handovers)}
}

func (s *Server) GetSupervisionCase(ctx context.Context, req *throughcarev1.GetSupervisionCaseRequest) (*throughcarev1.GetSupervisionCaseResponse, error) {
	rc, err := s.copies.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.GetSupervisionCaseResponse{ReleaseCase: rc}, nil
}

func (s *Server) ListSupervisionCases(ctx context.Context, req *throughcarev1.ListSupervisionCasesRequest) (*throughcarev1.ListSupervisionCasesResponse, error) {
	page, next, err := s.copies.List(ctx, req.GetState(), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.ListSupervisionCasesResponse{ReleaseCases: page, NextPageToken: next}, nil
}

// RecordSupervisionPlan shares the supervision plan with the prison along the accepted
// handover, then keeps it on probation's copy.
func (s *Server) RecordSupervisionPlan(ctx context.Context, req *throughcarev1.RecordSupervisionPlanRequest) (*throughcarev1.RecordSupervisionPlanResponse, error) {
	rc, err := s.copies.RecordPlan(ctx, req.GetActor(), req.GetCaseId(), &throughcarev1.PlanShared{SupervisionPlan: req.GetSupervisionPlan()})
	if err != nil {
		return nil, err
	}
	s.log.Info("supervision plan recorded", zap.String("case_id", rc.GetCaseId()), zap.String("actor", req.GetActor()))
	return &throughcarev1.RecordSupervisionPlanResponse{ReleaseCase: rc}, nil
}
