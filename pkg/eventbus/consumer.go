package eventbus

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/records"
)

// ErrPermanent marks a failure that no retry can mend: the message is dead-lettered at once.
var ErrPermanent = errors.New("cannot be processed")

// Permanent wraps err so the consumer dead-letters the message instead of retrying it.
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// LaterError asks for the message again After a while, without counting it as a failure.
type LaterError struct{ After time.Duration }

func (e *LaterError) Error() string { return fmt.Sprintf("not yet: again in %s", e.After) }

// Later asks for the message again after d (a LaterError).
func Later(d time.Duration) error { return &LaterError{After: d} }

// Handler processes one message. It must be idempotent: a message may arrive twice. Its
// errors become dead-letter reasons, so they name ids, never personal data.
type Handler func(ctx context.Context, msg jetstream.Msg) error

// ConsumerConfig is a durable consumer with explicit acks and bounded retries.
type ConsumerConfig struct {
	Stream  string
	Durable string
	// FilterSubject narrows the stream, when set.
	FilterSubject string
	// MaxDeliver bounds deliveries; the last failed one is dead-lettered. 0 retries for
	// ever, for work that must never be given up (the outbox relay).
	MaxDeliver int
	// BackOff is the wait before each retry; the last entry repeats.
	BackOff []time.Duration
	// AckWait is how long a delivered message may stay unacknowledged before the server
	// delivers it again, e.g. after a crash: how long a message held by a dead process,
	// or acknowledged to a NATS node that died, waits. A worker still handling a message
	// says so every AckWait/3 (InProgress), so a short AckWait redelivers nothing alive.
	AckWait time.Duration
	// HandleTimeout bounds one handling of a message; 0 is 30 s.
	HandleTimeout time.Duration
	// CheckInterval is how often the consumer's existence is checked, so a deleted one
	// is recreated.
	CheckInterval time.Duration
	// Workers handle messages in parallel; messages with the same OrderKey go to the same
	// worker, in order. 0 or 1 handles one message at a time.
	Workers int
	// OrderKey names what messages must keep their order within, such as the case id.
	OrderKey func(jetstream.Msg) string
	// EraseHandled, when set, says which messages to erase once handled (processed, or
	// dead-lettered), before acknowledging them: a work queue's acknowledgement deletes a
	// message without erasing it, and its bytes stay in the stream's block until the block
	// empties (see records.WithErasure). An erasure rewrites the block, so it is for the
	// messages that hold something to forget. For the inbox; never for a consumer of a
	// stream that must keep its messages.
	EraseHandled func(jetstream.Msg) bool
}

// DefaultConsumerConfig retries for about a minute before giving up on a message.
func DefaultConsumerConfig(stream, durable string) ConsumerConfig {
	return ConsumerConfig{
		Stream:        stream,
		Durable:       durable,
		MaxDeliver:    6,
		BackOff:       []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second},
		AckWait:       5 * time.Second,
		CheckInterval: 5 * time.Second,
		Workers:       8,
	}
}

func (c ConsumerConfig) backoff(delivery uint64) time.Duration {
	if len(c.BackOff) == 0 {
		return time.Second
	}
	i := min(int(delivery)-1, len(c.BackOff)-1)
	return c.BackOff[max(i, 0)]
}

// DeadLetters keeps the messages an agency could never process: metadata only, never the
// payload (the inbox, a work queue, forgets the message itself; the sender's outbox keeps
// what was sent).
type DeadLetters struct {
	store *records.Store[*throughcarev1.DeadLetter]
}

// OpenDeadLetters opens the agency's dead-letter bucket.
func OpenDeadLetters(ctx context.Context, js jetstream.JetStream, bucket string, opts ...records.Option) (*DeadLetters, error) {
	s, err := records.Open(ctx, js, bucket, func() *throughcarev1.DeadLetter { return new(throughcarev1.DeadLetter) }, opts...)
	if err != nil {
		return nil, err
	}
	return &DeadLetters{store: s}, nil
}

// Len is how many dead letters are recorded: for metrics.
func (d *DeadLetters) Len(ctx context.Context) (uint64, error) { return d.store.Len(ctx) }

// List returns up to limit dead letters recorded after the bucket revision afterRevision,
// oldest first, and the revision to resume after when more may follow (0 at the end).
func (d *DeadLetters) List(ctx context.Context, afterRevision uint64, limit int) ([]*throughcarev1.DeadLetter, uint64, error) {
	recs, resume, err := d.store.Records(ctx, afterRevision, limit)
	if err != nil {
		return nil, 0, err
	}
	page := make([]*throughcarev1.DeadLetter, len(recs))
	for i, r := range recs {
		page[i] = r.Msg
	}
	return page, resume, nil
}

// deadLetterKey is where the dead letter of a stream's message is kept.
func deadLetterKey(stream string, seq uint64) string { return fmt.Sprintf("%s-%020d", stream, seq) }

// Get returns the dead letter of a stream's message.
func (d *DeadLetters) Get(ctx context.Context, stream string, seq uint64) (*throughcarev1.DeadLetter, uint64, error) {
	dl, rev, err := d.store.Get(ctx, deadLetterKey(stream, seq))
	if errors.Is(err, records.ErrNotFound) {
		return nil, 0, fmt.Errorf("dead letter %s/%d: %w", stream, seq, fault.ErrNotFound)
	}
	return dl, rev, err
}

// Resolve records what an operator did with a dead letter read at rev; a dead letter
// resolved meanwhile is a conflict.
func (d *DeadLetters) Resolve(ctx context.Context, dl *throughcarev1.DeadLetter, rev uint64) error {
	_, err := d.store.Update(ctx, deadLetterKey(dl.GetStream(), dl.GetSequence()), dl, rev)
	if errors.Is(err, records.ErrRevisionMismatch) {
		return fmt.Errorf("dead letter %s/%d changed meanwhile: %w", dl.GetStream(), dl.GetSequence(), fault.ErrConflict)
	}
	return err
}

func (d *DeadLetters) add(ctx context.Context, stream string, dl *throughcarev1.DeadLetter) error {
	_, err := d.store.Create(ctx, deadLetterKey(stream, dl.GetSequence()), dl)
	if errors.Is(err, records.ErrExists) {
		return nil // recorded by an earlier delivery that was not acknowledged
	}
	return err
}

// Consume runs handle over a durable consumer until ctx ends, then drains it. It recreates
// the consumer when it is deleted and survives reconnects. A message whose handler fails
// permanently, or fails on its last delivery, is recorded in dead and terminated, so it
// never blocks the messages behind it.
func Consume(ctx context.Context, log *zap.Logger, js jetstream.JetStream, cfg ConsumerConfig, dead *DeadLetters, handle Handler) error {
	log = log.With(zap.String("stream", cfg.Stream), zap.String("consumer", cfg.Durable))
	for {
		err := consumeOnce(ctx, log, js, cfg, dead, handle)
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("consumer stopped; recreating it", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// A pull request that finds no consumer leader (a replicated consumer just created, or
// one whose leader moved) goes unanswered, and the client asks again only after two
// heartbeats are missed: nats.go's default, 15 s, left a new R3 consumer idle for 30 s.
const (
	pullExpiry    = 10 * time.Second
	pullHeartbeat = 2 * time.Second
)

// consumeOnce runs one consumer until ctx ends (nil) or the consumer is lost (an error).
func consumeOnce(ctx context.Context, log *zap.Logger, js jetstream.JetStream, cfg ConsumerConfig, dead *DeadLetters, handle Handler) error {
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.Stream, jetstream.ConsumerConfig{
		Durable:       cfg.Durable,
		FilterSubject: cfg.FilterSubject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		// The server redelivers for ever; process gives up after cfg.MaxDeliver itself,
		// so no message is dropped without being dead-lettered.
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: 1024,
	})
	if err != nil {
		return fmt.Errorf("create consumer: %w", err)
	}
	var erase func(context.Context, uint64) error
	if cfg.EraseHandled != nil {
		stream, err := js.Stream(ctx, cfg.Stream)
		if err != nil {
			return fmt.Errorf("stream %s: %w", cfg.Stream, err)
		}
		erase = func(ctx context.Context, seq uint64) error {
			err := stream.SecureDeleteMsg(ctx, seq)
			var apiErr *jetstream.APIError
			if errors.Is(err, jetstream.ErrMsgNotFound) || errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeSequenceNotFound {
				return nil // gone already: erased by an earlier delivery of it
			}
			return err
		}
	}
	lost := make(chan error, 1)
	conn, stopWatch := watchConnection(js.Conn())
	defer stopWatch()
	dispatch, stopWorkers := startWorkers(cfg, func(msg jetstream.Msg) { process(ctx, conn.untilDrop(), log, cfg, dead, handle, erase, msg) })
	defer stopWorkers()
	cc, err := cons.Consume(dispatch,
		jetstream.PullMaxMessages(64),
		jetstream.PullExpiry(pullExpiry),
		jetstream.PullHeartbeat(pullHeartbeat),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) {
				select {
				case lost <- err:
				default:
				}
			}
		}))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer func() {
		cc.Drain()
		<-cc.Closed()
	}()
	check := time.NewTicker(cfg.CheckInterval)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-lost:
			return err
		case <-cc.Closed():
			return errors.New("consume ended")
		case <-check.C:
			if _, err := cons.Info(ctx); errors.Is(err, jetstream.ErrConsumerNotFound) {
				return err
			}
		}
	}
}

// startWorkers returns a dispatcher that hands each message to one of cfg.Workers workers
// chosen by its order key, and a stop function that lets them finish what they hold.
func startWorkers(cfg ConsumerConfig, work func(jetstream.Msg)) (dispatch func(jetstream.Msg), stop func()) {
	if cfg.Workers <= 1 || cfg.OrderKey == nil {
		return work, func() {}
	}
	queues := make([]chan jetstream.Msg, cfg.Workers)
	var wg sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan jetstream.Msg, 16)
		wg.Go(func() {
			for msg := range queues[i] {
				work(msg)
			}
		})
	}
	dispatch = func(msg jetstream.Msg) {
		h := fnv.New32a()
		_, _ = h.Write([]byte(cfg.OrderKey(msg)))
		queues[h.Sum32()%uint32(len(queues))] <- msg
	}
	stop = func() {
		for _, q := range queues {
			close(q)
		}
		wg.Wait()
	}
	return dispatch, stop
}

func process(ctx, untilDrop context.Context, log *zap.Logger, cfg ConsumerConfig, dead *DeadLetters, handle Handler, erase func(context.Context, uint64) error, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		log.Error("message without metadata", zap.Error(err))
		_ = msg.Term()
		return
	}
	// A message in hand is finished even when shutdown has begun.
	timeout := cfg.HandleTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	defer context.AfterFunc(untilDrop, cancel)()
	defer keepInProgress(msg, cfg.AckWait)()
	// erased erases a handled message first; one it fails to erase is not acknowledged,
	// so it comes again (every handler is idempotent) and is erased then.
	erased := func() bool {
		if erase == nil || !cfg.EraseHandled(msg) {
			return true
		}
		if err := erase(hctx, meta.Sequence.Stream); err != nil {
			log.Warn("erasing a handled message failed; it will be delivered again", zap.Uint64("sequence", meta.Sequence.Stream), zap.Error(err))
			_ = msg.NakWithDelay(cfg.backoff(meta.NumDelivered))
			return false
		}
		return true
	}
	err = handle(hctx, msg)
	if err == nil {
		if !erased() {
			return
		}
		if err := msg.Ack(); err != nil {
			log.Warn("ack failed; the message will be delivered again", zap.Uint64("sequence", meta.Sequence.Stream), zap.Error(err))
		}
		return
	}
	if later := (*LaterError)(nil); errors.As(err, &later) {
		_ = msg.NakWithDelay(later.After) // not a failure: the handler asked to see it again
		return
	}
	permanent := errors.Is(err, ErrPermanent) || errors.Is(err, ErrUndecodable)
	if !permanent && (cfg.MaxDeliver <= 0 || int(meta.NumDelivered) < cfg.MaxDeliver) {
		delay := cfg.backoff(meta.NumDelivered)
		log.Warn("handler failed; retrying", zap.Uint64("sequence", meta.Sequence.Stream), zap.Uint64("delivery", meta.NumDelivered), zap.Duration("delay", delay), zap.Error(err))
		_ = msg.NakWithDelay(delay)
		return
	}
	dl := &throughcarev1.DeadLetter{
		Sequence:   meta.Sequence.Stream,
		Subject:    msg.Subject(),
		EventId:    msg.Headers().Get(headerID),
		Reason:     err.Error(),
		Deliveries: meta.NumDelivered,
		Time:       timestamppb.Now(),
		Stream:     cfg.Stream,
		Source:     strings.TrimPrefix(msg.Headers().Get(headerSource), sourcePrefix),
		CaseId:     msg.Headers().Get(headerSubject),
		HandoverId: msg.Headers().Get(headerHandover),
	}
	if err := dead.add(hctx, cfg.Stream, dl); err != nil {
		log.Error("recording dead letter failed; retrying the message", zap.Uint64("sequence", meta.Sequence.Stream), zap.Error(err))
		_ = msg.NakWithDelay(cfg.backoff(meta.NumDelivered))
		return
	}
	if !erased() {
		return
	}
	log.Error("message dead-lettered", zap.Uint64("sequence", meta.Sequence.Stream), zap.String("subject", msg.Subject()), zap.String("event_id", dl.GetEventId()), zap.String("reason", dl.GetReason()))
	_ = msg.TermWithReason("dead-lettered")
}

// keepInProgress tells the server, every ackWait/3 until the returned stop is called,
// that msg is still being handled, so that it is not delivered again meanwhile.
func keepInProgress(msg jetstream.Msg, ackWait time.Duration) (stop func()) {
	if ackWait <= 0 {
		return func() {}
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(ackWait / 3)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done); <-finished }
}

// errCodeSequenceNotFound is the server's answer to deleting a sequence a stream no longer
// holds (JSSequenceNotFoundErr), which the client has no constant for.
const errCodeSequenceNotFound jetstream.ErrorCode = 10043
