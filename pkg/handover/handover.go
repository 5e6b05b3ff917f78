// Package handover is the handover protocol between agencies, the same for every agency's
// service: referrals out, receipts back, questions and answers, deadlines, release and plans.
//
// Every change to a handover is one compare-and-set write of its record in the agency's
// Key-Value bucket, and the events that change must send travel inside that record (an
// outbox). A relay follows the bucket's change stream, publishes the outbox to JetStream
// and clears it. So an event is never sent for a change that was not stored, nor a change
// stored without its event being sent, whenever the process dies. Receivers are idempotent:
// a duplicate changes nothing.
//
// What a change does to a handover is decided in package lifecycle, and every event passes
// package gate on its way out and in; this package stores, relays, receives and re-sends.
// The files follow the seams: rpc.go (HandoverService), refer.go (the sender's commands),
// inbox.go (one handler per event type), relay.go (the outbox relay), delivery.go (kept events, resends),
// deadlines.go and retention.go (the periodic passes), readable.go (what a copy may show).
package handover

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/cases"
	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/flow"
	"github.com/throughcare/throughcare/pkg/gate"
	"github.com/throughcare/throughcare/pkg/handover/lifecycle"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/metrics"
	"github.com/throughcare/throughcare/pkg/protocol"
	"github.com/throughcare/throughcare/pkg/records"
	"github.com/throughcare/throughcare/pkg/signing"
	"github.com/throughcare/throughcare/pkg/tracing"
)

// Config is one agency's handover settings.
type Config struct {
	Agency string
	// AcknowledgeWithin is how long after delivery an acknowledgement is due.
	AcknowledgeWithin time.Duration
	// AcceptBeforeRelease is how long before the expected release acceptance is due.
	AcceptBeforeRelease time.Duration
	// DeadlineScanInterval is how often deadlines are checked.
	DeadlineScanInterval time.Duration
	// Inbox tunes the consumer of incoming events (retries, ack wait); its stream and
	// durable name are set by Open.
	Inbox eventbus.ConsumerConfig
	// Limits bound the agency's streams.
	Limits eventbus.Limits
	// Topology says whether the agencies share one NATS account or each has its own, in
	// which case the inbox sources the other outboxes through imports.
	Topology eventbus.Topology
	// SourceAlerts decides when Run warns about the inbox's sources; a zero Interval
	// turns the check off.
	SourceAlerts eventbus.SourceAlerts
	// Protocol decides what may flow; every agency runs the same one.
	Protocol Policy
	// SigningKey signs every event this agency sends.
	SigningKey signing.Key
	// Keyring holds every agency's public keys, old ones included, to verify what arrives.
	Keyring *signing.Keyring
	// ReplayWindow is how old an arriving event may be; older ones are refused as replays.
	ReplayWindow time.Duration
	// PersonKey makes the ledger's references to people; every agency of a deployment
	// holds the same one.
	PersonKey ledger.PersonKey
	// ResendAfter is how long an event sent along a handover may go unacknowledged by the
	// other agency before it is re-sent (then twice as long, up to 32 times).
	ResendAfter time.Duration
	// Metrics counts events and deliveries; nil counts nothing.
	Metrics *metrics.Agency
}

// Policy is the sharing protocol as handovers use it; *protocol.Protocol is the one
// implementation outside tests.
type Policy interface {
	gate.Policy
	Agencies() *agency.Registry
	Proto() *throughcarev1.SharingProtocol
	Rule(sender, recipient string, purpose throughcarev1.Purpose) (*throughcarev1.SharingRule, bool)
	RuleFor(sender, recipient string, purpose throughcarev1.Purpose) (*throughcarev1.SharingRule, error)
}

var _ Policy = (*protocol.Protocol)(nil)

// DefaultConfig is the shipped configuration for agency.
func DefaultConfig(agency string) Config {
	return Config{
		Agency:               agency,
		AcknowledgeWithin:    48 * time.Hour,
		AcceptBeforeRelease:  14 * 24 * time.Hour,
		DeadlineScanInterval: time.Minute,
		Inbox:                eventbus.DefaultConsumerConfig("", ""),
		Limits:               eventbus.DefaultLimits,
		SourceAlerts:         eventbus.DefaultSourceAlerts,
		Protocol:             protocol.Default(),
		ReplayWindow:         30 * 24 * time.Hour,
		ResendAfter:          2 * time.Minute,
	}
}

// Service runs one agency's side of every handover and serves HandoverService.
type Service struct {
	throughcarev1.UnimplementedHandoverServiceServer
	cfg       Config
	log       *zap.Logger
	js        jetstream.JetStream
	outbox    jetstream.Stream // where an acknowledged notice's body is deleted from
	handovers *records.Store[*storev1.HandoverRecord]
	index     *records.Index[*storev1.HandoverRecord]
	cases     *cases.Store
	dead      *eventbus.DeadLetters
	ledger    *ledger.Ledger
	party     *lifecycle.Party
	flow      *flow.Publisher
	out       *gate.Outbound
	in        *gate.Inbound
	requests  resendRequests
	now       func() time.Time
	// closing ends open watches at shutdown, so a graceful stop does not wait on them.
	closing   chan struct{}
	closeOnce sync.Once
}

var _ throughcarev1.HandoverServiceServer = (*Service)(nil)

// historyKept is how many revisions of a handover the bucket keeps, so WatchHandovers can
// replay a handover's changes. The protocol bounds the writes one handover takes (20
// questions, each answered, and a receipt for each step), and events and index entries are
// keys of their own, so this keeps every change while a handover costs O(1) storage.
const historyKept = 64

// Open creates the agency's streams and buckets. Call Run to start processing events.
func Open(ctx context.Context, log *zap.Logger, js jetstream.JetStream, caseStore *cases.Store, cfg Config) (*Service, error) {
	name := cfg.Agency
	if cfg.Protocol == nil {
		return nil, errors.New("handover: no sharing protocol")
	}
	if !cfg.Protocol.Agencies().Has(name) {
		return nil, fmt.Errorf("handover: %q is not among the protocol's agencies (%s)", name, strings.Join(cfg.Protocol.Agencies().IDs(), ", "))
	}
	if cfg.ResendAfter <= 0 {
		return nil, fmt.Errorf("handover: resend after %s must be positive", cfg.ResendAfter)
	}
	if cfg.SigningKey.Agency != cfg.Agency || cfg.Keyring == nil {
		return nil, fmt.Errorf("handover: %s needs its own signing key and the agencies' keyring", name)
	}
	if err := eventbus.SetupTopology(ctx, js, cfg.Agency, cfg.Protocol.Agencies().Peers(cfg.Agency), cfg.Limits, cfg.Topology); err != nil {
		return nil, err
	}
	outbox, err := js.Stream(ctx, eventbus.OutboxStream(cfg.Agency))
	if err != nil {
		return nil, fmt.Errorf("handover: %w", err)
	}
	replicas := records.WithReplicas(cfg.Limits.Replicas)
	handovers, err := records.Open(ctx, js, name+"_handovers", func() *storev1.HandoverRecord { return new(storev1.HandoverRecord) }, replicas, records.WithHistory(historyKept), records.WithErasure())
	if err != nil {
		return nil, err
	}
	dead, err := eventbus.OpenDeadLetters(ctx, js, name+"_deadletters", replicas)
	if err != nil {
		return nil, err
	}
	book, err := ledger.Open(ctx, js, cfg.Agency, cfg.Limits.Replicas)
	if err != nil {
		return nil, err
	}
	// Clocks drift: an event may seem to come from up to five minutes ahead.
	replays, err := signing.NewReplayGuard(ctx, js, name+"_seen_events", cfg.Limits.Replicas, cfg.ReplayWindow, 5*time.Minute, nil)
	if err != nil {
		return nil, err
	}
	cfg.Inbox.Stream = eventbus.InboxStream(cfg.Agency)
	cfg.Inbox.Durable = name + "-inbox"
	s := &Service{
		cfg:       cfg,
		log:       log.With(zap.String("agency", name)),
		js:        js,
		outbox:    outbox,
		handovers: handovers,
		cases:     caseStore,
		dead:      dead,
		ledger:    book,
		now:       time.Now,
		closing:   make(chan struct{}),
	}
	s.party = &lifecycle.Party{Agency: name, Protocol: cfg.Protocol, AcknowledgeWithin: cfg.AcknowledgeWithin, AcceptBeforeRelease: cfg.AcceptBeforeRelease, ResendAfter: cfg.ResendAfter, Now: s.now}
	s.flow = flow.NewPublisher(name, js.Conn(), s.log)
	s.out = &gate.Outbound{Protocol: cfg.Protocol, Ledger: book, PersonKey: cfg.PersonKey, SigningKey: cfg.SigningKey, Case: s.localCase, Now: s.now}
	s.in = &gate.Inbound{Agency: name, Protocol: cfg.Protocol, Ledger: book, Verifier: signing.NewVerifier(cfg.Keyring), Replays: replays, Case: s.localCase, Log: s.log, Now: s.now}
	s.index = records.NewIndex(handovers, s.party.IndexKeys)
	if err := s.index.EnsureBuilt(ctx); err != nil {
		return nil, fmt.Errorf("handovers of %s: %w", name, err)
	}
	if err := caseStore.Index().EnsureBuilt(ctx); err != nil {
		return nil, fmt.Errorf("cases of %s: %w", name, err)
	}
	return s, nil
}

// IndexEntries lists every index entry of the agency's handovers and cases, sorted: for
// checking an index against its records, never a request path.
func (s *Service) IndexEntries(ctx context.Context) ([]string, error) {
	handovers, err := s.index.Entries(ctx)
	if err != nil {
		return nil, err
	}
	cases, err := s.cases.Index().Entries(ctx)
	if err != nil {
		return nil, err
	}
	return append(handovers, cases...), nil
}

// RebuildIndexes drops the index entries of the agency's handovers and cases and derives
// them afresh from the records. It reads both buckets whole.
func (s *Service) RebuildIndexes(ctx context.Context) error {
	for _, ix := range []interface {
		Drop(context.Context) error
		Rebuild(context.Context) error
	}{s.index, s.cases.Index()} {
		if err := ix.Drop(ctx); err != nil {
			return err
		}
		if err := ix.Rebuild(ctx); err != nil {
			return err
		}
	}
	return nil
}

// CloseWatches ends every open WatchHandovers with Unavailable; clients resume from their
// cursor elsewhere or after the restart. Call it before stopping the gRPC server.
func (s *Service) CloseWatches() { s.closeOnce.Do(func() { close(s.closing) }) }

// Ledger is the agency's disclosure ledger, for its AuditService.
func (s *Service) Ledger() *ledger.Ledger { return s.ledger }

// Agencies are the deployment's parties, as the protocol declares them.
func (s *Service) Agencies() *agency.Registry { return s.cfg.Protocol.Agencies() }

// Protocol is the sharing protocol the agency enforces.
func (s *Service) Protocol() *throughcarev1.SharingProtocol { return s.cfg.Protocol.Proto() }

// Run processes incoming events, relays the outbox, checks deadlines and watches the
// inbox's sources until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	relay := s.cfg.Inbox
	stream, prefix := s.handovers.ChangeStream()
	relay.Stream, relay.Durable, relay.FilterSubject = stream, relayDurable(s.cfg.Agency), prefix+"*"
	relay.MaxDeliver = 0                                                     // an outbox is never given up on
	relay.OrderKey = func(msg jetstream.Msg) string { return msg.Subject() } // per handover
	inbox := s.cfg.Inbox
	inbox.OrderKey = eventbus.OrderByCase
	inbox.EraseHandled = gate.HoldsPersonalData // what arrived lives on in the records it was stored in, or nowhere

	handoverIndex := relay
	handoverIndex.Durable = s.cfg.Agency + "-handover-index"
	caseIndex := s.cfg.Inbox
	caseStream, casePrefix := s.cases.ChangeStream()
	caseIndex.Stream, caseIndex.Durable, caseIndex.FilterSubject = caseStream, s.cfg.Agency+"-case-index", casePrefix+"*"
	caseIndex.MaxDeliver = 0
	caseIndex.OrderKey = func(msg jetstream.Msg) string { return msg.Subject() }

	var wg sync.WaitGroup
	errs := make([]error, 6)
	wg.Go(func() { errs[0] = eventbus.Consume(ctx, s.log, s.js, inbox, s.dead, s.handleIncoming) })
	wg.Go(func() { errs[1] = eventbus.Consume(ctx, s.log, s.js, relay, s.dead, s.relayOutbox) })
	wg.Go(func() { errs[2] = s.watchDeadlines(ctx) })
	wg.Go(func() { errs[4] = eventbus.Consume(ctx, s.log, s.js, caseIndex, s.dead, s.cases.FollowChange) })
	wg.Go(func() { errs[5] = eventbus.Consume(ctx, s.log, s.js, handoverIndex, s.dead, s.followIndex) })
	if s.cfg.SourceAlerts.Interval > 0 {
		wg.Go(func() { errs[3] = eventbus.WatchSources(ctx, s.log, s.js, s.cfg.Agency, s.cfg.SourceAlerts) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// relayDurable names the agency's outbox relay, the consumer of its handovers' changes.
func relayDurable(agency string) string {
	return agency + "-outbox-relay"
}

// errUnchanged tells mutate that the record already holds the change: nothing to write.
var errUnchanged = errors.New("unchanged")

// maxConflictRetries bounds retries of a compare-and-set that lost to a concurrent write.
const maxConflictRetries = 20

// mutate applies a change to the current record and writes it back if no one wrote in
// between, retrying with the new current record otherwise. change sees a copy with an empty
// outbox, to which it adds the events this write sends; returning errUnchanged writes
// nothing.
func (s *Service) mutate(ctx context.Context, handoverID string, change func(rec *storev1.HandoverRecord) error) (*storev1.HandoverRecord, error) {
	return s.mutateFrom(ctx, handoverID, nil, change)
}

// mutateFrom is mutate starting from held, a record just read (nil: read it first); a
// write that finds it stale reads the record again.
func (s *Service) mutateFrom(ctx context.Context, handoverID string, held *heldRecord, change func(rec *storev1.HandoverRecord) error) (*storev1.HandoverRecord, error) {
	for range maxConflictRetries {
		var err error
		rec, rev := held.take()
		if rec == nil {
			if rec, rev, err = s.handovers.Get(ctx, handoverID); err != nil {
				return nil, handoverError(handoverID, err)
			}
		}
		rec.Outbox = nil // the previous revision's events were that revision's
		if err := change(rec); errors.Is(err, errUnchanged) {
			return rec, nil
		} else if err != nil {
			return nil, err
		}
		rec.Handover.Revision++
		rec.Handover.UpdateTime = timestampNow(s.now)
		_, err = s.write(ctx, rec, rev)
		if errors.Is(err, records.ErrRevisionMismatch) {
			continue
		}
		if err != nil {
			return nil, handoverError(handoverID, err)
		}
		return rec, nil
	}
	return nil, fmt.Errorf("handover %s: %w: too many concurrent writes", handoverID, fault.ErrConflict)
}

// heldRecord is a handover record as read at its revision, for a write that follows.
type heldRecord struct {
	rec *storev1.HandoverRecord
	rev uint64
}

// take hands over the record held, once: nil after that, or if nothing was held.
func (h *heldRecord) take() (*storev1.HandoverRecord, uint64) {
	if h == nil {
		return nil, 0
	}
	rec := h.rec
	h.rec = nil
	return rec, h.rev
}

// write stores rec, with the events of its outbox, if its key is still at rev (0: if it is
// new), then puts its index entries in place. A follower of the change stream (followIndex)
// mends a crash between the two.
func (s *Service) write(ctx context.Context, rec *storev1.HandoverRecord, rev uint64) (uint64, error) {
	id := rec.GetHandover().GetHandoverId()
	s.party.Number(rec)
	for _, ev := range rec.GetOutbox() {
		if ev.TraceContext == nil {
			ev.TraceContext = tracing.Inject(ctx) // the relay continues the trace
		}
	}
	var err error
	if rec.GetHandover().GetRevision() >= historyKept {
		// This write may push the oldest revision out of the history: erase it first,
		// or its bytes would stay in the store (records.WithErasure).
		if err := s.handovers.EraseOldest(ctx, id, historyKept-1); err != nil {
			return 0, err
		}
	}
	if rev == 0 {
		rev, err = s.handovers.Create(ctx, id, rec)
	} else {
		rev, err = s.handovers.Update(ctx, id, rec, rev)
	}
	if err != nil {
		return 0, err
	}
	if err := s.index.ApplyWritten(ctx, id, rec, rev); err != nil {
		s.log.Warn("index not updated with the write; the relay will", zap.String("handover_id", id), zap.Error(err))
	}
	return rev, nil
}

// get loads a handover record.
func (s *Service) get(ctx context.Context, handoverID string) (*storev1.HandoverRecord, error) {
	rec, _, err := s.handovers.Get(ctx, handoverID)
	if err != nil {
		return nil, handoverError(handoverID, err)
	}
	return rec, nil
}

func handoverError(handoverID string, err error) error {
	switch {
	case errors.Is(err, records.ErrNotFound):
		return fmt.Errorf("handover %s: %w", handoverID, fault.ErrNotFound)
	case errors.Is(err, records.ErrExists):
		return fmt.Errorf("handover %s: %w", handoverID, fault.ErrAlreadyExists)
	case errors.Is(err, records.ErrInvalidKey):
		return fault.InvalidField("handover_id", "is not a handover id")
	}
	return fmt.Errorf("handover %s: %w", handoverID, err)
}

func timestampNow(now func() time.Time) *timestamppb.Timestamp { return timestamppb.New(now()) }

// MetricsState reads, for a metrics scrape, the backlog of the agency's inbox and outbox
// relay, its inbox sources' lag, and how many dead letters and ledger entries it holds:
// stream and consumer state, no record.
func (s *Service) MetricsState(ctx context.Context) (metrics.State, error) {
	relayStream, _ := s.handovers.ChangeStream()
	st := metrics.State{SourceLag: map[string]uint64{}}
	for _, c := range []struct{ name, stream, durable string }{
		{"inbox", s.cfg.Inbox.Stream, s.cfg.Inbox.Durable},
		{"outbox_relay", relayStream, relayDurable(s.cfg.Agency)},
	} {
		cons, err := s.js.Consumer(ctx, c.stream, c.durable)
		if err != nil {
			return st, fmt.Errorf("consumer %s: %w", c.durable, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return st, fmt.Errorf("consumer %s: %w", c.durable, err)
		}
		st.Consumers = append(st.Consumers, metrics.Consumer{Name: c.name, Pending: info.NumPending, AckPending: uint64(info.NumAckPending), Redelivered: uint64(info.NumRedelivered)})
	}
	sources, err := eventbus.InboxSources(ctx, s.js, s.cfg.Agency)
	if err != nil {
		return st, err
	}
	for _, src := range sources {
		st.SourceLag[src.Source] = src.Lag
	}
	if st.DeadLetters, err = s.dead.Len(ctx); err != nil {
		return st, err
	}
	if st.LedgerEntries, err = s.ledger.Len(ctx); err != nil {
		return st, err
	}
	return st, nil
}
