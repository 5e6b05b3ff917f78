package records

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrNoErasure is returned by the erasing methods of a bucket not opened WithErasure.
	ErrNoErasure = errors.New("bucket not opened with erasure")
	// ErrNotErased says a write was stored but a revision it superseded is not yet erased.
	ErrNotErased = errors.New("superseded revision not erased")
)

// Revisions returns every revision the bucket still holds of key, oldest first, removal
// markers included (their Data is empty).
func (s *bucket) Revisions(ctx context.Context, key string) ([]Entry, error) {
	if err := validateIndexKey(key); err != nil {
		return nil, err
	}
	var out []Entry
	after := uint64(0)
	for {
		req := map[string]any{"seq": after + 1, "next_by_subj": s.subject(key)}
		if !s.replicated {
			// A batch is a direct get, which a replica behind its leader may answer; an
			// erasure must reach every revision, so a replicated bucket asks its leader,
			// one revision at a time.
			req["batch"] = 64
		}
		raw, pending, err := s.directGetRaw(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("revisions of %s: %w", key, err)
		}
		for _, m := range raw {
			out = append(out, m.Entry)
			after = m.Revision
		}
		if len(raw) == 0 || !s.replicated && pending == 0 {
			return out, nil
		}
	}
}

// EraseBefore erases every revision of key below rev, oldest first, overwriting each in
// the server's store (on every replica); known, when not 0, is one of them, erased
// without looking it up first.
func (s *bucket) EraseBefore(ctx context.Context, key string, rev, known uint64) error {
	if s.erasing == nil {
		return ErrNoErasure
	}
	if known != 0 && known < rev {
		if err := s.erase(ctx, known); err != nil {
			return fmt.Errorf("erase %s revision %d: %w", key, known, err)
		}
	}
	revs, err := s.Revisions(ctx, key)
	if err != nil {
		return err
	}
	for _, r := range revs {
		if r.Revision >= rev {
			break
		}
		if err := s.erase(ctx, r.Revision); err != nil {
			return fmt.Errorf("erase %s revision %d: %w", key, r.Revision, err)
		}
	}
	return nil
}

// EraseOldest erases the oldest revisions of key until at most keep are left, so that a
// write to a bucket with history does not push an unerased revision out.
func (s *bucket) EraseOldest(ctx context.Context, key string, keep int) error {
	if s.erasing == nil {
		return ErrNoErasure
	}
	revs, err := s.Revisions(ctx, key)
	if err != nil {
		return err
	}
	for i := 0; i < len(revs)-keep; i++ {
		if err := s.erase(ctx, revs[i].Revision); err != nil {
			return fmt.Errorf("erase %s revision %d: %w", key, revs[i].Revision, err)
		}
	}
	return nil
}

// erase overwrites one message of the bucket's stream; one already gone is no error.
func (s *bucket) erase(ctx context.Context, seq uint64) error {
	err := s.erasing.SecureDeleteMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	return err
}
