// Package records stores protobuf records in one JetStream Key-Value bucket.
// It is the project's only database: each agency service keeps its records
// (release cases, handovers) here.
//
// KV fits because every key carries a revision, and an update that names the
// expected revision is a server-side compare-and-set: that gives optimistic
// concurrency without locks. File storage keeps the records across restarts.
package records

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
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

// Store holds records of one proto message type in one bucket. It is safe for
// concurrent use.
type Store[T proto.Message] struct {
	kv     jetstream.KeyValue
	newMsg func() T
}

type options struct {
	replicas int
	history  int64
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

// WithHistory keeps the last n revisions of every key (default 1), so Watch can replay
// every change after a revision and a consumer of the change stream sees every write, not
// only the latest value. Above the Key-Value API's limit of 64 the bucket's stream is
// created directly, with the same settings the API would give it.
func WithHistory(n int64) Option {
	return historyOption(n)
}

// Open creates the bucket, or updates its configuration, and returns a store
// for it. newMsg returns an empty message to decode into, e.g.
// func() *pb.ReleaseCase { return new(pb.ReleaseCase) }.
func Open[T proto.Message](ctx context.Context, js jetstream.JetStream, bucket string, newMsg func() T, opts ...Option) (*Store[T], error) {
	o := options{replicas: 1, history: 1}
	for _, opt := range opts {
		opt.apply(&o)
	}
	if !validName(bucket) {
		return nil, fmt.Errorf("open bucket %q: name must be letters, digits, '_' or '-'", bucket)
	}
	if o.history < 1 {
		return nil, fmt.Errorf("open bucket %s: history %d < 1", bucket, o.history)
	}
	if o.replicas < 1 {
		return nil, fmt.Errorf("open bucket %s: replicas %d < 1", bucket, o.replicas)
	}
	description := fmt.Sprintf("%s records", newMsg().ProtoReflect().Descriptor().FullName())
	var kv jetstream.KeyValue
	var err error
	if o.history <= jetstream.KeyValueMaxHistory {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: description,
			History:     uint8(o.history),
			Storage:     jetstream.FileStorage,
			Replicas:    o.replicas,
		})
	} else {
		kv, err = openLongHistory(ctx, js, bucket, description, o)
	}
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	return &Store[T]{kv: kv, newMsg: newMsg}, nil
}

// openLongHistory creates a bucket whose stream keeps more revisions per key than the
// Key-Value API allows, with the settings that API gives a bucket's stream, and binds to it.
func openLongHistory(ctx context.Context, js jetstream.JetStream, bucket, description string, o options) (jetstream.KeyValue, error) {
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              "KV_" + bucket,
		Description:       description,
		Subjects:          []string{"$KV." + bucket + ".>"},
		MaxMsgsPerSubject: o.history,
		MaxBytes:          -1,
		MaxMsgSize:        -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		Storage:           jetstream.FileStorage,
		Replicas:          o.replicas,
		AllowRollup:       true,
		DenyDelete:        true,
		Duplicates:        2 * time.Minute,
		AllowDirect:       true,
		Discard:           jetstream.DiscardNew,
	})
	if err != nil {
		return nil, err
	}
	return js.KeyValue(ctx, bucket)
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
	entry, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return zero, 0, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return zero, 0, fmt.Errorf("get %s: %w", key, err)
	}
	msg, err := s.unmarshal(entry.Value())
	if err != nil {
		return zero, 0, fmt.Errorf("get %s: %w", key, err)
	}
	return msg, entry.Revision(), nil
}

// Update replaces the record only if its stored revision is still
// expectedRevision, and returns the new revision. The server checks the
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
	return rev, nil
}

// conflict explains a rejected update: the key is missing or has moved on.
// The read only picks the error; the write was already refused atomically.
func (s *Store[T]) conflict(ctx context.Context, key string) error {
	_, err := s.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return fmt.Errorf("update %s: %w", key, ErrNotFound)
	case err != nil:
		return fmt.Errorf("update %s: %w; read back: %w", key, ErrRevisionMismatch, err)
	default:
		return fmt.Errorf("update %s: %w", key, ErrRevisionMismatch)
	}
}

// List calls fn for each record in ascending key order (byte-wise), starting
// strictly after afterKey ("" starts at the first key), until fn returns
// more == false or an error, which List returns.
//
// It reads the bucket in one pass with a watcher that delivers the latest
// value of every key and skips deleted ones, rather than listing keys and
// getting each: that is one stream read instead of a round trip per key, and
// every value comes from the same pass, so a key removed midway cannot turn
// into a not-found. The stream is in revision order, so records are held in
// memory and sorted; that is fine for thousands of records.
func (s *Store[T]) List(ctx context.Context, afterKey string, fn func(key string, msg T, rev uint64) (more bool, err error)) error {
	entries, err := s.latest(ctx)
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	slices.SortFunc(entries, func(a, b jetstream.KeyValueEntry) int {
		return cmp.Compare(a.Key(), b.Key())
	})
	start := sort.Search(len(entries), func(i int) bool { return entries[i].Key() > afterKey })
	for _, entry := range entries[start:] {
		msg, err := s.unmarshal(entry.Value())
		if err != nil {
			return fmt.Errorf("list %s: %w", entry.Key(), err)
		}
		more, err := fn(entry.Key(), msg, entry.Revision())
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
	return nil
}

// Purge removes key and every earlier revision of it, if it is still at expectedRevision:
// data removed for retention or erasure must not linger in the bucket's history.
func (s *Store[T]) Purge(ctx context.Context, key string, expectedRevision uint64) error {
	if err := validateKey(key); err != nil {
		return err
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
	watcher, err := s.kv.WatchAll(ctx, opts...)
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

// Decode reads a record from a raw message of the change stream.
func (s *Store[T]) Decode(data []byte) (T, error) { return s.unmarshal(data) }

// latest returns the current entry of every key, one per key.
func (s *Store[T]) latest(ctx context.Context) ([]jetstream.KeyValueEntry, error) {
	watcher, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	defer func() {
		_ = watcher.Stop()
		// The watcher's delivery goroutine blocks on a full channel; draining
		// lets it finish, and the channel closes once the subscription is gone.
		go func() {
			for range watcher.Updates() {
			}
		}()
	}()

	// A write during the pass can deliver a key twice; the later one wins.
	byKey := make(map[string]jetstream.KeyValueEntry)
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case entry, ok := <-watcher.Updates():
			if !ok {
				return nil, errors.New("watcher closed")
			}
			// nil marks the end of the current values.
			if entry == nil {
				return slices.Collect(maps.Values(byKey)), nil
			}
			byKey[entry.Key()] = entry
		}
	}
}

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
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
