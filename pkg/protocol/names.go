package protocol

import (
	"math/bits"
	"strings"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// purposeNames are how people write the purposes in prose, as PRODUCT.md does. Agencies
// carry their own names in the protocol (agency.Registry.Name).
var purposeNames = map[throughcarev1.Purpose]string{
	throughcarev1.Purpose_PURPOSE_SUPERVISION:           "supervision",
	throughcarev1.Purpose_PURPOSE_POST_PENAL_ASSISTANCE: "post-penal assistance",
	throughcarev1.Purpose_PURPOSE_COORDINATION:          "coordination",
}

func purposeName(p throughcarev1.Purpose) string {
	if name, ok := purposeNames[p]; ok {
		return name
	}
	return p.String()
}

// categoryName is the category without its enum prefix: HEALTH, not DATA_CATEGORY_HEALTH.
func categoryName(c throughcarev1.DataCategory) string {
	return strings.TrimPrefix(c.String(), "DATA_CATEGORY_")
}

// categorySet is a set of data categories, bit n standing for category number n. The enum
// stays far below 64 values (a test checks), and a set fits in a register.
// DATA_CATEGORY_UNSPECIFIED (bit 0) stands for data of no known category.
type categorySet uint64

// categoryBit is the set holding c alone, or the empty set for a number a set cannot hold;
// such a category is then never allowed, which fails closed.
func categoryBit(c throughcarev1.DataCategory) categorySet {
	if c < 0 || c >= 64 {
		return 0
	}
	return 1 << uint(c)
}

func setOf(categories []throughcarev1.DataCategory) categorySet {
	var s categorySet
	for _, c := range categories {
		s |= categoryBit(c)
	}
	return s
}

func (s categorySet) has(c throughcarev1.DataCategory) bool {
	return s&categoryBit(c) != 0
}

// categories lists the set in enum order.
func (s categorySet) categories() []throughcarev1.DataCategory {
	if s == 0 {
		return nil
	}
	out := make([]throughcarev1.DataCategory, 0, bits.OnesCount64(uint64(s)))
	for rest := uint64(s); rest != 0; rest &= rest - 1 {
		out = append(out, throughcarev1.DataCategory(bits.TrailingZeros64(rest)))
	}
	return out
}
