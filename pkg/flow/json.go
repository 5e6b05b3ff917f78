package flow

import (
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// AppendJSON appends r as protojson writes it with UseProtoNames (field names as in the
// contract, zero values left out, enums by name, 64-bit integers quoted, times in
// RFC 3339), written field by field: a replay prints records several times faster than
// through protojson, which walks each message by reflection. TestAppendJSONIsProtojson
// holds the two equal, for every field the contract declares.
func AppendJSON(b []byte, r *throughcarev1.FlowRecord) ([]byte, error) {
	e := jsonObject{b: append(b, '{')}
	e.str("event_id", r.GetEventId())
	e.enum("type", r.GetType())
	e.str("source", r.GetSource())
	e.str("recipient", r.GetRecipient())
	e.str("case_id", r.GetCaseId())
	e.str("handover_id", r.GetHandoverId())
	e.enum("stage", r.GetStage())
	if t := r.GetTime(); t != nil {
		if err := t.CheckValid(); err != nil {
			return b, fmt.Errorf("flow record time: %w", err)
		}
		e.key("time")
		e.b = appendTimestamp(e.b, t.AsTime())
	}
	if v := r.GetSequence(); v != 0 {
		e.key("sequence")
		e.b = append(strconv.AppendUint(append(e.b, '"'), v, 10), '"')
	}
	e.uint32("attempt", r.GetAttempt())
	e.enums("shared_categories", r.GetSharedCategories())
	e.enums("withheld_categories", r.GetWithheldCategories())
	e.str("protocol_id", r.GetProtocolId())
	e.uint32("protocol_version", r.GetProtocolVersion())
	e.enum("purpose", r.GetPurpose())
	e.enum("receipt", r.GetReceipt())
	e.enum("state", r.GetState())
	e.str("reason", r.GetReason())
	if e.err != nil {
		return b, e.err
	}
	return append(e.b, '}'), nil
}

type jsonObject struct {
	b    []byte
	more bool
	err  error
}

func (e *jsonObject) key(name string) {
	if e.more {
		e.b = append(e.b, ',')
	}
	e.more = true
	e.b = append(append(append(e.b, '"'), name...), '"', ':')
}

func (e *jsonObject) str(name, v string) {
	if v == "" {
		return
	}
	if !utf8.ValidString(v) {
		e.err = fmt.Errorf("flow record field %s: invalid UTF-8", name)
		return
	}
	e.key(name)
	e.b = appendString(e.b, v)
}

func (e *jsonObject) uint32(name string, v uint32) {
	if v != 0 {
		e.key(name)
		e.b = strconv.AppendUint(e.b, uint64(v), 10)
	}
}

type enum interface {
	Number() protoreflect.EnumNumber
	Descriptor() protoreflect.EnumDescriptor
}

func (e *jsonObject) enum(name string, v enum) {
	if v.Number() != 0 {
		e.key(name)
		e.b = appendEnum(e.b, v)
	}
}

func enumsOf[E enum](name string, vs []E, e *jsonObject) {
	if len(vs) == 0 {
		return
	}
	e.key(name)
	e.b = append(e.b, '[')
	for i, v := range vs {
		if i > 0 {
			e.b = append(e.b, ',')
		}
		e.b = appendEnum(e.b, v)
	}
	e.b = append(e.b, ']')
}

func (e *jsonObject) enums(name string, vs []throughcarev1.DataCategory) { enumsOf(name, vs, e) }

// appendEnum writes an enum by name, or by number when the contract has no name for it.
func appendEnum(b []byte, v enum) []byte {
	if d := v.Descriptor().Values().ByNumber(v.Number()); d != nil {
		return append(append(append(b, '"'), d.Name()...), '"')
	}
	return strconv.AppendInt(b, int64(v.Number()), 10)
}

// appendTimestamp writes t as protojson does: UTC, with 0, 3, 6 or 9 fractional digits.
func appendTimestamp(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05")
	if ns := t.Nanosecond(); ns != 0 {
		frac := strconv.AppendInt(nil, int64(ns)+1e9, 10)[1:] // 9 digits, leading zeros kept
		for len(frac) > 3 && string(frac[len(frac)-3:]) == "000" {
			frac = frac[:len(frac)-3]
		}
		b = append(append(b, '.'), frac...)
	}
	return append(b, 'Z', '"')
}

// appendString writes s as a JSON string; s is valid UTF-8.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
