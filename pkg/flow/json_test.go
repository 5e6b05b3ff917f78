package flow_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"pgregory.net/rapid"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/flow"
)

// AppendJSON and protojson give the same JSON value for any record, every field of the
// contract's FlowRecord filled at random (a field added to the contract is filled too, so
// the test fails until AppendJSON writes it).
func TestAppendJSONIsProtojson(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		r := &throughcarev1.FlowRecord{}
		m := r.ProtoReflect()
		fields := m.Descriptor().Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			if fd.IsList() {
				list := m.Mutable(fd).List()
				for range rapid.IntRange(0, 3).Draw(t, string(fd.Name())+" length") {
					list.Append(randomValue(t, fd))
				}
				continue
			}
			if rapid.Bool().Draw(t, string(fd.Name())+" set") {
				m.Set(fd, randomValue(t, fd))
			}
		}
		want, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(r)
		if err != nil {
			t.Fatalf("protojson: %v", err)
		}
		got, err := flow.AppendJSON(nil, r)
		if err != nil {
			t.Fatalf("AppendJSON: %v", err)
		}
		var wantValue, gotValue any
		if err := json.Unmarshal(want, &wantValue); err != nil {
			t.Fatalf("protojson's output %s: %v", want, err)
		}
		if err := json.Unmarshal(got, &gotValue); err != nil {
			t.Fatalf("AppendJSON wrote invalid JSON %s: %v", got, err)
		}
		if !reflect.DeepEqual(gotValue, wantValue) {
			t.Fatalf("AppendJSON:\n%s\nprotojson:\n%s", got, want)
		}
	})
}

func randomValue(t *rapid.T, fd protoreflect.FieldDescriptor) protoreflect.Value {
	name := string(fd.Name())
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(rapid.String().Draw(t, name))
	case protoreflect.EnumKind:
		// Past the last name too: protojson writes an unnamed value as its number.
		last := fd.Enum().Values().Get(fd.Enum().Values().Len() - 1).Number()
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber(rapid.Int32Range(0, int32(last)+2).Draw(t, name)))
	case protoreflect.Uint64Kind:
		return protoreflect.ValueOfUint64(rapid.Uint64().Draw(t, name))
	case protoreflect.Uint32Kind:
		return protoreflect.ValueOfUint32(rapid.Uint32().Draw(t, name))
	case protoreflect.MessageKind:
		if fd.Message().FullName() == "google.protobuf.Timestamp" {
			ts := &timestamppb.Timestamp{
				Seconds: rapid.Int64Range(-62135596800, 253402300799).Draw(t, name+" seconds"),
				Nanos:   rapid.SampledFrom([]int32{0, 1, 1000, 1_000_000, 999_999_999, rapid.Int32Range(0, 999_999_999).Draw(t, name+" nanos")}).Draw(t, name+" nanos kind"),
			}
			return protoreflect.ValueOfMessage(ts.ProtoReflect())
		}
	}
	t.Fatalf("FlowRecord field %s is a %s %s, which AppendJSON does not write", name, fd.Kind(), fd.Cardinality())
	return protoreflect.Value{}
}

func TestAppendJSONRefusesWhatProtojsonRefuses(t *testing.T) {
	for name, r := range map[string]*throughcarev1.FlowRecord{
		"invalid UTF-8":  {EventId: "ev-\xff"},
		"time past 9999": {Time: &timestamppb.Timestamp{Seconds: 253402300800}},
	} {
		if _, err := protojson.Marshal(r); err == nil {
			t.Fatalf("%s: protojson accepts it; the case tests nothing", name)
		}
		if b, err := flow.AppendJSON(nil, r); err == nil {
			t.Errorf("%s: AppendJSON wrote %s, want an error", name, b)
		}
	}
}
