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
	purge(msg.ProtoReflect(), categories, &cleared)
	slices.Sort(cleared)
	return slices.Compact(cleared)
}

func purge(m protoreflect.Message, categories []throughcarev1.DataCategory, cleared *[]throughcarev1.DataCategory) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		marker := MarkerOf(fd)
		switch {
		case marker.Category != throughcarev1.DataCategory_DATA_CATEGORY_UNSPECIFIED:
			if slices.Contains(categories, marker.Category) {
				m.Clear(fd)
				*cleared = append(*cleared, marker.Category)
			}
		case marker.Routing && fd.Message() != nil:
			switch {
			case fd.IsList():
				for i := 0; i < v.List().Len(); i++ {
					purge(v.List().Get(i).Message(), categories, cleared)
				}
			case fd.IsMap():
				if fd.MapValue().Message() != nil {
					v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
						purge(mv.Message(), categories, cleared)
						return true
					})
				}
			default:
				purge(v.Message(), categories, cleared)
			}
		}
		return true
	})
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
func CarriesPersonalData(msg proto.Message) bool {
	return len(Purge(proto.Clone(msg), AllCategories)) > 0
}
