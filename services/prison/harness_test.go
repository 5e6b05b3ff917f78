package prison_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/services/prison"
)

// bucket is the prison's case bucket, as cmd/throughcare names it.
const bucket = "prison_cases"

// harness is a prison service served over real gRPC on a real embedded JetStream.
type harness struct {
	// Client talks to the service over a loopback connection.
	Client throughcarev1.PrisonServiceClient
	// NATS is the embedded server; Restart keeps the store directory.
	NATS *natstest.Server
	// JS is a JetStream context of its own, for looking at the bucket directly.
	JS jetstream.JetStream
	// Store is the store the service writes to.
	Store *cases.Store
	// Handovers stands in for package handover, which has tests of its own.
	Handovers *fakeHandovers

	stopOnce sync.Once
	stopFn   func()
}

// newPrison starts NATS, the case store and the prison service, and returns a connected
// client. Everything is stopped when the test ends.
func newPrison(t testing.TB) *harness {
	t.Helper()
	return startPrison(t, natstest.Start(t), zaptest.NewLogger(t))
}

// startPrison serves a new prison service over a new store on ns.
func startPrison(t testing.TB, ns *natstest.Server, log *zap.Logger) *harness {
	t.Helper()
	ctx := t.Context()
	js := ns.JetStream(t)
	store, err := cases.Open(ctx, log, js, bucket)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	srv, err := grpcserver.New(log, grpcserver.Config{})
	if err != nil {
		t.Fatalf("grpcserver.New: %v", err)
	}
	handovers := &fakeHandovers{}
	throughcarev1.RegisterPrisonServiceServer(srv.Server, prison.New(log, "prison", store, handovers))
	srv.SetServing()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		<-served
		t.Fatalf("grpc.NewClient: %v", err)
	}
	h := &harness{
		Client:    throughcarev1.NewPrisonServiceClient(conn),
		NATS:      ns,
		JS:        js,
		Store:     store,
		Handovers: handovers,
	}
	h.stopFn = func() {
		if err := conn.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
		srv.Stop()
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("serve: %v", err)
		}
	}
	t.Cleanup(h.Stop)
	return h
}

// fakeHandovers records what the prison service asks of the handover protocol and answers
// with Err.
type fakeHandovers struct {
	mu       sync.Mutex
	Err      error
	Releases []releaseCall
	Withdraw []withdrawCall
}

type withdrawCall struct {
	Actor, CaseID string
	Recipient     string
	Categories    []throughcarev1.DataCategory
}

type releaseCall struct {
	Actor, CaseID string
	Release       *throughcarev1.Release
}

var _ prison.Handovers = (*fakeHandovers)(nil)

func (f *fakeHandovers) NotifyRelease(_ context.Context, actor, caseID string, release *throughcarev1.Release) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Releases = append(f.Releases, releaseCall{actor, caseID, proto.CloneOf(release)})
	if f.Err != nil {
		return 0, f.Err
	}
	return 1, nil
}

func (f *fakeHandovers) WithdrawConsent(_ context.Context, actor, caseID string, recipient string, categories []throughcarev1.DataCategory) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Withdraw = append(f.Withdraw, withdrawCall{actor, caseID, recipient, slices.Clone(categories)})
	if f.Err != nil {
		return 0, f.Err
	}
	return 1, nil
}

func (f *fakeHandovers) withdrawals() []withdrawCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.Withdraw)
}

// fail makes every later call fail with err, or succeed again with nil.
func (f *fakeHandovers) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Err = err
}

// releases returns copies of the release notices so far.
func (f *fakeHandovers) releases() []releaseCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.Releases)
}

// Stop closes the client and stops the gRPC server; NATS keeps running. It is safe to call
// more than once.
func (h *harness) Stop() { h.stopOnce.Do(h.stopFn) }

// lastSeq is the last sequence of the bucket's stream: it moves on every write, so an
// unchanged value means nothing at all was stored.
func (h *harness) lastSeq(t testing.TB) uint64 {
	t.Helper()
	stream, err := h.JS.Stream(t.Context(), "KV_"+bucket)
	if err != nil {
		t.Fatalf("bucket stream: %v", err)
	}
	info, err := stream.Info(t.Context())
	if err != nil {
		t.Fatalf("bucket stream info: %v", err)
	}
	return info.State.LastSeq
}

// stored lists every case in the store, bypassing the service.
func (h *harness) stored(t testing.TB) []*throughcarev1.ReleaseCase {
	t.Helper()
	var all []*throughcarev1.ReleaseCase
	token := ""
	for {
		page, next, err := h.Store.List(t.Context(), cases.Filter{}, 500, token)
		if err != nil {
			t.Fatalf("store list: %v", err)
		}
		all = append(all, page...)
		if next == "" {
			return all
		}
		token = next
	}
}

// open opens rc (a valid client-side case) and returns the stored case.
func (h *harness) open(t testing.TB, rc *throughcarev1.ReleaseCase) *throughcarev1.ReleaseCase {
	t.Helper()
	resp, err := h.Client.OpenReleaseCase(t.Context(), &throughcarev1.OpenReleaseCaseRequest{Actor: "cw-1", ReleaseCase: rc})
	if err != nil {
		t.Fatalf("OpenReleaseCase: %v", err)
	}
	return resp.GetReleaseCase()
}

// get returns the case as the service reports it.
func (h *harness) get(t testing.TB, caseID string) *throughcarev1.ReleaseCase {
	t.Helper()
	resp, err := h.Client.GetReleaseCase(t.Context(), &throughcarev1.GetReleaseCaseRequest{CaseId: caseID})
	if err != nil {
		t.Fatalf("GetReleaseCase(%s): %v", caseID, err)
	}
	return resp.GetReleaseCase()
}

// wantCode fails unless err is a status with code want.
func wantCode(t testing.TB, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %v (%v), want %v", got, err, want)
	}
}

// violatedFields returns the field paths of the BadRequest detail of err.
func violatedFields(t testing.TB, err error) []string {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("got non-status error %v, want a status", err)
	}
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

// wantInvalid fails unless err is InvalidArgument with a BadRequest that names field.
func wantInvalid(t testing.TB, err error, field string) {
	t.Helper()
	wantCode(t, err, codes.InvalidArgument)
	fields := violatedFields(t, err)
	if !slices.Contains(fields, field) {
		t.Fatalf("got field violations %q, want one naming %q (error: %v)", fields, field, err)
	}
}

// waitNextMillisecond polls the clock until the millisecond after the current one starts.
// Case ids sort by the millisecond they were made in and randomly within one, so tests that
// rely on creation order open one case per millisecond (see report).
func waitNextMillisecond() {
	start := time.Now().UnixMilli()
	for time.Now().UnixMilli() <= start {
		time.Sleep(50 * time.Microsecond)
	}
}

func date(y, m, d int32) *throughcarev1.Date {
	return &throughcarev1.Date{Year: y, Month: m, Day: d}
}

// minimalCase is the smallest case OpenReleaseCase accepts.
func minimalCase() *throughcarev1.ReleaseCase {
	return &throughcarev1.ReleaseCase{
		Person: &throughcarev1.Person{
			GivenName:    "Alex",
			FamilyName:   "Example",
			DateOfBirth:  date(1990, 4, 17),
			PrisonNumber: "A1234BC",
		},
		ReleasePlan: &throughcarev1.ReleasePlan{
			ReleaseType:         throughcarev1.ReleaseType_RELEASE_TYPE_CONDITIONAL_RELEASE,
			ExpectedReleaseDate: date(2026, 9, 1),
		},
	}
}

func need(level throughcarev1.NeedLevel, summary string, actions ...string) *throughcarev1.Need {
	return &throughcarev1.Need{Level: level, Summary: summary, Actions: actions}
}

// fullCase is a realistic case with every category the prison may write filled in.
func fullCase() *throughcarev1.ReleaseCase {
	return &throughcarev1.ReleaseCase{
		Person: &throughcarev1.Person{
			GivenName:    "Alexandra",
			FamilyName:   "Example-Whitfield",
			DateOfBirth:  date(1988, 2, 29),
			NationalId:   "QQ123456C",
			PrisonNumber: "A1234BC",
		},
		Contact: &throughcarev1.Contact{
			Phone: "+44 7700 900123",
			Email: "alex.example@example.org",
			Address: &throughcarev1.Address{
				Lines:       []string{"Flat 3", "12 Harbour Street"},
				Postcode:    "AB1 2CD",
				Locality:    "Portsmouth",
				CountryCode: "GB",
			},
		},
		Sentence: &throughcarev1.Sentence{
			Offences:        []string{"Burglary (dwelling)", "Handling stolen goods"},
			StartDate:       date(2023, 5, 10),
			SentenceEndDate: date(2027, 5, 9),
			LengthDays:      1460,
			Court:           "Portsmouth Crown Court",
		},
		ReleasePlan: &throughcarev1.ReleasePlan{
			ReleaseType:         throughcarev1.ReleaseType_RELEASE_TYPE_CONDITIONAL_RELEASE,
			ExpectedReleaseDate: date(2026, 9, 1),
			ReleaseAddress: &throughcarev1.Address{
				Lines:       []string{"Approved Premises", "4 Station Road"},
				Postcode:    "PO1 1AA",
				Locality:    "Portsmouth",
				CountryCode: "GB",
			},
		},
		Accommodation: need(throughcarev1.NeedLevel_NEED_LEVEL_HIGH, strings.Repeat("No fixed abode before custody; approved premises bed for twelve weeks. ", 8),
			"Refer to local authority housing options", "Apply for approved premises bed", "Set up move-on plan"),
		EducationWork: need(throughcarev1.NeedLevel_NEED_LEVEL_MEDIUM, "Level 2 maths done in custody; forklift licence lapsed.",
			"Book forklift refresher", "Register with job centre"),
		Health: need(throughcarev1.NeedLevel_NEED_LEVEL_MEDIUM, strings.Repeat("Type 2 diabetes, managed with metformin; anxiety, on waiting list. ", 6),
			"Register with a GP", "Transfer prescription", "Book mental-health assessment"),
		SubstanceUse: need(throughcarev1.NeedLevel_NEED_LEVEL_LOW, "Alcohol use before custody; abstinent in custody.",
			"Offer community alcohol service"),
		FinanceId: need(throughcarev1.NeedLevel_NEED_LEVEL_HIGH, "No bank account, no photo id.",
			"Open basic bank account", "Apply for birth certificate", "Start benefit claim before release"),
		Family: need(throughcarev1.NeedLevel_NEED_LEVEL_LOW, "Sister supportive; contact with children via family court.",
			"Support family court application"),
		Behaviour: need(throughcarev1.NeedLevel_NEED_LEVEL_MEDIUM, "Impulsive under stress; completed thinking skills course.",
			"Continue thinking skills follow-up"),
		Risk: &throughcarev1.RiskAssessment{
			Reoffending: throughcarev1.RiskLevel_RISK_LEVEL_MEDIUM,
			SeriousHarm: throughcarev1.RiskLevel_RISK_LEVEL_LOW,
			Summary:     strings.Repeat("Acquisitive offending linked to housing instability and alcohol. ", 10),
			AssessedOn:  date(2026, 6, 2),
		},
		Extremism: &throughcarev1.ExtremismAssessment{
			Level:      throughcarev1.RiskLevel_RISK_LEVEL_LOW,
			Instrument: "ERG 22+",
			Summary:    "Screened on reception; no concerns identified.",
			AssessedOn: date(2023, 5, 20),
		},
		WorkerSafety: &throughcarev1.WorkerSafetyWarning{
			VisitInPairs:     false,
			OfficeVisitsOnly: true,
			Note:             "Dog at the release address.",
		},
	}
}

// clientFields returns rc without its server-owned fields, for comparing content.
func clientFields(rc *throughcarev1.ReleaseCase) *throughcarev1.ReleaseCase {
	c := proto.CloneOf(rc)
	c.CaseId, c.Revision, c.State, c.Owner, c.CreateTime, c.UpdateTime = "", 0, 0, "", nil, nil
	return c
}

// withTimeout is a generous safety net for loops that must not hang a broken test forever;
// no assertion depends on it.
func withTimeout(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
