// Package records stores protobuf records in one JetStream Key-Value bucket.
// It is the project's only database: each agency service keeps its records
// (release cases, handovers) here.
//
// KV fits because every key carries a revision, and an update that names the
// expected revision is a server-side compare-and-set: that gives optimistic
// concurrency without locks. File storage keeps the records across restarts.
package records

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Errors callers map with errors.Is, e.g. to gRPC NotFound, AlreadyExists,
// Aborted and InvalidArgument.
var (
	ErrNotFound         = errors.New("record not found")
	ErrExists           = errors.New("record already exists")
	ErrRevisionMismatch = errors.New("record revision mismatch")
	ErrInvalidKey       = errors.New("invalid record key")
)

const maxKeyLen = 128

// Store holds records of one proto message type in one bucket, beside the index entries
// that point at them (keys with dots, such as ix.case.rc_1.in.ho_2; record keys have
// none). It is safe for concurrent use.
type Store[T proto.Message] struct {
	*bucket
	newMsg func() T
}

// bucket is the untyped part of a Store: its stream and how to reach it.
type bucket struct {
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	name    string
	stream  string
	replies replyMux
	// erasing is set for a bucket opened WithErasure: the handle its erasures go through.
	erasing jetstream.Stream
	history int64
	// replicated: single reads go to the stream leader (see leaderGet).
	replicated bool
}

func (b *bucket) subject(key string) string { return "$KV." + b.name + "." + key }

type options struct {
	replicas int
	history  int64
	erasure  bool
}

// Option configures Open.
type Option interface {
	apply(*options)
}

type replicasOption int

func (n replicasOption) apply(o *options) { o.replicas = int(n) }

// WithReplicas sets how many servers keep a copy of the bucket (default 1).
func WithReplicas(n int) Option {
	return replicasOption(n)
}

type historyOption int64

func (n historyOption) apply(o *options) { o.history = int64(n) }

// WithHistory keeps the last n revisions of every key (default 1, at most 64), so Watch
// can replay the changes after a revision.
func WithHistory(n int64) Option {
	return historyOption(n)
}

type erasureOption struct{}

func (erasureOption) apply(o *options) { o.erasure = true }

// WithErasure makes a bucket whose removed data leaves no bytes behind in the server's
// store files. JetStream keeps a removed message's bytes in its block until it compacts the
// block (never, for the last block), whether it was deleted, purged, rolled up or pushed
// out by the history limit; an erased message (jetstream.Stream.SecureDeleteMsg) is
// overwritten in place with random bytes on every replica. So such a bucket:
//   - allows message deletes on its stream (a Key-Value bucket normally denies them), for
//     the store's own erasures;
//   - with history 1, erases on every Update the revision it supersedes (the server keeps
//     up to erasureSlack revisions of a key, so one whose erasure failed is still there to
//     be erased by the next Update, EraseBefore or Purge, instead of falling out unerased);
//   - with more history, keeps it, and leaves erasing it to the caller (EraseBefore,
//     EraseOldest), as a watch may replay it;
//   - Purge erases every revision of the key.
//
// A stream created without it denies deletes for good (the server refuses to lift that):
// Open then fails, naming the bucket.
func WithErasure() Option { return erasureOption{} }

// erasureSlack is how many revisions past its history an erasing bucket keeps of a key.
const erasureSlack = 8

// Open creates the bucket, or updates its configuration, and returns a store
// for it. newMsg returns an empty message to decode into, e.g.
// func() *pb.ReleaseCase { return new(pb.ReleaseCase) }.
//
// The bucket's stream is created directly, with the settings the Key-Value API gives a
// bucket and per-message TTLs: a removed key's marker expires, so removed keys cost nothing.
func Open[T proto.Message](ctx context.Context, js jetstream.JetStream, name string, newMsg func() T, opts ...Option) (*Store[T], error) {
	o := options{replicas: 1, history: 1}
	for _, opt := range opts {
		opt.apply(&o)
	}
	if !validName(name) {
		return nil, fmt.Errorf("open bucket %q: name must be letters, digits, '_' or '-'", name)
	}
	if o.history < 1 || o.history > jetstream.KeyValueMaxHistory {
		return nil, fmt.Errorf("open bucket %s: history %d not in 1..%d", name, o.history, jetstream.KeyValueMaxHistory)
	}
	if o.replicas < 1 {
		return nil, fmt.Errorf("open bucket %s: replicas %d < 1", name, o.replicas)
	}
	stream := "KV_" + name
	perSubject := o.history
	if o.erasure && o.history == 1 {
		perSubject = 1 + erasureSlack
	}
	str, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              stream,
		Description:       fmt.Sprintf("%s records", newMsg().ProtoReflect().Descriptor().FullName()),
		Subjects:          []string{"$KV." + name + ".>"},
		MaxMsgsPerSubject: perSubject,
		MaxBytes:          -1,
		MaxMsgSize:        -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		Storage:           jetstream.FileStorage,
		Replicas:          o.replicas,
		AllowRollup:       true,
		DenyDelete:        !o.erasure,
		Duplicates:        2 * time.Minute,
		AllowDirect:       true,
		Discard:           jetstream.DiscardNew,
		AllowMsgTTL:       true,
	})
	if err != nil {
		if o.erasure && strings.Contains(err.Error(), "deny message deletes") {
			return nil, fmt.Errorf("open bucket %s: it was created before erasure and denies the deletes erasure needs (JetStream cannot lift that); move its records to a new bucket: %w", name, err)
		}
		return nil, fmt.Errorf("open bucket %s: %w", name, err)
	}
	kv, err := js.KeyValue(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", name, err)
	}
	b := &bucket{js: js, kv: kv, name: name, stream: stream, history: o.history, replicated: o.replicas > 1}
	if o.erasure {
		b.erasing = str
	}
	return &Store[T]{bucket: b, newMsg: newMsg}, nil
}

// Create stores msg under a new key and returns its revision, or ErrExists.
func (s *Store[T]) Create(ctx context.Context, key string, msg T) (uint64, error) {
	if err := validateKey(key); err != nil {
		return 0, err
	}
	data, err := marshal(msg)
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", key, err)
	}
	rev, err := s.kv.Create(ctx, key, data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("create %s: %w", key, ErrExists)
	}
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", key, err)
	}
	return rev, nil
}

// Get returns the record and its revision, or ErrNotFound.
func (s *Store[T]) Get(ctx context.Context, key string) (T, uint64, error) {
	var zero T
	if err := validateKey(key); err != nil {
		return zero, 0, err
	}
	entry, err := s.last(ctx, key)
	if err != nil {
		return zero, 0, err
	}
	msg, err := s.unmarshal(entry.Data)
	if err != nil {
		return zero, 0, fmt.Errorf("get %s: %w", key, err)
	}
	return msg, entry.Revision, nil
}

// Update replaces the record only if its stored revision is still
// expectedRevision, and returns the new revision. In a bucket opened WithErasure with
// history 1 it then erases the revision it superseded; when that fails the update stands
// and Update returns its revision with ErrNotErased (the next Update, EraseBefore or Purge
// of the key erases what is left). The server checks the
// revision as part of the write, so concurrent updates from the same revision
// cannot both succeed: the losers get ErrRevisionMismatch. A missing key
// gives ErrNotFound.
func (s *Store[T]) Update(ctx context.Context, key string, msg T, expectedRevision uint64) (uint64, error) {
	if err := validateKey(key); err != nil {
		return 0, err
	}
	// Revision 0 would make the KV create a missing key; Update never creates.
	if expectedRevision == 0 {
		return 0, s.conflict(ctx, key)
	}
	data, err := marshal(msg)
	if err != nil {
		return 0, fmt.Errorf("update %s: %w", key, err)
	}
	rev, err := s.kv.Update(ctx, key, data, expectedRevision)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, s.conflict(ctx, key)
	}
	if err != nil {
		return 0, fmt.Errorf("update %s: %w", key, err)
	}
	if s.erasing != nil && s.history == 1 {
		if err := s.EraseBefore(ctx, key, rev, expectedRevision); err != nil {
			return rev, fmt.Errorf("update %s: stored at revision %d, %w: %w", key, rev, ErrNotErased, err)
		}
	}
	return rev, nil
}

// conflict explains a rejected update: the key is missing or has moved on.
// The read only picks the error; the write was already refused atomically.
func (s *Store[T]) conflict(ctx context.Context, key string) error {
	_, err := s.last(ctx, key)
	switch {
	case errors.Is(err, ErrNotFound):
		return fmt.Errorf("update %s: %w", key, ErrNotFound)
	case err != nil:
		return fmt.Errorf("update %s: %w; read back: %w", key, ErrRevisionMismatch, err)
	default:
		return fmt.Errorf("update %s: %w", key, ErrRevisionMismatch)
	}
}

// Purge removes key and every earlier revision of it, if it is still at expectedRevision:
// data removed for retention or erasure must not linger in the bucket's history. In a
// bucket opened WithErasure every revision is erased, oldest first (a read meanwhile sees
// the current revision or nothing), and a removal marker that expires is left for the
// change stream's followers.
func (s *Store[T]) Purge(ctx context.Context, key string, expectedRevision uint64) error {
	if err := validateKey(key); err != nil {
		return err
	}
	if s.erasing != nil {
		if _, rev, err := s.Get(ctx, key); err != nil {
			return fmt.Errorf("purge %s: %w", key, err)
		} else if rev != expectedRevision {
			return fmt.Errorf("purge %s: %w", key, ErrRevisionMismatch)
		}
		if err := s.EraseBefore(ctx, key, expectedRevision+1, 0); err != nil {
			return fmt.Errorf("purge %s: %w", key, err)
		}
		// The marker expects nothing left: a write since the check stands, and is a conflict.
		none := uint64(0)
		if err := s.apply(ctx, []op{{key: key, remove: true, expect: &none}}); errors.Is(err, ErrRevisionMismatch) {
			return fmt.Errorf("purge %s: %w", key, ErrRevisionMismatch)
		} else if err != nil {
			return fmt.Errorf("purge %s: %w", key, err)
		}
		return nil
	}
	err := s.kv.Purge(ctx, key, jetstream.LastRevision(expectedRevision))
	if err != nil {
		if isWrongLastSequence(err) {
			return fmt.Errorf("purge %s: %w", key, ErrRevisionMismatch)
		}
		return fmt.Errorf("purge %s: %w", key, err)
	}
	return nil
}

// Watch calls fn for every revision after afterRevision that the bucket still holds, in
// revision order, then for every new one, until ctx ends or fn returns an error. Deletes
// are skipped.
func (s *Store[T]) Watch(ctx context.Context, afterRevision uint64, fn func(key string, msg T, rev uint64) error) error {
	opts := []jetstream.WatchOpt{jetstream.IncludeHistory(), jetstream.IgnoreDeletes()}
	if afterRevision > 0 {
		opts = append(opts, jetstream.ResumeFromRevision(afterRevision+1))
	}
	watcher, err := s.kv.Watch(ctx, "*", opts...) // records only, not index entries
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer func() {
		_ = watcher.Stop()
		go func() {
			for range watcher.Updates() {
			}
		}()
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case entry, ok := <-watcher.Updates():
			if !ok {
				return errors.New("watch: watcher closed")
			}
			if entry == nil {
				continue // the end of the stored revisions; live ones follow
			}
			msg, err := s.unmarshal(entry.Value())
			if err != nil {
				return fmt.Errorf("watch %s: %w", entry.Key(), err)
			}
			if err := fn(entry.Key(), msg, entry.Revision()); err != nil {
				return err
			}
		}
	}
}

// ChangeStream names the stream that holds the bucket's writes and the subject prefix of
// its keys, for a durable consumer that must see every write (an outbox relay).
func (s *Store[T]) ChangeStream() (stream, keyPrefix string) {
	bucket := s.kv.Bucket()
	return "KV_" + bucket, "$KV." + bucket + "."
}

// Len is how many messages the bucket's stream holds, from its state: for a bucket that
// keeps one revision a key and never removes one (dead letters), how many records there
// are.
func (s *Store[T]) Len(ctx context.Context) (uint64, error) {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	return st.Values(), nil
}

// Decode reads a record from a raw message of the change stream.
func (s *Store[T]) Decode(data []byte) (T, error) { return s.unmarshal(data) }

func (s *Store[T]) unmarshal(data []byte) (T, error) {
	msg := s.newMsg()
	if err := proto.Unmarshal(data, msg); err != nil {
		var zero T
		return zero, fmt.Errorf("decode: %w", err)
	}
	return msg, nil
}

func marshal(msg proto.Message) ([]byte, error) {
	// Deterministic so an unchanged record encodes to the same bytes.
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return data, nil
}

// ValidKey reports whether key can name a record: 1-128 letters, digits, '_' or '-'.
func ValidKey(key string) bool { return len(key) <= maxKeyLen && validName(key) }

func validateKey(key string) error {
	if !ValidKey(key) {
		return fmt.Errorf("%w %q: want 1-%d of A-Z a-z 0-9 _ -", ErrInvalidKey, key, maxKeyLen)
	}
	return nil
}

// validName reports whether name is non-empty and only letters, digits, '_'
// or '-'. That excludes '.', '*', '>' and spaces: subject syntax in NATS.
func validName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range []byte(name) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// isWrongLastSequence reports the server refusing a write whose expected revision is stale.
// A replicated stream answers with the second code while another write of the key is still
// being proposed: the expected revision is about to be stale, and the caller re-reads.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Record is a decoded record with its key and revision.
type Record[T proto.Message] struct {
	Key      string
	Msg      T
	Revision uint64
}

// Records returns up to limit records (not index entries) written after afterRevision, in
// revision order, and the revision to resume after (0 at the end); see bucket.Page. In a
// bucket that keeps history, a record comes once for each revision kept.
func (s *Store[T]) Records(ctx context.Context, afterRevision uint64, limit int) ([]Record[T], uint64, error) {
	entries, resume, err := s.bucket.Page(ctx, "*", afterRevision, limit)
	if err != nil {
		return nil, 0, err
	}
	out, err := s.decodeAll(entries)
	return out, resume, err
}

// GetMany returns the records under keys that exist, in revision order, in one request.
func (s *Store[T]) GetMany(ctx context.Context, keys ...string) ([]Record[T], error) {
	for _, k := range keys {
		if err := validateKey(k); err != nil {
			return nil, err
		}
	}
	entries, err := s.Latest(ctx, keys...)
	if err != nil {
		return nil, err
	}
	return s.decodeAll(entries)
}

func (s *Store[T]) decodeAll(entries []Entry) ([]Record[T], error) {
	out := make([]Record[T], 0, len(entries))
	for _, e := range entries {
		msg, err := s.unmarshal(e.Data)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", e.Key, err)
		}
		out = append(out, Record[T]{Key: e.Key, Msg: msg, Revision: e.Revision})
	}
	return out, nil
}

// GetRaw returns the bytes under a key that holds no record (a checkpoint, say) and its
// revision, or ErrNotFound.
func (s *bucket) GetRaw(ctx context.Context, key string) ([]byte, uint64, error) {
	if err := validateIndexKey(key); err != nil {
		return nil, 0, err
	}
	entry, err := s.last(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	return entry.Data, entry.Revision, nil
}

// Name is the bucket's name.
func (s *bucket) Name() string { return s.name }
