package records

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// An Index keeps, beside each record of a Store, the index entries the record needs: keys
// with dots (ix.state.open.rc_1) that request paths read by pattern instead of reading
// every record. The entries are a pure function of the record (keys), and Apply derives
// them idempotently from the record as it now stands; a manifest per record (mf.<key>)
// says which entries are in place, derived from which revision.
//
// JetStream's atomic batches could write a record and its entries together, but a batch on
// a one-replica file stream is staged in a store of its own and synced: about 8 ms a batch
// on this project's machines, against 0.1 ms a write. So a write applies its index straight
// after the record, and a follower of the change stream (Follow) mends what a crash in
// between left.
//
// An Apply publishes its entries and then the manifest, with a compare-and-set, on one
// connection, so the server stores them in that order; Applys in one process take turns
// per record. An Apply that loses the compare-and-set to another process's has had its
// entries stored all the same, so it starts again from the record as it now stands and
// writes every entry it wants and removes every one either may have written: the last
// manifest stored is always that of the last entries stored.
type Index[T proto.Message] struct {
	store *Store[T]
	keys  func(T) []string
	turns [64]sync.Mutex
	// written holds, for writes this process made and has indexed, the revision indexed,
	// until Follow has seen it: Follow then needs no read to know its work is done.
	written sync.Map // key -> uint64
}

// NewIndex returns the index of store whose entries for a record are keys(record).
func NewIndex[T proto.Message](store *Store[T], keys func(T) []string) *Index[T] {
	return &Index[T]{store: store, keys: keys}
}

// tombstoneTTL is how long a removed key's marker lives. Removing rolls up every earlier
// revision of the key, and the marker then expires, so a removed key costs nothing.
const tombstoneTTL = time.Minute

// manifestPrefix starts the key of a record's manifest.
const manifestPrefix = "mf."

// manifest says which index entries of a record are in place, derived from which revision.
type manifest struct {
	applied uint64
	keys    []string
}

func (m manifest) encode() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%d", m.applied)
	for _, k := range m.keys {
		b.WriteString("\n" + k)
	}
	return []byte(b.String())
}

func decodeManifest(raw []byte) (manifest, error) {
	if len(raw) == 0 {
		return manifest{}, nil
	}
	lines := strings.Split(string(raw), "\n")
	var m manifest
	if _, err := fmt.Sscanf(lines[0], "%d", &m.applied); err != nil {
		return manifest{}, fmt.Errorf("unreadable index manifest: %w", err)
	}
	m.keys = lines[1:]
	return m, nil
}

// Apply brings the index entries of the record under key in line with the record as it
// now stands (none when it is gone), writing every entry it wants whether or not the
// manifest lists it. It is idempotent and safe to run concurrently.
func (ix *Index[T]) Apply(ctx context.Context, key string) error {
	return ix.apply(ctx, key, nil, 0, true)
}

// ApplyWritten puts in place the entries of a record the caller has just written at rev,
// saving the read of the record.
func (ix *Index[T]) ApplyWritten(ctx context.Context, key string, msg T, rev uint64) error {
	if err := ix.apply(ctx, key, &msg, rev, false); err != nil {
		return err
	}
	if have, loaded := ix.written.LoadOrStore(key, rev); loaded && have.(uint64) < rev {
		ix.written.Store(key, rev)
	}
	return nil
}

// apply puts in place the entries of the record under key: of msg at rev when given, else
// of the record as read. full writes every wanted entry, not only those the manifest lacks.
func (ix *Index[T]) apply(ctx context.Context, key string, msg *T, rev uint64, full bool) error {
	turn := &ix.turns[fnv32(key)%uint32(len(ix.turns))]
	turn.Lock()
	defer turn.Unlock()
	b := ix.store.bucket
	mkey := manifestPrefix + key
	var stale []string // entries an earlier, losing attempt may have written
	for range maxApplyAttempts {
		var want []string
		if msg != nil {
			want = ix.keys(*msg)
		} else {
			m, r, err := ix.store.Get(ctx, key)
			switch {
			case errors.Is(err, ErrNotFound):
				rev = 0
			case err != nil:
				return err
			default:
				want, rev = ix.keys(m), r
			}
		}
		raw, mrev, err := b.GetRaw(ctx, mkey)
		if errors.Is(err, ErrNotFound) {
			err = nil // a new manifest (one removed a moment ago is handled below)
		}
		if err != nil {
			return err
		}
		have, err := decodeManifest(raw)
		if err != nil {
			return fmt.Errorf("index %s: %w", key, err)
		}
		if rev != 0 && have.applied > rev {
			return nil // a newer revision is in place
		}
		var ops []op
		for _, k := range want {
			if full || !slices.Contains(have.keys, k) {
				ops = append(ops, op{key: k})
			}
		}
		for _, k := range union(have.keys, stale) {
			if !slices.Contains(want, k) {
				ops = append(ops, op{key: k, remove: true})
			}
		}
		if len(ops) == 0 && have.applied == rev {
			return nil
		}
		done := manifest{applied: max(rev, have.applied), keys: want}
		ops = append(ops, op{key: mkey, data: done.encode(), expect: &mrev})
		err = b.apply(ctx, ops)
		if errors.Is(err, ErrRevisionMismatch) && mrev == 0 {
			// A manifest removed a moment ago leaves a marker for a while: write after it.
			if at, removed, rerr := b.RemovedAt(ctx, mkey); rerr == nil && removed {
				err = b.apply(ctx, []op{{key: mkey, data: done.encode(), expect: &at}})
			}
		}
		if !errors.Is(err, ErrRevisionMismatch) {
			return err
		}
		// Another process's Apply got in first, and this one's entries were stored all the
		// same: start again from the record as it now stands, writing everything.
		stale, msg, full = union(stale, want), nil, true
	}
	return fmt.Errorf("index %s: %w: too many concurrent writes", key, ErrRevisionMismatch)
}

// maxApplyAttempts bounds how often an Apply loses the manifest to another.
const maxApplyAttempts = 20

func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, k := range b {
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func fnv32(s string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(s))
	return h.Sum32()
}

// Rebuild applies the index of every record, then removes every entry that no record's
// manifest lists (left by a record that was purged before its index followed). It reads
// the whole bucket: for start-up after an upgrade and for tests, never a request path.
func (ix *Index[T]) Rebuild(ctx context.Context) error {
	var after uint64
	for {
		recs, resume, err := ix.store.Records(ctx, after, 256)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := ix.Apply(ctx, r.Key); err != nil {
				return err
			}
		}
		if resume == 0 {
			break
		}
		after = resume
	}
	listed := map[string]bool{}
	manifests, err := ix.store.All(ctx, manifestPrefix+">")
	if err != nil {
		return err
	}
	for _, e := range manifests {
		m, err := decodeManifest(e.Data)
		if err != nil {
			return fmt.Errorf("index %s: %w", e.Key, err)
		}
		for _, k := range m.keys {
			listed[k] = true
		}
	}
	entries, err := ix.store.All(ctx, "ix.>")
	if err != nil {
		return err
	}
	var orphans []op
	for _, e := range entries {
		if !listed[e.Key] {
			orphans = append(orphans, op{key: e.Key, remove: true})
		}
	}
	return ix.store.apply(ctx, orphans)
}

// op is one write of an index entry or manifest.
type op struct {
	key    string
	data   []byte
	remove bool
	// expect is the revision the key must be at (0: must not exist); nil checks nothing.
	expect *uint64
	// ttl, when set, is how long the write lives.
	ttl time.Duration
}

// apply publishes ops without waiting between them, then waits for every acknowledgement.
func (b *bucket) apply(ctx context.Context, ops []op) error {
	_, err := b.applyRevs(ctx, ops)
	return err
}

// applyRevs is apply, returning the revision of each write.
func (b *bucket) applyRevs(ctx context.Context, ops []op) ([]uint64, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	futures := make([]jetstream.PubAckFuture, 0, len(ops))
	for _, o := range ops {
		if err := validateIndexKey(o.key); err != nil {
			return nil, err
		}
		msg := nats.NewMsg(b.subject(o.key))
		msg.Data = o.data
		if o.expect != nil {
			msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, fmt.Sprint(*o.expect))
		}
		// Every write rolls up the key's earlier revisions: an index entry or a manifest is
		// one message, whatever the bucket's history, so a page lists each key once.
		msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		if o.remove {
			msg.Header.Set("KV-Operation", "PURGE")
			msg.Header.Set("Nats-TTL", tombstoneTTL.String())
		} else if o.ttl > 0 {
			msg.Header.Set("Nats-TTL", o.ttl.String())
		}
		f, err := b.js.PublishMsgAsync(msg)
		if err != nil {
			return nil, fmt.Errorf("write %s: %w", o.key, err)
		}
		futures = append(futures, f)
	}
	revs := make([]uint64, len(ops))
	var errs []error
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			revs[i] = ack.Sequence
		case err := <-f.Err():
			if isWrongLastSequence(err) {
				err = ErrRevisionMismatch
			}
			errs = append(errs, fmt.Errorf("write %s: %w", ops[i].key, err))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return revs, errors.Join(errs...)
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

// SetRaw writes bytes under a key that holds no record (a checkpoint, say).
func (b *bucket) SetRaw(ctx context.Context, key string, data []byte) error {
	return b.apply(ctx, []op{{key: key, data: data}})
}

// CreateRaw writes bytes under a key that holds no record, unless the key is there
// (ErrExists); the write lives for ttl.
func (b *bucket) CreateRaw(ctx context.Context, key string, data []byte, ttl time.Duration) error {
	var absent uint64
	err := b.apply(ctx, []op{{key: key, data: data, expect: &absent, ttl: ttl}})
	if errors.Is(err, ErrRevisionMismatch) {
		return fmt.Errorf("%s: %w", key, ErrExists)
	}
	return err
}

// RemoveRaw removes a key that holds no record, and its history.
func (b *bucket) RemoveRaw(ctx context.Context, key string) error {
	return b.apply(ctx, []op{{key: key, remove: true}})
}

// followGrace is how long Follow leaves a write's index to the write itself.
const followGrace = 2 * time.Second

// Follow puts in place the index of the record a message of the bucket's change stream
// wrote, unless it is already: a write applies its own index straight after, so Follow
// mends only a writer that crashed in between. It leaves a fresh write to its writer (via
// later, which asks for the message again after a while), so the two do not contend.
func (ix *Index[T]) Follow(ctx context.Context, msg jetstream.Msg, later func(time.Duration) error) error {
	meta, err := msg.Metadata()
	if err != nil {
		return err
	}
	key := strings.TrimPrefix(msg.Subject(), ix.store.subject(""))
	rev := meta.Sequence.Stream
	// A write of this process is indexed a moment after it is stored: wait that moment.
	for range followPolls {
		if have, ok := ix.written.Load(key); ok && have.(uint64) >= rev {
			ix.written.CompareAndDelete(key, rev) // a later write keeps its own entry
			return nil
		}
		if time.Since(meta.Timestamp) > followPollFor {
			break
		}
		time.Sleep(followPollFor / followPolls)
	}
	raw, _, err := ix.store.GetRaw(ctx, manifestPrefix+key)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	have, err := decodeManifest(raw)
	if err != nil {
		return fmt.Errorf("index %s: %w", key, err)
	}
	if have.applied >= rev {
		return nil
	}
	if age := time.Since(meta.Timestamp); age < followGrace {
		return later(followGrace - age)
	}
	return ix.Apply(ctx, key)
}

// Follow waits up to followPollFor after a write for this process to index it.
const (
	followPollFor = 50 * time.Millisecond
	followPolls   = 10
)

// indexVersion names the index's layout: a bucket without this marker has records written
// before there was an index, or under another layout, and is rebuilt once at start.
const indexVersion = "cp.index-v1"

// EnsureBuilt rebuilds the index once, the first time a bucket is opened with one.
func (ix *Index[T]) EnsureBuilt(ctx context.Context) error {
	if _, _, err := ix.store.GetRaw(ctx, indexVersion); !errors.Is(err, ErrNotFound) {
		return err
	}
	if err := ix.Rebuild(ctx); err != nil {
		return fmt.Errorf("build index: %w", err)
	}
	return ix.store.SetRaw(ctx, indexVersion, nil)
}

// Entries lists the keys of every index entry, sorted: for tests and checks, never a
// request path.
func (ix *Index[T]) Entries(ctx context.Context) ([]string, error) {
	entries, err := ix.store.All(ctx, "ix.>")
	if err != nil {
		return nil, err
	}
	keys := make([]string, len(entries))
	for i, e := range entries {
		keys[i] = e.Key
	}
	slices.Sort(keys)
	return keys, nil
}

// Drop removes every index entry and manifest, for a rebuild from scratch.
func (ix *Index[T]) Drop(ctx context.Context) error {
	for _, pattern := range []string{"ix.>", manifestPrefix + ">"} {
		entries, err := ix.store.All(ctx, pattern)
		if err != nil {
			return err
		}
		ops := make([]op, len(entries))
		for i, e := range entries {
			ops[i] = op{key: e.Key, remove: true}
		}
		if err := ix.store.apply(ctx, ops); err != nil {
			return err
		}
	}
	return nil
}
