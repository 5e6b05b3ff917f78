package cases

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
)

// Sharing is what a receiving agency needs of the handover protocol (package handover):
// what its system may read of the copies it holds, and sharing its plan back.
type Sharing interface {
	Readable(ctx context.Context, copies ...*throughcarev1.ReleaseCase) ([]*throughcarev1.ReleaseCase, error)
	SharePlan(ctx context.Context, actor, caseID string, plan *throughcarev1.PlanShared) error
}

// Copies are the cases a receiving agency (probation, social work) was sent: every read
// is cut down by the protocol as of now, and its plan goes back to the sender.
type Copies struct {
	store   *Store
	sharing Sharing
	now     func() time.Time
}

// NewCopies returns the copies in store.
func NewCopies(store *Store, sharing Sharing) *Copies {
	return &Copies{store: store, sharing: sharing, now: time.Now}
}

// Get returns what the agency's system may read of one copy.
func (c *Copies) Get(ctx context.Context, caseID string) (*throughcarev1.ReleaseCase, error) {
	rc, err := c.store.Get(ctx, caseID)
	if err != nil {
		return nil, err
	}
	return c.readable(ctx, rc)
}

// List returns a page of copies in the state (any when unset), each cut down as Get does.
func (c *Copies) List(ctx context.Context, state throughcarev1.CaseState, pageSize int32, pageToken string) ([]*throughcarev1.ReleaseCase, string, error) {
	page, next, err := c.store.List(ctx, Filter{State: state}, pageSize, pageToken)
	if err != nil {
		return nil, "", err
	}
	if page, err = c.sharing.Readable(ctx, page...); err != nil {
		return nil, "", err
	}
	return page, next, nil
}

// RecordPlan shares the agency's plan back along the accepted handover of the case, then
// keeps it on the copy. Recording it again replaces it and shares it again.
func (c *Copies) RecordPlan(ctx context.Context, actor, caseID string, plan *throughcarev1.PlanShared) (*throughcarev1.ReleaseCase, error) {
	rc, err := c.store.Get(ctx, caseID)
	if err != nil {
		return nil, err
	}
	// Sharing first: a case with no accepted handover is refused before anything changes.
	if err := c.sharing.SharePlan(ctx, actor, caseID, plan); err != nil {
		return nil, err
	}
	for {
		if p := plan.GetSupervisionPlan(); p != nil {
			rc.SupervisionPlan = p
		}
		if p := plan.GetAssistancePlan(); p != nil {
			rc.AssistancePlan = p
		}
		rc.UpdateTime = timestamppb.New(c.now())
		updated, err := c.store.Update(ctx, rc, rc.GetRevision())
		if errors.Is(err, fault.ErrConflict) {
			// An incoming event changed the case meanwhile: apply the plan to the new one.
			if rc, err = c.store.Get(ctx, caseID); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		return c.readable(ctx, updated)
	}
}

func (c *Copies) readable(ctx context.Context, rc *throughcarev1.ReleaseCase) (*throughcarev1.ReleaseCase, error) {
	readable, err := c.sharing.Readable(ctx, rc)
	if err != nil {
		return nil, err
	}
	return readable[0], nil
}
