package protocol

import (
	"errors"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"pgregory.net/rapid"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

var (
	agencies = []string{prison, probation, socialWork}
	purposes = []throughcarev1.Purpose{supervision, assistance, coordination}
)

// drawProtocol draws a valid protocol: a random set of flows, each sorting every category
// into allowed, needs consent, or neither.
func drawProtocol(t *rapid.T) *Protocol {
	sp := &throughcarev1.SharingProtocol{ProtocolId: "random", Version: 1}
	for _, a := range agencies {
		sp.Agencies = append(sp.Agencies, &throughcarev1.Agency{Id: a, DisplayName: a})
	}
	for _, sender := range agencies {
		for _, recipient := range agencies {
			for _, purpose := range purposes {
				if sender == recipient || !rapid.Bool().Draw(t, "has rule") {
					continue
				}
				rule := &throughcarev1.SharingRule{
					Sender: sender, Recipient: recipient, Purpose: purpose,
					LegalBasis: "Random Act, Art. 1",
					Retention:  durationpb.New(1e9),
				}
				for _, c := range allCategories {
					switch rapid.IntRange(0, 2).Draw(t, "treatment of "+c.String()) {
					case 1:
						rule.Allowed = append(rule.Allowed, c)
					case 2:
						rule.ConsentRequired = append(rule.ConsentRequired, c)
					}
				}
				sp.Rules = append(sp.Rules, rule)
			}
		}
	}
	if len(sp.Rules) == 0 {
		sp.Rules = append(sp.Rules, &throughcarev1.SharingRule{
			Sender: prison, Recipient: probation, Purpose: supervision,
			LegalBasis: "Random Act, Art. 1", Retention: durationpb.New(1e9),
		})
	}
	if err := validateProtocol(sp); err != nil {
		t.Fatalf("drew an invalid protocol: %v", err)
	}
	p, err := compile(sp)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// drawCase draws a release case with random routing fields and a random subset of its
// categorized fields filled with random content.
func drawCase(t *rapid.T) *throughcarev1.ReleaseCase {
	c := &throughcarev1.ReleaseCase{
		CaseId:     rapid.StringN(0, 20, -1).Draw(t, "case_id"),
		Revision:   rapid.Uint64().Draw(t, "revision"),
		State:      throughcarev1.CaseState(rapid.Int32Range(0, 3).Draw(t, "state")),
		Owner:      rapid.SampledFrom(agencies).Draw(t, "owner"),
		CreateTime: &timestamppb.Timestamp{Seconds: rapid.Int64Range(0, 4e9).Draw(t, "create_time")},
		Consents:   drawConsents(t),
	}
	m := c.ProtoReflect()
	for _, category := range allCategories {
		if rapid.Bool().Draw(t, "has "+category.String()) {
			fill(t, m.Mutable(caseField(category)).Message(), 0)
		}
	}
	return c
}

// fill sets every field of m to random content, down to a few levels of nesting.
func fill(t *rapid.T, m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.Message() != nil {
			if depth < 3 && !fd.IsList() && !fd.IsMap() {
				fill(t, m.Mutable(fd).Message(), depth+1)
			}
			continue
		}
		if fd.IsList() {
			list := m.Mutable(fd).List()
			for range rapid.IntRange(0, 3).Draw(t, "items") {
				list.Append(scalar(t, fd))
			}
			continue
		}
		m.Set(fd, scalar(t, fd))
	}
}

func scalar(t *rapid.T, fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(rapid.String().Draw(t, string(fd.Name())))
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(rapid.Bool().Draw(t, string(fd.Name())))
	case protoreflect.EnumKind:
		values := fd.Enum().Values()
		return protoreflect.ValueOfEnum(values.Get(rapid.IntRange(0, values.Len()-1).Draw(t, string(fd.Name()))).Number())
	case protoreflect.Int32Kind:
		return protoreflect.ValueOfInt32(rapid.Int32().Draw(t, string(fd.Name())))
	default:
		t.Fatalf("fill does not know field %s of kind %s; teach it", fd.FullName(), fd.Kind())
		return protoreflect.Value{}
	}
}

func drawConsents(t *rapid.T) []*throughcarev1.Consent {
	consents := make([]*throughcarev1.Consent, rapid.IntRange(0, 6).Draw(t, "consents"))
	for i := range consents {
		consents[i] = &throughcarev1.Consent{
			Category:  rapid.SampledFrom(allCategories).Draw(t, "consent category"),
			Recipient: rapid.SampledFrom(agencies).Draw(t, "consent recipient"),
			GivenTime: timestamppb.Now(),
		}
		if rapid.Bool().Draw(t, "withdrawn") {
			consents[i].WithdrawnTime = timestamppb.Now()
		}
	}
	return consents
}

// mayFlow is the oracle: the protocol's decision for one category, from the rule's lists,
// written apart from the code under test.
func mayFlow(rule *throughcarev1.SharingRule, category throughcarev1.DataCategory, recipient string, consents []*throughcarev1.Consent) bool {
	if slices.Contains(rule.GetAllowed(), category) {
		return true
	}
	consented := slices.ContainsFunc(consents, func(c *throughcarev1.Consent) bool {
		return c.GetCategory() == category && c.GetRecipient() == recipient && c.GetWithdrawnTime() == nil
	})
	return consented && slices.Contains(rule.GetConsentRequired(), category)
}

// visit calls fn for every populated field of m, going inside routing containers the way
// the contract describes them.
func visit(m protoreflect.Message, fn func(protoreflect.FieldDescriptor, Marker)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		marker := MarkerOf(fd)
		fn(fd, marker)
		held := heldMessage(fd)
		if marker.Category != unspecifiedCategory || !marker.Routing || held == nil || held.ParentFile().Package() == "google.protobuf" {
			return true
		}
		switch {
		case fd.IsList():
			for i := range v.List().Len() {
				visit(v.List().Get(i).Message(), fn)
			}
		case fd.IsMap():
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				visit(mv.Message(), fn)
				return true
			})
		default:
			visit(v.Message(), fn)
		}
		return true
	})
}

func TestEnforceProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := drawProtocol(t)
		original := drawCase(t)
		var msg proto.Message = original
		if rapid.Bool().Draw(t, "inside an event") {
			msg = &throughcarev1.Event{
				EventId: "evt-1",
				Payload: &throughcarev1.Event_HandoverReferred{HandoverReferred: &throughcarev1.HandoverReferred{
					Handover:    &throughcarev1.Handover{HandoverId: "hnd-1"},
					ReleaseCase: original,
				}},
			}
		}
		sender := rapid.SampledFrom(agencies).Draw(t, "sender")
		recipient := rapid.SampledFrom(agencies).Draw(t, "recipient")
		purpose := rapid.SampledFrom(purposes).Draw(t, "purpose")
		consents := drawConsents(t)

		got := proto.Clone(msg)
		report, err := p.Enforce(got, sender, recipient, purpose, consents)
		rule, hasRule := p.Rule(sender, recipient, purpose)
		if !hasRule {
			if !errors.Is(err, ErrNoRule) {
				t.Fatalf("Enforce without a rule: error %v, want ErrNoRule", err)
			}
			if !proto.Equal(got, msg) {
				t.Fatal("Enforce without a rule changed the message")
			}
			return
		}
		if err != nil {
			t.Fatalf("Enforce: %v", err)
		}

		// Nothing the rule does not let flow is left, and nothing unmarked.
		visit(got.ProtoReflect(), func(fd protoreflect.FieldDescriptor, marker Marker) {
			switch {
			case marker.Category != unspecifiedCategory:
				if !mayFlow(rule, marker.Category, recipient, consents) {
					t.Errorf("%s (%s) survived Enforce", fd.FullName(), marker.Category)
				}
			case !marker.Routing:
				t.Errorf("%s carries no marker and survived Enforce", fd.FullName())
			}
		})

		// Exactly what may flow is kept, and routing is untouched.
		want := proto.Clone(msg)
		wantCase := releaseCaseOf(want)
		var present, shared, withheld []throughcarev1.DataCategory
		for _, c := range allCategories {
			if !holds(original, c) {
				continue
			}
			present = append(present, c)
			if mayFlow(rule, c, recipient, consents) {
				shared = append(shared, c)
			} else {
				withheld = append(withheld, c)
				clearCategories(wantCase, c)
			}
		}
		if !proto.Equal(got, want) {
			t.Fatalf("Enforce left\n%v\nwant\n%v", got, want)
		}
		if !slices.Equal(report.Shared, shared) || !slices.Equal(report.WithheldCategories(), withheld) {
			t.Fatalf("report shared %v withheld %v; want %v and %v of %v",
				report.Shared, report.WithheldCategories(), shared, withheld, present)
		}
		for _, w := range report.Withheld {
			wantReason := notAllowed
			if slices.Contains(rule.GetConsentRequired(), w.GetCategory()) {
				wantReason = noConsent
			}
			if w.GetReason() != wantReason {
				t.Errorf("%s withheld for %s, want %s", w.GetCategory(), w.GetReason(), wantReason)
			}
		}

		// The recipient's check agrees, and a second pass changes nothing.
		excess, err := p.Check(got, sender, recipient, purpose, consents)
		if err != nil || len(excess) != 0 {
			t.Fatalf("Check after Enforce = %v, %v; want nothing", excess, err)
		}
		again := proto.Clone(got)
		second, err := p.Enforce(again, sender, recipient, purpose, consents)
		if err != nil {
			t.Fatalf("second Enforce: %v", err)
		}
		if !proto.Equal(again, got) {
			t.Fatalf("Enforce is not idempotent: second pass left\n%v\nfirst\n%v", again, got)
		}
		if len(second.Withheld) != 0 || !slices.Equal(second.Shared, report.Shared) {
			t.Fatalf("second Enforce reported shared %v withheld %v; want %v and nothing", second.Shared, second.Withheld, report.Shared)
		}
	})
}

// releaseCaseOf finds the release case in what drawCase's caller built.
func releaseCaseOf(msg proto.Message) *throughcarev1.ReleaseCase {
	if e, ok := msg.(*throughcarev1.Event); ok {
		return e.GetHandoverReferred().GetReleaseCase()
	}
	return msg.(*throughcarev1.ReleaseCase)
}
