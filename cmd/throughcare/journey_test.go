package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zapcore"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/handover"
	"github.com/throughcare/throughcare/pkg/ids"
)

// TestJourneyOfOneRelease follows one release through all three services: referral to
// probation and social work, every receipt, a question and its answer, acceptance, the
// release and the plans that come back.
func TestJourneyOfOneRelease(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	prisonH, probationH, socialH := sys.Handovers[prisonAgency], sys.Handovers[probationAgency], sys.Handovers[socialWorkAgency]

	rc := openCase(t, sys.Prison)
	toProbation := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION)
	toSocial := refer(t, sys, rc.GetCaseId(), socialWorkAgency, throughcarev1.Purpose_PURPOSE_POST_PENAL_ASSISTANCE)
	if toProbation.GetHandoverId() == toSocial.GetHandoverId() {
		t.Fatalf("two referrals got the same handover id %s", toProbation.GetHandoverId())
	}
	// The protocol lets probation have every category the prison holds; social work gets
	// no sentence, behaviour, risk or extremism assessment, and health and substance use
	// only with consent, which this person has not given.
	if got := toProbation.GetWithheldCategories(); len(got) != 0 {
		t.Errorf("withheld from probation: got %v, want nothing", got)
	}
	wantWithheld := []throughcarev1.DataCategory{
		throughcarev1.DataCategory_DATA_CATEGORY_LEGAL, throughcarev1.DataCategory_DATA_CATEGORY_HEALTH, throughcarev1.DataCategory_DATA_CATEGORY_SUBSTANCE_USE,
		throughcarev1.DataCategory_DATA_CATEGORY_BEHAVIOUR, throughcarev1.DataCategory_DATA_CATEGORY_RISK, throughcarev1.DataCategory_DATA_CATEGORY_EXTREMISM_RISK,
	}
	if got := slices.Sorted(slices.Values(toSocial.GetWithheldCategories())); !slices.Equal(got, wantWithheld) {
		t.Errorf("withheld from social work: got %v, want %v", got, wantWithheld)
	}
	wantAcceptDue := time.Now().AddDate(0, 0, 120).Add(-handover.DefaultConfig(prisonAgency).AcceptBeforeRelease)
	if got := toProbation.GetAcceptDueTime().AsTime(); got.Sub(wantAcceptDue).Abs() > 48*time.Hour {
		t.Errorf("accept due: got %v, want about %v (14 days before the expected release)", got, wantAcceptDue)
	}

	// Delivered: the sender's view follows the recipients' delivered receipts.
	for _, h := range []*throughcarev1.Handover{toProbation, toSocial} {
		got := waitState(t, prisonH, h.GetHandoverId(), stateDelivered)
		checkReceipts(t, "prison after delivery", got, receiptDelivered)
		if got.GetAcknowledgeDueTime() == nil {
			t.Errorf("prison: handover %s delivered without an acknowledge due time", h.GetHandoverId())
		}
	}

	// Retrieved: the recipients' systems list their incoming handovers.
	for _, r := range []struct {
		client throughcarev1.HandoverServiceClient
		h      *throughcarev1.Handover
	}{{probationH, toProbation}, {socialH, toSocial}} {
		list := listAll(t, r.client, &throughcarev1.ListHandoversRequest{Direction: incoming})
		if len(list) != 1 || list[0].GetHandoverId() != r.h.GetHandoverId() || list[0].GetState() != stateRetrieved {
			t.Fatalf("%s incoming: got %v, want only %s RETRIEVED", r.h.GetRecipient(), list, r.h.GetHandoverId())
		}
		if out := listAll(t, r.client, &throughcarev1.ListHandoversRequest{Direction: outgoing}); len(out) != 0 {
			t.Errorf("%s outgoing: got %d handovers, want none", r.h.GetRecipient(), len(out))
		}
		waitState(t, prisonH, r.h.GetHandoverId(), stateRetrieved)
	}

	// The recipient sees the case as the prison shared it.
	got := getHandover(t, probationH, toProbation.GetHandoverId())
	if got.GetReleaseCase().GetCaseId() != rc.GetCaseId() || got.GetReleaseCase().GetPerson().GetFamilyName() != "Kovač" ||
		!proto.Equal(got.GetReleaseCase().GetReleasePlan().GetExpectedReleaseDate(), rc.GetReleasePlan().GetExpectedReleaseDate()) {
		t.Errorf("probation's copy of the case: got %v, want case %s as the prison opened it", got.GetReleaseCase(), rc.GetCaseId())
	}

	socialCopy := getHandover(t, socialH, toSocial.GetHandoverId()).GetReleaseCase()
	if socialCopy.GetPerson().GetFamilyName() != "Kovač" || socialCopy.GetAccommodation() == nil {
		t.Errorf("social work's copy: got %v, want identity and accommodation", socialCopy)
	}
	if socialCopy.GetSentence() != nil || socialCopy.GetHealth() != nil || socialCopy.GetSubstanceUse() != nil || socialCopy.GetBehaviour() != nil ||
		socialCopy.GetRisk() != nil || socialCopy.GetExtremism() != nil {
		t.Errorf("social work's copy holds withheld categories: %v", socialCopy)
	}

	// Probation acknowledges and asks a question; the prison answers it.
	if _, err := probationH.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: "po-marko", HandoverId: toProbation.GetHandoverId()}); err != nil {
		t.Fatalf("probation acknowledge: %v", err)
	}
	const question, answer = "Is the hostel place confirmed for the release date?", "Yes, confirmed by the hostel for the release date."
	asked, err := probationH.RequestInformation(ctx, &throughcarev1.RequestInformationRequest{Actor: "po-marko", HandoverId: toProbation.GetHandoverId(), Question: question})
	if err != nil {
		t.Fatalf("request information: %v", err)
	}
	if asked.GetHandover().GetState() != stateInfoReq || len(asked.GetHandover().GetInformationRequests()) != 1 {
		t.Fatalf("after the question probation has %v, want INFORMATION_REQUESTED with one question", asked.GetHandover())
	}
	requestID := asked.GetHandover().GetInformationRequests()[0].GetRequestId()
	atPrison := waitState(t, prisonH, toProbation.GetHandoverId(), stateInfoReq)
	if qs := atPrison.GetInformationRequests(); len(qs) != 1 || qs[0].GetRequestId() != requestID || qs[0].GetQuestion() != question {
		t.Fatalf("prison's questions: got %v, want %s %q", qs, requestID, question)
	}
	if _, err := prisonH.ProvideInformation(ctx, &throughcarev1.ProvideInformationRequest{Actor: "prison-worker-1", HandoverId: toProbation.GetHandoverId(), RequestId: requestID, Answer: answer}); err != nil {
		t.Fatalf("provide information: %v", err)
	}
	atProbation := waitState(t, probationH, toProbation.GetHandoverId(), stateAcknowledged)
	if qs := atProbation.GetInformationRequests(); len(qs) != 1 || qs[0].GetAnswer() != answer || qs[0].GetAnswerTime() == nil {
		t.Errorf("probation's questions after the answer: got %v, want the answer %q", qs, answer)
	}
	if _, err := probationH.AcceptHandover(ctx, &throughcarev1.AcceptHandoverRequest{Actor: "po-marko", HandoverId: toProbation.GetHandoverId(), AssignedWorker: "po-marko"}); err != nil {
		t.Fatalf("probation accept: %v", err)
	}

	// Social work acknowledges and accepts straight away.
	if _, err := socialH.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: "sw-eva", HandoverId: toSocial.GetHandoverId()}); err != nil {
		t.Fatalf("social work acknowledge: %v", err)
	}
	if _, err := socialH.AcceptHandover(ctx, &throughcarev1.AcceptHandoverRequest{Actor: "sw-eva", HandoverId: toSocial.GetHandoverId(), AssignedWorker: "sw-eva"}); err != nil {
		t.Fatalf("social work accept: %v", err)
	}

	// The prison sees both accepted, every receipt once and in order.
	atPrison = waitState(t, prisonH, toProbation.GetHandoverId(), stateAccepted)
	checkReceipts(t, "prison, probation's receipts", atPrison, receiptDelivered, receiptRetrieved, receiptAcknowledged, receiptInfoReq, receiptInfoProvided, receiptAccepted)
	if atPrison.GetAssignedWorker() != "po-marko" {
		t.Errorf("prison: assigned worker for probation: got %q, want po-marko", atPrison.GetAssignedWorker())
	}
	if qs := atPrison.GetInformationRequests(); len(qs) != 1 || qs[0].GetAnswer() != answer {
		t.Errorf("prison's questions: got %v, want one answered %q", qs, answer)
	}
	atPrison = waitState(t, prisonH, toSocial.GetHandoverId(), stateAccepted)
	checkReceipts(t, "prison, social work's receipts", atPrison, receiptDelivered, receiptRetrieved, receiptAcknowledged, receiptAccepted)
	if atPrison.GetAssignedWorker() != "sw-eva" {
		t.Errorf("prison: assigned worker for social work: got %q, want sw-eva", atPrison.GetAssignedWorker())
	}
	// Both views agree on the receipts.
	for _, r := range []struct {
		client throughcarev1.HandoverServiceClient
		id     string
	}{{probationH, toProbation.GetHandoverId()}, {socialH, toSocial.GetHandoverId()}} {
		mine, theirs := getHandover(t, r.client, r.id).GetHandover(), getHandover(t, prisonH, r.id).GetHandover()
		if !slices.EqualFunc(mine.GetReceipts(), theirs.GetReceipts(), func(a, b *throughcarev1.Receipt) bool { return proto.Equal(a, b) }) {
			t.Errorf("handover %s receipts: recipient has %v, sender has %v; want the same", r.id, mine.GetReceipts(), theirs.GetReceipts())
		}
	}

	// The release reaches both accepting agencies.
	released := date(time.Now())
	rel, err := sys.Prison.RecordRelease(ctx, &throughcarev1.RecordReleaseRequest{Actor: "prison-worker-1", CaseId: rc.GetCaseId(), Release: &throughcarev1.Release{
		ActualReleaseDate: released, ReleaseAddress: &throughcarev1.Address{Lines: []string{"Hostel Celica"}, Locality: "Ljubljana", CountryCode: "SI"},
	}})
	if err != nil {
		t.Fatalf("record release: %v", err)
	}
	if rel.GetReleaseCase().GetState() != throughcarev1.CaseState_CASE_STATE_RELEASED {
		t.Errorf("prison's case after release: got %s, want RELEASED", rel.GetReleaseCase().GetState())
	}
	for name, get := range map[string]func() (*throughcarev1.ReleaseCase, error){
		"probation": func() (*throughcarev1.ReleaseCase, error) {
			r, err := sys.Probation.GetSupervisionCase(ctx, &throughcarev1.GetSupervisionCaseRequest{CaseId: rc.GetCaseId()})
			return r.GetReleaseCase(), err
		},
		"social work": func() (*throughcarev1.ReleaseCase, error) {
			r, err := sys.SocialWork.GetAssistanceCase(ctx, &throughcarev1.GetAssistanceCaseRequest{CaseId: rc.GetCaseId()})
			return r.GetReleaseCase(), err
		},
	} {
		eventually(t, 20*time.Second, func() (bool, string) {
			c, err := get()
			ok := err == nil && c.GetState() == throughcarev1.CaseState_CASE_STATE_RELEASED && proto.Equal(c.GetReleasePlan().GetActualReleaseDate(), released)
			return ok, fmt.Sprintf("%s's copy: got state %s, actual release %v, err %v; want RELEASED on %v", name, c.GetState(), c.GetReleasePlan().GetActualReleaseDate(), err, released)
		})
	}

	// The plans flow back to the prison.
	supervision := &throughcarev1.SupervisionPlan{Officer: "po-marko", LicenceConditions: []string{"Reside at the approved address", "Report weekly"}, ReportingIntervalDays: 7, Summary: "Weekly reporting for the first three months"}
	if _, err := sys.Probation.RecordSupervisionPlan(ctx, &throughcarev1.RecordSupervisionPlanRequest{Actor: "po-marko", CaseId: rc.GetCaseId(), SupervisionPlan: supervision}); err != nil {
		t.Fatalf("record supervision plan: %v", err)
	}
	assistance := &throughcarev1.AssistancePlan{Worker: "sw-eva", Services: []string{"Housing support", "Help with the ID card"}, Summary: "Fortnightly visits"}
	if _, err := sys.SocialWork.RecordAssistancePlan(ctx, &throughcarev1.RecordAssistancePlanRequest{Actor: "sw-eva", CaseId: rc.GetCaseId(), AssistancePlan: assistance}); err != nil {
		t.Fatalf("record assistance plan: %v", err)
	}
	eventually(t, 20*time.Second, func() (bool, string) {
		resp, err := sys.Prison.GetReleaseCase(ctx, &throughcarev1.GetReleaseCaseRequest{CaseId: rc.GetCaseId()})
		c := resp.GetReleaseCase()
		ok := err == nil && proto.Equal(c.GetSupervisionPlan(), supervision) && proto.Equal(c.GetAssistancePlan(), assistance)
		return ok, fmt.Sprintf("prison's case: got supervision %v, assistance %v, err %v; want both plans", c.GetSupervisionPlan(), c.GetAssistancePlan(), err)
	})
	if dl := listDeadLetters(t, sys); len(dl) != 0 {
		t.Errorf("dead letters after a clean journey: got %v, want none", dl)
	}
}

// listDeadLetters lists every agency's dead letters.
func listDeadLetters(t testing.TB, sys *system) []*throughcarev1.DeadLetter {
	t.Helper()
	var all []*throughcarev1.DeadLetter
	for _, a := range allAgencies {
		resp, err := sys.Handovers[a].ListDeadLetters(testCtx(t), &throughcarev1.ListDeadLettersRequest{PageSize: 500})
		if err != nil {
			t.Fatalf("%s dead letters: %v", a, err)
		}
		all = append(all, resp.GetDeadLetters()...)
	}
	return all
}

// TestJourneyDeclineAndIllegalSteps declines a handover with a reason, and checks that
// steps the state does not allow are refused with FailedPrecondition and change nothing.
func TestJourneyDeclineAndIllegalSteps(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	prisonH, probationH := sys.Handovers[prisonAgency], sys.Handovers[probationAgency]
	rc := openCase(t, sys.Prison)
	h := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION)
	id := h.GetHandoverId()
	waitState(t, prisonH, id, stateDelivered)
	retrieved := getHandover(t, probationH, id).GetHandover() // the first read retrieves it
	waitState(t, prisonH, id, stateRetrieved)
	senderBefore := getHandover(t, prisonH, id).GetHandover()

	illegal := []struct {
		name   string
		client throughcarev1.HandoverServiceClient
		call   func() error
	}{
		{"accept before acknowledge", probationH, func() error {
			_, err := probationH.AcceptHandover(ctx, &throughcarev1.AcceptHandoverRequest{Actor: "po-marko", HandoverId: id, AssignedWorker: "po-marko"})
			return err
		}},
		{"decline before acknowledge", probationH, func() error {
			_, err := probationH.DeclineHandover(ctx, &throughcarev1.DeclineHandoverRequest{Actor: "po-marko", HandoverId: id, Reason: throughcarev1.DeclineReason_DECLINE_REASON_OTHER})
			return err
		}},
		{"question before acknowledge", probationH, func() error {
			_, err := probationH.RequestInformation(ctx, &throughcarev1.RequestInformationRequest{Actor: "po-marko", HandoverId: id, Question: "Why?"})
			return err
		}},
		{"sender acknowledges its own referral", prisonH, func() error {
			_, err := prisonH.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: "prison-worker-1", HandoverId: id})
			return err
		}},
		{"sender accepts its own referral", prisonH, func() error {
			_, err := prisonH.AcceptHandover(ctx, &throughcarev1.AcceptHandoverRequest{Actor: "prison-worker-1", HandoverId: id, AssignedWorker: "x"})
			return err
		}},
		{"recipient answers a question", probationH, func() error {
			_, err := probationH.ProvideInformation(ctx, &throughcarev1.ProvideInformationRequest{Actor: "po-marko", HandoverId: id, RequestId: "rq_00000000000000000000000000", Answer: "x"})
			return err
		}},
	}
	for _, tc := range illegal {
		if err := tc.call(); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: got %v, want FailedPrecondition", tc.name, err)
		}
	}
	if after := getHandover(t, probationH, id).GetHandover(); !proto.Equal(after, retrieved) {
		t.Errorf("recipient after refused steps: got revision %d %v, want unchanged revision %d %v", after.GetRevision(), receiptTypes(after), retrieved.GetRevision(), receiptTypes(retrieved))
	}
	if after := getHandover(t, prisonH, id).GetHandover(); !proto.Equal(after, senderBefore) {
		t.Errorf("sender after refused steps: got revision %d, want unchanged revision %d", after.GetRevision(), senderBefore.GetRevision())
	}

	// Decline with a reason: the sender learns it, and nothing more is allowed.
	if _, err := probationH.AcknowledgeHandover(ctx, &throughcarev1.AcknowledgeHandoverRequest{Actor: "po-marko", HandoverId: id}); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	const note = "The release address is outside our area; refer to the Maribor office."
	if _, err := probationH.DeclineHandover(ctx, &throughcarev1.DeclineHandoverRequest{Actor: "po-marko", HandoverId: id, Reason: throughcarev1.DeclineReason_DECLINE_REASON_OUT_OF_AREA, Note: note}); err != nil {
		t.Fatalf("decline: %v", err)
	}
	atPrison := waitState(t, prisonH, id, stateDeclined)
	// A refused step issued no receipt: the sender has exactly the legal ones.
	checkReceipts(t, "prison after decline", atPrison, receiptDelivered, receiptRetrieved, receiptAcknowledged, receiptDeclined)
	if atPrison.GetDeclineReason() != throughcarev1.DeclineReason_DECLINE_REASON_OUT_OF_AREA || atPrison.GetDeclineNote() != note {
		t.Errorf("prison: decline reason %s, note %q; want OUT_OF_AREA, %q", atPrison.GetDeclineReason(), atPrison.GetDeclineNote(), note)
	}
	declined := getHandover(t, probationH, id).GetHandover()
	if _, err := probationH.AcceptHandover(ctx, &throughcarev1.AcceptHandoverRequest{Actor: "po-marko", HandoverId: id, AssignedWorker: "po-marko"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("accept after decline: got %v, want FailedPrecondition", err)
	}
	if after := getHandover(t, probationH, id).GetHandover(); after.GetRevision() != declined.GetRevision() || after.GetState() != stateDeclined {
		t.Errorf("after a refused accept: got %s revision %d, want DECLINED revision %d", after.GetState(), after.GetRevision(), declined.GetRevision())
	}
	// A release reaches only agencies that accepted: probation declined, so it is told
	// nothing and sharing a plan along the declined handover is refused.
	if _, err := sys.Probation.RecordSupervisionPlan(ctx, &throughcarev1.RecordSupervisionPlanRequest{Actor: "po-marko", CaseId: rc.GetCaseId(), SupervisionPlan: &throughcarev1.SupervisionPlan{Officer: "po-marko"}}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("supervision plan on a declined case: got %v, want FailedPrecondition", err)
	}
}

// openCases opens n full cases at the prison, up to 64 at once.
func openCases(t testing.TB, sys *system, n int) []*throughcarev1.ReleaseCase {
	t.Helper()
	ctx := testCtx(t)
	cases := make([]*throughcarev1.ReleaseCase, n)
	if err := parallel(n, 64, func(i int) (err error) {
		cases[i], err = tryOpenCase(ctx, sys.Prison, i)
		return err
	}); err != nil {
		t.Fatalf("open %d cases: %v", n, err)
	}
	return cases
}

// referAll refers every case to recipient, up to workers at once, and returns the
// handover ids in case order.
func referAll(t testing.TB, sys *system, cases []*throughcarev1.ReleaseCase, recipient string, workers int) []string {
	t.Helper()
	ctx := testCtx(t)
	purpose := throughcarev1.Purpose_PURPOSE_SUPERVISION
	if recipient == socialWorkAgency {
		purpose = throughcarev1.Purpose_PURPOSE_POST_PENAL_ASSISTANCE
	}
	handoverIDs := make([]string, len(cases))
	if err := parallel(len(cases), workers, func(i int) error {
		resp, err := sys.Cases[prisonAgency].ReferCase(ctx, &throughcarev1.ReferCaseRequest{Actor: "prison-worker-1", CaseId: cases[i].GetCaseId(), Recipient: recipient, Purpose: purpose})
		handoverIDs[i] = resp.GetHandover().GetHandoverId()
		return err
	}); err != nil {
		t.Fatalf("refer %d cases to %s: %v", len(cases), recipient, err)
	}
	return handoverIDs
}

// checkDeliveredOnce fails unless the recipient holds each handover, no other incoming
// one, none stored twice, and the sender holds exactly one delivered receipt for each.
func checkDeliveredOnce(t testing.TB, sys *system, recipient string, handoverIDs []string) {
	t.Helper()
	// The recipient lists a handover once its index entries follow the write, which may
	// be after the sender saw the receipt.
	want := slices.Sorted(slices.Values(handoverIDs))
	eventually(t, 5*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		all, err := tryListAll(ctx, sys.Handovers[recipient], &throughcarev1.ListHandoversRequest{Direction: incoming})
		if err != nil {
			return false, fmt.Sprintf("list %s incoming: %v", recipient, err)
		}
		got := make([]string, 0, len(all))
		for _, h := range all {
			got = append(got, h.GetHandoverId())
		}
		slices.Sort(got)
		return slices.Equal(got, want), fmt.Sprintf("%s incoming: got %d handovers, want exactly the %d referred", recipient, len(got), len(want))
	})
	// A write whose reply a NATS restart cut off lands without its "handover delivered"
	// line (the retry finds it applied), so the log can show only that none was stored twice.
	for _, id := range handoverIDs {
		if nodes := sys.Delivered.Of(id); len(nodes) > 1 {
			t.Errorf("handover %s stored by %v, want by one node once", id, nodes)
		}
	}
	for _, h := range listAll(t, sys.Handovers[prisonAgency], &throughcarev1.ListHandoversRequest{Direction: outgoing}) {
		if !slices.Contains(handoverIDs, h.GetHandoverId()) {
			continue
		}
		if n := count(h, receiptDelivered); n != 1 {
			t.Errorf("prison: handover %s has %d delivered receipts, want 1 (%v)", h.GetHandoverId(), n, receiptTypes(h))
		}
		checkSequences(t, "prison", h)
	}
}

// TestHandoversSurviveNATSRestart restarts NATS while referrals are on their way, and
// again between acknowledgement and acceptance: every handover and every receipt arrives,
// none twice.
func TestHandoversSurviveNATSRestart(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	cases := openCases(t, sys, 8)
	toProbation := referAll(t, sys, cases, probationAgency, 8)
	toSocial := referAll(t, sys, cases[:4], socialWorkAgency, 4)
	sys.RestartNATS() // the referrals are being relayed and delivered

	all := slices.Concat(toProbation, toSocial)
	waitAllState(t, sys.Handovers[prisonAgency], outgoing, all, stateDelivered, 30*time.Second)
	for _, ids := range []struct {
		agency string
		ids    []string
	}{{probationAgency, toProbation}, {socialWorkAgency, toSocial}} {
		for _, id := range ids.ids {
			if err := acknowledge(ctx, sys.Handovers[ids.agency], id, "worker-1"); err != nil {
				t.Fatalf("%s acknowledge %s: %v", ids.agency, id, err)
			}
		}
	}
	sys.RestartNATS() // the acknowledgements are on their way back
	for _, ids := range []struct {
		agency string
		ids    []string
	}{{probationAgency, toProbation}, {socialWorkAgency, toSocial}} {
		for _, id := range ids.ids {
			if err := accept(ctx, sys.Handovers[ids.agency], id, "worker-1", "worker-1"); err != nil {
				t.Fatalf("%s accept %s: %v", ids.agency, id, err)
			}
		}
	}
	atPrison := waitAllState(t, sys.Handovers[prisonAgency], outgoing, all, stateAccepted, 30*time.Second)
	for _, id := range all {
		checkReceipts(t, "prison", atPrison[id], receiptDelivered, receiptAcknowledged, receiptAccepted)
	}
	checkDeliveredOnce(t, sys, probationAgency, toProbation)
	checkDeliveredOnce(t, sys, socialWorkAgency, toSocial)
	if dl := listDeadLetters(t, sys); len(dl) != 0 {
		t.Errorf("dead letters: got %v, want none", dl)
	}
}

// TestRecipientDownDuringDelivery stops probation while referrals are on their way and
// refers more while it is down: once it is back, each is delivered exactly once.
func TestRecipientDownDuringDelivery(t *testing.T) {
	sys := newSystem(t)
	cases := openCases(t, sys, 10)
	before := referAll(t, sys, cases[:4], probationAgency, 4)
	sys.Stop(probationAgency)
	during := referAll(t, sys, cases[4:], probationAgency, 6)
	// While probation is down the referrals wait in its inbox, not delivered.
	waitInboxReceived(t, sys, probationAgency, uint64(len(cases)))
	for _, id := range during {
		if h := getHandover(t, sys.Handovers[prisonAgency], id).GetHandover(); h.GetState() != stateReferred {
			t.Errorf("handover %s while probation is down: got %s, want REFERRED", id, h.GetState())
		}
	}
	sys.Start(probationAgency)
	all := slices.Concat(before, during)
	atPrison := waitAllState(t, sys.Handovers[prisonAgency], outgoing, all, stateDelivered, 30*time.Second)
	for _, id := range all {
		checkReceipts(t, "prison", atPrison[id], receiptDelivered)
	}
	checkDeliveredOnce(t, sys, probationAgency, all)
}

// waitInboxReceived waits until agency's inbox stream has received at least n messages.
// The inbox is a work queue, so it counts what arrived, not what it still holds.
func waitInboxReceived(t testing.TB, sys *system, agency string, n uint64) {
	t.Helper()
	eventually(t, 10*time.Second, func() (bool, string) {
		info, err := streamInfo(t, sys, agency, eventbus.InboxStream(agency))
		if err != nil {
			return false, err.Error()
		}
		return info.State.LastSeq >= n, fmt.Sprintf("%s has received %d messages, want %d", eventbus.InboxStream(agency), info.State.LastSeq, n)
	})
}

// streamInfo reads one of agency's streams, in agency's account.
func streamInfo(t testing.TB, sys *system, agency string, name string) (*jetstream.StreamInfo, error) {
	t.Helper()
	stream, err := sys.JS[agency].Stream(testCtx(t), name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return stream.Info(testCtx(t))
}

// waitInboxProcessed waits until agency's inbox consumer has finished with every message
// its inbox holds.
func waitInboxProcessed(t testing.TB, sys *system, agency string) {
	t.Helper()
	eventually(t, 15*time.Second, func() (bool, string) {
		info, err := streamInfo(t, sys, agency, eventbus.InboxStream(agency))
		if err != nil {
			return false, err.Error()
		}
		cons, err := sys.JS[agency].Consumer(testCtx(t), eventbus.InboxStream(agency), agency+"-inbox")
		if err != nil {
			return false, err.Error()
		}
		ci, err := cons.Info(testCtx(t))
		if err != nil {
			return false, err.Error()
		}
		done := ci.NumPending == 0 && ci.NumAckPending == 0 && ci.AckFloor.Stream >= info.State.LastSeq
		return done, fmt.Sprintf("inbox consumer: ack floor %d of %d, pending %d, ack pending %d", ci.AckFloor.Stream, info.State.LastSeq, ci.NumPending, ci.NumAckPending)
	})
}

// TestDuplicateEventIsProcessedOnce publishes a referral again under new message ids, so
// JetStream's duplicate window cannot absorb it: the recipient keeps one handover and
// issues one delivered receipt.
func TestDuplicateEventIsProcessedOnce(t *testing.T) {
	sys := newSystem(t)
	prisonSent := watchSent(t, sys, prisonAgency)
	ctx := testCtx(t)
	prisonH, probationH := sys.Handovers[prisonAgency], sys.Handovers[probationAgency]
	rc := openCase(t, sys.Prison)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	waitState(t, prisonH, id, stateDelivered)
	before := getHandover(t, probationH, id).GetHandover()
	waitState(t, prisonH, id, stateRetrieved)

	outbox, err := sys.JS[prisonAgency].Stream(ctx, eventbus.OutboxStream(prisonAgency))
	if err != nil {
		t.Fatalf("outbox stream: %v", err)
	}
	orig, err := outbox.GetLastMsgForSubject(ctx, "tc.prison.out.probation.handover_referred")
	if err != nil {
		t.Fatalf("read the referral from the outbox: %v", err)
	}
	ev := prisonSent.event(t, orig.Subject, orig.Header, orig.Data)
	if ev.GetHandoverId() != id || orig.Header.Get(jetstream.MsgIDHeader) != ev.GetEventId() {
		t.Fatalf("outbox referral: handover %s, msg id %q; want handover %s under its event id %s", ev.GetHandoverId(), orig.Header.Get(jetstream.MsgIDHeader), id, ev.GetEventId())
	}
	// The same message again, as it was: the duplicate window absorbs it.
	again := &nats.Msg{Subject: orig.Subject, Header: orig.Header, Data: orig.Data}
	if ack, err := sys.JS[prisonAgency].PublishMsg(ctx, again); err != nil || !ack.Duplicate {
		t.Errorf("republish with the same msg id: got ack %+v, %v; want a duplicate", ack, err)
	}
	// The same bytes under a new message id, and the same event re-encoded under another.
	raw := &nats.Msg{Subject: orig.Subject, Header: nats.Header{}, Data: orig.Data}
	for k, v := range orig.Header {
		raw.Header[k] = slices.Clone(v)
	}
	raw.Header.Set(jetstream.MsgIDHeader, ids.New(ids.Event))
	reencoded, err := eventbus.Encode(ev)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	reencoded.Header.Set(jetstream.MsgIDHeader, ids.New(ids.Event))
	for _, m := range []*nats.Msg{raw, reencoded} {
		if ack, err := sys.JS[prisonAgency].PublishMsg(ctx, m); err != nil || ack.Duplicate {
			t.Fatalf("republish under a new msg id: got ack %+v, %v; want stored", ack, err)
		}
	}
	waitInboxReceived(t, sys, probationAgency, 3)
	waitInboxProcessed(t, sys, probationAgency)

	if after := getHandover(t, probationH, id).GetHandover(); !proto.Equal(after, before) {
		t.Errorf("probation after the duplicates: got revision %d %v, want unchanged revision %d %v", after.GetRevision(), receiptTypes(after), before.GetRevision(), receiptTypes(before))
	}
	// A later step makes sure any receipt a duplicate caused has reached the prison.
	if err := acknowledge(ctx, probationH, id, "po-marko"); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	senderView := waitState(t, prisonH, id, stateAcknowledged)
	checkReceipts(t, "prison", senderView, receiptDelivered, receiptRetrieved, receiptAcknowledged)
	checkDeliveredOnce(t, sys, probationAgency, []string{id})

	// Every receipt again, under new message ids: the prison's view does not move.
	receipts, err := sys.JS[probationAgency].Stream(ctx, eventbus.OutboxStream(probationAgency))
	if err != nil {
		t.Fatalf("probation's outbox: %v", err)
	}
	info, err := receipts.Info(ctx)
	if err != nil {
		t.Fatalf("probation's outbox: %v", err)
	}
	// Beside the receipts, the outbox holds the acknowledgements of the duplicates above.
	republished := 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := receipts.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("read probation's outbox at %d: %v", seq, err)
		}
		if !strings.HasSuffix(m.Subject, ".receipt_issued") {
			continue
		}
		again := &nats.Msg{Subject: m.Subject, Header: nats.Header{}, Data: m.Data}
		for k, v := range m.Header {
			again.Header[k] = slices.Clone(v)
		}
		again.Header.Set(jetstream.MsgIDHeader, ids.New(ids.Event))
		if _, err := sys.JS[probationAgency].PublishMsg(ctx, again); err != nil {
			t.Fatalf("republish %s: %v", m.Subject, err)
		}
		republished++
	}
	if republished != 3 {
		t.Errorf("probation's outbox held %d receipts, want 3", republished)
	}
	waitInboxReceived(t, sys, prisonAgency, info.State.Msgs+uint64(republished))
	waitInboxProcessed(t, sys, prisonAgency)
	if after := getHandover(t, prisonH, id).GetHandover(); !proto.Equal(after, senderView) {
		t.Errorf("prison after duplicate receipts: got revision %d %v, want unchanged revision %d", after.GetRevision(), receiptTypes(after), senderView.GetRevision())
	}
	if dl := listDeadLetters(t, sys); len(dl) != 0 {
		t.Errorf("dead letters: got %v, want none (a duplicate is not an error)", dl)
	}
}

// TestTwoRecipientReplicasProcessEachHandoverOnce runs probation twice on the same
// streams and durable consumers: every referral is stored once, by one of them.
func TestTwoRecipientReplicasProcessEachHandoverOnce(t *testing.T) {
	sys := newSystem(t, withLogLevel(zapcore.WarnLevel))
	replica := sys.StartReplica(probationAgency)
	cases := openCases(t, sys, 100)
	handoverIDs := referAll(t, sys, cases, probationAgency, 16)
	atPrison := waitAllState(t, sys.Handovers[prisonAgency], outgoing, handoverIDs, stateDelivered, 30*time.Second)
	for _, id := range handoverIDs {
		checkReceipts(t, "prison", atPrison[id], receiptDelivered)
	}
	// Listing through the replica retrieves every handover.
	checkDeliveredOnce(t, sys, probationAgency, handoverIDs)
	t.Logf("deliveries per probation node: %v", sys.Delivered.ByNode())

	// Either replica serves every handover and takes the next step on it.
	ctx := testCtx(t)
	if err := parallel(len(handoverIDs), 16, func(i int) error {
		client := []throughcarev1.HandoverServiceClient{sys.Handovers[probationAgency], replica}[i%2]
		return acknowledge(ctx, client, handoverIDs[i], "po-marko")
	}); err != nil {
		t.Fatalf("acknowledge through both replicas: %v", err)
	}
	atPrison = waitAllState(t, sys.Handovers[prisonAgency], outgoing, handoverIDs, stateAcknowledged, 30*time.Second)
	for _, id := range handoverIDs {
		checkReceipts(t, "prison", atPrison[id], receiptDelivered, receiptRetrieved, receiptAcknowledged)
	}
}

// stallAfter is how long a wait on many handovers may see none of them move before it
// calls them stuck: far longer than the harness's retry backoffs (at most 200ms).
const stallAfter = 20 * time.Second

// TestThousandReferralsInFlight refers 1,000 cases at once, then probation acknowledges
// and accepts them all at once: every one reaches ACCEPTED at the prison.
func TestThousandReferralsInFlight(t *testing.T) {
	const n, workers = 1000, 64
	// Deadline scans read the whole bucket every DeadlineScanInterval; at the harness's
	// 100ms on 1,000 handovers they take most of a core away from the work measured here
	// (CPU profile: CheckDeadlines is the largest single consumer). No deadline falls due
	// in this test, so it scans at the shipped interval.
	opts := []systemOption{withLogLevel(zapcore.WarnLevel)}
	for _, a := range allAgencies {
		opts = append(opts, withConfig(a, func(c *handover.Config) { c.DeadlineScanInterval = handover.DefaultConfig(a).DeadlineScanInterval }))
	}
	sys := newSystem(t, opts...)
	atPrison := watchHandovers(t, sys.Handovers[prisonAgency], outgoing)
	cases := openCases(t, sys, n)
	start := time.Now()
	handoverIDs := referAll(t, sys, cases, probationAgency, workers)
	referred := time.Since(start)
	atPrison.waitAll(t, handoverIDs, stateDelivered, stallAfter)
	delivered := time.Since(start)
	ctx := testCtx(t)
	probationH := sys.Handovers[probationAgency]
	if err := parallel(n, workers, func(i int) error {
		if err := acknowledge(ctx, probationH, handoverIDs[i], "po-marko"); err != nil {
			return fmt.Errorf("acknowledge %s: %w", handoverIDs[i], err)
		}
		if err := accept(ctx, probationH, handoverIDs[i], "po-marko", "po-marko"); err != nil {
			return fmt.Errorf("accept %s: %w", handoverIDs[i], err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	answered := time.Since(start)
	accepted := atPrison.waitAll(t, handoverIDs, stateAccepted, stallAfter)
	t.Logf("%d referrals: referred in %s, all delivered by %s, acknowledged and accepted by %s, all accepted at the prison by %s", n, referred, delivered, answered, time.Since(start))
	for _, id := range handoverIDs {
		checkReceipts(t, "prison", accepted[id], receiptDelivered, receiptAcknowledged, receiptAccepted)
		if accepted[id].GetAssignedWorker() != "po-marko" {
			t.Errorf("handover %s: assigned worker %q, want po-marko", id, accepted[id].GetAssignedWorker())
		}
	}
	checkDeliveredOnce(t, sys, probationAgency, handoverIDs)
}

// watchPair is one change a watch reported: a handover at one of its revisions.
type watchPair struct {
	id       string
	revision uint64
}

// TestWatchHandoversResumesWithoutGapOrDuplicate cuts a watch, makes more changes, and
// resumes from the last cursor seen: every change arrives once across both watches.
func TestWatchHandoversResumesWithoutGapOrDuplicate(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	prisonH, probationH := sys.Handovers[prisonAgency], sys.Handovers[probationAgency]
	cases := openCases(t, sys, 3)
	handoverIDs := referAll(t, sys, cases, probationAgency, 3)
	waitAllState(t, prisonH, outgoing, handoverIDs, stateDelivered, 20*time.Second)

	seen := map[watchPair]int{}
	var lastCursor uint64
	// recv reads one change, checks its cursor moves on, and counts it.
	recv := func(stream throughcarev1.HandoverService_WatchHandoversClient) *throughcarev1.Handover {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		var cursor uint64
		if _, err := fmt.Sscan(resp.GetCursor(), &cursor); err != nil || cursor <= lastCursor {
			t.Fatalf("watch cursor %q after %d: want a larger one", resp.GetCursor(), lastCursor)
		}
		lastCursor = cursor
		h := resp.GetHandover()
		if resp.GetDirection() != incoming {
			t.Errorf("watch: handover %s direction %s, want INCOMING", h.GetHandoverId(), resp.GetDirection())
		}
		seen[watchPair{h.GetHandoverId(), h.GetRevision()}]++
		return h
	}

	// The first watch replays from the start; reading a delivered handover retrieves it,
	// and that is a change of its own. Read until all three are seen retrieved.
	watchCtx, cut := context.WithCancel(ctx)
	first, err := probationH.WatchHandovers(watchCtx, &throughcarev1.WatchHandoversRequest{})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	retrieved := map[string]bool{}
	for len(retrieved) < len(handoverIDs) {
		if h := recv(first); h.GetState() == stateRetrieved {
			retrieved[h.GetHandoverId()] = true
		}
	}
	cut()
	cutAt := lastCursor

	// Changes while nobody watches.
	for _, id := range handoverIDs {
		if err := acknowledge(ctx, probationH, id, "po-marko"); err != nil {
			t.Fatalf("acknowledge %s: %v", id, err)
		}
	}
	if err := accept(ctx, probationH, handoverIDs[0], "po-marko", "po-marko"); err != nil {
		t.Fatalf("accept: %v", err)
	}
	if _, err := probationH.RequestInformation(ctx, &throughcarev1.RequestInformationRequest{Actor: "po-marko", HandoverId: handoverIDs[1], Question: "Which hostel?"}); err != nil {
		t.Fatalf("request information: %v", err)
	}

	second, err := probationH.WatchHandovers(ctx, &throughcarev1.WatchHandoversRequest{Cursor: fmt.Sprint(cutAt)})
	if err != nil {
		t.Fatalf("resume watch: %v", err)
	}
	// Every revision each handover now has must arrive, counting both watches.
	want := map[watchPair]bool{}
	for _, id := range handoverIDs {
		h := getHandover(t, probationH, id).GetHandover()
		for r := uint64(1); r <= h.GetRevision(); r++ {
			want[watchPair{id, r}] = true
		}
	}
	missing := func() int {
		n := 0
		for p := range want {
			if seen[p] == 0 {
				n++
			}
		}
		return n
	}
	for missing() > 0 {
		recv(second)
	}
	// One more change marks the end: anything the watch sends before it is counted too.
	if err := accept(ctx, probationH, handoverIDs[2], "po-marko", "po-marko"); err != nil {
		t.Fatalf("accept: %v", err)
	}
	for {
		if h := recv(second); h.GetHandoverId() == handoverIDs[2] && h.GetState() == stateAccepted {
			want[watchPair{h.GetHandoverId(), h.GetRevision()}] = true
			break
		}
	}
	for p, n := range seen {
		if n != 1 {
			t.Errorf("watch: handover %s revision %d arrived %d times, want once", p.id, p.revision, n)
		}
		if !want[p] {
			t.Errorf("watch: handover %s revision %d arrived, but the handover never had it", p.id, p.revision)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("watch: got %d changes, want %d", len(seen), len(want))
	}
}

// TestUndecodableMessagesBecomeDeadLettersWithoutBlocking puts broken messages in front
// of a real referral: the referral is delivered, and the broken ones are listed as dead
// letters with a reason and nothing of their payload.
func TestUndecodableMessagesBecomeDeadLettersWithoutBlocking(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	const subject = "tc.prison.out.probation.handover_referred"
	rc := openCase(t, sys.Prison)

	// Garbage: not a protobuf at all.
	garbage := nats.NewMsg(subject)
	garbage.Data = []byte("garbage for Kovač, not a protobuf")
	garbage.Header.Set(jetstream.MsgIDHeader, "garbage-1")
	// A well-formed event whose ce-id header names another event.
	forged := referralEvent(rc)
	mismatched, err := eventbus.Encode(forged)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	otherID := ids.New(ids.Event)
	mismatched.Header.Set("ce-id", otherID)
	// A well-formed event whose handover does not match its envelope.
	wrong := referralEvent(rc)
	wrong.GetHandoverReferred().GetHandover().HandoverId = ids.New(ids.Handover)
	unmatched, err := eventbus.Encode(wrong)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	for _, m := range []*nats.Msg{garbage, mismatched, unmatched} {
		if _, err := sys.JS[prisonAgency].PublishMsg(ctx, m); err != nil {
			t.Fatalf("publish %s: %v", m.Subject, err)
		}
	}
	id := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	waitState(t, sys.Handovers[prisonAgency], id, stateDelivered)
	checkDeliveredOnce(t, sys, probationAgency, []string{id})

	var dead []*throughcarev1.DeadLetter
	eventually(t, 10*time.Second, func() (bool, string) {
		resp, err := sys.Handovers[probationAgency].ListDeadLetters(ctx, &throughcarev1.ListDeadLettersRequest{})
		dead = resp.GetDeadLetters()
		return err == nil && len(dead) >= 3, fmt.Sprintf("probation dead letters: got %v, %v; want 3", dead, err)
	})
	if len(dead) != 3 {
		t.Fatalf("probation dead letters: got %d, want 3: %v", len(dead), dead)
	}
	for i, dl := range dead {
		if dl.GetSubject() != subject || dl.GetReason() == "" || dl.GetSequence() == 0 || dl.GetDeliveries() != 1 || dl.GetTime() == nil {
			t.Errorf("dead letter %d: got %v; want subject %s, a reason, a sequence, one delivery and a time", i, dl, subject)
		}
		if text := prototext.Format(dl); strings.Contains(text, "Kovač") || strings.Contains(text, "garbage") || strings.Contains(text, "Trubarjeva") {
			t.Errorf("dead letter %d carries payload: %s", i, text)
		}
		// Listed in the order they were recorded; parallel workers may record a later
		// message first.
		if i > 0 && dl.GetTime().AsTime().Before(dead[i-1].GetTime().AsTime()) {
			t.Errorf("dead letters out of order: recorded at %v after %v", dl.GetTime().AsTime(), dead[i-1].GetTime().AsTime())
		}
	}
	listed := slices.Clone(dead)
	slices.SortFunc(dead, func(a, b *throughcarev1.DeadLetter) int { return cmp.Compare(a.GetSequence(), b.GetSequence()) })
	for i := 1; i < len(dead); i++ {
		if dead[i].GetSequence() == dead[i-1].GetSequence() {
			t.Errorf("two dead letters of sequence %d", dead[i].GetSequence())
		}
	}
	if dead[1].GetEventId() != otherID {
		t.Errorf("dead letter of the mismatched event: event id %q, want the ce-id header %q", dead[1].GetEventId(), otherID)
	}
	for _, dl := range listDeadLetters(t, sys) {
		if !slices.ContainsFunc(dead, func(d *throughcarev1.DeadLetter) bool { return proto.Equal(d, dl) }) {
			t.Errorf("dead letter at another agency: %v", dl)
		}
	}
	// Paging through them gives the same three, in the same order.
	var paged []*throughcarev1.DeadLetter
	token := ""
	for range 5 {
		resp, err := sys.Handovers[probationAgency].ListDeadLetters(ctx, &throughcarev1.ListDeadLettersRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatalf("list dead letters page: %v", err)
		}
		paged = append(paged, resp.GetDeadLetters()...)
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if !slices.EqualFunc(paged, listed, func(a, b *throughcarev1.DeadLetter) bool { return proto.Equal(a, b) }) {
		t.Errorf("dead letters by pages of 2: got %v, want %v", paged, listed)
	}
}

// referralEvent is a referral of rc from the prison to probation, as the prison would
// send it, but built by the test.
func referralEvent(rc *throughcarev1.ReleaseCase) *throughcarev1.Event {
	h := &throughcarev1.Handover{
		HandoverId: ids.New(ids.Handover), CaseId: rc.GetCaseId(), Sender: prisonAgency, Recipient: probationAgency,
		Purpose: throughcarev1.Purpose_PURPOSE_SUPERVISION, State: stateReferred, Revision: 1,
	}
	return &throughcarev1.Event{
		EventId: ids.New(ids.Event), Type: throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED,
		Source: prisonAgency, Recipient: probationAgency, CaseId: rc.GetCaseId(), HandoverId: h.GetHandoverId(),
		OccurredAt: timestamppb.Now(), Purpose: h.GetPurpose(), Actor: "prison-worker-1",
		Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{Handover: h, ReleaseCase: proto.CloneOf(rc)}},
	}
}

// TestOverdueAcknowledgementIsMarkedOnBothSides gives probation 300ms to acknowledge:
// the delivered handover becomes overdue at probation, the prison learns it from the
// overdue receipt (its own deadline is two days away), and both list it as overdue.
func TestOverdueAcknowledgementIsMarkedOnBothSides(t *testing.T) {
	sys := newSystem(t, withConfig(probationAgency, func(c *handover.Config) { c.AcknowledgeWithin = 300 * time.Millisecond }))
	ctx := testCtx(t)
	prisonH, probationH := sys.Handovers[prisonAgency], sys.Handovers[probationAgency]
	rc := openCase(t, sys.Prison)
	late := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	onTime := refer(t, sys, rc.GetCaseId(), socialWorkAgency, throughcarev1.Purpose_PURPOSE_POST_PENAL_ASSISTANCE).GetHandoverId()

	overdue := &throughcarev1.ListHandoversRequest{OverdueOnly: true}
	eventually(t, crossAgencyWait, func() (bool, string) {
		overdue.Direction = incoming
		list, err := tryListAll(ctx, probationH, overdue)
		ok := err == nil && len(list) == 1 && list[0].GetHandoverId() == late && list[0].GetAcknowledgeOverdue() && !list[0].GetAcceptOverdue()
		return ok, fmt.Sprintf("probation overdue: got %v, %v; want only %s with acknowledge_overdue", list, err, late)
	})
	var atPrison *throughcarev1.Handover
	eventually(t, crossAgencyWait, func() (bool, string) {
		atPrison = getHandover(t, prisonH, late).GetHandover()
		return atPrison.GetAcknowledgeOverdue(), fmt.Sprintf("prison: handover %s acknowledge_overdue %v, receipts %v; want overdue", late, atPrison.GetAcknowledgeOverdue(), receiptTypes(atPrison))
	})
	if n := count(atPrison, receiptAckOverdue); n != 1 {
		t.Errorf("prison: %d acknowledge-overdue receipts, want 1 (%v)", n, receiptTypes(atPrison))
	}
	if atPrison.GetAcknowledgeDueTime().AsTime().Before(time.Now().Add(time.Hour)) {
		t.Errorf("prison's own acknowledge deadline %v: want two days out, so only the receipt can have marked it", atPrison.GetAcknowledgeDueTime().AsTime())
	}
	overdue.Direction = outgoing
	list := listAll(t, prisonH, overdue)
	if len(list) != 1 || list[0].GetHandoverId() != late {
		t.Errorf("prison overdue: got %v, want only %s (not %s, which is not due)", list, late, onTime)
	}
	if all := listAll(t, prisonH, &throughcarev1.ListHandoversRequest{Direction: outgoing}); len(all) != 2 {
		t.Errorf("prison outgoing: got %d, want 2", len(all))
	}

	// A late acknowledgement still counts; the handover stays marked as having been late.
	if err := acknowledge(ctx, probationH, late, "po-marko"); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	atPrison = waitState(t, prisonH, late, stateAcknowledged)
	if !atPrison.GetAcknowledgeOverdue() || count(atPrison, receiptAckOverdue) != 1 {
		t.Errorf("prison after a late acknowledgement: overdue %v, receipts %v; want still marked, one overdue receipt", atPrison.GetAcknowledgeOverdue(), receiptTypes(atPrison))
	}
	checkSequences(t, "prison", atPrison)
}

// TestDeletedConsumersAreRecreated deletes probation's inbox consumer and the prison's
// outbox relay: both come back, referrals still flow, and replaying the streams from the
// start delivers nothing twice.
func TestDeletedConsumersAreRecreated(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	prisonH := sys.Handovers[prisonAgency]
	cases := openCases(t, sys, 3)
	first := refer(t, sys, cases[0].GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	waitState(t, prisonH, first, stateDelivered)

	if err := sys.JS[probationAgency].DeleteConsumer(ctx, eventbus.InboxStream(probationAgency), "probation-inbox"); err != nil {
		t.Fatalf("delete the inbox consumer: %v", err)
	}
	second := refer(t, sys, cases[1].GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	waitState(t, prisonH, second, stateDelivered)
	if _, err := sys.JS[probationAgency].Consumer(ctx, eventbus.InboxStream(probationAgency), "probation-inbox"); err != nil {
		t.Errorf("inbox consumer after delivery: %v; want it recreated", err)
	}

	if err := sys.JS[prisonAgency].DeleteConsumer(ctx, "KV_prison_handovers", "prison-outbox-relay"); err != nil {
		t.Fatalf("delete the outbox relay: %v", err)
	}
	third := refer(t, sys, cases[2].GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	atPrison := waitState(t, prisonH, third, stateDelivered)
	checkReceipts(t, "prison", atPrison, receiptDelivered)
	checkDeliveredOnce(t, sys, probationAgency, []string{first, second, third})
}

// TestWatchReplaysEveryChangeOfABusyHandover replays a handover that went through many
// questions and answers from the start: every revision must arrive. The bucket keeps 64
// revisions of a key, and the relay's outbox-only writes count among them.
func TestWatchReplaysEveryChangeOfABusyHandover(t *testing.T) {
	sys := newSystem(t)
	ctx := testCtx(t)
	prisonH, probationH := sys.Handovers[prisonAgency], sys.Handovers[probationAgency]
	rc := openCase(t, sys.Prison)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION).GetHandoverId()
	waitState(t, prisonH, id, stateDelivered)
	if err := acknowledge(ctx, probationH, id, "po-marko"); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	// 16 questions, each answered (20 are allowed): a busy but legal handover.
	const rounds = 16
	for i := range rounds {
		asked, err := probationH.RequestInformation(ctx, &throughcarev1.RequestInformationRequest{Actor: "po-marko", HandoverId: id, Question: fmt.Sprintf("Question %d?", i+1)})
		if err != nil {
			t.Fatalf("question %d: %v", i+1, err)
		}
		qs := asked.GetHandover().GetInformationRequests()
		requestID := qs[len(qs)-1].GetRequestId()
		eventually(t, crossAgencyWait, func() (bool, string) {
			h := getHandover(t, prisonH, id).GetHandover()
			return findRequest(h, requestID) != nil, fmt.Sprintf("prison has not got question %d", i+1)
		})
		if _, err := prisonH.ProvideInformation(ctx, &throughcarev1.ProvideInformationRequest{Actor: "prison-worker-1", HandoverId: id, RequestId: requestID, Answer: fmt.Sprintf("Answer %d.", i+1)}); err != nil {
			t.Fatalf("answer %d: %v", i+1, err)
		}
		eventually(t, 10*time.Second, func() (bool, string) {
			h := getHandover(t, probationH, id).GetHandover()
			return findRequest(h, requestID).GetAnswerTime() != nil && h.GetState() == stateAcknowledged, fmt.Sprintf("probation has not got answer %d (state %s)", i+1, h.GetState())
		})
	}
	current := getHandover(t, probationH, id).GetHandover().GetRevision()

	watchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := probationH.WatchHandovers(watchCtx, &throughcarev1.WatchHandoversRequest{})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	var got []uint64
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		if resp.GetHandover().GetHandoverId() != id {
			continue
		}
		got = append(got, resp.GetHandover().GetRevision())
		if resp.GetHandover().GetRevision() == current {
			break
		}
	}
	var want []uint64
	for r := uint64(1); r <= current; r++ {
		want = append(want, r)
	}
	if !slices.Equal(got, want) {
		t.Errorf("replay from the start of handover %s: got revisions %v, want 1..%d: a watch from an empty cursor must replay every change, or fail, not skip silently", id, got, current)
	}
}

func findRequest(h *throughcarev1.Handover, requestID string) *throughcarev1.InformationRequest {
	for _, r := range h.GetInformationRequests() {
		if r.GetRequestId() == requestID {
			return r
		}
	}
	return nil
}

// TestStopReturnsWhileAWatchIsOpen stops probation while a client watches its handovers:
// a watch never ends by itself, so a stop that waits for it never returns.
func TestStopReturnsWhileAWatchIsOpen(t *testing.T) {
	sys := newSystem(t)
	watchCtx, endWatch := context.WithCancel(t.Context())
	defer endWatch()
	stream, err := sys.Handovers[probationAgency].WatchHandovers(watchCtx, &throughcarev1.WatchHandoversRequest{})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	// The stream is open once the server answers; an empty bucket sends nothing, so make
	// one change to see.
	rc := openCase(t, sys.Prison)
	refer(t, sys, rc.GetCaseId(), probationAgency, throughcarev1.Purpose_PURPOSE_SUPERVISION)
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("watch: %v", err)
	}
	n := sys.nodes[probationAgency][0]
	n.stopped = true
	stopped := make(chan error, 1)
	go func() { stopped <- n.srv.Stop() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("stop: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("stop did not return within 5s while a WatchHandovers stream was open: a shutdown (Ctrl-C in dev, SIGTERM in serve) hangs as long as any client watches")
		endWatch() // let it finish
		if err := <-stopped; err != nil {
			t.Errorf("stop: %v", err)
		}
	}
}
