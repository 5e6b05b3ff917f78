package signing

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/records"
)

// ErrReplayed marks an event a receiver must refuse for good: it occurred outside the
// accepted window, or its id was already accepted with other content.
var ErrReplayed = errors.New("event replayed")

// ReplayGuard refuses replayed events beyond what the JetStream duplicate window catches.
// It remembers the hash of each accepted event's signed content by event id, so a
// redelivery of the same event passes (handlers are idempotent) while another event under
// a used id does not. It only remembers ids for MaxAge, so it also refuses events older
// than that. Call it after Verify: an unverified event could otherwise claim an id first
// and shut out the genuine one.
type ReplayGuard struct {
	kv      jetstream.KeyValue
	maxAge  time.Duration
	maxSkew time.Duration
	now     func() time.Time
}

// NewReplayGuard creates or updates the bucket that holds the accepted ids, stored on
// replicas servers: every event received waits on it, so it needs the replicas the
// agency's other buckets have. Events that occurred more than maxAge before now, or more
// than maxSkew after it (clocks drift), are refused. now is the clock; nil means time.Now.
//
// It uses the KV bucket directly rather than pkg/records because records.Open has no
// key expiry and would reset the bucket's TTL on every start.
func NewReplayGuard(ctx context.Context, js jetstream.JetStream, bucket string, replicas int, maxAge, maxSkew time.Duration, now func() time.Time) (*ReplayGuard, error) {
	if maxAge <= 0 || maxSkew < 0 {
		return nil, fmt.Errorf("replay guard %s: max age %s must be positive and max skew %s not negative", bucket, maxAge, maxSkew)
	}
	if replicas < 1 {
		return nil, fmt.Errorf("replay guard %s: %d replicas, want at least 1", bucket, replicas)
	}
	if now == nil {
		now = time.Now
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "SHA-256 of each accepted event's signed content, by event id",
		History:     1,
		// An event dated maxSkew ahead is accepted until maxAge after that date, so its
		// id must be remembered that long.
		TTL:      maxAge + maxSkew,
		Storage:  jetstream.FileStorage,
		Replicas: replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("replay guard %s: %w", bucket, err)
	}
	return &ReplayGuard{kv: kv, maxAge: maxAge, maxSkew: maxSkew, now: now}, nil
}

// Check records ev as accepted, or returns ErrReplayed. Any other error is the bucket
// failing (worth a retry) or an event id that cannot be a key.
func (g *ReplayGuard) Check(ctx context.Context, ev *throughcarev1.Event) error {
	id := ev.GetEventId()
	if ev.GetOccurredAt() == nil {
		return fmt.Errorf("event %q has no occurred_at: %w", id, ErrReplayed)
	}
	now, occurred := g.now(), ev.GetOccurredAt().AsTime()
	if occurred.Before(now.Add(-g.maxAge)) {
		return fmt.Errorf("event %q occurred more than %s ago: %w", id, g.maxAge, ErrReplayed)
	}
	if occurred.After(now.Add(g.maxSkew)) {
		return fmt.Errorf("event %q occurred more than %s in the future: %w", id, g.maxSkew, ErrReplayed)
	}
	if !records.ValidKey(id) {
		return fmt.Errorf("check event %q: id cannot be a key", id)
	}
	signed, err := signedBytes(ev)
	if err != nil {
		return fmt.Errorf("check event %q: %w", id, err)
	}
	sum := sha256.Sum256(signed)
	// Create is atomic on the server: of two deliveries racing, one records the id and
	// the other compares against it.
	_, err = g.kv.Create(ctx, id, sum[:])
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("check event %q: %w", id, err)
	}
	entry, err := g.kv.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("check event %q: %w", id, err)
	}
	if !bytes.Equal(entry.Value(), sum[:]) {
		return fmt.Errorf("event %q: id already accepted with other content: %w", id, ErrReplayed)
	}
	return nil
}
