// Package cases keeps one agency's release cases: the prison's originals, or the copies
// probation and social work were given. It turns storage errors into domain faults and
// owns listing with filters and page tokens.
package cases

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/records"
)

// DefaultPageSize is the page size when a request leaves it 0.
const DefaultPageSize = 50

// Store is one agency's release cases.
type Store struct {
	records *records.Store[*throughcarev1.ReleaseCase]
}

// Open opens the agency's bucket, creating it on first start.
func Open(ctx context.Context, js jetstream.JetStream, bucket string, opts ...records.Option) (*Store, error) {
	rs, err := records.Open(ctx, js, bucket, func() *throughcarev1.ReleaseCase { return new(throughcarev1.ReleaseCase) }, opts...)
	if err != nil {
		return nil, err
	}
	return &Store{records: rs}, nil
}

// Create stores a new case under its case_id and returns it with its revision.
func (s *Store) Create(ctx context.Context, rc *throughcarev1.ReleaseCase) (*throughcarev1.ReleaseCase, error) {
	rc.Revision = 0 // the revision lives in the store, not in the stored bytes
	rev, err := s.records.Create(ctx, rc.GetCaseId(), rc)
	if err != nil {
		return nil, domainError(rc.GetCaseId(), err)
	}
	rc.Revision = rev
	return rc, nil
}

// Get returns the case with its current revision.
func (s *Store) Get(ctx context.Context, caseID string) (*throughcarev1.ReleaseCase, error) {
	rc, rev, err := s.records.Get(ctx, caseID)
	if err != nil {
		return nil, domainError(caseID, err)
	}
	rc.Revision = rev
	return rc, nil
}

// Update replaces the case if it is still at expectedRevision, atomically; otherwise it
// changes nothing and returns fault.ErrConflict.
func (s *Store) Update(ctx context.Context, rc *throughcarev1.ReleaseCase, expectedRevision uint64) (*throughcarev1.ReleaseCase, error) {
	rc.Revision = 0
	rev, err := s.records.Update(ctx, rc.GetCaseId(), rc, expectedRevision)
	if err != nil {
		return nil, domainError(rc.GetCaseId(), err)
	}
	rc.Revision = rev
	return rc, nil
}

// Purge removes the case and its history if it is still at expectedRevision.
func (s *Store) Purge(ctx context.Context, caseID string, expectedRevision uint64) error {
	if err := s.records.Purge(ctx, caseID, expectedRevision); err != nil {
		return domainError(caseID, err)
	}
	return nil
}

// Filter narrows a listing; zero fields match everything.
type Filter struct {
	State        throughcarev1.CaseState
	ExpectedFrom *throughcarev1.Date
	ExpectedTo   *throughcarev1.Date
}

func (f Filter) matches(rc *throughcarev1.ReleaseCase) bool {
	if f.State != throughcarev1.CaseState_CASE_STATE_UNSPECIFIED && rc.GetState() != f.State {
		return false
	}
	if f.ExpectedFrom == nil && f.ExpectedTo == nil {
		return true
	}
	expected := rc.GetReleasePlan().GetExpectedReleaseDate()
	if expected == nil {
		return false
	}
	if f.ExpectedFrom != nil && CompareDates(expected, f.ExpectedFrom) < 0 {
		return false
	}
	return f.ExpectedTo == nil || CompareDates(expected, f.ExpectedTo) <= 0
}

// List returns up to pageSize matching cases in id order (which is creation order) after
// the position pageToken names, and the token of the next page, empty on the last one.
func (s *Store) List(ctx context.Context, f Filter, pageSize int32, pageToken string) ([]*throughcarev1.ReleaseCase, string, error) {
	after, err := records.DecodePageToken(pageToken)
	if err != nil {
		return nil, "", err
	}
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	var page []*throughcarev1.ReleaseCase
	var next string
	err = s.records.List(ctx, after, func(key string, rc *throughcarev1.ReleaseCase, rev uint64) (bool, error) {
		if !f.matches(rc) {
			return true, nil
		}
		if len(page) == int(pageSize) {
			// One more match exists: the page is full and is not the last.
			next = records.EncodePageToken(page[len(page)-1].GetCaseId())
			return false, nil
		}
		rc.Revision = rev
		page = append(page, rc)
		return true, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list cases: %w", err)
	}
	return page, next, nil
}

// CompareDates orders dates by calendar day.
func CompareDates(a, b *throughcarev1.Date) int {
	for _, d := range [][2]int32{{a.GetYear(), b.GetYear()}, {a.GetMonth(), b.GetMonth()}, {a.GetDay(), b.GetDay()}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// domainError names the case and turns storage errors into faults; other errors stay
// internal.
func domainError(caseID string, err error) error {
	switch {
	case errors.Is(err, records.ErrNotFound):
		return fmt.Errorf("release case %s: %w", caseID, fault.ErrNotFound)
	case errors.Is(err, records.ErrExists):
		return fmt.Errorf("release case %s: %w", caseID, fault.ErrAlreadyExists)
	case errors.Is(err, records.ErrRevisionMismatch):
		return fmt.Errorf("release case %s: %w; get it again and retry", caseID, fault.ErrConflict)
	case errors.Is(err, records.ErrInvalidKey):
		return fault.InvalidField("case_id", "is not a case id")
	}
	return fmt.Errorf("release case %s: %w", caseID, err)
}
