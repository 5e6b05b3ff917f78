// Package ids makes the server-generated ids of cases, handovers and events. An id is safe
// as a NATS subject token and as a Key-Value key, and ids made later sort later, so listing
// by key lists by creation time.
package ids

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"regexp"
	"time"
)

// Prefixes say what an id names.
const (
	Case     = "rc"
	Handover = "ho"
	Event    = "ev"
	Request  = "rq"
)

// lowercase Crockford-like alphabet without padding: sorts the same as the bytes it encodes.
var encoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

var valid = regexp.MustCompile(`^[a-z]{2}_[0-9a-hjkmnp-tv-z]{26}$`)

// New returns prefix_ followed by 48 bits of millisecond time and 80 random bits.
func New(prefix string) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(time.Now().UnixMilli())<<16)
	_, _ = rand.Read(b[6:]) // crypto/rand.Read never fails (Go 1.24+).
	return prefix + "_" + encoding.EncodeToString(b[:])
}

// Valid reports whether id has the shape New makes, with any prefix.
func Valid(id string) bool { return valid.MatchString(id) }
