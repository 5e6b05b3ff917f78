package records

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"google.golang.org/protobuf/proto"
)

// A Batch is several writes to one bucket that are stored together or not at all: a
// record, the index entries that point at it and the events its change sends. It is
// JetStream's atomic batch publish (ADR-50): the server checks every expected revision
// and stores the whole batch, or nothing.
type Batch struct {
	store  *bucket
	writes []write
	err    error
}

type write struct {
	key  string
	data []byte
	// expect is the revision the key must be at (0: must not exist); nil checks nothing.
	expect *uint64
	remove bool
}

// tombstoneTTL is how long a removed key's marker lives. Removing rolls up every earlier
// revision of the key, and the marker then expires, so a removed key costs nothing.
const tombstoneTTL = time.Minute

// maxBatch is the server's limit on one atomic batch.
const maxBatch = 1000

// Put writes msg under key if the key is still at expectedRevision (0: if it does not
// exist yet).
func (b *Batch) Put(key string, msg proto.Message, expectedRevision uint64) *Batch {
	data, err := marshal(msg)
	if err != nil {
		b.fail(fmt.Errorf("put %s: %w", key, err))
		return b
	}
	return b.add(write{key: key, data: data, expect: &expectedRevision})
}

// Set writes data under key whatever it holds: an index entry, derived from a record
// written in the same batch.
func (b *Batch) Set(key string, data []byte) *Batch { return b.add(write{key: key, data: data}) }

// Remove removes key and every revision of it, whatever it holds.
func (b *Batch) Remove(key string) *Batch { return b.add(write{key: key, remove: true}) }

// RemoveAt removes key and every revision of it if it is still at expectedRevision.
func (b *Batch) RemoveAt(key string, expectedRevision uint64) *Batch {
	return b.add(write{key: key, remove: true, expect: &expectedRevision})
}

// Len is the number of writes so far.
func (b *Batch) Len() int { return len(b.writes) }

func (b *Batch) add(w write) *Batch {
	if err := validateIndexKey(w.key); err != nil {
		b.fail(err)
	}
	b.writes = append(b.writes, w)
	return b
}

func (b *Batch) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// Commit stores every write of the batch, or none, and returns the revision each write
// got, in order. A key not at its expected revision fails the whole batch with
// ErrRevisionMismatch (ErrExists where it was expected not to exist).
func (b *Batch) Commit(ctx context.Context) ([]uint64, error) {
	if b.err != nil {
		return nil, b.err
	}
	switch n := len(b.writes); {
	case n == 0:
		return nil, nil
	case n > maxBatch:
		return nil, fmt.Errorf("batch of %d writes: at most %d", n, maxBatch)
	}
	nc := b.store.js.Conn()
	id := nuid.Next()
	last := len(b.writes) - 1
	for i, w := range b.writes {
		msg := nats.NewMsg(b.store.subject(w.key))
		msg.Data = w.data
		msg.Header.Set("Nats-Batch-Id", id)
		msg.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if w.expect != nil {
			msg.Header.Set("Nats-Expected-Last-Subject-Sequence", strconv.FormatUint(*w.expect, 10))
		}
		if w.remove {
			msg.Header.Set("KV-Operation", "PURGE")
			msg.Header.Set("Nats-Rollup", "sub")
			msg.Header.Set("Nats-TTL", tombstoneTTL.String())
		}
		if i < last {
			if err := nc.PublishMsg(msg); err != nil {
				return nil, fmt.Errorf("batch write %s: %w", w.key, err)
			}
			continue
		}
		msg.Header.Set("Nats-Batch-Commit", "1")
		reply, err := nc.RequestMsgWithContext(ctx, msg)
		if err != nil {
			return nil, fmt.Errorf("commit batch: %w", err)
		}
		return b.acknowledged(reply)
	}
	panic("unreachable")
}

// acknowledged reads the server's answer to a batch commit.
func (b *Batch) acknowledged(reply *nats.Msg) ([]uint64, error) {
	var ack struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Sequence  uint64 `json:"seq"`
		BatchSize int    `json:"count"`
	}
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return nil, fmt.Errorf("commit batch: unreadable answer: %w", err)
	}
	if ack.Error != nil {
		if ack.Error.ErrCode == wrongLastSequenceCode {
			return nil, b.conflict()
		}
		return nil, fmt.Errorf("commit batch: %s (error %d)", ack.Error.Description, ack.Error.ErrCode)
	}
	if ack.BatchSize != len(b.writes) {
		return nil, fmt.Errorf("commit batch: the server stored %d of %d writes", ack.BatchSize, len(b.writes))
	}
	revs := make([]uint64, len(b.writes))
	first := ack.Sequence - uint64(len(b.writes)) + 1
	for i := range revs {
		revs[i] = first + uint64(i)
	}
	return revs, nil
}

// wrongLastSequenceCode is JetStream's JSStreamWrongLastSequenceErr, its answer to an
// expected revision that no longer holds.
const wrongLastSequenceCode = 10071

// conflict says which of the batch's expectations failed: a key expected new that exists,
// or one that moved on. The batch was already refused as a whole; this only picks the error.
func (b *Batch) conflict() error {
	for _, w := range b.writes {
		if w.expect != nil && *w.expect == 0 && !w.remove {
			return fmt.Errorf("create %s: %w", w.key, ErrExists)
		}
	}
	for _, w := range b.writes {
		if w.expect != nil {
			return fmt.Errorf("update %s: %w", w.key, ErrRevisionMismatch)
		}
	}
	return ErrRevisionMismatch
}

// validateIndexKey allows dotted keys: an index entry's key is a path of record keys and
// tokens, e.g. ix.case.rc_1.in.ho_2.
func validateIndexKey(key string) error {
	if len(key) > 4*maxKeyLen {
		return fmt.Errorf("%w %q: too long", ErrInvalidKey, key)
	}
	start := 0
	for i := 0; i <= len(key); i++ {
		if i == len(key) || key[i] == '.' {
			if !validName(key[start:i]) {
				return fmt.Errorf("%w %q: want dot-separated tokens of A-Z a-z 0-9 _ -", ErrInvalidKey, key)
			}
			start = i + 1
		}
	}
	return nil
}
