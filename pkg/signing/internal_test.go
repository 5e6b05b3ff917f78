package signing

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

func TestSignedFieldNumbersMatchTheContract(t *testing.T) {
	fields := (&throughcarev1.Event{}).ProtoReflect().Descriptor().Fields()
	for _, tc := range []struct {
		name protoreflect.Name
		num  protowire.Number
		kind protoreflect.Kind
	}{
		{"signature", signatureField, protoreflect.BytesKind},
		{"key_id", keyIDField, protoreflect.StringKind},
	} {
		field := fields.ByName(tc.name)
		if field == nil || field.Number() != tc.num || field.Kind() != tc.kind || field.Cardinality() == protoreflect.Repeated {
			t.Errorf("Event.%s = %v, want singular %v field %d", tc.name, field, tc.kind, tc.num)
		}
	}
}

// signedBytes cuts fields from the encoding; it must equal clearing them and marshaling.
func TestSignedBytesEqualMarshalingWithoutSignature(t *testing.T) {
	withUnknown := func(num protowire.Number, typ protowire.Type) *throughcarev1.Event {
		ev := &throughcarev1.Event{EventId: "ev_1", Signature: []byte("sig"), KeyId: "prison-1"}
		raw := protowire.AppendTag(nil, num, typ)
		switch typ {
		case protowire.VarintType:
			raw = protowire.AppendVarint(raw, 5)
		case protowire.Fixed64Type:
			raw = protowire.AppendFixed64(raw, 5)
		}
		ev.ProtoReflect().SetUnknown(raw)
		return ev
	}
	for name, ev := range map[string]*throughcarev1.Event{
		"empty":               {},
		"only signature":      {Signature: []byte{1, 2, 3}, KeyId: "prison-1"},
		"routing and payload": {EventId: "ev_1", CaseId: "rc_1", Source: "prison", Signature: make([]byte, 64), KeyId: "k", Payload: &throughcarev1.Event_ConsentWithdrawn{ConsentWithdrawn: &throughcarev1.ConsentWithdrawn{Categories: []throughcarev1.DataCategory{1, 2}}}},
		"unknown field 40":    withUnknown(40, protowire.VarintType),
		"unknown varint 30":   withUnknown(30, protowire.VarintType),
		"unknown fixed64 31":  withUnknown(31, protowire.Fixed64Type),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := signedBytes(ev)
			if err != nil {
				t.Fatalf("signedBytes: %v", err)
			}
			cleared := proto.CloneOf(ev)
			cleared.Signature, cleared.KeyId = nil, ""
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(cleared)
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("signedBytes = %x, want %x", got, want)
			}
		})
	}
}
