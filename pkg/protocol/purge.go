package protocol

import (
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// Purge clears every field of msg, at any depth below routing containers, whose category
// is among categories, and returns the categories it found and cleared, sorted. It is how a
// recipient forgets what it may no longer hold (consent withdrawn, retention run out).
func Purge(msg proto.Message, categories []throughcarev1.DataCategory) []throughcarev1.DataCategory {
	var cleared []throughcarev1.DataCategory
	walkSet(msg.ProtoReflect(), func(m protoreflect.Message, fd protoreflect.FieldDescriptor, c throughcarev1.DataCategory) {
		if slices.Contains(categories, c) {
			m.Clear(fd)
			cleared = append(cleared, c)
		}
	})
	slices.Sort(cleared)
	return slices.Compact(cleared)
}

// AllCategories is every data category, for stripping a message no rule covers.
var AllCategories = func() []throughcarev1.DataCategory {
	var all []throughcarev1.DataCategory
	for n := range throughcarev1.DataCategory_name {
		if n != 0 {
			all = append(all, throughcarev1.DataCategory(n))
		}
	}
	slices.Sort(all)
	return all
}()

// CarriesPersonalData reports whether any categorized field of msg is set.
func CarriesPersonalData(msg proto.Message) bool { return len(Present(msg)) > 0 }

// Present lists, sorted, the categories of the fields set in msg, at any depth below
// routing containers: what Purge with every category would clear, without clearing it.
func Present(msg proto.Message) []throughcarev1.DataCategory {
	var found []throughcarev1.DataCategory
	walkSet(msg.ProtoReflect(), func(_ protoreflect.Message, _ protoreflect.FieldDescriptor, c throughcarev1.DataCategory) {
		found = append(found, c)
	})
	slices.Sort(found)
	return slices.Compact(found)
}

// walkSet calls seen with every categorized field set in m, the message holding it, and
// its category.
func walkSet(m protoreflect.Message, seen func(protoreflect.Message, protoreflect.FieldDescriptor, throughcarev1.DataCategory)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		marker := MarkerOf(fd)
		switch {
		case marker.Category != throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED:
			seen(m, fd, marker.Category)
		case marker.Routing && fd.Message() != nil:
			switch {
			case fd.IsList():
				for i := 0; i < v.List().Len(); i++ {
					walkSet(v.List().Get(i).Message(), seen)
				}
			case fd.IsMap():
				if fd.MapValue().Message() != nil {
					v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
						walkSet(mv.Message(), seen)
						return true
					})
				}
			default:
				walkSet(v.Message(), seen)
			}
		}
		return true
	})
}
