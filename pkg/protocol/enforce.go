package protocol

import (
	"math/bits"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// Report is what one Enforce did.
type Report struct {
	// Rule is the rule the message was cut down under. It is shared with the protocol:
	// read it, never modify it.
	Rule *throughcarev1.SharingRule
	// Shared lists the categories that were present and kept, in enum order.
	Shared []throughcarev1.DataCategory
	// Withheld lists the categories that were present and cleared, and why, in enum order.
	Withheld []*throughcarev1.Withholding
}

// WithheldCategories lists the categories of Withheld, in the same order.
func (r Report) WithheldCategories() []throughcarev1.DataCategory {
	if len(r.Withheld) == 0 {
		return nil
	}
	out := make([]throughcarev1.DataCategory, len(r.Withheld))
	for i, w := range r.Withheld {
		out[i] = w.GetCategory()
	}
	return out
}

// StandingConsent reports whether consents hold the person's consent to share category with
// recipient that has not been withdrawn.
func StandingConsent(consents []*throughcarev1.Consent, category throughcarev1.DataCategory, recipient string) bool {
	for _, c := range consents {
		if c.GetCategory() == category && c.GetRecipient() == recipient && c.GetWithdrawnTime() == nil {
			return true
		}
	}
	return false
}

// Enforce cuts msg down, in place, to what the rule for (sender, recipient, purpose) lets
// flow; pass a clone if the original must stay whole. Every populated field is decided by
// its marker:
//   - a categorized field stays if the rule allows its category, or requires consent for it
//     and consents hold a standing consent to recipient; otherwise it is cleared;
//   - a routing field stays, and the messages it holds (singular, list elements, map
//     values) have their own fields decided the same way; well-known types such as
//     Timestamp stay whole, since their fields carry no markers;
//   - a field without a marker, an extension and unknown fields are cleared, because
//     nothing says they are not personal data.
//
// Without a rule it returns RuleFor's error and leaves msg untouched.
func (p *Protocol) Enforce(msg proto.Message, sender, recipient string, purpose throughcarev1.Purpose, consents []*throughcarev1.Consent) (Report, error) {
	cr, err := p.compiledRuleFor(sender, recipient, purpose)
	if err != nil {
		return Report{}, err
	}
	w := walker{visible: cr.visibleTo(recipient, consents), clear: true}
	p.walkRoot(&w, msg)
	return cr.report(w.kept, w.withheld), nil
}

// Check is the recipient's side of Enforce: it returns the categories present in msg that
// the rule for (sender, recipient, purpose) does not let flow, or lets flow only with a
// consent consents do not hold, and leaves msg alone. DATA_CATEGORY_UNSPECIFIED in the
// result stands for fields with no marker, extensions or unknown fields, which Enforce
// would have cleared. An empty result means msg is within the rule.
func (p *Protocol) Check(msg proto.Message, sender, recipient string, purpose throughcarev1.Purpose, consents []*throughcarev1.Consent) ([]throughcarev1.DataCategory, error) {
	cr, err := p.compiledRuleFor(sender, recipient, purpose)
	if err != nil {
		return nil, err
	}
	w := walker{visible: cr.visibleTo(recipient, consents)}
	p.walkRoot(&w, msg)
	excess := w.withheld
	if w.unmarked {
		excess |= categoryBit(throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED)
	}
	return excess.categories(), nil
}

// visibleTo is the set of categories that may flow to recipient right now.
func (cr *compiledRule) visibleTo(recipient string, consents []*throughcarev1.Consent) categorySet {
	visible := cr.allowed
	// Ranging over the bits rather than categories() keeps Enforce free of allocations here.
	for rest := uint64(cr.consentRequired); rest != 0; rest &= rest - 1 {
		c := throughcarev1.DataCategory(bits.TrailingZeros64(rest))
		if StandingConsent(consents, c, recipient) {
			visible |= categoryBit(c)
		}
	}
	return visible
}

func (cr *compiledRule) report(kept, withheld categorySet) Report {
	r := Report{Rule: cr.rule, Shared: kept.categories()}
	categories := withheld.categories()
	if len(categories) == 0 {
		return r
	}
	// One allocation for all withholdings; they are only ever used through pointers.
	withholdings := make([]throughcarev1.Withholding, len(categories))
	r.Withheld = make([]*throughcarev1.Withholding, len(categories))
	for i, c := range categories {
		w := &withholdings[i]
		w.Category = c
		w.Reason = throughcarev1.WithholdReason_WITHHOLD_REASON_NOT_ALLOWED
		if cr.consentRequired.has(c) {
			w.Reason = throughcarev1.WithholdReason_WITHHOLD_REASON_NO_CONSENT
		}
		r.Withheld[i] = w
	}
	return r
}

// fieldAction is what the walk does with a populated field, read from its marker once.
type fieldAction uint8

const (
	// clearField: the field carries no marker, so nothing says it is not personal data.
	clearField fieldAction = iota
	// decideByCategory: the field is personal data of one category, kept or cleared whole.
	decideByCategory
	// walkRouting: the field is a routing container, kept; the messages it holds are walked.
	walkRouting
)

// messagePlan is the walk's view of one message type: each field it must look at, with
// its action. Routing fields with nothing inside to decide (scalars, enums, well-known
// types) are left out: they always stay, and every Has saved counts on the hot path.
type messagePlan struct {
	fields []fieldPlan
	// extendable messages may hold extensions, which carry no marker of this contract.
	extendable bool
}

type fieldPlan struct {
	fd       protoreflect.FieldDescriptor
	action   fieldAction
	category categorySet
	// inner is the plan of the messages a walkRouting field holds (singular, list elements
	// or map values).
	inner *messagePlan
}

// planFor returns the cached plan of md, building it on first use.
func (p *Protocol) planFor(md protoreflect.MessageDescriptor) *messagePlan {
	if plan, ok := p.plans.Load(md); ok {
		return plan.(*messagePlan)
	}
	plan, _ := p.plans.LoadOrStore(md, buildPlan(md, map[protoreflect.MessageDescriptor]*messagePlan{}))
	return plan.(*messagePlan)
}

// buildPlan builds the plan of md and of every message it contains through routing fields.
// building breaks cycles of recursive messages.
func buildPlan(md protoreflect.MessageDescriptor, building map[protoreflect.MessageDescriptor]*messagePlan) *messagePlan {
	if plan, ok := building[md]; ok {
		return plan
	}
	fields := md.Fields()
	plan := &messagePlan{
		fields:     make([]fieldPlan, 0, fields.Len()),
		extendable: md.ExtensionRanges().Len() > 0,
	}
	building[md] = plan
	for i := range fields.Len() {
		fd := fields.Get(i)
		marker := MarkerOf(fd)
		fp := fieldPlan{fd: fd}
		switch {
		// A field carrying both markers breaks the contract (CheckMarkers reports it);
		// treating it as personal data is the safe reading.
		case marker.Category != throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED:
			fp.action = decideByCategory
			fp.category = categoryBit(marker.Category)
			if fp.category == 0 {
				// A category no set can hold could never be allowed or reported; clearing
				// it as unvouched data at least makes Check say so.
				fp.action = clearField
			}
		case marker.Routing:
			held := heldMessage(fd)
			if held == nil || isWellKnown(held) {
				continue
			}
			fp.action = walkRouting
			fp.inner = buildPlan(held, building)
		default:
			fp.action = clearField
		}
		plan.fields = append(plan.fields, fp)
	}
	return plan
}

// heldMessage is the message type a field holds, itself or as list element or map value.
func heldMessage(fd protoreflect.FieldDescriptor) protoreflect.MessageDescriptor {
	if fd.IsMap() {
		return fd.MapValue().Message()
	}
	return fd.Message()
}

// isWellKnown is true for google.protobuf messages such as Timestamp: values, not
// containers, and their fields carry no markers of this contract.
func isWellKnown(md protoreflect.MessageDescriptor) bool {
	return md.ParentFile().Package() == "google.protobuf"
}

// walker is one pass over a message, Enforce's when clear is set and Check's otherwise, so
// both decide every field the same way.
type walker struct {
	visible categorySet
	clear   bool
	// kept and withheld are the categories found populated and allowed, or not allowed.
	kept, withheld categorySet
	// unmarked is set when a field without a marker, an extension or unknown fields were found.
	unmarked bool
}

func (p *Protocol) walkRoot(w *walker, msg proto.Message) {
	if msg == nil {
		return
	}
	m := msg.ProtoReflect()
	if !m.IsValid() {
		return
	}
	w.message(m, p.planFor(m.Descriptor()))
}

func (w *walker) message(m protoreflect.Message, plan *messagePlan) {
	for i := range plan.fields {
		f := &plan.fields[i]
		if !m.Has(f.fd) {
			continue
		}
		switch f.action {
		case decideByCategory:
			if w.visible&f.category != 0 {
				w.kept |= f.category
				continue
			}
			w.withheld |= f.category
			w.clearField(m, f.fd)
		case walkRouting:
			w.held(m, f)
		default:
			w.unmarked = true
			w.clearField(m, f.fd)
		}
	}
	if len(m.GetUnknown()) > 0 {
		w.unmarked = true
		if w.clear {
			m.SetUnknown(nil)
		}
	}
	if plan.extendable {
		w.extensions(m)
	}
}

// held walks the messages a routing field holds.
func (w *walker) held(m protoreflect.Message, f *fieldPlan) {
	var v protoreflect.Value
	if w.clear {
		v = m.Mutable(f.fd)
	} else {
		v = m.Get(f.fd)
	}
	switch {
	case f.fd.IsMap():
		v.Map().Range(func(_ protoreflect.MapKey, value protoreflect.Value) bool {
			w.message(value.Message(), f.inner)
			return true
		})
	case f.fd.IsList():
		list := v.List()
		for i := range list.Len() {
			w.message(list.Get(i).Message(), f.inner)
		}
	default:
		w.message(v.Message(), f.inner)
	}
}

func (w *walker) extensions(m protoreflect.Message) {
	var found []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if fd.IsExtension() {
			found = append(found, fd)
		}
		return true
	})
	for _, fd := range found {
		w.unmarked = true
		w.clearField(m, fd)
	}
}

func (w *walker) clearField(m protoreflect.Message, fd protoreflect.FieldDescriptor) {
	if w.clear {
		m.Clear(fd)
	}
}
