// Package ids makes the server-generated ids of cases, handovers and events. An id is safe
// as a NATS subject token and as a Key-Value key, and ids made later by one process sort
// later, so listing by key lists by creation time.
package ids

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"regexp"
	"sync"
	"time"
)

// Prefixes say what an id names.
const (
	Case     = "rc"
	Handover = "ho"
	Event    = "ev"
	Request  = "rq"
)

// Lowercase alphabet without padding, in ASCII order: ids sort like the bytes they encode.
var encoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

var valid = regexp.MustCompile(`^[a-z]{2}_[0-9a-hjkmnp-tv-z]{26}$`)

// monotonic hands out 128-bit values: 48 bits of milliseconds, then 80 bits that are random
// for a new millisecond and count up within one (as ULIDs do), so order follows creation.
var monotonic struct {
	sync.Mutex
	last [16]byte
}

// New returns prefix_ followed by a 26-character time-ordered, unguessable value.
func New(prefix string) string {
	var b [16]byte
	ms := uint64(time.Now().UnixMilli())
	monotonic.Lock()
	if lastMS := binary.BigEndian.Uint64(monotonic.last[:8]) >> 16; ms <= lastMS {
		// Same millisecond (or the clock stepped back): count up from the last value.
		b = monotonic.last
		for i := 15; i >= 0; i-- {
			b[i]++
			if b[i] != 0 {
				break
			}
		}
	} else {
		binary.BigEndian.PutUint64(b[:8], ms<<16)
		_, _ = rand.Read(b[6:]) // crypto/rand.Read never fails (Go 1.24+).
	}
	monotonic.last = b
	monotonic.Unlock()
	return prefix + "_" + encoding.EncodeToString(b[:])
}

// Valid reports whether id has the shape New makes, with any prefix.
func Valid(id string) bool { return valid.MatchString(id) }
