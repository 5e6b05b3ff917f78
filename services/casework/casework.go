// Package casework is the service every agency serves, whatever its role: referral of a
// case it holds to any agency a protocol rule lets it share with, and its copies of the
// cases referred to it. The probation and social-work services are here too: they serve
// the same copies, under their role's names, with the plan each shares back.
package casework

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/fault"
)

// Handovers is the part of the handover protocol this service calls.
type Handovers interface {
	cases.Sharing
	Refer(ctx context.Context, actor, caseID, recipient string, purpose throughcarev1.Purpose, requestID string) (*throughcarev1.Handover, []*throughcarev1.Withholding, error)
}

// Server implements throughcare.v1.CaseService for one agency.
type Server struct {
	throughcarev1.UnimplementedCaseServiceServer
	log       *zap.Logger
	agency    string
	handovers Handovers
	copies    *cases.Copies
}

var _ throughcarev1.CaseServiceServer = (*Server)(nil)

// New returns agency's case service over its case store and its side of the handovers.
func New(log *zap.Logger, agency string, store *cases.Store, handovers Handovers) *Server {
	return &Server{log: log, agency: agency, handovers: handovers, copies: cases.NewCopies(store, handovers)}
}

// ReferCase refers a case this agency holds, sharing what the protocol allows for the
// purpose; the response says what was held back and why.
func (s *Server) ReferCase(ctx context.Context, req *throughcarev1.ReferCaseRequest) (*throughcarev1.ReferCaseResponse, error) {
	h, withheld, err := s.handovers.Refer(ctx, req.GetActor(), req.GetCaseId(), req.GetRecipient(), req.GetPurpose(), req.GetRequestId())
	if err != nil {
		return nil, err
	}
	return &throughcarev1.ReferCaseResponse{Handover: h, WithheldCategories: h.GetWithheldCategories(), Withholdings: withheld}, nil
}

// GetReceivedCase returns what this agency's system may read of its copy of a case.
func (s *Server) GetReceivedCase(ctx context.Context, req *throughcarev1.GetReceivedCaseRequest) (*throughcarev1.GetReceivedCaseResponse, error) {
	rc, err := s.copies.Get(ctx, req.GetCaseId())
	if err != nil {
		return nil, err
	}
	if rc.GetOwner() == s.agency {
		// The agency's own case is not a copy: its role's service reads it.
		return nil, fmt.Errorf("release case %s was not referred to %s: %w", req.GetCaseId(), s.agency, fault.ErrNotFound)
	}
	return &throughcarev1.GetReceivedCaseResponse{ReleaseCase: rc}, nil
}

// ListReceivedCases returns a page of this agency's copies by case id order. Cases the
// agency opened itself are left out, so a page may hold fewer than page_size.
func (s *Server) ListReceivedCases(ctx context.Context, req *throughcarev1.ListReceivedCasesRequest) (*throughcarev1.ListReceivedCasesResponse, error) {
	page, next, err := s.copies.List(ctx, req.GetState(), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	received := page[:0]
	for _, rc := range page {
		if rc.GetOwner() != s.agency {
			received = append(received, rc)
		}
	}
	return &throughcarev1.ListReceivedCasesResponse{ReleaseCases: received, NextPageToken: next}, nil
}
