// Package prison is the prison service: it opens release cases, keeps them up to date and
// refers them to probation and social work.
package prison

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/ids"
)

// Handovers is the prison's side of the handover protocol (package handover).
type Handovers interface {
	NotifyRelease(ctx context.Context, actor, caseID string, release *throughcarev1.Release) (int, error)
	WithdrawConsent(ctx context.Context, actor, caseID string, recipient string, categories []throughcarev1.DataCategory) (int, error)
}

// Server implements throughcare.v1.PrisonService.
type Server struct {
	throughcarev1.UnimplementedPrisonServiceServer
	log       *zap.Logger
	agency    string // the prison's id, which owns the cases it opens
	cases     *cases.Store
	handovers Handovers
	now       func() time.Time
}

var _ throughcarev1.PrisonServiceServer = (*Server)(nil)

// New returns the service of the prison agency over its case store and its side of the
// handovers.
func New(log *zap.Logger, agency string, store *cases.Store, handovers Handovers) *Server {
	return &Server{log: log, agency: agency, cases: store, handovers: handovers, now: time.Now}
}

// OpenReleaseCase stores a new case. Validation already refused server-owned fields.
func (s *Server) OpenReleaseCase(ctx context.Context, req *throughcarev1.OpenReleaseCaseRequest) (*throughcarev1.OpenReleaseCaseResponse, error) {
	rc := proto.CloneOf(req.GetReleaseCase())
	now := timestamppb.New(s.now())
	rc.CaseId = ids.New(ids.Case)
	rc.State = throughcarev1.CaseState_CASE_STATE_OPEN
	rc.Owner = s.agency
	rc.CreateTime = now
	rc.UpdateTime = now
	rc, err := s.cases.Create(ctx, rc)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	s.log.Info("release case opened", zap.String("case_id", rc.GetCaseId()), zap.String("actor", req.GetActor()), zap.Uint64("revision", rc.GetRevision()))
	return &throughcarev1.OpenReleaseCaseResponse{ReleaseCase: rc}, nil
}

func (s *Server) GetReleaseCase(ctx context.Context, req *throughcarev1.GetReleaseCaseRequest) (*throughcarev1.GetReleaseCaseResponse, error) {
	rc, err := s.cases.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.GetReleaseCaseResponse{ReleaseCase: rc}, nil
}

func (s *Server) ListReleaseCases(ctx context.Context, req *throughcarev1.ListReleaseCasesRequest) (*throughcarev1.ListReleaseCasesResponse, error) {
	filter := cases.Filter{State: req.GetState(), ExpectedFrom: req.GetExpectedReleaseFrom(), ExpectedTo: req.GetExpectedReleaseTo()}
	page, next, err := s.cases.List(ctx, filter, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.ListReleaseCasesResponse{ReleaseCases: page, NextPageToken: next}, nil
}

// UpdateReleaseCase replaces the masked fields if the case is still at the revision the
// caller read; a concurrent writer makes it fail with a conflict and change nothing.
func (s *Server) UpdateReleaseCase(ctx context.Context, req *throughcarev1.UpdateReleaseCaseRequest) (*throughcarev1.UpdateReleaseCaseResponse, error) {
	rc, err := s.editable(ctx, req.GetCaseId(), req.GetExpectedRevision())
	if err != nil {
		return nil, err
	}
	before := proto.CloneOf(rc)
	src := req.GetReleaseCase().ProtoReflect()
	dst := rc.ProtoReflect()
	for _, path := range req.GetUpdateMask().GetPaths() {
		// Validation admits only top-level, client-owned fields.
		fd := dst.Descriptor().Fields().ByName(protoreflect.Name(path))
		if src.Has(fd) {
			dst.Set(fd, src.Get(fd))
		} else {
			dst.Clear(fd)
		}
	}
	// The actual release date is RecordRelease's alone: a new plan keeps it.
	if actual := before.GetReleasePlan().GetActualReleaseDate(); actual != nil {
		rc.ReleasePlan.ActualReleaseDate = actual
	}
	rc.UpdateTime = timestamppb.New(s.now())
	rc, err = s.cases.Update(ctx, rc, req.GetExpectedRevision())
	if err != nil {
		return nil, err
	}
	s.log.Info("release case updated", zap.String("case_id", rc.GetCaseId()), zap.String("actor", req.GetActor()), zap.Strings("fields", req.GetUpdateMask().GetPaths()), zap.Uint64("revision", rc.GetRevision()))
	return &throughcarev1.UpdateReleaseCaseResponse{ReleaseCase: rc}, nil
}

func (s *Server) CloseReleaseCase(ctx context.Context, req *throughcarev1.CloseReleaseCaseRequest) (*throughcarev1.CloseReleaseCaseResponse, error) {
	rc, err := s.editable(ctx, req.GetCaseId(), req.GetExpectedRevision())
	if err != nil {
		return nil, err
	}
	rc.State = throughcarev1.CaseState_CASE_STATE_CLOSED
	rc.UpdateTime = timestamppb.New(s.now())
	rc, err = s.cases.Update(ctx, rc, req.GetExpectedRevision())
	if err != nil {
		return nil, err
	}
	s.log.Info("release case closed", zap.String("case_id", rc.GetCaseId()), zap.String("actor", req.GetActor()), zap.Uint64("revision", rc.GetRevision()))
	return &throughcarev1.CloseReleaseCaseResponse{ReleaseCase: rc}, nil
}

// editable loads a case for a write at expectedRevision: a stale revision is a conflict,
// a closed case takes no more writes.
func (s *Server) editable(ctx context.Context, caseID string, expectedRevision uint64) (*throughcarev1.ReleaseCase, error) {
	rc, err := s.cases.Get(ctx, caseID)
	if err != nil {
		return nil, err
	}
	if rc.GetRevision() != expectedRevision {
		return nil, fmt.Errorf("release case %s is at revision %d, not %d: %w", caseID, rc.GetRevision(), expectedRevision, fault.ErrConflict)
	}
	if rc.GetState() == throughcarev1.CaseState_CASE_STATE_CLOSED {
		return nil, fmt.Errorf("release case %s is closed: %w", caseID, fault.ErrFailedPrecondition)
	}
	return rc, nil
}

// RecordRelease records the actual release and tells every agency that accepted the case.
// Recording the same release again only repeats the notices, which change nothing, so a
// caller may retry after an error.
func (s *Server) RecordRelease(ctx context.Context, req *throughcarev1.RecordReleaseRequest) (*throughcarev1.RecordReleaseResponse, error) {
	rc, err := s.cases.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	release := proto.CloneOf(req.GetRelease())
	if release.ReleaseAddress == nil {
		// Released to the address planned: the record and the notices keep that one.
		release.ReleaseAddress = rc.GetReleasePlan().GetReleaseAddress()
	}
	switch {
	case rc.GetState() == throughcarev1.CaseState_CASE_STATE_OPEN:
		if rc.ReleasePlan == nil {
			rc.ReleasePlan = new(throughcarev1.ReleasePlan)
		}
		rc.ReleasePlan.ActualReleaseDate = release.GetActualReleaseDate()
		rc.ReleasePlan.ReleaseAddress = release.GetReleaseAddress()
		rc.State = throughcarev1.CaseState_CASE_STATE_RELEASED
		rc.UpdateTime = timestamppb.New(s.now())
		if rc, err = s.cases.Update(ctx, rc, rc.GetRevision()); err != nil {
			return nil, err
		}
	case rc.GetState() == throughcarev1.CaseState_CASE_STATE_RELEASED && proto.Equal(rc.GetReleasePlan().GetActualReleaseDate(), release.GetActualReleaseDate()) &&
		proto.Equal(rc.GetReleasePlan().GetReleaseAddress(), release.GetReleaseAddress()):
		// The same release again: send the notices again.
	default:
		return nil, fmt.Errorf("release case %s is %s; a release can be recorded once, on an open case: %w", rc.GetCaseId(), rc.GetState(), fault.ErrFailedPrecondition)
	}
	told, err := s.handovers.NotifyRelease(ctx, req.GetActor(), rc.GetCaseId(), release)
	if err != nil {
		return nil, err
	}
	s.log.Info("release recorded", zap.String("case_id", rc.GetCaseId()), zap.String("actor", req.GetActor()), zap.Int("agencies_told", told))
	return &throughcarev1.RecordReleaseResponse{ReleaseCase: rc}, nil
}

// RecordConsent records the person's consent to share one category with one recipient.
// Recording a consent that stands already changes nothing.
func (s *Server) RecordConsent(ctx context.Context, req *throughcarev1.RecordConsentRequest) (*throughcarev1.RecordConsentResponse, error) {
	rc, err := s.changeCase(ctx, req.GetCaseId(), func(rc *throughcarev1.ReleaseCase) bool {
		if standingConsent(rc, req.GetCategory(), req.GetRecipient()) != nil {
			return false
		}
		rc.Consents = append(rc.Consents, &throughcarev1.Consent{Category: req.GetCategory(), Recipient: req.GetRecipient(), GivenTime: timestamppb.New(s.now())})
		return true
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("consent recorded", zap.String("case_id", rc.GetCaseId()), zap.String("category", req.GetCategory().String()),
		zap.String("recipient", req.GetRecipient()), zap.String("actor", req.GetActor()))
	return &throughcarev1.RecordConsentResponse{ReleaseCase: rc}, nil
}

// WithdrawConsent withdraws a standing consent and tells the recipient, which purges the
// category from its copy and confirms with a receipt. Withdrawing again, after an error,
// tells the recipient again.
func (s *Server) WithdrawConsent(ctx context.Context, req *throughcarev1.WithdrawConsentRequest) (*throughcarev1.WithdrawConsentResponse, error) {
	var given bool
	rc, err := s.changeCase(ctx, req.GetCaseId(), func(rc *throughcarev1.ReleaseCase) bool {
		given = slices.ContainsFunc(rc.GetConsents(), func(c *throughcarev1.Consent) bool {
			return c.GetCategory() == req.GetCategory() && c.GetRecipient() == req.GetRecipient()
		})
		c := standingConsent(rc, req.GetCategory(), req.GetRecipient())
		if c == nil {
			return false
		}
		c.WithdrawnTime = timestamppb.New(s.now())
		return true
	})
	if err != nil {
		return nil, err
	}
	if !given {
		return nil, fmt.Errorf("release case %s has no consent to share %s with %s: %w", req.GetCaseId(), req.GetCategory(), req.GetRecipient(), fault.ErrFailedPrecondition)
	}
	told, err := s.handovers.WithdrawConsent(ctx, req.GetActor(), rc.GetCaseId(), req.GetRecipient(), []throughcarev1.DataCategory{req.GetCategory()})
	if err != nil {
		return nil, err
	}
	s.log.Info("consent withdrawn", zap.String("case_id", rc.GetCaseId()), zap.String("category", req.GetCategory().String()),
		zap.String("recipient", req.GetRecipient()), zap.Int("handovers_told", told), zap.String("actor", req.GetActor()))
	return &throughcarev1.WithdrawConsentResponse{ReleaseCase: rc}, nil
}

func standingConsent(rc *throughcarev1.ReleaseCase, category throughcarev1.DataCategory, recipient string) *throughcarev1.Consent {
	for _, c := range rc.GetConsents() {
		if c.GetCategory() == category && c.GetRecipient() == recipient && c.GetWithdrawnTime() == nil {
			return c
		}
	}
	return nil
}

// changeCase applies change to the current case and writes it if change reports a change,
// retrying when a concurrent write got there first. A closed case takes no changes.
func (s *Server) changeCase(ctx context.Context, caseID string, change func(*throughcarev1.ReleaseCase) bool) (*throughcarev1.ReleaseCase, error) {
	for {
		rc, err := s.cases.Get(ctx, caseID)
		if err != nil {
			return nil, err
		}
		if rc.GetState() == throughcarev1.CaseState_CASE_STATE_CLOSED {
			return nil, fmt.Errorf("release case %s is closed: %w", caseID, fault.ErrFailedPrecondition)
		}
		if !change(rc) {
			return rc, nil
		}
		rc.UpdateTime = timestamppb.New(s.now())
		updated, err := s.cases.Update(ctx, rc, rc.GetRevision())
		if errors.Is(err, fault.ErrConflict) {
			continue
		}
		return updated, err
	}
}
