package main

import (
	"slices"

	"google.golang.org/protobuf/reflect/protoreflect"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// schemas are the JSON Schemas of the contract's messages and enums as protojson renders
// them, keyed by full name: the catalogue's components.schemas.
type schemas map[string]object

const schemasPath = "#/components/schemas/"

func ref(path string) object { return object{{"$ref", path}} }

// ref adds d's schema, once, and points to it.
func (s schemas) ref(d protoreflect.Descriptor) object {
	name := string(d.FullName())
	if _, done := s[name]; !done {
		s[name] = nil // taken, so that a message holding itself ends here
		switch d := d.(type) {
		case protoreflect.EnumDescriptor:
			s[name] = enumSchema(d)
		case protoreflect.MessageDescriptor:
			s[name] = s.message(d)
		}
	}
	return ref(schemasPath + name)
}

// enumSchema is an enum as protojson writes it: the value's name.
func enumSchema(ed protoreflect.EnumDescriptor) object {
	var names []string
	for i := range ed.Values().Len() {
		names = append(names, string(ed.Values().Get(i).Name()))
	}
	return object{{"type", "string"}, {"enum", names}}
}

func (s schemas) message(md protoreflect.MessageDescriptor) object {
	var props object
	inherits := md.Fields().Len() > 0
	for i := range md.Fields().Len() {
		fd := md.Fields().Get(i)
		props = props.with(fd.JSONName(), s.field(fd))
		if m := protocol.MarkerOf(fd); m.Routing || m.Category != unspecified {
			inherits = false
		}
	}
	sch := object{{"type", "object"}}
	if inherits {
		// The contract leaves such fields unmarked (protocol.CheckMarkers): the category of
		// the field holding the message covers them.
		sch = sch.with("description", "Every field takes the data category of the field that holds this message.")
	}
	if len(props) > 0 {
		sch = sch.with("properties", props)
	}
	var oneofs object
	for i := range md.Oneofs().Len() {
		od := md.Oneofs().Get(i)
		if od.IsSynthetic() {
			continue // proto3 optional: an ordinary field in JSON
		}
		var members []string
		for j := range od.Fields().Len() {
			members = append(members, od.Fields().Get(j).JSONName())
		}
		oneofs = oneofs.with(string(od.Name()), members)
	}
	if len(oneofs) > 0 {
		// protojson writes at most one member of each; plain JSON Schema has no short way
		// to say so.
		sch = sch.with("x-oneofs", oneofs)
	}
	return sch
}

const unspecified = throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED

func (s schemas) field(fd protoreflect.FieldDescriptor) object {
	var sch object
	switch {
	case fd.IsMap():
		// protojson writes every map key as a JSON string.
		sch = object{{"type", "object"}, {"additionalProperties", s.value(fd.MapValue())}}
	case fd.IsList():
		sch = object{{"type", "array"}, {"items", s.value(fd)}}
	default:
		sch = s.value(fd)
	}
	if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
		sch = annotate(sch, "x-oneof", string(od.Name()))
	}
	if c := protocol.MarkerOf(fd).Category; c != unspecified {
		sch = annotate(sch, "x-data-category", c.String())
	}
	return sch
}

// annotate adds a member to a field's schema. A bare $ref is wrapped in allOf first: JSON
// Schema draft 7, which AsyncAPI's schemas follow, ignores whatever sits beside a $ref.
func annotate(sch object, key string, value any) object {
	if len(sch) == 1 && sch[0].key == "$ref" {
		sch = object{{"allOf", []object{sch}}}
	}
	return sch.with(key, value)
}

// value is the schema of one value of fd: the element of a list, the value of a map.
func (s schemas) value(fd protoreflect.FieldDescriptor) object {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return object{{"type", "boolean"}}
	case protoreflect.StringKind:
		return object{{"type", "string"}}
	case protoreflect.BytesKind:
		return object{{"type", "string"}, {"contentEncoding", "base64"}}
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return object{{"type", "integer"}, {"format", "int32"}}
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return object{{"type", "integer"}, {"format", "uint32"}, {"minimum", 0}}
	// protojson writes 64-bit integers as strings: JSON numbers lose them past 2^53.
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return object{{"type", "string"}, {"format", "int64"}, {"pattern", `^-?[0-9]+$`}}
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return object{{"type", "string"}, {"format", "uint64"}, {"pattern", `^[0-9]+$`}}
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		// Besides numbers, protojson writes "NaN", "Infinity" and "-Infinity".
		return object{{"oneOf", []object{
			{{"type", "number"}},
			{{"type", "string"}, {"enum", []string{"NaN", "Infinity", "-Infinity"}}},
		}}}
	case protoreflect.EnumKind:
		return s.ref(fd.Enum())
	}
	md := fd.Message()
	if sch, ok := wellKnown[md.FullName()]; ok {
		return slices.Clone(sch)
	}
	if md.ParentFile().Path() == "google/protobuf/wrappers.proto" {
		return s.value(md.Fields().ByName("value")) // a wrapper is written as its value
	}
	return s.ref(md)
}

// wellKnown are the types protojson writes in a form of their own.
var wellKnown = map[protoreflect.FullName]object{
	"google.protobuf.Timestamp": {{"type", "string"}, {"format", "date-time"}},
	"google.protobuf.Duration":  {{"type", "string"}, {"pattern", `^-?[0-9]+(\.[0-9]{1,9})?s$`}},
	"google.protobuf.FieldMask": {{"type", "string"}, {"description", "Field paths in lowerCamelCase, comma-separated."}},
	"google.protobuf.Empty":     {{"type", "object"}},
	"google.protobuf.Struct":    {{"type", "object"}},
	"google.protobuf.ListValue": {{"type", "array"}},
	"google.protobuf.Value":     {{"description", "Any JSON value."}},
	"google.protobuf.Any": {{"type", "object"}, {"required", []string{"@type"}},
		{"properties", object{{"@type", object{{"type", "string"}}}}}},
}

// carried is every data category the fields can carry, in the enum's order: a categorized
// field carries its category, a routing field what its message's fields carry.
func carried(fields ...protoreflect.FieldDescriptor) []string {
	found := map[throughcarev1.DataCategory]bool{}
	seen := map[protoreflect.FullName]bool{}
	var walk func(fd protoreflect.FieldDescriptor)
	walk = func(fd protoreflect.FieldDescriptor) {
		if c := protocol.MarkerOf(fd).Category; c != unspecified {
			found[c] = true
			return
		}
		md := fd.Message()
		if fd.IsMap() {
			md = fd.MapValue().Message()
		}
		if md == nil || seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		for i := range md.Fields().Len() {
			walk(md.Fields().Get(i))
		}
	}
	for _, fd := range fields {
		walk(fd)
	}
	names := []string{}
	values := unspecified.Descriptor().Values()
	for i := range values.Len() {
		if c := throughcarev1.DataCategory(values.Get(i).Number()); found[c] {
			names = append(names, c.String())
		}
	}
	return names
}
