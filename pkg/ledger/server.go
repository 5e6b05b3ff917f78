package ledger

import (
	"bytes"
	"context"
	"fmt"
	"strconv"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/records"
)

const (
	defaultPageSize = 50
	maxPageSize     = 500
)

// Server answers the AuditService from one agency's ledger.
type Server struct {
	throughcarev1.UnimplementedAuditServiceServer

	ledger   *Ledger
	person   PersonKey
	protocol func() *throughcarev1.SharingProtocol
}

var _ throughcarev1.AuditServiceServer = (*Server)(nil)

// NewServer serves l. person is the deployment's key that l's entries refer to people
// under. protocol returns the sharing protocol in force; it is called on every
// GetSharingProtocol, so a replaced protocol shows at once.
func NewServer(l *Ledger, person PersonKey, protocol func() *throughcarev1.SharingProtocol) *Server {
	return &Server{ledger: l, person: person, protocol: protocol}
}

// ListDisclosures lists the disclosures about one case, or about one person across their
// cases, oldest first.
func (s *Server) ListDisclosures(ctx context.Context, req *throughcarev1.ListDisclosuresRequest) (*throughcarev1.ListDisclosuresResponse, error) {
	var match func(*throughcarev1.Disclosure) bool
	var subjects []string
	switch caseID, prisonNumber := req.GetCaseId(), req.GetPrisonNumber(); {
	case caseID != "" && prisonNumber == "":
		match = func(d *throughcarev1.Disclosure) bool { return d.GetCaseId() == caseID }
		subjects = s.ledger.ByCase(caseID)
	case prisonNumber != "" && caseID == "":
		person := s.person.Hash(prisonNumber)
		match = func(d *throughcarev1.Disclosure) bool { return bytes.Equal(d.GetPersonHash(), person) }
		subjects = s.ledger.ByPerson(person)
	default:
		// protovalidate refuses this before it gets here; this guards other callers.
		return nil, fault.InvalidField("case_id", "set exactly one of case_id and prison_number")
	}
	after, err := decodePageToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	pageSize := int(req.GetPageSize())
	switch {
	case pageSize <= 0:
		pageSize = defaultPageSize
	case pageSize > maxPageSize:
		pageSize = maxPageSize
	}
	entries, lastSeq, more, err := s.ledger.List(ctx, subjects, match, after, pageSize)
	if err != nil {
		return nil, fmt.Errorf("list disclosures: %w", err)
	}
	resp := &throughcarev1.ListDisclosuresResponse{Disclosures: entries}
	if more {
		resp.NextPageToken = records.EncodePageToken(strconv.FormatUint(lastSeq, 10))
	}
	return resp, nil
}

// decodePageToken returns the sequence a page resumes after; 0 for the first page.
func decodePageToken(token string) (uint64, error) {
	key, err := records.DecodePageToken(token)
	if err != nil || key == "" {
		return 0, err
	}
	after, err := strconv.ParseUint(key, 10, 64)
	if err != nil {
		return 0, fault.InvalidField("page_token", "is not a token from a previous response")
	}
	return after, nil
}

// VerifyLedger checks the whole chain.
func (s *Server) VerifyLedger(ctx context.Context, _ *throughcarev1.VerifyLedgerRequest) (*throughcarev1.VerifyLedgerResponse, error) {
	resp, err := s.ledger.Verify(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify ledger: %w", err)
	}
	return resp, nil
}

// GetSharingProtocol returns the protocol in force.
func (s *Server) GetSharingProtocol(context.Context, *throughcarev1.GetSharingProtocolRequest) (*throughcarev1.GetSharingProtocolResponse, error) {
	protocol := s.protocol()
	if protocol == nil {
		return nil, fmt.Errorf("sharing protocol: %w: none is loaded", fault.ErrFailedPrecondition)
	}
	return &throughcarev1.GetSharingProtocolResponse{Protocol: protocol}, nil
}
