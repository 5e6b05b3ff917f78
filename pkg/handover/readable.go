package handover

import (
	"context"
	"errors"
	"fmt"
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
	return s.readable(ctx, nil, copies...)
}

// readable is Readable with a handover already in hand: where it is its case's latest, the
// copy is judged under it rather than reading it again (its sender and purpose never change).
func (s *Service) readable(ctx context.Context, inHand *throughcarev1.Handover, copies ...*throughcarev1.ReleaseCase) ([]*throughcarev1.ReleaseCase, error) {
	latest, err := s.latestReceived(ctx, copies, inHand)
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
// the cases' index entries in one request and the handovers, but inHand, in another.
func (s *Service) latestReceived(ctx context.Context, copies []*throughcarev1.ReleaseCase, inHand *throughcarev1.Handover) (map[string]*throughcarev1.Handover, error) {
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
	latest := make(map[string]*throughcarev1.Handover, len(last))
	var unread []records.Entry
	for caseID, e := range last {
		if inHand != nil && records.RecordOf(e.Key) == inHand.GetHandoverId() {
			latest[caseID] = inHand
		} else {
			unread = append(unread, e)
		}
	}
	recs, err := s.getMany(ctx, unread)
	if err != nil {
		return nil, fmt.Errorf("handovers of %d cases: %w", len(copies), err)
	}
	for _, rec := range recs {
		latest[rec.GetHandover().GetCaseId()] = rec.GetHandover()
	}
	return latest, nil
}
