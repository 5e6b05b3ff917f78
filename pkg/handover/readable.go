package handover

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/ids"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/records"
)

// localCase is this agency's copy of the case an event is about, if it still has one.
func (s *Service) localCase(ctx context.Context, caseID string) (*throughcarev1.ReleaseCase, error) {
	rc, err := s.cases.Get(ctx, caseID)
	if errors.Is(err, fault.ErrNotFound) {
		return nil, nil
	}
	return rc, err
}

// Readable returns what this agency's system may read of its copies of cases: each cut
// down, as of now, under the rule of the latest handover that brought it (consent may have
// been withdrawn, or the protocol changed, since it arrived).
func (s *Service) Readable(ctx context.Context, copies ...*throughcarev1.ReleaseCase) ([]*throughcarev1.ReleaseCase, error) {
	latest, err := s.latestReceived(ctx, copies)
	if err != nil {
		return nil, err
	}
	out := make([]*throughcarev1.ReleaseCase, len(copies))
	for i, rc := range copies {
		rc = proto.CloneOf(rc)
		h, ok := latest[rc.GetCaseId()]
		if !ok {
			protocol.Purge(rc, protocol.AllCategories)
		} else if _, err := s.cfg.Protocol.Enforce(rc, h.GetSender(), s.cfg.Agency, h.GetPurpose(), rc.GetConsents()); errors.Is(err, protocol.ErrNoRule) {
			protocol.Purge(rc, protocol.AllCategories)
		} else if err != nil {
			return nil, err
		}
		out[i] = rc
	}
	return out, nil
}

// latestReceived is, for each case of copies, the last handover that brought it, read from
// the cases' index entries in one request and the handovers in another.
func (s *Service) latestReceived(ctx context.Context, copies []*throughcarev1.ReleaseCase) (map[string]*throughcarev1.Handover, error) {
	patterns := make([]string, 0, len(copies))
	for _, rc := range copies {
		if ids.Valid(rc.GetCaseId()) {
			patterns = append(patterns, "ix.case."+rc.GetCaseId()+".in.*")
		}
	}
	entries, err := s.handovers.Latest(ctx, patterns...)
	if err != nil {
		return nil, fmt.Errorf("handovers of %d cases: %w", len(copies), err)
	}
	// Handover ids sort by creation: the largest of a case is its latest.
	last := map[string]records.Entry{}
	for _, e := range entries {
		caseID := strings.Split(e.Key, ".")[2]
		if have, ok := last[caseID]; !ok || records.RecordOf(e.Key) > records.RecordOf(have.Key) {
			last[caseID] = e
		}
	}
	recs, err := s.getMany(ctx, slices.Collect(maps.Values(last)))
	if err != nil {
		return nil, fmt.Errorf("handovers of %d cases: %w", len(copies), err)
	}
	latest := make(map[string]*throughcarev1.Handover, len(recs))
	for _, rec := range recs {
		latest[rec.GetHandover().GetCaseId()] = rec.GetHandover()
	}
	return latest, nil
}
