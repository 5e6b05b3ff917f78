// Package probation is the probation service: the cases the prison referred to it, and the
// supervision it gives after release.
package probation

import (
	"context"

	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
)

// Server implements throughcare.v1.ProbationService.
type Server struct {
	throughcarev1.UnimplementedProbationServiceServer
	log   *zap.Logger
	cases *cases.Store
}

var _ throughcarev1.ProbationServiceServer = (*Server)(nil)

// New returns the probation service over its store of received cases.
func New(log *zap.Logger, store *cases.Store) *Server {
	return &Server{log: log, cases: store}
}

func (s *Server) GetSupervisionCase(ctx context.Context, req *throughcarev1.GetSupervisionCaseRequest) (*throughcarev1.GetSupervisionCaseResponse, error) {
	rc, err := s.cases.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.GetSupervisionCaseResponse{ReleaseCase: rc}, nil
}

func (s *Server) ListSupervisionCases(ctx context.Context, req *throughcarev1.ListSupervisionCasesRequest) (*throughcarev1.ListSupervisionCasesResponse, error) {
	page, next, err := s.cases.List(ctx, cases.Filter{State: req.GetState()}, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.ListSupervisionCasesResponse{ReleaseCases: page, NextPageToken: next}, nil
}
