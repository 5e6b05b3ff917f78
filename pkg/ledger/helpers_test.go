package ledger_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/ledger"
)

const agency = "prison"

// testPersonKey is the test deployment's person-hash key.
var testPersonKey = ledger.GeneratePersonKey()

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openLedger(t testing.TB, js jetstream.JetStream) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(testContext(t), js, agency, 1)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return l
}

// disclosure is a SHARED entry about caseID numbered n, for the person with prisonNumber.
func disclosure(n int, caseID, prisonNumber string) *throughcarev1.Disclosure {
	payload := sha256.Sum256(fmt.Appendf(nil, "payload %d", n))
	return &throughcarev1.Disclosure{
		CaseId:             caseID,
		EventId:            fmt.Sprintf("ev-%04d", n),
		Sender:             "prison",
		Recipient:          "probation",
		Purpose:            throughcarev1.Purpose_PURPOSE_SUPERVISION,
		SharedCategories:   []throughcarev1.DataCategory{throughcarev1.DataCategory_DATA_CATEGORY_IDENTITY, throughcarev1.DataCategory_DATA_CATEGORY_RELEASE_PLAN},
		WithheldCategories: []throughcarev1.DataCategory{throughcarev1.DataCategory_DATA_CATEGORY_HEALTH},
		LegalBasis:         "Offender Management Act 2007 s.14",
		ProtocolId:         "throughcare-test",
		ProtocolVersion:    1,
		Actor:              "officer-7",
		Time:               timestamppb.New(time.Date(2026, 3, 1, 9, 0, n, 0, time.UTC)),
		PayloadHash:        payload[:],
		Kind:               throughcarev1.DisclosureKind_DISCLOSURE_KIND_SHARED,
		PersonHash:         testPersonKey.Hash(prisonNumber),
	}
}

func dedupeID(d *throughcarev1.Disclosure) string { return "shared/" + d.GetEventId() }

func mustAppend(t testing.TB, l *ledger.Ledger, d *throughcarev1.Disclosure) *throughcarev1.Disclosure {
	t.Helper()
	entry, err := l.Append(testContext(t), d, dedupeID(d))
	if err != nil {
		t.Fatalf("append %s: %v", d.GetEventId(), err)
	}
	return entry
}

func all(*throughcarev1.Disclosure) bool { return true }

func mustVerifyIntact(t *testing.T, l *ledger.Ledger, wantEntries uint64) {
	t.Helper()
	got, err := l.Verify(testContext(t))
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !got.GetIntact() || got.GetEntries() != wantEntries {
		t.Fatalf("verify = intact %v, %d entries (first bad %d: %q); want intact, %d entries",
			got.GetIntact(), got.GetEntries(), got.GetFirstBadSequence(), got.GetProblem(), wantEntries)
	}
}
