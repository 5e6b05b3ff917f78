// Package protocol decides which data may flow from one agency to another. It reads the data
// categories the contract puts on every field; every path that lets data out (event out,
// event in, read) asks this package and no other.
package protocol

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// Marker is what the contract says a field carries.
type Marker struct {
	// Category is set for personal data; the whole value of the field is of this category.
	Category throughcarev1.DataCategory
	// Routing is set for routing metadata; a message-typed routing field is a container
	// whose own fields carry their own markers.
	Routing bool
}

// MarkerOf reads the (throughcare.v1.category) and (throughcare.v1.routing) options of fd.
func MarkerOf(fd protoreflect.FieldDescriptor) Marker {
	opts, ok := fd.Options().(*descriptorpb.FieldOptions)
	if !ok || opts == nil {
		return Marker{}
	}
	return Marker{
		Category: proto.GetExtension(opts, throughcarev1.E_Category).(throughcarev1.DataCategory),
		Routing:  proto.GetExtension(opts, throughcarev1.E_Routing).(bool),
	}
}

// CheckMarkers walks every message of files from the top down and reports each field that
// does not carry exactly one marker. Messages that are never the type of a field are the
// roots. Below a categorized field nothing is checked: the category covers the whole value,
// so a marker there would be ignored and is reported too.
func CheckMarkers(files ...protoreflect.FileDescriptor) []string {
	var messages []protoreflect.MessageDescriptor
	used := map[protoreflect.FullName]bool{}
	for _, f := range files {
		eachMessage(f.Messages(), func(md protoreflect.MessageDescriptor) {
			messages = append(messages, md)
			for i := 0; i < md.Fields().Len(); i++ {
				if m := md.Fields().Get(i).Message(); m != nil {
					used[m.FullName()] = true
				}
			}
		})
	}
	var problems []string
	checked := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if checked[md.FullName()] || md.ParentFile().Package() != files[0].Package() {
			return
		}
		checked[md.FullName()] = true
		for i := 0; i < md.Fields().Len(); i++ {
			fd := md.Fields().Get(i)
			m := MarkerOf(fd)
			switch {
			case m.Routing && m.Category != throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED:
				problems = append(problems, fmt.Sprintf("%s: carries both a category and the routing marker", fd.FullName()))
			case m.Category != throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED:
				if fd.Message() != nil {
					problems = append(problems, markedBelow(fd.Message(), fd.FullName(), map[protoreflect.FullName]bool{})...)
				}
			case m.Routing && fd.IsMap():
				// A map's entries take its field's marker: only a message value has fields
				// of its own to mark.
				if v := fd.MapValue().Message(); v != nil {
					walk(v)
				}
			case m.Routing:
				if fd.Message() != nil {
					walk(fd.Message())
				}
			default:
				problems = append(problems, fmt.Sprintf("%s: carries neither a data category nor the routing marker", fd.FullName()))
			}
		}
	}
	for _, md := range messages {
		if !used[md.FullName()] {
			walk(md)
		}
	}
	slices.Sort(problems)
	return slices.Compact(problems)
}

// markedBelow reports markers inside a categorized field, where the category already rules.
func markedBelow(md protoreflect.MessageDescriptor, via protoreflect.FullName, seen map[protoreflect.FullName]bool) []string {
	if seen[md.FullName()] {
		return nil
	}
	seen[md.FullName()] = true
	var problems []string
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		if m := MarkerOf(fd); m.Routing || m.Category != throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED {
			problems = append(problems, fmt.Sprintf("%s: is inside categorized field %s, whose category covers it; remove its marker", fd.FullName(), via))
		}
		if fd.Message() != nil {
			problems = append(problems, markedBelow(fd.Message(), via, seen)...)
		}
	}
	return problems
}

func eachMessage(mds protoreflect.MessageDescriptors, fn func(protoreflect.MessageDescriptor)) {
	for i := 0; i < mds.Len(); i++ {
		md := mds.Get(i)
		if md.IsMapEntry() {
			continue
		}
		fn(md)
		eachMessage(md.Messages(), fn)
	}
}
