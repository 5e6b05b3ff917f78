// Package cases keeps one agency's release cases: the prison's originals, or the copies
// probation and social work were given. It turns storage errors into domain faults and
// owns listing with filters and page tokens.
package cases

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/records"
)

// DefaultPageSize is the page size when a request leaves it 0.
const DefaultPageSize = 50

// Store is one agency's release cases.
type Store struct {
	records *records.Store[*throughcarev1.ReleaseCase]
	index   *records.Index[*throughcarev1.ReleaseCase]
	log     *zap.Logger
}

// Open opens the agency's bucket, creating it on first start. The bucket erases what it
// removes (records.WithErasure): each update erases the revision it supersedes, and Purge
// every revision, so a copy cut down or removed leaves no bytes in the store.
func Open(ctx context.Context, log *zap.Logger, js jetstream.JetStream, bucket string, opts ...records.Option) (*Store, error) {
	opts = append(opts, records.WithErasure())
	rs, err := records.Open(ctx, js, bucket, func() *throughcarev1.ReleaseCase { return new(throughcarev1.ReleaseCase) }, opts...)
	if err != nil {
		return nil, err
	}
	return &Store{records: rs, index: records.NewIndex(rs, indexKeys), log: log}, nil
}

// Each case has index entries beside it in its bucket, derived from the case alone and put
// in place after each write (records.Index), so listings read only what they return:
//
//	ix.all.<case>                        every case, in creation order
//	ix.state.<state>.<case>              by state
//	ix.release.<yyyy>.<mm>.<dd>.<case>   by expected release date
func indexKeys(rc *throughcarev1.ReleaseCase) []string {
	id := rc.GetCaseId()
	keys := []string{"ix.all." + id, "ix.state." + stateToken(rc.GetState()) + "." + id}
	if d := rc.GetReleasePlan().GetExpectedReleaseDate(); d != nil {
		keys = append(keys, fmt.Sprintf("ix.release.%04d.%02d.%02d.%s", d.GetYear(), d.GetMonth(), d.GetDay(), id))
	}
	return keys
}

func stateToken(st throughcarev1.CaseState) string {
	return strings.ToLower(strings.TrimPrefix(st.String(), "CASE_STATE_"))
}

// ChangeStream names the stream of the bucket's writes and the subject prefix of its keys,
// for FollowChange.
func (s *Store) ChangeStream() (stream, keyPrefix string) { return s.records.ChangeStream() }

// FollowChange puts the index entries of the case a message of the change stream wrote in
// place (records.Index.Follow): a write applies them itself, so this mends only a crash
// in between.
func (s *Store) FollowChange(ctx context.Context, msg jetstream.Msg) error {
	return s.index.Follow(ctx, msg, eventbus.Later)
}

// Index is the cases' index, for building it at start and for checks.
func (s *Store) Index() *records.Index[*throughcarev1.ReleaseCase] { return s.index }

// applyIndex puts the index entries of a case just written in place. The write stands
// either way: FollowChange mends what this could not do.
func (s *Store) applyIndex(ctx context.Context, rc *throughcarev1.ReleaseCase) {
	if err := s.index.ApplyWritten(ctx, rc.GetCaseId(), rc, rc.GetRevision()); err != nil {
		s.log.Warn("case index not updated with the write; its follower will", zap.String("case_id", rc.GetCaseId()), zap.Error(err))
	}
}

// Create stores a new case under its case_id and returns it with its revision.
func (s *Store) Create(ctx context.Context, rc *throughcarev1.ReleaseCase) (*throughcarev1.ReleaseCase, error) {
	rc.Revision = 0 // the revision lives in the store, not in the stored bytes
	rev, err := s.records.Create(ctx, rc.GetCaseId(), rc)
	if err != nil {
		return nil, domainError(rc.GetCaseId(), err)
	}
	rc.Revision = rev
	s.applyIndex(ctx, rc)
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
	if errors.Is(err, records.ErrNotErased) {
		// The update stands; the next write of the case erases what this one left.
		s.log.Warn("case updated, but the revision it replaced is not yet erased", zap.String("case_id", rc.GetCaseId()), zap.Error(err))
		err = nil
	}
	if err != nil {
		return nil, domainError(rc.GetCaseId(), err)
	}
	rc.Revision = rev
	s.applyIndex(ctx, rc)
	return rc, nil
}

// EraseHistory erases every revision of the case but the current one: for a change that
// must leave nothing behind (consent withdrawn), whose own erasure may have failed.
func (s *Store) EraseHistory(ctx context.Context, caseID string) error {
	_, rev, err := s.records.Get(ctx, caseID)
	if errors.Is(err, records.ErrNotFound) {
		rev = math.MaxUint64 // removed: erase whatever is left
	} else if err != nil {
		return domainError(caseID, err)
	}
	if err := s.records.EraseBefore(ctx, caseID, rev, 0); err != nil {
		return domainError(caseID, err)
	}
	return nil
}

// Purge removes the case, its history and its index entries if it is still at
// expectedRevision.
func (s *Store) Purge(ctx context.Context, caseID string, expectedRevision uint64) error {
	if err := s.records.Purge(ctx, caseID, expectedRevision); err != nil {
		return domainError(caseID, err)
	}
	if err := s.index.Apply(ctx, caseID); err != nil {
		s.log.Warn("case index not updated with the removal; its follower will", zap.String("case_id", caseID), zap.Error(err))
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

// patterns are the index entries a listing reads: the narrowest index the filter allows.
func (f Filter) patterns() []string {
	if f.ExpectedFrom == nil && f.ExpectedTo == nil {
		if f.State != throughcarev1.CaseState_CASE_STATE_UNSPECIFIED {
			return []string{"ix.state." + stateToken(f.State) + ".*"}
		}
		return []string{"ix.all.*"}
	}
	from, to := f.ExpectedFrom.GetYear(), f.ExpectedTo.GetYear()
	if f.ExpectedFrom == nil || f.ExpectedTo == nil || to-from >= maxYearsByYear {
		return []string{"ix.release.>"}
	}
	var out []string
	for y := from; y <= to; y++ {
		out = append(out, fmt.Sprintf("ix.release.%04d.>", y))
	}
	return out
}

// maxYearsByYear is the widest date range read one year's index at a time; a wider or
// open range reads the whole date index in order, a page at a time.
const maxYearsByYear = 5

// List returns up to pageSize matching cases after the position pageToken names, and the
// token of the next page, empty on the last one. Cases come in the order of the index
// entry read: creation order, or the order they entered their state or got their date. A
// page whose matches are sparse may come back short with a token (records.Matching).
func (s *Store) List(ctx context.Context, f Filter, pageSize int32, pageToken string) ([]*throughcarev1.ReleaseCase, string, error) {
	after, err := records.DecodeRevisionToken(pageToken)
	if err != nil {
		return nil, "", err
	}
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	found := map[string]records.Record[*throughcarev1.ReleaseCase]{}
	entries, resume, err := s.records.Matching(ctx, f.patterns(), false, after, int(pageSize), func(ctx context.Context, entries []records.Entry) ([]records.Entry, error) {
		ids := make([]string, len(entries))
		for i, e := range entries {
			ids[i] = records.RecordOf(e.Key)
		}
		recs, err := s.records.GetMany(ctx, ids...)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			found[r.Key] = r
		}
		var matching []records.Entry
		for _, e := range entries {
			// A case removed meanwhile, or outside the filter's other conditions, is skipped.
			if r, ok := found[records.RecordOf(e.Key)]; ok && f.matches(r.Msg) {
				matching = append(matching, e)
			}
		}
		return matching, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list cases: %w", err)
	}
	page := make([]*throughcarev1.ReleaseCase, len(entries))
	for i, e := range entries {
		r := found[records.RecordOf(e.Key)]
		r.Msg.Revision = r.Revision
		page[i] = r.Msg
	}
	var next string
	if resume != 0 {
		next = records.EncodeRevisionToken(resume)
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
