package signing_test

import (
	"bytes"
	"crypto/ed25519"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/signing"
)

const (
	prison     = "prison"
	probation  = "probation"
	socialWork = "socialwork"
)

// occurred is when the test events happened.
func occurred() time.Time { return time.Date(2026, 11, 22, 10, 30, 0, 123456789, time.UTC) }

// referral is an unsigned referral from the prison to probation with a case in it.
func referral() *throughcarev1.Event {
	return &throughcarev1.Event{
		EventId:         "ev_06h09hkdfsvyd8rtf98xswpwr4",
		Type:            throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED,
		Source:          prison,
		Recipient:       probation,
		CaseId:          "rc_06h09hkdfsvyd8rtf98xswpwr4",
		HandoverId:      "ho_06h09hkdfsvyd8rtf98xswpwr4",
		OccurredAt:      timestamppb.New(occurred()),
		ProtocolId:      "default",
		ProtocolVersion: 3,
		Purpose:         throughcarev1.Purpose_PURPOSE_SUPERVISION,
		Actor:           "prison-worker-1",
		Withholdings: []*throughcarev1.Withholding{
			{Category: throughcarev1.DataCategory_DATA_CATEGORY_HEALTH},
		},
		Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{
			Handover: &throughcarev1.Handover{
				HandoverId: "ho_06h09hkdfsvyd8rtf98xswpwr4",
				CaseId:     "rc_06h09hkdfsvyd8rtf98xswpwr4",
				Sender:     prison,
				Recipient:  probation,
				Purpose:    throughcarev1.Purpose_PURPOSE_SUPERVISION,
				State:      throughcarev1.HandoverState_HANDOVER_STATE_REFERRED,
				CreateTime: timestamppb.New(occurred()),
			},
			ReleaseCase: &throughcarev1.ReleaseCase{
				CaseId: "rc_06h09hkdfsvyd8rtf98xswpwr4",
				Owner:  prison,
				Person: &throughcarev1.Person{
					GivenName: "Ana", FamilyName: "Kovač", PrisonNumber: "A1234BC",
					DateOfBirth: &throughcarev1.Date{Year: 1990, Month: 4, Day: 17},
				},
				ReleasePlan: &throughcarev1.ReleasePlan{
					ReleaseType:         throughcarev1.ReleaseType_RELEASE_TYPE_PAROLE,
					ExpectedReleaseDate: &throughcarev1.Date{Year: 2026, Month: 12, Day: 1},
				},
				Accommodation: &throughcarev1.Need{
					Level:   throughcarev1.NeedLevel_NEED_LEVEL_HIGH,
					Summary: "No fixed address after release.",
					Actions: []string{"Refer to housing office", "Book hostel bed"},
				},
				Risk: &throughcarev1.RiskAssessment{Reoffending: throughcarev1.RiskLevel_RISK_LEVEL_MEDIUM},
			},
		}},
	}
}

// seededKey is a key that is the same in every run, so fuzz seeds made with it stay valid.
func seededKey(agency string, id string, seed byte) signing.Key {
	return signing.Key{ID: id, Agency: agency, Private: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))}
}

func generateKey(t testing.TB, agency string) signing.Key {
	t.Helper()
	key, err := signing.GenerateKey(agency, occurred())
	if err != nil {
		t.Fatalf("generate key for %s: %v", agency, err)
	}
	return key
}

func keyringOf(t testing.TB, keys ...signing.Key) *signing.Keyring {
	t.Helper()
	keyring := new(signing.Keyring)
	for _, key := range keys {
		if err := keyring.Add(key.Public()); err != nil {
			t.Fatalf("add %s: %v", key.ID, err)
		}
	}
	return keyring
}

func sign(t testing.TB, ev *throughcarev1.Event, key signing.Key) *throughcarev1.Event {
	t.Helper()
	if err := signing.Sign(ev, key); err != nil {
		t.Fatalf("sign: %v", err)
	}
	return ev
}

// received is ev as a receiver decodes it from the wire.
func received(t testing.TB, ev *throughcarev1.Event) *throughcarev1.Event {
	t.Helper()
	return decode(t, marshal(t, ev))
}

func marshal(t testing.TB, ev *throughcarev1.Event) []byte {
	t.Helper()
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return data
}

func decode(t testing.TB, data []byte) *throughcarev1.Event {
	t.Helper()
	ev := new(throughcarev1.Event)
	if err := proto.Unmarshal(data, ev); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	return ev
}

// canonical is the signed content as the package documents it, built independently of
// the package: a copy with signature and key_id cleared, marshaled deterministically.
func canonical(t testing.TB, ev *throughcarev1.Event) []byte {
	t.Helper()
	unsigned := proto.CloneOf(ev)
	unsigned.Signature, unsigned.KeyId = nil, ""
	return marshal(t, unsigned)
}
