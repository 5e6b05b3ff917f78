// Package ledger keeps each agency's record of disclosures: an append-only, hash-chained
// JetStream stream that answers a subject-access request and shows whether anyone changed,
// removed or reordered an entry.
//
// Entry n carries EntryHash = SHA-256(EntryHash of entry n-1 || entry n with EntryHash
// cleared, marshalled deterministically); entry 1 chains from 32 zero bytes. The stream
// refuses deletes and purges, and every append is a compare-and-set on the stream's last
// sequence, so writers on several replicas extend one chain instead of forking it.
package ledger

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
)

const (
	// dedupeWindow is how long a retried append with the same dedupe id is stored once.
	dedupeWindow = 10 * time.Minute
	// maxAppendAttempts bounds how often one append re-reads the tail after another writer
	// got in first. Each lost race means another entry was stored, so this is only reached
	// under sustained contention from other replicas.
	maxAppendAttempts = 100
	// inProcessWait is how long an append waits for an earlier one of the same disclosure
	// still being proposed (see isMsgIDInProcess).
	inProcessWait = 50 * time.Millisecond
	// jsErrCodeDuplicateMessageIDInProcess is nats-server's JSStreamDuplicateMessageConflict,
	// which nats.go does not name.
	jsErrCodeDuplicateMessageIDInProcess jetstream.ErrorCode = 10158
	// readBatch is how many entries a scan asks the server for at a time.
	readBatch = 256
	// scanConsumerIdle lets the server drop a scan's consumer if the client vanished
	// before deleting it.
	scanConsumerIdle = time.Minute
)

// StreamName is the agency's ledger stream, e.g. LEDGER_PRISON.
func StreamName(agency string) string {
	return "LEDGER_" + strings.ToUpper(agency)
}

// Subject is where the agency's ledger entries are published, e.g. tc.prison.ledger.
func Subject(agency string) string {
	return "tc." + agency + ".ledger"
}

// Ledger is one agency's ledger. It is safe for concurrent use; appends through one
// Ledger are serialised, appends through several (one per replica) race on the stream's
// last sequence and the losers retry.
type Ledger struct {
	js      jetstream.JetStream
	stream  jetstream.Stream
	name    string
	subject string

	// mu serialises appends and guards the cached tail, so one Ledger does not race
	// itself on the stream's last sequence.
	mu        sync.Mutex
	tailKnown bool
	tailSeq   uint64
	tailHash  []byte
}

// Open creates the agency's ledger stream, or updates its configuration, and returns the
// ledger. replicas is how many servers keep a copy (1 on one server, 3 in a cluster).
func Open(ctx context.Context, js jetstream.JetStream, agency string, replicas int) (*Ledger, error) {
	if agency == "" {
		return nil, fmt.Errorf("open ledger: agency %v has no ledger", agency)
	}
	if replicas < 1 {
		return nil, fmt.Errorf("open ledger %s: replicas %d < 1", StreamName(agency), replicas)
	}
	cfg := jetstream.StreamConfig{
		Name:        StreamName(agency),
		Description: "disclosures by " + agency + ", hash-chained",
		// Entries before this layout sit on the bare subject; each new one on
		// <subject>.<case>.<person>, so a subject-access report reads only its own.
		Subjects:  []string{Subject(agency), Subject(agency) + ".>"},
		Storage:   jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy,
		// Entries are kept for good: no MaxAge, and a full stream refuses new entries
		// rather than dropping old ones.
		Discard:    jetstream.DiscardNew,
		DenyDelete: true,
		DenyPurge:  true,
		// Rollup headers and per-message TTLs would be other ways to drop entries.
		AllowRollup: false,
		AllowMsgTTL: false,
		// Reads go to the stream leader: a direct get may be answered by a lagging
		// follower, which would make a fresh ledger look truncated.
		AllowDirect: false,
		Replicas:    replicas,
		Duplicates:  dedupeWindow,
	}
	stream, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open ledger %s: %w", cfg.Name, err)
	}
	return &Ledger{js: js, stream: stream, name: cfg.Name, subject: cfg.Subjects[0]}, nil
}

// Len is how many entries the ledger holds, from its stream's state: for metrics.
func (l *Ledger) Len(ctx context.Context) (uint64, error) {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("ledger %s: %w", l.name, err)
	}
	return info.State.Msgs, nil
}

// Append chains d onto the ledger and returns the stored entry, with Sequence, Time and
// EntryHash set; d itself is not modified. The time is taken in sequence order, so entry
// times never run backwards along the chain. dedupeID names the disclosure (e.g.
// "shared/"+event id): an append retried with the same id within ten minutes, say after a
// crash, is stored once and returns the entry stored the first time.
func (l *Ledger) Append(ctx context.Context, d *throughcarev1.Disclosure, dedupeID string) (*throughcarev1.Disclosure, error) {
	if d == nil {
		return nil, errors.New("append: disclosure is nil")
	}
	if dedupeID == "" {
		return nil, errors.New("append: dedupe id is empty")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for range maxAppendAttempts {
		if !l.tailKnown {
			if err := l.loadTail(ctx); err != nil {
				return nil, fmt.Errorf("append to %s: %w", l.name, err)
			}
		}
		entry := proto.CloneOf(d)
		entry.Sequence = l.tailSeq + 1
		entry.Time = timestamppb.Now()
		entry.EntryHash = nil
		hash, err := entryHash(l.tailHash, entry)
		if err != nil {
			return nil, fmt.Errorf("append to %s: %w", l.name, err)
		}
		entry.EntryHash = hash
		data, err := marshal(entry)
		if err != nil {
			return nil, fmt.Errorf("append to %s: %w", l.name, err)
		}
		msg := nats.NewMsg(entrySubject(l.subject, entry))
		msg.Data = data
		ack, err := l.js.PublishMsg(ctx, msg,
			jetstream.WithExpectStream(l.name),
			jetstream.WithExpectLastSequence(l.tailSeq),
			jetstream.WithMsgID(dedupeID))
		if isWrongLastSequence(err) {
			// Another writer appended since the tail was read.
			l.tailKnown = false
			continue
		}
		if isMsgIDInProcess(err) {
			// An earlier append of this disclosure (one that timed out, say) is still being
			// proposed; once it settles, this one is either its duplicate or stored anew.
			l.tailKnown = false
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("append to %s: %w", l.name, err)
			case <-time.After(inProcessWait):
			}
			continue
		}
		if err != nil {
			// The entry may have been stored anyway; the next append must re-read.
			l.tailKnown = false
			return nil, fmt.Errorf("append to %s: %w", l.name, err)
		}
		if ack.Duplicate {
			original, err := l.entryAt(ctx, ack.Sequence)
			if err != nil {
				return nil, fmt.Errorf("append to %s: read original of duplicate: %w", l.name, err)
			}
			return original, nil
		}
		if ack.Sequence != entry.Sequence {
			// The compare-and-set makes this impossible; refuse to trust the cache if it happens.
			l.tailKnown = false
			return nil, fmt.Errorf("append to %s: stored at %d, expected %d", l.name, ack.Sequence, entry.Sequence)
		}
		l.tailSeq, l.tailHash = entry.Sequence, entry.EntryHash
		return entry, nil
	}
	return nil, fmt.Errorf("append to %s: %w: lost the race for the tail %d times", l.name, fault.ErrConflict, maxAppendAttempts)
}

// loadTail reads the last entry, which the next append chains from. It goes by the
// stream's last sequence, which the compare-and-set checks against, rather than by the last
// message: if that entry were gone, every append would lose the race to a ghost.
func (l *Ledger) loadTail(ctx context.Context) error {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("read tail: %w", err)
	}
	lastSeq := info.State.LastSeq
	if lastSeq == 0 {
		l.tailSeq, l.tailHash, l.tailKnown = 0, genesisHash(), true
		return nil
	}
	// Chaining onto an entry that is missing or not ours would hide the break; stop appending.
	tail, err := l.entryAt(ctx, lastSeq)
	if err != nil {
		return fmt.Errorf("read tail: %w", err)
	}
	l.tailSeq, l.tailHash, l.tailKnown = tail.GetSequence(), tail.GetEntryHash(), true
	return nil
}

func (l *Ledger) entryAt(ctx context.Context, seq uint64) (*throughcarev1.Disclosure, error) {
	msg, err := l.stream.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("get entry %d: %w", seq, err)
	}
	return decodeEntry(msg.Sequence, msg.Data)
}

// decodeEntry decodes the message stored at streamSeq and checks that it claims that place.
func decodeEntry(streamSeq uint64, data []byte) (*throughcarev1.Disclosure, error) {
	entry := new(throughcarev1.Disclosure)
	if err := proto.Unmarshal(data, entry); err != nil {
		return nil, fmt.Errorf("entry %d does not decode", streamSeq)
	}
	if entry.GetSequence() != streamSeq {
		return nil, fmt.Errorf("entry at %d claims sequence %d", streamSeq, entry.GetSequence())
	}
	return entry, nil
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	// R1 streams answer with the first code, replicated ones with the second.
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// isMsgIDInProcess reports a replicated stream refusing a message whose id another message,
// not yet stored, carries.
func isMsgIDInProcess(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeDuplicateMessageIDInProcess
}

// entrySubject is where an entry is stored: under its case and person, "_" for none, so
// that a listing by either reads only the entries it returns.
func entrySubject(base string, d *throughcarev1.Disclosure) string {
	caseToken, personToken := "_", "_"
	if c := d.GetCaseId(); c != "" && validToken(c) {
		caseToken = c
	}
	if p := d.GetPersonHash(); len(p) > 0 {
		personToken = hex.EncodeToString(p)
	}
	return base + "." + caseToken + "." + personToken
}

// validToken reports whether s is safe as one subject token: letters, digits, '_', '-'.
func validToken(s string) bool {
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return s != "_"
}

// ByCase and ByPerson select the entries about one case or one person for List: their own
// subjects, and the bare subject of entries written before entries had them.
func (l *Ledger) ByCase(caseID string) []string {
	if !validToken(caseID) {
		return []string{l.subject}
	}
	return []string{l.subject + "." + caseID + ".*", l.subject}
}

func (l *Ledger) ByPerson(person []byte) []string {
	return []string{l.subject + ".*." + hex.EncodeToString(person), l.subject}
}

// List returns up to limit entries after afterSequence that match, oldest first, reading
// only the entries on subjects (ByCase, ByPerson). lastSeq is the sequence of the last entry
// returned (afterSequence if none), to resume from; more reports whether another matching
// entry follows.
func (l *Ledger) List(ctx context.Context, subjects []string, match func(*throughcarev1.Disclosure) bool, afterSequence uint64, limit int) (entries []*throughcarev1.Disclosure, lastSeq uint64, more bool, err error) {
	if limit < 1 {
		return nil, 0, false, fmt.Errorf("list %s: limit %d < 1", l.name, limit)
	}
	lastSeq = afterSequence
	_, err = l.scan(ctx, afterSequence, subjects, func(streamSeq uint64, data []byte) (bool, error) {
		entry, err := decodeEntry(streamSeq, data)
		if err != nil {
			return false, err
		}
		if !match(entry) {
			return true, nil
		}
		if len(entries) == limit {
			// One match beyond the page proves there is a next page.
			more = true
			return false, nil
		}
		entries = append(entries, entry)
		lastSeq = streamSeq
		return true, nil
	})
	if err != nil {
		return nil, 0, false, fmt.Errorf("list %s: %w", l.name, err)
	}
	return entries, lastSeq, more, nil
}

// Verify reads the whole ledger and checks its chain, that every entry sits at the stream
// sequence it claims, and that no entry is missing at the end.
func (l *Ledger) Verify(ctx context.Context) (*throughcarev1.VerifyLedgerResponse, error) {
	v := newVerifier()
	lastSeq, err := l.scan(ctx, 0, nil, func(streamSeq uint64, data []byte) (bool, error) {
		entry := new(throughcarev1.Disclosure)
		if err := proto.Unmarshal(data, entry); err != nil {
			v.failNext(fmt.Sprintf("entry %d does not decode", v.next))
			return true, nil
		}
		v.add(entry)
		if v.firstBad == 0 && streamSeq != entry.GetSequence() {
			v.fail(entry.GetSequence(), fmt.Sprintf("entry %d is stored at stream sequence %d", entry.GetSequence(), streamSeq))
		}
		// Read on: the count, and telling a reordered entry from a missing one, need the rest.
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", l.name, err)
	}
	if v.firstBad == 0 && v.seen < lastSeq {
		// The stream's last sequence outlives its messages, so a cut-off tail shows.
		v.fail(v.seen+1, fmt.Sprintf("entries %d to %d are missing from the end", v.seen+1, lastSeq))
	}
	ok, firstBad, problem := v.result()
	return &throughcarev1.VerifyLedgerResponse{
		Intact:           ok,
		Entries:          v.seen,
		FirstBadSequence: firstBad,
		Problem:          problem,
	}, nil
}

// scan calls visit with each message after afterSeq in stream order, up to the stream's
// last sequence when the scan began, until visit returns false. It returns that last
// sequence.
//
// It reads through an ordered consumer: one request sets it up, then the server streams
// batches with flow control and the client checks the order, where a GetMsg per entry
// would cost a round trip each. It needs no direct gets, which followers may answer stale.
func (l *Ledger) scan(ctx context.Context, afterSeq uint64, subjects []string, visit func(streamSeq uint64, data []byte) (bool, error)) (uint64, error) {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream info: %w", err)
	}
	lastSeq := info.State.LastSeq
	if afterSeq >= lastSeq {
		return lastSeq, nil
	}
	consumer, err := l.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       afterSeq + 1,
		FilterSubjects:    subjects,
		InactiveThreshold: scanConsumerIdle,
		MaxResetAttempts:  3,
	})
	if err != nil {
		return 0, fmt.Errorf("read from %d: %w", afterSeq+1, err)
	}
	defer l.deleteConsumer(ctx, consumer)
	// Nothing left to deliver (every later entry gone): waiting for one would block.
	if start := consumer.CachedInfo(); start != nil && start.NumPending == 0 {
		if more, err := l.storedAfter(ctx, afterSeq, lastSeq, subjects); err != nil || !more {
			return lastSeq, err
		}
	}
	msgs, err := consumer.Messages(jetstream.PullMaxMessages(readBatch))
	if err != nil {
		return 0, fmt.Errorf("read from %d: %w", afterSeq+1, err)
	}
	defer msgs.Stop()
	for {
		msg, err := msgs.Next(jetstream.NextContext(ctx))
		if err != nil {
			return 0, fmt.Errorf("read after %d: %w", afterSeq, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return 0, fmt.Errorf("read after %d: %w", afterSeq, err)
		}
		seq := meta.Sequence.Stream
		if seq > lastSeq {
			return lastSeq, nil
		}
		more, err := visit(seq, msg.Data())
		if err != nil || !more {
			return lastSeq, err
		}
		if seq == lastSeq {
			return lastSeq, nil
		}
		if meta.NumPending == 0 {
			if more, err := l.storedAfter(ctx, seq, lastSeq, subjects); err != nil || !more {
				return lastSeq, err
			}
		}
	}
}

// storedAfter reports whether the stream's leader holds an entry on subjects (any, when
// none) after seq and up to last. A scan's consumer may live on a replica that has not yet
// stored the entries the leader reported: it then counts none pending, though they come.
func (l *Ledger) storedAfter(ctx context.Context, seq, last uint64, subjects []string) (bool, error) {
	if len(subjects) == 0 {
		subjects = []string{">"}
	}
	for _, subject := range subjects {
		msg, err := l.stream.GetMsg(ctx, seq+1, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("read after %d: %w", seq, err)
		}
		if msg.Sequence <= last {
			return true, nil
		}
	}
	return false, nil
}

// deleteConsumer removes a scan's consumer now rather than when it idles out. It runs
// even if ctx was cancelled, briefly.
func (l *Ledger) deleteConsumer(ctx context.Context, consumer jetstream.Consumer) {
	info := consumer.CachedInfo()
	if info == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	// Best effort: InactiveThreshold removes it anyway.
	_ = l.js.DeleteConsumer(ctx, l.name, info.Name)
}
