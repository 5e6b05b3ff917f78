package main

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"pgregory.net/rapid"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// TestIndexRebuildEqualsLiveIndex runs random journeys (cases opened, referred to
// probation or social work, acknowledged, accepted, declined, questioned and answered,
// released, deadlines checked) and then, at every agency, drops every index entry and
// derives them afresh from the records: the rebuilt index equals the one the writes kept.
func TestIndexRebuildEqualsLiveIndex(t *testing.T) {
	// Each check builds on the journeys before it (one system for all, as starting three
	// agencies per check would take most of the run), so rapid cannot shrink a failure to
	// a minimal journey: the failing steps are in its log. 20 checks unless asked otherwise.
	if f := flag.Lookup("rapid.checks"); f != nil && f.Value.String() == f.DefValue {
		_ = f.Value.Set("20")
		t.Cleanup(func() { _ = f.Value.Set(f.DefValue) })
	}
	sys := newSystem(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	recipients := map[string]throughcarev1.Purpose{
		probationAgency:  throughcarev1.Purpose_PURPOSE_SUPERVISION,
		socialWorkAgency: throughcarev1.Purpose_PURPOSE_POST_PENAL_ASSISTANCE,
	}
	var caseIDs []string
	type referral struct {
		id        string
		recipient string
	}
	var referrals []referral

	rapid.Check(t, func(rt *rapid.T) {
		steps := rapid.IntRange(1, 12).Draw(rt, "steps")
		for range steps {
			// A refused step (accepting what was declined, say) is part of a random
			// journey: only an error the protocol does not explain fails it.
			var err error
			switch action := rapid.IntRange(0, 7).Draw(rt, "action"); {
			case action == 0 || len(caseIDs) == 0:
				var rc *throughcarev1.ReleaseCase
				if rc, err = tryOpenCase(ctx, sys.Prison, len(caseIDs)); err == nil {
					caseIDs = append(caseIDs, rc.GetCaseId())
				}
			case action == 1 || len(referrals) == 0:
				caseID := rapid.SampledFrom(caseIDs).Draw(rt, "case")
				to := rapid.SampledFrom([]string{probationAgency, socialWorkAgency}).Draw(rt, "recipient")
				var resp *throughcarev1.ReferCaseResponse
				resp, err = sys.Cases[prisonAgency].ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: caseID, Recipient: to, Purpose: recipients[to]})
				if err == nil {
					id := resp.GetHandover().GetHandoverId()
					referrals = append(referrals, referral{id, to})
					waitState(t, sys.Handovers[prisonAgency], id, stateDelivered)
				}
			default:
				r := rapid.SampledFrom(referrals).Draw(rt, "handover")
				at := sys.Handovers[r.recipient]
				switch action {
				case 2:
					_, err = at.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: "worker", HandoverId: r.id})
				case 3:
					_, err = at.AcceptHandover(ctx, &throughcarev1.AcceptHandoverRequest{Actor: "worker", HandoverId: r.id, AssignedWorker: "worker"})
				case 4:
					_, err = at.DeclineHandover(ctx, &throughcarev1.DeclineHandoverRequest{Actor: "worker", HandoverId: r.id, Reason: throughcarev1.DeclineReason_DECLINE_REASON_OUT_OF_AREA})
				case 5:
					_, err = at.RequestInformation(ctx, &throughcarev1.RequestInformationRequest{Actor: "worker", HandoverId: r.id, Question: "Which hostel?"})
				case 6:
					err = answerOpenQuestions(ctx, sys, r.id)
				case 7:
					caseID := rapid.SampledFrom(caseIDs).Draw(rt, "case")
					_, err = sys.Prison.RecordRelease(ctx, &throughcarev1.RecordReleaseRequest{Actor: "prison-worker-1", CaseId: caseID, Release: &throughcarev1.Release{
						ActualReleaseDate: date(time.Now()), ReleaseAddress: &throughcarev1.Address{Lines: []string{"Hostel"}, Locality: "Ljubljana", CountryCode: "SI"},
					}})
				}
			}
			switch status.Code(err) {
			case codes.OK, codes.FailedPrecondition, codes.NotFound:
			default:
				rt.Fatalf("step: %v", err)
			}
		}
		// Let every receipt reach the prison before comparing.
		for _, r := range referrals {
			eventually(t, crossAgencyWait, func() (bool, string) {
				sent := getHandover(t, sys.Handovers[prisonAgency], r.id).GetHandover()
				got := getHandover(t, sys.Handovers[r.recipient], r.id).GetHandover()
				return sent.GetState() == got.GetState() && len(sent.GetReceipts()) == len(got.GetReceipts()),
					fmt.Sprintf("handover %s: prison sees %s, %s has %s", r.id, sent.GetState(), r.recipient, got.GetState())
			})
		}
		for _, agency := range allAgencies {
			svc := sys.service(agency)
			if err := svc.CheckDeadlines(ctx); err != nil {
				rt.Fatalf("%s deadlines: %v", agency, err)
			}
			live, err := svc.IndexEntries(ctx)
			if err != nil {
				rt.Fatalf("%s index: %v", agency, err)
			}
			if err := svc.RebuildIndexes(ctx); err != nil {
				rt.Fatalf("%s rebuild: %v", agency, err)
			}
			rebuilt, err := svc.IndexEntries(ctx)
			if err != nil {
				rt.Fatalf("%s index: %v", agency, err)
			}
			if !slices.Equal(live, rebuilt) {
				rt.Fatalf("%s: live index differs from the rebuilt one\nlive    %v\nrebuilt %v", agency, live, rebuilt)
			}
			if agency == prisonAgency && len(live) < 2*len(caseIDs) {
				rt.Fatalf("prison index holds %d entries for %d cases: want at least two a case", len(live), len(caseIDs))
			}
		}
	})
}

// answerOpenQuestions answers, as the prison, every open question on a handover.
func answerOpenQuestions(ctx context.Context, sys *system, handoverID string) error {
	resp, err := sys.Handovers[prisonAgency].GetHandover(ctx, &throughcarev1.GetHandoverRequest{HandoverId: handoverID})
	if err != nil {
		return err
	}
	for _, q := range resp.GetHandover().GetInformationRequests() {
		if q.GetAnswerTime() == nil {
			if _, err := sys.Handovers[prisonAgency].ProvideInformation(ctx, &throughcarev1.ProvideInformationRequest{Actor: "prison-worker-1", HandoverId: handoverID, RequestId: q.GetRequestId(), Answer: "Hostel Celica."}); err != nil {
				return err
			}
		}
	}
	return nil
}
