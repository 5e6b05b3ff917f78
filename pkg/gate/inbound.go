package gate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/signing"
)

// Inbound is the first gate an event from another agency passes. A refusal is recorded
// in the ledger and returned as permanent, so the message is dead-lettered; a failure to
// reach a verdict is returned for a retry.
type Inbound struct {
	Agency   string
	Protocol Policy
	Ledger   *ledger.Ledger
	Verifier *signing.Verifier
	Replays  *signing.ReplayGuard
	Case     CaseLookup
	Log      *zap.Logger
	Now      func() time.Time
}

// Authenticate refuses an event without a valid signature of its source agency. Nothing
// of an unauthenticated payload is trusted or kept: the refusal records its event id and
// the reason only.
func (g *Inbound) Authenticate(ctx context.Context, ev *throughcarev1.Event) error {
	return g.refuseUnauthentic(ctx, ev, g.Verifier.Verify(ev))
}

// CheckReplay refuses an authenticated event that replays an old one, once its sequence
// says it is new; see Authenticate.
func (g *Inbound) CheckReplay(ctx context.Context, ev *throughcarev1.Event) error {
	return g.refuseUnauthentic(ctx, ev, g.Replays.Check(ctx, ev))
}

func (g *Inbound) refuseUnauthentic(ctx context.Context, ev *throughcarev1.Event, err error) error {
	if err == nil {
		return nil
	}
	kind := refusalKind(err)
	if kind == "" {
		return err // the replay store is unreachable: retry
	}
	entry := &throughcarev1.Disclosure{
		Kind:            throughcarev1.DisclosureKind_DISCLOSURE_KIND_REFUSED,
		EventId:         ev.GetEventId(),
		Sender:          ev.GetSource(),
		Recipient:       g.Agency,
		ProtocolId:      g.Protocol.ID(),
		ProtocolVersion: g.Protocol.Version(),
		Time:            timestamppb.New(g.Now()),
		Note:            fmt.Sprintf("refused event %s claiming to come from %s: %v", ev.GetEventId(), ev.GetSource(), err),
	}
	if _, lerr := g.Ledger.Append(ctx, entry, "unauthenticated/"+ev.GetEventId()+"/"+kind); lerr != nil {
		return fmt.Errorf("record refusal of event %s: %w", ev.GetEventId(), lerr)
	}
	g.Log.Warn("event refused: not authentic", zap.String("event_id", ev.GetEventId()), zap.String("claimed_source", ev.GetSource()), zap.String("reason", kind))
	return eventbus.Permanent(err)
}

// ErrForbidden marks an event refused for carrying what the protocol does not let this
// agency have.
var ErrForbidden = errors.New("the protocol does not allow what it carries")

// RefusalReason names, in a word and without its content, why an event was refused for
// good: a signature verdict, a protocol violation, or "rejected" for anything else.
func RefusalReason(err error) string {
	if kind := refusalKind(err); kind != "" {
		return kind
	}
	if errors.Is(err, ErrForbidden) {
		return "protocol-violation"
	}
	return "rejected"
}

// refusalKind names a verdict on the event; "" is a failure to reach one.
func refusalKind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{
		{signing.ErrUnsigned, "unsigned"}, {signing.ErrUnknownKey, "unknown-key"}, {signing.ErrWrongAgency, "wrong-agency"},
		{signing.ErrBadSignature, "bad-signature"}, {signing.ErrKeyExpired, "key-expired"}, {signing.ErrReplayed, "replayed"},
	} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return ""
}

// Check refuses an event carrying a category the protocol does not let this agency have
// from its source: it is never stored, and the refusal is recorded.
func (g *Inbound) Check(ctx context.Context, ev *throughcarev1.Event) error {
	forbidden, err := g.forbiddenIn(ev, ev.GetHandoverReferred().GetReleaseCase().GetConsents())
	if err == nil && len(forbidden) > 0 && ev.GetHandoverReferred() == nil {
		// Consent can only widen what is allowed: look it up only when it could matter.
		var rc *throughcarev1.ReleaseCase
		if rc, err = g.Case(ctx, ev.GetCaseId()); err == nil {
			forbidden, err = g.forbiddenIn(ev, rc.GetConsents())
		}
	}
	if err != nil {
		return err
	}
	if len(forbidden) == 0 {
		return nil
	}
	note := fmt.Sprintf("refused event %s from %s: it carries %v, which protocol %s v%d does not let %s have for %s",
		ev.GetEventId(), ev.GetSource(), forbidden, g.Protocol.ID(), g.Protocol.Version(), g.Agency, ev.GetPurpose())
	entry := &throughcarev1.Disclosure{
		Kind:               throughcarev1.DisclosureKind_DISCLOSURE_KIND_REFUSED,
		CaseId:             ev.GetCaseId(),
		EventId:            ev.GetEventId(),
		Sender:             ev.GetSource(),
		Recipient:          g.Agency,
		Purpose:            ev.GetPurpose(),
		WithheldCategories: forbidden,
		ProtocolId:         g.Protocol.ID(),
		ProtocolVersion:    g.Protocol.Version(),
		Time:               timestamppb.New(g.Now()),
		Note:               note,
	}
	if _, err := g.Ledger.Append(ctx, entry, "refused/"+ev.GetEventId()); err != nil {
		return fmt.Errorf("record refusal of event %s: %w", ev.GetEventId(), err)
	}
	g.Log.Warn("event refused: protocol violation", zap.String("event_id", ev.GetEventId()), zap.String("source", ev.GetSource()), zap.Any("categories", forbidden))
	return eventbus.Permanent(fmt.Errorf("%s: %w", note, ErrForbidden))
}

// forbiddenIn lists the categories in ev that this agency may not have from its source.
func (g *Inbound) forbiddenIn(ev *throughcarev1.Event, consents []*throughcarev1.Consent) ([]throughcarev1.DataCategory, error) {
	forbidden, err := g.Protocol.Check(ev, ev.GetSource(), g.Agency, ev.GetPurpose(), consents)
	if errors.Is(err, protocol.ErrNoRule) {
		return protocol.Purge(proto.CloneOf(ev), protocol.AllCategories), nil
	}
	return forbidden, err
}

// HoldsPersonalData reports whether an inbox message may hold something personal, so must
// be erased once handled: unless it is an event that carries no categorized field and no
// field this service does not know, it may. A notice holds none: its body stayed in the
// sender's outbox.
func HoldsPersonalData(msg jetstream.Msg) bool {
	if eventbus.IsNotice(msg.Headers(), msg.Data()) {
		return false
	}
	ev, err := eventbus.Decode(msg.Subject(), msg.Headers(), msg.Data())
	return err != nil || protocol.CarriesPersonalData(ev) || hasUnknownFields(ev.ProtoReflect())
}

func hasUnknownFields(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					found = hasUnknownFields(mv.Message())
					return !found
				})
			}
		case fd.Message() == nil:
		case fd.IsList():
			for i := 0; i < v.List().Len() && !found; i++ {
				found = hasUnknownFields(v.List().Get(i).Message())
			}
		default:
			found = hasUnknownFields(v.Message())
		}
		return !found
	})
	return found
}
