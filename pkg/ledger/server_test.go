package ledger_test

import (
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/grpcserver"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/natstest"
	"github.com/throughcare/throughcare/pkg/records"
)

// serveAudit serves l's AuditService through the project's standard gRPC chain
// (validation, error mapping) on a loopback port and returns a client.
func serveAudit(t *testing.T, l *ledger.Ledger, protocol *throughcarev1.SharingProtocol) throughcarev1.AuditServiceClient {
	t.Helper()
	return serveAuditWith(t, l, testPersonKey, protocol)
}

// serveAuditWith is serveAudit with person references made under key.
func serveAuditWith(t *testing.T, l *ledger.Ledger, key ledger.PersonKey, protocol *throughcarev1.SharingProtocol) throughcarev1.AuditServiceClient {
	t.Helper()
	srv, err := grpcserver.New(zap.NewNop(), grpcserver.Config{})
	if err != nil {
		t.Fatalf("grpc server: %v", err)
	}
	throughcarev1.RegisterAuditServiceServer(srv.Server, ledger.NewServer(l, key, func() *throughcarev1.SharingProtocol { return protocol }))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return throughcarev1.NewAuditServiceClient(conn)
}

func testProtocol() *throughcarev1.SharingProtocol {
	return &throughcarev1.SharingProtocol{
		ProtocolId: "throughcare-test",
		Version:    1,
		Agencies:   []*throughcarev1.Agency{{Id: "prison", DisplayName: "prison"}, {Id: "probation", DisplayName: "probation"}},
		Rules: []*throughcarev1.SharingRule{{
			Sender:     "prison",
			Recipient:  "probation",
			Purpose:    throughcarev1.Purpose_PURPOSE_SUPERVISION,
			Allowed:    []throughcarev1.DataCategory{throughcarev1.DataCategory_DATA_CATEGORY_IDENTITY},
			LegalBasis: "Offender Management Act 2007 s.14",
			Retention:  durationpb.New(365 * 24 * time.Hour),
		}},
	}
}

func TestAuditServiceEndToEnd(t *testing.T) {
	ctx := testContext(t)
	l := openLedger(t, natstest.Start(t).JetStream(t))
	// Cases a and b are one person's, case c another's.
	for n := 1; n <= 30; n++ {
		switch n % 3 {
		case 0:
			mustAppend(t, l, disclosure(n, "case-a", "A1234BC"))
		case 1:
			mustAppend(t, l, disclosure(n, "case-b", "A1234BC"))
		default:
			mustAppend(t, l, disclosure(n, "case-c", "Z9999ZZ"))
		}
	}
	protocol := testProtocol()
	client := serveAudit(t, l, protocol)

	listAll := func(t *testing.T, req *throughcarev1.ListDisclosuresRequest) (entries []*throughcarev1.Disclosure, pages int) {
		t.Helper()
		for {
			resp, err := client.ListDisclosures(ctx, req)
			if err != nil {
				t.Fatalf("ListDisclosures page %d: %v", pages+1, err)
			}
			pages++
			entries = append(entries, resp.GetDisclosures()...)
			if resp.GetNextPageToken() == "" {
				return entries, pages
			}
			req = proto.CloneOf(req)
			req.PageToken = resp.GetNextPageToken()
		}
	}

	t.Run("by case", func(t *testing.T) {
		entries, pages := listAll(t, &throughcarev1.ListDisclosuresRequest{CaseId: "case-a", PageSize: 3})
		if len(entries) != 10 || pages != 4 {
			t.Fatalf("got %d entries in %d pages, want 10 in 4", len(entries), pages)
		}
		for i, entry := range entries {
			if entry.GetCaseId() != "case-a" || entry.GetSequence() != uint64(3*(i+1)) {
				t.Errorf("entry %d: case %s, sequence %d", i, entry.GetCaseId(), entry.GetSequence())
			}
		}
	})
	t.Run("by person", func(t *testing.T) {
		entries, pages := listAll(t, &throughcarev1.ListDisclosuresRequest{PrisonNumber: "A1234BC", PageSize: 7})
		if len(entries) != 20 || pages != 3 {
			t.Fatalf("got %d entries in %d pages, want 20 in 3", len(entries), pages)
		}
		for _, entry := range entries {
			if entry.GetCaseId() == "case-c" {
				t.Errorf("entry %d is another person's", entry.GetSequence())
			}
		}
	})
	t.Run("by person under another deployment's key", func(t *testing.T) {
		other := serveAuditWith(t, l, ledger.GeneratePersonKey(), protocol)
		resp, err := other.ListDisclosures(ctx, &throughcarev1.ListDisclosuresRequest{PrisonNumber: "A1234BC"})
		if err != nil || len(resp.GetDisclosures()) != 0 {
			t.Fatalf("got %d entries, err %v; want none: another key makes other references", len(resp.GetDisclosures()), err)
		}
	})
	t.Run("default page size", func(t *testing.T) {
		entries, pages := listAll(t, &throughcarev1.ListDisclosuresRequest{CaseId: "case-c"})
		if len(entries) != 10 || pages != 1 {
			t.Fatalf("got %d entries in %d pages, want 10 in 1", len(entries), pages)
		}
	})
	t.Run("unknown case", func(t *testing.T) {
		entries, _ := listAll(t, &throughcarev1.ListDisclosuresRequest{CaseId: "case-z"})
		if len(entries) != 0 {
			t.Fatalf("got %d entries", len(entries))
		}
	})

	badRequests := map[string]*throughcarev1.ListDisclosuresRequest{
		"forged page token":          {CaseId: "case-a", PageToken: "not-a-token"},
		"page token of a non-number": {CaseId: "case-a", PageToken: records.EncodePageToken("abc")},
		"case and person":            {CaseId: "case-a", PrisonNumber: "A1234BC"},
		"neither case nor person":    {},
		"page size too large":        {CaseId: "case-a", PageSize: 501},
	}
	for name, req := range badRequests {
		t.Run(name, func(t *testing.T) {
			_, err := client.ListDisclosures(ctx, req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("err = %v, want InvalidArgument", err)
			}
		})
	}

	verified, err := client.VerifyLedger(ctx, &throughcarev1.VerifyLedgerRequest{})
	if err != nil {
		t.Fatalf("VerifyLedger: %v", err)
	}
	if !verified.GetIntact() || verified.GetEntries() != 30 || verified.GetFirstBadSequence() != 0 || verified.GetProblem() != "" {
		t.Errorf("VerifyLedger = %v; want intact, 30 entries", verified)
	}

	got, err := client.GetSharingProtocol(ctx, &throughcarev1.GetSharingProtocolRequest{})
	if err != nil {
		t.Fatalf("GetSharingProtocol: %v", err)
	}
	if !proto.Equal(got.GetProtocol(), protocol) {
		t.Errorf("GetSharingProtocol = %v, want %v", got.GetProtocol(), protocol)
	}
}

func TestAuditServiceWithoutProtocol(t *testing.T) {
	l := openLedger(t, natstest.Start(t).JetStream(t))
	client := serveAudit(t, l, nil)
	_, err := client.GetSharingProtocol(testContext(t), &throughcarev1.GetSharingProtocolRequest{})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("err = %v, want FailedPrecondition", err)
	}
}
