package main

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// generated is the catalogue as the contract generates it, parsed back.
func generated(t *testing.T) map[string]any {
	t.Helper()
	out, err := generate()
	if err != nil {
		t.Fatalf("generate: %v", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("the generated catalogue is not YAML: %v", err)
	}
	return doc
}

func TestCommittedCatalogueIsGenerated(t *testing.T) {
	want, err := generate()
	if err != nil {
		t.Fatalf("generate: %v", err)
	}
	if err := compare(filepath.Join("..", "..", outPath), want); err != nil {
		t.Fatal(err)
	}
}

func TestCompareFailsOnAStaleFile(t *testing.T) {
	want, err := generate()
	if err != nil {
		t.Fatalf("generate: %v", err)
	}
	path := filepath.Join(t.TempDir(), "asyncapi.yaml")
	if err := compare(path, want); err == nil {
		t.Error("compare accepted a missing file")
	}
	stale := bytes.Replace(want, []byte("DATA_CATEGORY_IDENTITY"), []byte("DATA_CATEGORY_HEALTH"), 1)
	if err := os.WriteFile(path, stale, 0o644); err != nil {
		t.Fatal(err)
	}
	err = compare(path, want)
	if err == nil || !strings.Contains(err.Error(), regenerate) {
		t.Errorf("compare on a stale file: got %v, want an error naming %q", err, regenerate)
	}
	line := bytes.Count(want[:bytes.Index(want, []byte("DATA_CATEGORY_IDENTITY"))], []byte("\n")) + 1
	if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("line %d:", line)) {
		t.Errorf("compare: %v, want it to name line %d", err, line)
	}
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := compare(path, want); err != nil {
		t.Errorf("compare on the generated file: %v", err)
	}
}

// TestGenerateIsDeterministic runs the generator several times: any map iteration leaking
// into the output would show.
func TestGenerateIsDeterministic(t *testing.T) {
	first, err := generate()
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		again, err := generate()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, again) {
			t.Fatal("two runs of the generator wrote different catalogues")
		}
	}
}

func TestEveryEventTypeIsCatalogued(t *testing.T) {
	doc := generated(t)
	channels := get(doc, "channels").(map[string]any)
	eventSchema := get(doc, "components", "schemas", "throughcare.v1.Event").(map[string]any)
	eventMD := (*throughcarev1.Event)(nil).ProtoReflect().Descriptor()

	values := throughcarev1.EventType(0).Descriptor().Values()
	for i := 1; i < values.Len(); i++ {
		typ := throughcarev1.EventType(values.Get(i).Number())
		// The subject eventbus really publishes on, with the agencies as parameters.
		subject, err := eventbus.Subject(&throughcarev1.Event{Source: "prison", Recipient: "probation", Type: typ})
		if err != nil {
			t.Fatal(err)
		}
		address := strings.Replace(strings.Replace(subject, ".prison.", ".{sender}.", 1), ".probation.", ".{recipient}.", 1)
		var channel map[string]any
		for _, c := range channels {
			if c := c.(map[string]any); c["address"] == address {
				channel = c
			}
		}
		if channel == nil {
			t.Errorf("%s: no channel with address %s", typ, address)
			continue
		}
		member := strings.ToLower(strings.TrimPrefix(typ.String(), "EVENT_TYPE_"))
		jsonName := eventMD.Fields().ByName(protoreflect.Name(member)).JSONName()
		msg := resolve(t, doc, get(channel, "messages", jsonName, "$ref").(string)).(map[string]any)
		parts := get(msg, "payload", "allOf").([]any)
		if got := get(parts[0], "$ref"); got != schemasPath+"throughcare.v1.Event" {
			t.Errorf("%s: payload is %v, want the Event envelope", typ, got)
		}
		if got := get(parts[1], "properties", "type", "const"); got != typ.String() {
			t.Errorf("%s: payload type const is %v", typ, got)
		}
		if req := get(parts[1], "required").([]any); !slices.Contains(req, any(jsonName)) {
			t.Errorf("%s: payload does not require %s: %v", typ, jsonName, req)
		}
	}

	payload := eventMD.Oneofs().ByName("payload")
	members := get(eventSchema, "x-oneofs", "payload").([]any)
	if len(members) != payload.Fields().Len() {
		t.Errorf("x-oneofs.payload lists %d members, the contract has %d", len(members), payload.Fields().Len())
	}
	for i := range payload.Fields().Len() {
		name := payload.Fields().Get(i).JSONName()
		if got := get(eventSchema, "properties", name, "x-oneof"); got != "payload" {
			t.Errorf("Event.%s: x-oneof is %v, want payload", name, got)
		}
	}
}

func TestFieldsCarryTheirDataCategory(t *testing.T) {
	doc := generated(t)
	schemas := get(doc, "components", "schemas").(map[string]any)

	// A known personal field, and routing fields.
	if got := get(schemas, "throughcare.v1.ReleaseCase", "properties", "person", "x-data-category"); got != "DATA_CATEGORY_IDENTITY" {
		t.Errorf("ReleaseCase.person: x-data-category %v, want DATA_CATEGORY_IDENTITY", got)
	}
	for _, routing := range []string{"caseId", "source", "recipient"} {
		if got := get(schemas, "throughcare.v1.Event", "properties", routing, "x-data-category"); got != nil {
			t.Errorf("Event.%s is routing metadata, yet has x-data-category %v", routing, got)
		}
	}

	// Every field of every catalogued contract message says exactly what its marker says.
	checked := 0
	for name, sch := range schemas {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
		md, ok := d.(protoreflect.MessageDescriptor)
		if err != nil || !ok {
			continue
		}
		for i := range md.Fields().Len() {
			fd := md.Fields().Get(i)
			want := any(nil)
			if c := protocol.MarkerOf(fd).Category; c != unspecified {
				want = c.String()
			}
			if got := get(sch, "properties", fd.JSONName(), "x-data-category"); got != want {
				t.Errorf("%s: x-data-category %v, want %v", fd.FullName(), got, want)
			}
			checked++
		}
	}
	if checked < 50 {
		t.Errorf("checked %d fields; the catalogue should hold the whole event contract", checked)
	}

	messages := get(doc, "components", "messages").(map[string]any)
	for id, want := range map[string]bool{"handoverReferred": true, "planShared": true, "sequenceAcknowledged": false, "flowRecord": false} {
		if got := get(messages, id, "x-carries-personal-data"); got != want {
			t.Errorf("message %s: x-carries-personal-data %v, want %v", id, got, want)
		}
	}
	if cats := get(messages, "handoverReferred", "x-data-categories").([]any); !slices.Contains(cats, any("DATA_CATEGORY_IDENTITY")) {
		t.Errorf("handoverReferred: x-data-categories %v lacks DATA_CATEGORY_IDENTITY", cats)
	}
	// The FLOW record must hold routing metadata only, down to every schema it reaches.
	if found := categoriesBelow(doc, get(schemas, "throughcare.v1.FlowRecord"), map[string]bool{}); len(found) > 0 {
		t.Errorf("FlowRecord reaches x-data-category %v", found)
	}
}

// categoriesBelow is every x-data-category in v and the schemas it refers to.
func categoriesBelow(doc map[string]any, v any, seen map[string]bool) []string {
	var found []string
	switch v := v.(type) {
	case map[string]any:
		for k, w := range v {
			switch {
			case k == "x-data-category":
				found = append(found, fmt.Sprint(w))
			case k == "$ref" && !seen[fmt.Sprint(w)]:
				seen[fmt.Sprint(w)] = true
				target, _ := lookup(doc, fmt.Sprint(w))
				found = append(found, categoriesBelow(doc, target, seen)...)
			default:
				found = append(found, categoriesBelow(doc, w, seen)...)
			}
		}
	case []any:
		for _, w := range v {
			found = append(found, categoriesBelow(doc, w, seen)...)
		}
	}
	return found
}

func TestHeadersAreTheOnesEventbusSets(t *testing.T) {
	doc := generated(t)
	headers := get(doc, "components", "schemas", "EventHeaders").(map[string]any)
	msg, err := eventbus.Encode(&throughcarev1.Event{
		EventId: "ev-1", Type: throughcarev1.EventType_EVENT_TYPE_RECEIPT_ISSUED, Source: "probation", Recipient: "prison",
		CaseId: "rc-1", HandoverId: "ho-1", OccurredAt: timestamppb.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	required := get(headers, "required").([]any)
	for k := range msg.Header {
		if get(headers, "properties", k, "description") == nil {
			t.Errorf("header %s, which eventbus.Encode sets, is not described", k)
		}
		if !slices.Contains(required, any(k)) {
			t.Errorf("header %s is always set, yet not required", k)
		}
	}
	if got := get(doc, "components", "messages", "receiptIssued", "headers", "allOf", 1, "properties", "ce-type", "const"); got != msg.Header.Get("ce-type") {
		t.Errorf("receiptIssued: ce-type const %v, eventbus sets %q", got, msg.Header.Get("ce-type"))
	}
	if get(headers, "properties", "traceparent") == nil {
		t.Error("the trace context header traceparent is not described")
	}
}

// TestGeneratorRefusesUndocumentedHeaders: a header eventbus sets without a meaning here,
// or a meaning for a header nobody sets, stops the generator.
func TestGeneratorRefusesUndocumentedHeaders(t *testing.T) {
	saved := headerMeanings
	t.Cleanup(func() { headerMeanings = saved })

	headerMeanings = maps.Clone(saved)
	delete(headerMeanings, "ce-subject")
	if _, err := generate(); err == nil || !strings.Contains(err.Error(), "ce-subject") {
		t.Errorf("generate without ce-subject's meaning: %v, want an error naming it", err)
	}
	headerMeanings = maps.Clone(saved)
	headerMeanings["ce-dataschema"] = object{{"description", "never set"}}
	if _, err := generate(); err == nil || !strings.Contains(err.Error(), "ce-dataschema") {
		t.Errorf("generate with a stale meaning: %v, want an error naming it", err)
	}
}

func TestParameteriseWantsEachValueOnce(t *testing.T) {
	got, err := parameterise("tc.sender.out.recipient.plan_shared", map[string]string{"sender": "sender", "recipient": "recipient"})
	if err != nil || got != "tc.{sender}.out.{recipient}.plan_shared" {
		t.Errorf("parameterise: %q, %v", got, err)
	}
	for _, subject := range []string{"tc.sender.out.sender.plan_shared", "tc.prison.out.recipient.plan_shared"} {
		if _, err := parameterise(subject, map[string]string{"sender": "sender", "recipient": "recipient"}); err == nil {
			t.Errorf("parameterise(%s) accepted a sender that is not exactly one segment", subject)
		}
	}
}

func TestCatalogueIsAsyncAPI3(t *testing.T) {
	for _, problem := range checkStructure(generated(t)) {
		t.Error(problem)
	}
}

// TestValidateCatchesBrokenDocuments proves the structural check above can fail.
func TestValidateCatchesBrokenDocuments(t *testing.T) {
	for name, c := range map[string]struct {
		breakIt func(doc map[string]any)
		want    string
	}{
		"version": {func(doc map[string]any) { doc["asyncapi"] = "2.6.0" }, "asyncapi is"},
		"message gone": {func(doc map[string]any) {
			delete(get(doc, "components", "messages").(map[string]any), "planShared")
		}, "#/components/messages/planShared"},
		"operation channel": {func(doc map[string]any) {
			get(doc, "operations", "sendPlanShared").(map[string]any)["channel"] = map[string]any{"$ref": "#/channels/nowhere"}
		}, "sendPlanShared"},
		"operation message of another channel": {func(doc map[string]any) {
			get(doc, "operations", "sendPlanShared").(map[string]any)["messages"] = []any{map[string]any{"$ref": "#/channels/flowRecord/messages/flowRecord"}}
		}, "not a message of its channel"},
		"parameter undeclared": {func(doc map[string]any) {
			delete(get(doc, "channels", "flowRecord", "parameters").(map[string]any), "stage")
		}, "{stage}"},
		"schema gone": {func(doc map[string]any) {
			delete(get(doc, "components", "schemas").(map[string]any), "throughcare.v1.Person")
		}, "throughcare.v1.Person"},
	} {
		t.Run(name, func(t *testing.T) {
			doc := generated(t)
			c.breakIt(doc)
			problems := strings.Join(checkStructure(doc), "\n")
			if !strings.Contains(problems, c.want) {
				t.Errorf("checkStructure missed it: want a problem mentioning %q, got:\n%s", c.want, problems)
			}
		})
	}
}

// checkStructure checks the AsyncAPI 3.0 structure the catalogue relies on: the version, the
// required members, channels whose parameters match their address, operations whose
// channel and messages resolve and belong together, and that every $ref resolves.
func checkStructure(doc map[string]any) []string {
	var problems []string
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if doc["asyncapi"] != "3.0.0" {
		fail("asyncapi is %v, want 3.0.0", doc["asyncapi"])
	}
	for _, k := range []string{"title", "version"} {
		if s, _ := get(doc, "info", k).(string); s == "" {
			fail("info.%s is missing", k)
		}
	}
	servers, _ := doc["servers"].(map[string]any)
	if len(servers) == 0 {
		fail("no servers")
	}
	for name, s := range servers {
		if get(s, "protocol") != "nats" || get(s, "host") == nil {
			fail("server %s: want host and protocol nats", name)
		}
	}
	param := regexp.MustCompile(`\{([^}]+)\}`)
	channels, _ := doc["channels"].(map[string]any)
	for name, c := range channels {
		address, _ := get(c, "address").(string)
		var inAddress []string
		for _, m := range param.FindAllStringSubmatch(address, -1) {
			inAddress = append(inAddress, m[1])
		}
		params, _ := get(c, "parameters").(map[string]any)
		for _, p := range inAddress {
			if params[p] == nil {
				fail("channel %s: address %s has {%s}, which it does not declare", name, address, p)
			}
		}
		for p := range params {
			if !slices.Contains(inAddress, p) {
				fail("channel %s: parameter %s is not in its address %s", name, p, address)
			}
		}
		if msgs, _ := get(c, "messages").(map[string]any); len(msgs) == 0 {
			fail("channel %s has no messages", name)
		}
	}
	operations, _ := doc["operations"].(map[string]any)
	if len(operations) == 0 {
		fail("no operations")
	}
	for name, op := range operations {
		if a := get(op, "action"); a != "send" && a != "receive" {
			fail("operation %s: action %v", name, a)
		}
		channel, _ := get(op, "channel", "$ref").(string)
		if target, ok := lookup(doc, channel); !ok || !strings.HasPrefix(channel, "#/channels/") || get(target, "address") == nil {
			fail("operation %s: channel %q is not a channel of the document", name, channel)
		}
		msgs, _ := get(op, "messages").([]any)
		if len(msgs) == 0 {
			fail("operation %s has no messages", name)
		}
		for _, m := range msgs {
			if r, _ := get(m, "$ref").(string); !strings.HasPrefix(r, channel+"/messages/") {
				fail("operation %s: message %q is not a message of its channel %s", name, r, channel)
			}
		}
	}
	components, _ := doc["components"].(map[string]any)
	key := regexp.MustCompile(`^[a-zA-Z0-9.\-_]+$`)
	for kind, set := range components {
		set, _ := set.(map[string]any)
		for name := range set {
			if !key.MatchString(name) {
				fail("components.%s.%s: not a valid component name", kind, name)
			}
		}
	}
	messages, _ := get(doc, "components", "messages").(map[string]any)
	for name, m := range messages {
		if get(m, "payload") == nil {
			fail("message %s has no payload", name)
		}
	}
	eachRef(doc, func(r string) {
		if _, ok := lookup(doc, r); !ok {
			fail("$ref %s does not resolve", r)
		}
	})
	slices.Sort(problems)
	return slices.Compact(problems)
}

func eachRef(v any, fn func(string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, w := range v {
			if s, ok := w.(string); ok && k == "$ref" {
				fn(s)
			}
			eachRef(w, fn)
		}
	case []any:
		for _, w := range v {
			eachRef(w, fn)
		}
	}
}

// lookup follows a local JSON pointer ("#/a/b").
func lookup(doc map[string]any, ref string) (any, bool) {
	if !strings.HasPrefix(ref, "#/") {
		return nil, false
	}
	var v any = doc
	for _, seg := range strings.Split(ref[2:], "/") {
		seg = strings.NewReplacer("~1", "/", "~0", "~").Replace(seg)
		m, ok := v.(map[string]any)
		if !ok || m[seg] == nil {
			return nil, false
		}
		v = m[seg]
	}
	return v, true
}

func resolve(t *testing.T, doc map[string]any, ref string) any {
	t.Helper()
	v, ok := lookup(doc, ref)
	if !ok {
		t.Fatalf("$ref %s does not resolve", ref)
	}
	return v
}

// get walks maps by key and lists by index; nil where the path leads nowhere.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}
