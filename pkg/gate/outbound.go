package gate

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/signing"
)

// Outbound is the last gate before an event leaves the agency.
type Outbound struct {
	Protocol   Policy
	Ledger     *ledger.Ledger
	PersonKey  ledger.PersonKey
	SigningKey signing.Key
	Case       CaseLookup
	Now        func() time.Time
}

// Pass enforces the protocol on ev once more, in place (consent may have been withdrawn
// since the event was made), records the disclosure in the ledger when ev carries anything
// personal, and signs it. A failure to record is returned for a retry; a refusal to sign
// is permanent.
func (g *Outbound) Pass(ctx context.Context, ev *throughcarev1.Event) error {
	if err := g.disclose(ctx, ev); err != nil {
		return err
	}
	return g.Sign(ev)
}

// Sign signs an event that discloses nothing (an acknowledgement, a resend request).
func (g *Outbound) Sign(ev *throughcarev1.Event) error {
	if err := signing.Sign(ev, g.SigningKey); err != nil {
		return eventbus.Permanent(err)
	}
	return nil
}

func (g *Outbound) disclose(ctx context.Context, ev *throughcarev1.Event) error {
	// The case is read for its current consents and the person's reference; an event that
	// carries no personal data (most receipts) needs neither, and saves the round trip.
	var rc *throughcarev1.ReleaseCase
	if ev.GetType() == throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED || protocol.CarriesPersonalData(ev) {
		var err error
		if rc, err = g.Case(ctx, ev.GetCaseId()); err != nil {
			return err
		}
	}
	report, err := g.enforce(ev, rc.GetConsents())
	if err != nil {
		return err
	}
	ev.Withholdings = mergeWithholdings(ev.GetWithholdings(), report.Withheld)
	if len(report.Shared) == 0 && ev.GetType() != throughcarev1.EventType_EVENT_TYPE_HANDOVER_REFERRED {
		return nil // routing metadata only: nothing personal is disclosed
	}
	entry, err := g.entry(ev, throughcarev1.DisclosureKind_DISCLOSURE_KIND_SHARED, g.PersonKey.OfCase(rc))
	if err != nil {
		return err
	}
	entry.SharedCategories = report.Shared
	entry.LegalBasis = report.Rule.GetLegalBasis()
	entry.ProtocolId, entry.ProtocolVersion = g.Protocol.ID(), g.Protocol.Version()
	if _, err := g.Ledger.Append(ctx, entry, "shared/"+ev.GetEventId()); err != nil {
		return fmt.Errorf("record disclosure of event %s: %w", ev.GetEventId(), err)
	}
	return nil
}

// enforce cuts ev down to what the protocol lets its recipient have, in place. An event
// that no rule covers (a receipt back along a purpose the protocol has no reverse rule for)
// keeps its routing metadata only.
func (g *Outbound) enforce(ev *throughcarev1.Event, consents []*throughcarev1.Consent) (protocol.Report, error) {
	report, err := g.Protocol.Enforce(ev, ev.GetSource(), ev.GetRecipient(), ev.GetPurpose(), consents)
	if errors.Is(err, protocol.ErrNoRule) {
		for _, c := range protocol.Purge(ev, protocol.AllCategories) {
			report.Withheld = append(report.Withheld, &throughcarev1.Withholding{Category: c, Reason: throughcarev1.WithholdReason_WITHHOLD_REASON_NOT_ALLOWED})
		}
		return report, nil
	}
	return report, err
}

// Resent records in the ledger that a signed event, already through this gate once, went
// out again: its attempt'th resend, for why.
func (g *Outbound) Resent(ctx context.Context, ev *throughcarev1.Event, attempt uint32, why string) error {
	unsigned := proto.CloneOf(ev)
	unsigned.Signature, unsigned.KeyId = nil, ""
	entry, err := g.entry(unsigned, throughcarev1.DisclosureKind_DISCLOSURE_KIND_RESENT, g.PersonKey.OfCase(ev.GetHandoverReferred().GetReleaseCase()))
	if err != nil {
		return err
	}
	entry.ProtocolId, entry.ProtocolVersion = ev.GetProtocolId(), ev.GetProtocolVersion()
	entry.Note = fmt.Sprintf("re-sent event %s (%s, sequence %d of handover %s), attempt %d: %s",
		ev.GetEventId(), ev.GetType(), ev.GetSequence(), ev.GetHandoverId(), attempt, why)
	if _, err := g.Ledger.Append(ctx, entry, fmt.Sprintf("resent/%s/%d", ev.GetEventId(), attempt)); err != nil {
		return fmt.Errorf("record resend of event %s: %w", ev.GetEventId(), err)
	}
	return nil
}

// entry is the ledger entry of an event going out, with the hash of its encoding.
func (g *Outbound) entry(ev *throughcarev1.Event, kind throughcarev1.DisclosureKind, person []byte) (*throughcarev1.Disclosure, error) {
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		return nil, eventbus.Permanent(fmt.Errorf("encode event %s: %w", ev.GetEventId(), err))
	}
	hash := sha256.Sum256(payload)
	return &throughcarev1.Disclosure{
		Kind:               kind,
		CaseId:             ev.GetCaseId(),
		EventId:            ev.GetEventId(),
		Sender:             ev.GetSource(),
		Recipient:          ev.GetRecipient(),
		Purpose:            ev.GetPurpose(),
		WithheldCategories: categoriesOf(ev.GetWithholdings()),
		Withholdings:       ev.GetWithholdings(),
		Actor:              ev.GetActor(),
		Time:               timestamppb.New(g.Now()),
		PayloadHash:        hash[:],
		PersonHash:         person,
	}, nil
}

func categoriesOf(ws []*throughcarev1.Withholding) []throughcarev1.DataCategory {
	out := make([]throughcarev1.DataCategory, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.GetCategory())
	}
	return out
}

// mergeWithholdings adds to what the event already says was held back.
func mergeWithholdings(have, more []*throughcarev1.Withholding) []*throughcarev1.Withholding {
	for _, w := range more {
		if !slices.ContainsFunc(have, func(h *throughcarev1.Withholding) bool { return h.GetCategory() == w.GetCategory() }) {
			have = append(have, w)
		}
	}
	slices.SortFunc(have, func(a, b *throughcarev1.Withholding) int { return int(a.GetCategory()) - int(b.GetCategory()) })
	return have
}
