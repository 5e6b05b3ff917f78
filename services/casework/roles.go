package casework

import (
	"context"

	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
)

// recipient is what the receiving roles' services share: they read the same copies
// CaseService does and differ only in their messages and the plan they share back.
type recipient struct {
	log    *zap.Logger
	copies *cases.Copies
}

func newRecipient(log *zap.Logger, store *cases.Store, sharing cases.Sharing) recipient {
	return recipient{log: log, copies: cases.NewCopies(store, sharing)}
}

// recordPlan shares plan with the prison along the accepted handover, then keeps it on
// this agency's copy; logged records which plan it was.
func (r recipient) recordPlan(ctx context.Context, actor, caseID string, plan *throughcarev1.PlanShared, logged string) (*throughcarev1.ReleaseCase, error) {
	rc, err := r.copies.RecordPlan(ctx, actor, caseID, plan)
	if err != nil {
		return nil, err
	}
	r.log.Info(logged, zap.String("case_id", rc.GetCaseId()), zap.String("actor", actor))
	return rc, nil
}

// ProbationServer implements throughcare.v1.ProbationService: probation's copies of the
// cases referred to it, and the supervision plan it shares back.
type ProbationServer struct {
	throughcarev1.UnimplementedProbationServiceServer
	recipient
}

var _ throughcarev1.ProbationServiceServer = (*ProbationServer)(nil)

// NewProbation returns the probation service over its store of received cases; it needs
// only the receiving side of the handovers.
func NewProbation(log *zap.Logger, store *cases.Store, handovers cases.Sharing) *ProbationServer {
	return &ProbationServer{recipient: newRecipient(log, store, handovers)}
}

// GetSupervisionCase returns what probation's system may read of its copy of a case.
func (s *ProbationServer) GetSupervisionCase(ctx context.Context, req *throughcarev1.GetSupervisionCaseRequest) (*throughcarev1.GetSupervisionCaseResponse, error) {
	rc, err := s.copies.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.GetSupervisionCaseResponse{ReleaseCase: rc}, nil
}

// ListSupervisionCases returns a page of probation's copies by case id order.
func (s *ProbationServer) ListSupervisionCases(ctx context.Context, req *throughcarev1.ListSupervisionCasesRequest) (*throughcarev1.ListSupervisionCasesResponse, error) {
	page, next, err := s.copies.List(ctx, req.GetState(), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.ListSupervisionCasesResponse{ReleaseCases: page, NextPageToken: next}, nil
}

// RecordSupervisionPlan shares the supervision plan with the prison along the accepted
// handover, then keeps it on probation's copy.
func (s *ProbationServer) RecordSupervisionPlan(ctx context.Context, req *throughcarev1.RecordSupervisionPlanRequest) (*throughcarev1.RecordSupervisionPlanResponse, error) {
	rc, err := s.recordPlan(ctx, req.GetActor(), req.GetCaseId(), &throughcarev1.PlanShared{SupervisionPlan: req.GetSupervisionPlan()}, "supervision plan recorded")
	if err != nil {
		return nil, err
	}
	return &throughcarev1.RecordSupervisionPlanResponse{ReleaseCase: rc}, nil
}

// SocialWorkServer implements throughcare.v1.SocialWorkService: social work's copies of
// the cases referred to it, and the assistance plan it shares back.
type SocialWorkServer struct {
	throughcarev1.UnimplementedSocialWorkServiceServer
	recipient
}

var _ throughcarev1.SocialWorkServiceServer = (*SocialWorkServer)(nil)

// NewSocialWork returns the social-work service over its store of received cases; it
// needs only the receiving side of the handovers.
func NewSocialWork(log *zap.Logger, store *cases.Store, handovers cases.Sharing) *SocialWorkServer {
	return &SocialWorkServer{recipient: newRecipient(log, store, handovers)}
}

// GetAssistanceCase returns what social work's system may read of its copy of a case.
func (s *SocialWorkServer) GetAssistanceCase(ctx context.Context, req *throughcarev1.GetAssistanceCaseRequest) (*throughcarev1.GetAssistanceCaseResponse, error) {
	rc, err := s.copies.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.GetAssistanceCaseResponse{ReleaseCase: rc}, nil
}

// ListAssistanceCases returns a page of social work's copies by case id order.
func (s *SocialWorkServer) ListAssistanceCases(ctx context.Context, req *throughcarev1.ListAssistanceCasesRequest) (*throughcarev1.ListAssistanceCasesResponse, error) {
	page, next, err := s.copies.List(ctx, req.GetState(), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.ListAssistanceCasesResponse{ReleaseCases: page, NextPageToken: next}, nil
}

// RecordAssistancePlan shares the assistance plan with the prison along the accepted
// handover, then keeps it on social work's copy.
func (s *SocialWorkServer) RecordAssistancePlan(ctx context.Context, req *throughcarev1.RecordAssistancePlanRequest) (*throughcarev1.RecordAssistancePlanResponse, error) {
	rc, err := s.recordPlan(ctx, req.GetActor(), req.GetCaseId(), &throughcarev1.PlanShared{AssistancePlan: req.GetAssistancePlan()}, "assistance plan recorded")
	if err != nil {
		return nil, err
	}
	return &throughcarev1.RecordAssistancePlanResponse{ReleaseCase: rc}, nil
}
