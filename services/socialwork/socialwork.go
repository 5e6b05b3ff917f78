// Package socialwork is the social-work service: the cases the prison referred to it, and the
// post-penal assistance it gives.
package socialwork

import (
	"context"

	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
)

// Server implements throughcare.v1.SocialWorkService.
type Server struct {
	throughcarev1.UnimplementedSocialWorkServiceServer
	log   *zap.Logger
	cases *cases.Store
}

var _ throughcarev1.SocialWorkServiceServer = (*Server)(nil)

// New returns the social-work service over its store of received cases.
func New(log *zap.Logger, store *cases.Store) *Server {
	return &Server{log: log, cases: store}
}

func (s *Server) GetAssistanceCase(ctx context.Context, req *throughcarev1.GetAssistanceCaseRequest) (*throughcarev1.GetAssistanceCaseResponse, error) {
	rc, err := s.cases.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.GetAssistanceCaseResponse{ReleaseCase: rc}, nil
}

func (s *Server) ListAssistanceCases(ctx context.Context, req *throughcarev1.ListAssistanceCasesRequest) (*throughcarev1.ListAssistanceCasesResponse, error) {
	page, next, err := s.cases.List(ctx, cases.Filter{State: req.GetState()}, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.ListAssistanceCasesResponse{ReleaseCases: page, NextPageToken: next}, nil
}
