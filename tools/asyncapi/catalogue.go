package main

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/flow"
	_ "github.com/throughcare/throughcare/pkg/tracing" // sets the propagator whose headers PublishAs adds
)

// Where the catalogue lives, and what rewrites it.
const (
	outPath    = "docs/events/asyncapi.yaml"
	regenerate = "go run ./tools/asyncapi"
)

// Placeholder agency ids: valid ids, so eventbus.Subject accepts them, then swapped for the
// channel parameters they stand for.
const (
	sampleSender    = "sender"
	sampleRecipient = "recipient"
	samplePublisher = "publisher"
)

// headerMeanings says what each NATS header of an event means. Every header eventbus.Encode
// sets and every field the trace propagator writes needs an entry, and every entry such a
// header: the generator fails otherwise, so no header goes undocumented or stale.
var headerMeanings = map[string]object{
	jetstream.MsgIDHeader:  {{"description", "JetStream's duplicate check: the event id, so an event published twice is stored once. A deliberate re-send (eventbus.PublishAs) carries another id."}},
	"ce-specversion":       {{"description", "CloudEvents spec version (binary mode)."}},
	"ce-id":                {{"description", "CloudEvents id: the event id (eventId). The receiver refuses a body whose id differs."}},
	"ce-source":            {{"description", "CloudEvents source: throughcare/ and the sending agency's id."}},
	"ce-type":              {{"description", "CloudEvents type: throughcare.v1. and the event type, as in the subject."}},
	"ce-time":              {{"format", "date-time"}, {"description", "CloudEvents time: when the event occurred (occurredAt), RFC 3339 in UTC."}},
	"ce-subject":           {{"description", "CloudEvents subject: the case id (caseId). Events about one case are handled in order."}},
	"content-type":         {{"description", "The body's media type: a throughcare.v1.Event in protobuf binary."}},
	"throughcare-handover": {{"description", "The handover the event travels along (handoverId), readable even when the body is not, so that a dead letter can still be traced."}},
	"traceparent":          {{"description", "W3C trace context of the call or event that caused this one: a referral and its receipts are one trace across the agencies."}},
	"tracestate":           {{"description", "W3C trace state, when the trace has any."}},
	"baggage":              {{"description", "W3C baggage, when the cause carried any."}},
}

// generate renders the catalogue.
func generate() ([]byte, error) {
	doc, err := catalogue()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# The event catalogue, generated from the protobuf contract by `%s`. Do not edit.\n", regenerate)
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func catalogue() (object, error) {
	s := schemas{}
	eventMD := (*throughcarev1.Event)(nil).ProtoReflect().Descriptor()
	flowMD := (*throughcarev1.FlowRecord)(nil).ProtoReflect().Descriptor()
	eventSchema, flowSchema := s.ref(eventMD), s.ref(flowMD)

	types, err := eventTypes(eventMD)
	if err != nil {
		return nil, err
	}
	shared, perType, contentType, err := eventHeaders(types)
	if err != nil {
		return nil, err
	}
	var envelope []protoreflect.FieldDescriptor // the fields every event has
	for i := range eventMD.Fields().Len() {
		if fd := eventMD.Fields().Get(i); fd.ContainingOneof() == nil {
			envelope = append(envelope, fd)
		}
	}

	var channels, operations, messages object
	for _, et := range types {
		id := et.payload.JSONName()
		subject, err := eventbus.Subject(&throughcarev1.Event{Source: sampleSender, Recipient: sampleRecipient, Type: et.typ})
		if err != nil {
			return nil, err
		}
		address, err := parameterise(subject, map[string]string{"sender": sampleSender, "recipient": sampleRecipient})
		if err != nil {
			return nil, err
		}
		categories := carried(append(slices.Clone(envelope), et.payload)...)
		description := fmt.Sprintf("Stored in the sender's outbox stream %s; the recipient's inbox stream %s sources it.",
			eventbus.OutboxStream("<sender>"), eventbus.InboxStream("<recipient>"))
		if len(categories) > 0 {
			description += " One that carries personal data arrives as a notice: its headers alone, with throughcare-notice set and its sequence in throughcare-sequence. " +
				"The whole event stays in the outbox under tc.{sender}.body.{recipient}.{event id}, which the recipient alone may read, by direct get, until it acknowledges the event."
		}
		channels = channels.with(id, object{
			{"address", address},
			{"title", title(et.payload.Name())},
			{"description", description},
			{"parameters", object{{"sender", ref("#/components/parameters/sender")}, {"recipient", ref("#/components/parameters/recipient")}}},
			{"messages", object{{id, ref("#/components/messages/" + id)}}},
		})
		operations = operations.with("send"+upperFirst(id), operation("send", id, "The sender's service publishes it to its outbox."))
		operations = operations.with("receive"+upperFirst(id), operation("receive", id, "The recipient's service takes it from its inbox, checks it against the protocol and applies it."))

		headers := ref(schemasPath + "EventHeaders")
		if fixed := perType[et.typ]; len(fixed) > 0 {
			headers = object{{"allOf", []object{headers, {{"properties", fixed}}}}}
		}
		messages = messages.with(id, object{
			{"name", string(et.payload.Name())},
			{"title", title(et.payload.Name())},
			{"contentType", contentType},
			{"correlationId", object{{"description", "The handover the event travels along."}, {"location", "$message.header#/throughcare-handover"}}},
			{"headers", headers},
			// The envelope, with this type and its payload.
			{"payload", object{{"allOf", []object{eventSchema, {
				{"required", []string{"type", id}},
				{"properties", object{{"type", object{{"const", et.typ.String()}}}}},
			}}}}},
			{"x-protobuf-message", string(eventMD.FullName())},
			{"x-data-categories", categories},
			{"x-carries-personal-data", len(categories) > 0},
		})
	}

	flowChannel, err := flowChannel()
	if err != nil {
		return nil, err
	}
	channels = channels.with("flowRecord", flowChannel)
	operations = operations.with("sendFlowRecord", operation("send", "flowRecord", "Every agency's service publishes one when it sends an event and one when it handles an event it received, without waiting: a record never holds up a delivery."))
	operations = operations.with("receiveFlowRecord", operation("receive", "flowRecord", "Operators read the FLOW stream, from an account that holds no payload (throughcare events)."))
	flowCategories := carried(fieldsOf(flowMD)...)
	messages = messages.with("flowRecord", object{
		{"name", "flow_record"},
		{"title", "Flow record"},
		{"contentType", "application/protobuf; messageType=" + string(flowMD.FullName())},
		{"headers", ref(schemasPath + "FlowRecordHeaders")},
		{"payload", flowSchema},
		{"x-protobuf-message", string(flowMD.FullName())},
		{"x-data-categories", flowCategories},
		{"x-carries-personal-data", len(flowCategories) > 0},
	})

	s["EventHeaders"] = shared
	s["FlowRecordHeaders"] = object{
		{"type", "object"},
		{"required", []string{jetstream.MsgIDHeader}},
		{"properties", object{{jetstream.MsgIDHeader, object{{"type", "string"},
			{"description", "<event id>.<publisher>.<stage>.<attempt>: a record published twice is stored once."}}}}},
	}
	var sorted object
	for _, name := range slices.Sorted(maps.Keys(s)) {
		sorted = sorted.with(name, s[name])
	}
	components := object{
		{"messages", messages},
		{"parameters", parameters()},
		{"schemas", sorted},
	}

	return object{
		{"asyncapi", "3.0.0"},
		{"info", object{
			{"title", "throughcare events"},
			{"version", string(eventMD.ParentFile().Package())},
			{"description", description},
		}},
		{"defaultContentType", "application/protobuf"},
		{"servers", object{{"nats", object{
			{"host", "{host}"},
			{"protocol", "nats"},
			{"description", "The deployment's NATS with JetStream. Each agency's service connects as its own user, in its own account when NATS runs one per agency (deploy/nats)."},
			{"variables", object{{"host", object{{"default", "127.0.0.1:4222"}, {"description", "Host and port of a NATS server; `throughcare dev` embeds one here."}}}}},
		}}}},
		{"channels", channels},
		{"operations", operations},
		{"components", components},
	}, nil
}

const description = `The events throughcare's services exchange on NATS JetStream, and the records
they publish to the operators' FLOW stream. Generated from the protobuf contract
(proto/throughcare/v1) by ` + "`" + regenerate + "`" + `; a test fails when this file and the
contract differ.

Bodies travel as protobuf in binary (each message's contentType); the payload schemas
describe the same messages as protojson writes them. A property with x-data-category holds
personal data of that category (throughcare.v1.DataCategory), all of it, down to every
field inside; a property without one is routing metadata, unless its message says its
fields take the category of the field holding it. x-data-categories lists every category
a message can carry, x-carries-personal-data whether it can carry any.

Agency ids in subjects ({sender}, {recipient}, ...) come from the deployment's registry, the
agencies its sharing protocol declares: they are data, and any such id may appear.
`

// eventType is one event type and the Event.payload member it names.
type eventType struct {
	typ     throughcarev1.EventType
	payload protoreflect.FieldDescriptor
}

// eventTypes pairs every EventType with its payload member, EVENT_TYPE_X with x, and fails
// on either without the other.
func eventTypes(eventMD protoreflect.MessageDescriptor) ([]eventType, error) {
	payload := eventMD.Oneofs().ByName("payload")
	if payload == nil {
		return nil, fmt.Errorf("%s has no payload oneof", eventMD.FullName())
	}
	values := throughcarev1.EventType(0).Descriptor().Values()
	var types []eventType
	for i := range values.Len() {
		v := values.Get(i)
		if v.Number() == 0 {
			continue
		}
		name := protoreflect.Name(strings.ToLower(strings.TrimPrefix(string(v.Name()), "EVENT_TYPE_")))
		fd := eventMD.Fields().ByName(name)
		if fd == nil || fd.ContainingOneof() != payload {
			return nil, fmt.Errorf("event type %s has no payload member %s in %s", v.Name(), name, payload.FullName())
		}
		types = append(types, eventType{throughcarev1.EventType(v.Number()), fd})
	}
	if len(types) != payload.Fields().Len() {
		return nil, fmt.Errorf("%s has %d members and EventType %d types: each member needs its type", payload.FullName(), payload.Fields().Len(), len(types))
	}
	return types, nil
}

// eventHeaders derives the headers of events from eventbus.Encode itself, on two samples
// of each type that differ in every routing field: a header the same in both is fixed for
// the type (a const), the same for every type a const of all. It returns the schema every
// event's headers follow, the consts of each type, and the content type.
func eventHeaders(types []eventType) (object, map[throughcarev1.EventType]object, string, error) {
	fixed := map[throughcarev1.EventType]map[string]string{}
	var names []string
	for _, et := range types {
		a, err := eventbus.Encode(sampleEvent(et.typ, "a", sampleSender, sampleRecipient, 1))
		if err != nil {
			return nil, nil, "", err
		}
		b, err := eventbus.Encode(sampleEvent(et.typ, "b", "other", "another", 2))
		if err != nil {
			return nil, nil, "", err
		}
		keys := slices.Sorted(maps.Keys(a.Header))
		if names == nil {
			names = keys
		}
		if !slices.Equal(keys, names) || !slices.Equal(keys, slices.Sorted(maps.Keys(b.Header))) {
			return nil, nil, "", fmt.Errorf("eventbus.Encode sets different headers on different events: %v, %v", names, keys)
		}
		fixed[et.typ] = map[string]string{}
		for _, k := range keys {
			if v := a.Header.Get(k); v == b.Header.Get(k) {
				fixed[et.typ][k] = v
			}
		}
	}
	trace := otel.GetTextMapPropagator().Fields()
	all := slices.Sorted(slices.Values(append(slices.Clone(names), trace...)))
	for _, k := range all {
		if _, ok := headerMeanings[k]; !ok {
			return nil, nil, "", fmt.Errorf("header %s has no meaning in headerMeanings (tools/asyncapi)", k)
		}
	}
	for k := range headerMeanings {
		if !slices.Contains(all, k) {
			return nil, nil, "", fmt.Errorf("headerMeanings (tools/asyncapi) describes %s, which no event carries any more", k)
		}
	}

	var props object
	perType := map[throughcarev1.EventType]object{}
	for _, k := range all {
		prop := append(object{{"type", "string"}}, headerMeanings[k]...)
		first := fixed[types[0].typ][k]
		same := slices.IndexFunc(types, func(et eventType) bool {
			v, ok := fixed[et.typ][k]
			return !ok || v != first
		}) < 0
		switch {
		case same:
			prop = prop.with("const", first)
		case slices.Contains(names, k):
			for _, et := range types {
				if v, ok := fixed[et.typ][k]; ok {
					perType[et.typ] = perType[et.typ].with(k, object{{"const", v}})
				}
			}
		}
		props = props.with(k, prop)
	}
	shared := object{{"type", "object"}, {"required", names}, {"properties", props}}
	return shared, perType, fixed[types[0].typ]["content-type"], nil
}

func sampleEvent(t throughcarev1.EventType, n, source, recipient string, second int64) *throughcarev1.Event {
	return &throughcarev1.Event{
		EventId: "ev-" + n, Type: t, Source: source, Recipient: recipient,
		CaseId: "rc-" + n, HandoverId: "ho-" + n, OccurredAt: timestamppb.New(time.Unix(second, 0)),
		ProtocolId: "protocol-" + n, ProtocolVersion: uint32(second), Actor: "actor-" + n, Sequence: uint64(second),
	}
}

// flowChannel is the FLOW stream's subjects, checked against flow.Subject for every stage
// and type, so the parameters' values are the ones it writes.
func flowChannel() (object, error) {
	stages := tokens(throughcarev1.FlowStage(0).Descriptor(), "FLOW_STAGE_")
	types := tokens(throughcarev1.EventType(0).Descriptor(), "EVENT_TYPE_")
	var address string
	for _, stage := range stages {
		for _, typ := range types {
			subject := flow.Subject(samplePublisher, &throughcarev1.FlowRecord{
				Source: sampleSender, Recipient: sampleRecipient,
				Stage: throughcarev1.FlowStage(stage.number), Type: throughcarev1.EventType(typ.number),
			})
			got, err := parameterise(subject, map[string]string{
				"publisher": samplePublisher, "source": sampleSender, "recipient": sampleRecipient,
				"stage": stage.text, "type": typ.text,
			})
			if err != nil {
				return nil, err
			}
			if address != "" && got != address {
				return nil, fmt.Errorf("flow subjects differ in shape: %s and %s", address, got)
			}
			address = got
		}
	}
	return object{
		{"address", address},
		{"title", "Flow record"},
		{"description", "The operators' stream " + flow.Stream + ": what operators see of each event crossing between agencies, its routing metadata and what became of it, never its payload."},
		{"parameters", object{
			{"publisher", object{{"description", "The agency that publishes the record: the source at sent and resent, the recipient otherwise. " + agencyIDs()}}},
			{"stage", object{{"enum", texts(stages)}, {"description", "What became of the event: the record's stage, in lower case without its prefix."}}},
			{"source", object{{"description", "The agency that sent the event. " + agencyIDs()}, {"location", "$message.payload#/source"}}},
			{"recipient", object{{"description", "The agency the event is addressed to. " + agencyIDs()}, {"location", "$message.payload#/recipient"}}},
			{"type", object{{"enum", texts(types)}, {"description", "The event's type, in lower case without its prefix."}}},
		}},
		{"messages", object{{"flowRecord", ref("#/components/messages/flowRecord")}}},
	}, nil
}

// token is an enum value as a subject writes it.
type token struct {
	number protoreflect.EnumNumber
	text   string
}

// tokens are the subject tokens of an enum's values, in order, but the unspecified one: the
// name in lower case without its prefix.
func tokens(ed protoreflect.EnumDescriptor, prefix string) []token {
	var out []token
	for i := range ed.Values().Len() {
		if v := ed.Values().Get(i); v.Number() != 0 {
			out = append(out, token{v.Number(), strings.ToLower(strings.TrimPrefix(string(v.Name()), prefix))})
		}
	}
	return out
}

func texts(ts []token) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.text)
	}
	return out
}

// parameters are the agency parameters of the event channels.
func parameters() object {
	return object{
		{"sender", object{{"description", "The sending agency. " + agencyIDs()}, {"location", "$message.payload#/source"}}},
		{"recipient", object{{"description", "The agency the event is addressed to. " + agencyIDs()}, {"location", "$message.payload#/recipient"}}},
	}
}

// agencyIDs says what an agency id is, with the contract's own pattern for it.
func agencyIDs() string {
	fd := (*throughcarev1.Agency)(nil).ProtoReflect().Descriptor().Fields().ByName("id")
	rules, _ := proto.GetExtension(fd.Options(), validate.E_Field).(*validate.FieldRules)
	return "An agency id from the deployment's registry (the agencies its sharing protocol declares), matching " +
		rules.GetString().GetPattern() + "."
}

// parameterise turns subject into a channel address: each segment equal to a value of
// params becomes {name}. Each value must be exactly one segment, or the address would lie.
func parameterise(subject string, params map[string]string) (string, error) {
	segments := strings.Split(subject, ".")
	for name, value := range params {
		i := slices.Index(segments, value)
		if i < 0 || slices.Index(segments[i+1:], value) >= 0 {
			return "", fmt.Errorf("subject %s: want %q (parameter %s) exactly once as a segment", subject, value, name)
		}
		segments[i] = "{" + name + "}"
	}
	return strings.Join(segments, "."), nil
}

func operation(action, channel, summary string) object {
	return object{
		{"action", action},
		{"channel", ref("#/channels/" + channel)},
		{"summary", summary},
		{"messages", []object{ref("#/channels/" + channel + "/messages/" + channel)}},
	}
}

func fieldsOf(md protoreflect.MessageDescriptor) []protoreflect.FieldDescriptor {
	var fields []protoreflect.FieldDescriptor
	for i := range md.Fields().Len() {
		fields = append(fields, md.Fields().Get(i))
	}
	return fields
}

// title is a payload member's name as words: handover_referred is "Handover referred".
func title(name protoreflect.Name) string {
	return upperFirst(strings.ReplaceAll(string(name), "_", " "))
}

func upperFirst(s string) string { return strings.ToUpper(s[:1]) + s[1:] }
