// Package probation is the probation service: the cases the prison referred to it, and the
// supervision it gives after release.
package probation

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/fault"
)

// Handovers is this agency's side of the handover protocol (package handover): what its
// system may read of the copies it holds, and sharing plans back.
type Handovers interface {
	Readable(ctx context.Context, copies ...*throughcarev1.ReleaseCase) ([]*throughcarev1.ReleaseCase, error)
	SharePlan(ctx context.Context, actor, caseID string, plan *throughcarev1.PlanShared) error
}

// Server implements throughcare.v1.ProbationService.
type Server struct {
	throughcarev1.UnimplementedProbationServiceServer
	log       *zap.Logger
	cases     *cases.Store
	handovers Handovers
	now       func() time.Time
}

var _ throughcarev1.ProbationServiceServer = (*Server)(nil)

// New returns the probation service over its store of received cases and its side of the handovers.
func New(log *zap.Logger, store *cases.Store, handovers Handovers) *Server {
	return &Server{log: log, cases: store, handovers: handovers, now: time.Now}
}

func (s *Server) GetSupervisionCase(ctx context.Context, req *throughcarev1.GetSupervisionCaseRequest) (*throughcarev1.GetSupervisionCaseResponse, error) {
	rc, err := s.cases.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	readable, err := s.handovers.Readable(ctx, rc)
	if err != nil {
		return nil, err
	}
	return &throughcarev1.GetSupervisionCaseResponse{ReleaseCase: readable[0]}, nil
}

func (s *Server) ListSupervisionCases(ctx context.Context, req *throughcarev1.ListSupervisionCasesRequest) (*throughcarev1.ListSupervisionCasesResponse, error) {
	page, next, err := s.cases.List(ctx, cases.Filter{State: req.GetState()}, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if page, err = s.handovers.Readable(ctx, page...); err != nil {
		return nil, err
	}
	return &throughcarev1.ListSupervisionCasesResponse{ReleaseCases: page, NextPageToken: next}, nil
}

// RecordSupervisionPlan shares the supervision plan back along the accepted handover of the case, then
// keeps it on this agency's copy. Recording it again replaces it and shares it again.
func (s *Server) RecordSupervisionPlan(ctx context.Context, req *throughcarev1.RecordSupervisionPlanRequest) (*throughcarev1.RecordSupervisionPlanResponse, error) {
	rc, err := s.cases.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	// Sharing first: a case with no accepted handover is refused before anything changes.
	if err := s.handovers.SharePlan(ctx, req.GetActor(), rc.GetCaseId(), &throughcarev1.PlanShared{SupervisionPlan: req.GetSupervisionPlan()}); err != nil {
		return nil, err
	}
	for {
		rc.SupervisionPlan = req.GetSupervisionPlan()
		rc.UpdateTime = timestamppb.New(s.now())
		updated, err := s.cases.Update(ctx, rc, rc.GetRevision())
		if errors.Is(err, fault.ErrConflict) {
			// An incoming event changed the case meanwhile: apply the plan to the new one.
			if rc, err = s.cases.Get(ctx, req.GetCaseId()); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		s.log.Info("supervision plan recorded", zap.String("case_id", rc.GetCaseId()), zap.String("actor", req.GetActor()))
		readable, err := s.handovers.Readable(ctx, updated)
		if err != nil {
			return nil, err
		}
		return &throughcarev1.RecordSupervisionPlanResponse{ReleaseCase: readable[0]}, nil
	}
}
