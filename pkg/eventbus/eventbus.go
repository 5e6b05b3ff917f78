// Package eventbus carries events between agencies on NATS JetStream.
//
// Each agency publishes into its own outbox stream and reads its own inbox stream. An inbox
// sources from the other agencies' outboxes, filtered to the events addressed to it: the
// same shape works in one account and across per-agency accounts, where sourcing through
// exports is the locked-down way. Subjects are built from enum values and ids the sender
// makes, never from client strings:
//
//	tc.<source>.out.<recipient>.<event type>     e.g. tc.prison.out.probation.handover_referred
//	tc.<source>.body.<recipient>.<event id>      the whole of an event sent as a notice
//
// Events are protobuf in binary mode with CloudEvents attributes as NATS headers; the event
// id is also the Nats-Msg-Id, so a re-published event is stored once.
//
// An event with personal data travels as a notice: the outbox keeps the whole event on its
// body subject, which no inbox sources (PublishBody), and sends on the event's subject its
// headers alone (PublishNotice). The recipient reads the body from the outbox (FetchBody),
// through an export that lets it read only what is addressed to it, until the sender
// deletes the body once the recipient has acknowledged the event. So the recipient's inbox
// never holds personal data, and nothing has to be erased from it once an event is handled.
package eventbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/records"
	"github.com/throughcare/throughcare/pkg/tracing"
)

// OutboxStream and InboxStream name an agency's streams.
func OutboxStream(a string) string { return "OUTBOX_" + strings.ToUpper(a) }
func InboxStream(a string) string  { return "INBOX_" + strings.ToUpper(a) }

// outboxFilter is every event source sends to recipient.
func outboxFilter(source, recipient string) string {
	return "tc." + source + ".out." + recipient + ".>"
}

// BodySubject is where the outbox keeps the whole of an event sent as a notice.
func BodySubject(source, recipient, eventID string) string {
	return "tc." + source + ".body." + recipient + "." + eventID
}

// bodyFilter is every body source keeps for recipient.
func bodyFilter(source, recipient string) string { return "tc." + source + ".body." + recipient + ".>" }

func typeToken(t throughcarev1.EventType) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "EVENT_TYPE_"))
}

// Subject is where ev is published. It refuses an event whose routing fields are unset.
func Subject(ev *throughcarev1.Event) (string, error) {
	src, dst := ev.GetSource(), ev.GetRecipient()
	if !agency.ValidID(src) || !agency.ValidID(dst) || src == dst {
		return "", fmt.Errorf("event %s: source %s and recipient %s must be two different agencies", ev.GetEventId(), ev.GetSource(), ev.GetRecipient())
	}
	if _, known := throughcarev1.EventType_name[int32(ev.GetType())]; !known || ev.GetType() == throughcarev1.EventType_EVENT_TYPE_UNSPECIFIED {
		return "", fmt.Errorf("event %s: type %v is not a known event type", ev.GetEventId(), ev.GetType())
	}
	return "tc." + src + ".out." + dst + "." + typeToken(ev.GetType()), nil
}

// Limits bound the streams. Discard-new means a full stream refuses new events, so a
// publisher is told, rather than silently dropping old events nobody has read.
type Limits struct {
	MaxBytes int64
	MaxAge   time.Duration
	Replicas int
}

// DefaultLimits suit one server; a cluster sets Replicas to 3.
var DefaultLimits = Limits{MaxBytes: 1 << 30, MaxAge: 365 * 24 * time.Hour, Replicas: 1}

// Topology says where the agencies' streams live.
type Topology int

const (
	// SharedAccount puts every agency's streams in one NATS account: the inbox sources the
	// outboxes directly. For tests and the single-account mode.
	SharedAccount Topology = iota
	// AccountPerAgency puts each agency in its own NATS account: the inbox sources each
	// outbox through the imports described by External.
	AccountPerAgency
)

// ExternalSource is how recipient's inbox reaches source's outbox across accounts: the
// source account exports, to the recipient account only, the consumer-create API for
// consumers filtered to what is addressed to the recipient, and the delivery subjects of
// those consumers; the recipient imports both and sources with External set.
type ExternalSource struct {
	// APIPrefix replaces $JS.API in the recipient's account (StreamSource.External).
	APIPrefix string
	// DeliverPrefix is where the sourcing consumer delivers, in the source account,
	// exported as a stream to the recipient (StreamSource.External).
	DeliverPrefix string
	// ExportedConsumerCreate is the source account's consumer-create API as exported:
	// only for OUTBOX_<SOURCE> and only with the recipient's filter. The server checks the
	// filter in the subject against the consumer's, so nothing else can be sourced.
	ExportedConsumerCreate string
	// ImportedConsumerCreate is the same API as the recipient imports it.
	ImportedConsumerCreate string
	// ExportedBodyGet is the source account's direct-get API for the bodies of events
	// addressed to the recipient, as exported; ImportedBodyGet is it as imported.
	ExportedBodyGet string
	ImportedBodyGet string
}

// External names the subjects through which dst's inbox sources src's outbox.
func External(src, dst string) ExternalSource {
	create := "CONSUMER.CREATE." + OutboxStream(src) + ".*." + outboxFilter(src, dst)
	body := "DIRECT.GET." + OutboxStream(src) + "." + bodyFilter(src, dst)
	return ExternalSource{
		APIPrefix:              "$JS." + src + ".API",
		DeliverPrefix:          "deliver." + src + "." + dst,
		ExportedConsumerCreate: "$JS.API." + create,
		ImportedConsumerCreate: "$JS." + src + ".API." + create,
		ExportedBodyGet:        "$JS.API." + body,
		ImportedBodyGet:        "$JS." + src + ".API." + body,
	}
}

// Setup creates or updates the agency's outbox and inbox, with every agency in one
// account. The inbox sources the outboxes of its peers (the agencies a protocol rule links
// it with, agency.Registry.Peers) even before they exist, but the
// server then retries a missing one only after 12s, backing off by 10s a failure up to 2
// minutes: where one process starts several agencies, SetupOutbox them all first. What
// such an outbox stores meanwhile is delayed, not lost (see OptStartSeq below).
func Setup(ctx context.Context, js jetstream.JetStream, id string, peers []string, limits Limits) error {
	return SetupTopology(ctx, js, id, peers, limits, SharedAccount)
}

// SetupTopology is Setup for the given topology: with AccountPerAgency the inbox sources
// each other agency's outbox through its imports (External).
func SetupTopology(ctx context.Context, js jetstream.JetStream, id string, peers []string, limits Limits, topology Topology) error {
	if err := SetupOutbox(ctx, js, id, limits); err != nil {
		return err
	}
	inbox := jetstream.StreamConfig{
		Name:        InboxStream(id),
		Description: "events other agencies send to " + id,
		Storage:     jetstream.FileStorage,
		// A work queue forgets a message once it is handled (stored, or refused and
		// dead-lettered): the inbox keeps nothing the agency was told to forget or
		// refused to hold. The sender's outbox keeps what was sent.
		Retention: jetstream.WorkQueuePolicy,
		Discard:   jetstream.DiscardNew,
		MaxBytes:  limits.MaxBytes,
		MaxAge:    limits.MaxAge,
		Replicas:  limits.Replicas,
	}
	for _, peer := range peers {
		if peer != id {
			// OptStartSeq 1: a source the inbox has no sequence for yet (it never
			// delivered, or the server restarted before it did) starts at the beginning
			// of the outbox. Without it nats-server starts such a source at the time of
			// the inbox's last message whenever the inbox's first sequence is above 1,
			// which a work queue reaches with the first message it handles: whatever
			// the outbox stored before that time is skipped for good, at lag 0
			// (trySetupSourceConsumer, server/stream.go). A source that has delivered
			// resumes after its last sequence, which the inbox keeps even when the
			// messages are gone, so this replays nothing.
			src := &jetstream.StreamSource{Name: OutboxStream(peer), FilterSubject: outboxFilter(peer, id), OptStartSeq: 1}
			if topology == AccountPerAgency {
				ext := External(peer, id)
				src.External = &jetstream.ExternalStream{APIPrefix: ext.APIPrefix, DeliverPrefix: ext.DeliverPrefix}
			}
			inbox.Sources = append(inbox.Sources, src)
		}
	}
	if _, err := js.CreateOrUpdateStream(ctx, inbox); err != nil {
		return fmt.Errorf("create stream %s: %w", inbox.Name, err)
	}
	return nil
}

// SetupOutbox creates or updates the stream the agency publishes its events to.
func SetupOutbox(ctx context.Context, js jetstream.JetStream, id string, limits Limits) error {
	outbox := jetstream.StreamConfig{
		Name:        OutboxStream(id),
		Description: "events " + id + " sends to other agencies",
		Subjects:    []string{"tc." + id + ".out.>", "tc." + id + ".body.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    limits.MaxBytes,
		MaxAge:      limits.MaxAge,
		Replicas:    limits.Replicas,
		Duplicates:  10 * time.Minute,
		// Recipients read the bodies of notices by direct get (FetchBody).
		AllowDirect: true,
	}
	if _, err := js.CreateOrUpdateStream(ctx, outbox); err != nil {
		return fmt.Errorf("create stream %s: %w", outbox.Name, err)
	}
	return nil
}

// CloudEvents attributes in binary mode, as NATS headers.
const (
	headerSpecVersion = "ce-specversion"
	headerID          = "ce-id"
	headerSource      = "ce-source"
	headerType        = "ce-type"
	headerTime        = "ce-time"
	headerSubject     = "ce-subject"
	headerContentType = "content-type"
	// sourcePrefix starts the CloudEvents source of an agency's events.
	sourcePrefix = "throughcare/"
	// headerHandover names the handover an event travels along, so that a message that
	// cannot even be decoded can still be traced to it (a dead letter's retry).
	headerHandover = "throughcare-handover"
	// headerNotice marks a message that carries an event's headers alone: its body is in
	// the sender's outbox (PublishNotice).
	headerNotice = "throughcare-notice"
	// headerSequence is a notice's event sequence along its handover.
	headerSequence = "throughcare-sequence"
	contentType    = "application/protobuf; messageType=throughcare.v1.Event"
)

// Encode turns ev into a NATS message for its subject.
func Encode(ev *throughcarev1.Event) (*nats.Msg, error) {
	msg, err := envelopeMsg(ev)
	if err != nil {
		return nil, err
	}
	if msg.Data, err = (proto.MarshalOptions{Deterministic: true}).Marshal(ev); err != nil {
		return nil, fmt.Errorf("encode event %s: %w", ev.GetEventId(), err)
	}
	return msg, nil
}

// envelopeMsg is ev's message without its body: its subject and headers.
func envelopeMsg(ev *throughcarev1.Event) (*nats.Msg, error) {
	subject, err := Subject(ev)
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(subject)
	msg.Header.Set(jetstream.MsgIDHeader, ev.GetEventId())
	msg.Header.Set(headerSpecVersion, "1.0")
	msg.Header.Set(headerID, ev.GetEventId())
	msg.Header.Set(headerSource, sourcePrefix+ev.GetSource())
	msg.Header.Set(headerType, "throughcare.v1."+typeToken(ev.GetType()))
	msg.Header.Set(headerTime, ev.GetOccurredAt().AsTime().UTC().Format(time.RFC3339Nano))
	msg.Header.Set(headerSubject, ev.GetCaseId())
	msg.Header.Set(headerContentType, contentType)
	msg.Header.Set(headerHandover, ev.GetHandoverId())
	return msg, nil
}

// OrderByCase is the order key of events: those about one case are handled in order.
func OrderByCase(msg jetstream.Msg) string { return msg.Headers().Get(headerSubject) }

// ErrUndecodable marks a message that can never be processed as an event.
var ErrUndecodable = errors.New("undecodable event")

// Decode reads an event from a message (or from a notice and its body: FetchBody),
// checking that the headers and the subject agree with the body: a mismatch is a forged or
// corrupted message.
func Decode(subject string, header nats.Header, data []byte) (*throughcarev1.Event, error) {
	ev := new(throughcarev1.Event)
	if err := proto.Unmarshal(data, ev); err != nil {
		return nil, fmt.Errorf("%w: body is not a throughcare.v1.Event", ErrUndecodable)
	}
	if ev.GetEventId() == "" || ev.GetEventId() != header.Get(headerID) {
		return nil, fmt.Errorf("%w: ce-id header does not match the event id", ErrUndecodable)
	}
	want, err := Subject(ev)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUndecodable, err)
	}
	if subject != want && subject != BodySubject(ev.GetSource(), ev.GetRecipient(), ev.GetEventId()) {
		return nil, fmt.Errorf("%w: event %s arrived on the wrong subject", ErrUndecodable, ev.GetEventId())
	}
	if ev.GetCaseId() == "" || ev.GetOccurredAt() == nil || ev.GetPayload() == nil {
		return nil, fmt.Errorf("%w: event %s lacks case_id, occurred_at or payload", ErrUndecodable, ev.GetEventId())
	}
	return ev, nil
}

// Publish stores ev in the source agency's outbox and waits for JetStream to confirm.
func Publish(ctx context.Context, js jetstream.JetStream, ev *throughcarev1.Event) error {
	_, err := PublishAs(ctx, js, ev, ev.GetEventId())
	return err
}

// PublishAs is Publish under a given Nats-Msg-Id (a re-send of an event the outbox already
// holds, which its duplicate window would otherwise drop), returning the event's sequence
// in the outbox: for a duplicate within the window, that of the copy stored first.
func PublishAs(ctx context.Context, js jetstream.JetStream, ev *throughcarev1.Event, msgID string) (uint64, error) {
	msg, err := Encode(ev)
	if err != nil {
		return 0, err
	}
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	tracing.InjectHeader(ctx, msg.Header)
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithExpectStream(OutboxStream(ev.GetSource())))
	if err != nil {
		return 0, fmt.Errorf("publish event %s: %w", ev.GetEventId(), err)
	}
	return ack.Sequence, nil
}

// PublishBody stores the whole of an event with personal data on its body subject, where
// its recipient may read it (FetchBody), and returns its sequence in the outbox. A notice
// (PublishNotice) tells the recipient it is there.
func PublishBody(ctx context.Context, js jetstream.JetStream, ev *throughcarev1.Event, msgID string) (uint64, error) {
	if !validToken(ev.GetEventId()) {
		return 0, fmt.Errorf("event %s: its id cannot name a subject", ev.GetEventId())
	}
	msg, err := Encode(ev)
	if err != nil {
		return 0, err
	}
	msg.Subject = BodySubject(ev.GetSource(), ev.GetRecipient(), ev.GetEventId())
	msg.Header.Set(jetstream.MsgIDHeader, "body/"+msgID)
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithExpectStream(OutboxStream(ev.GetSource())))
	if err != nil {
		return 0, fmt.Errorf("publish event %s: %w", ev.GetEventId(), err)
	}
	return ack.Sequence, nil
}

// PublishNotice publishes the notice of an event whose body the outbox holds: its headers
// and sequence, no body, on its subject, which the recipient's inbox sources.
func PublishNotice(ctx context.Context, js jetstream.JetStream, ev *throughcarev1.Event, msgID string) error {
	msg, err := envelopeMsg(ev)
	if err != nil {
		return err
	}
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	msg.Header.Set(headerNotice, "1")
	msg.Header.Set(headerSequence, strconv.FormatUint(ev.GetSequence(), 10))
	tracing.InjectHeader(ctx, msg.Header)
	if _, err := js.PublishMsg(ctx, msg, jetstream.WithExpectStream(OutboxStream(ev.GetSource()))); err != nil {
		return fmt.Errorf("publish notice of event %s: %w", ev.GetEventId(), err)
	}
	return nil
}

// Notice is what a notice says of its event: enough to find its body, and to tell one
// whose body is gone a duplicate.
type Notice struct {
	EventID, Source, Recipient, HandoverID string
	// Sequence is the event's along its handover.
	Sequence uint64
}

// NoticeOf reads a notice's subject (tc.<source>.out.<recipient>.<type>) and headers;
// what does not parse is left empty.
func NoticeOf(subject string, header nats.Header) Notice {
	n := Notice{EventID: header.Get(headerID), HandoverID: header.Get(headerHandover)}
	if tokens := strings.Split(subject, "."); len(tokens) == 5 && tokens[0] == "tc" && tokens[2] == "out" {
		n.Source, n.Recipient = tokens[1], tokens[3]
	}
	n.Sequence, _ = strconv.ParseUint(header.Get(headerSequence), 10, 64)
	return n
}

// IsNotice reports whether a message is the notice of an event, whose body is in its
// sender's outbox.
func IsNotice(header nats.Header, data []byte) bool {
	return header.Get(headerNotice) != "" && len(data) == 0
}

// ErrBodyNotFound says the sender's outbox had no body for a notice: not yet, on a
// replica that lags its stream's leader, or no longer: acknowledged, or past the outbox's
// max age.
var ErrBodyNotFound = errors.New("event body not in the sender's outbox")

// FetchBody reads the whole event a notice to recipient (its subject and headers) stands
// for from its sender's outbox, by direct get: across accounts, through the import
// External names.
func FetchBody(ctx context.Context, nc *nats.Conn, topology Topology, recipient, subject string, header nats.Header) ([]byte, error) {
	n := NoticeOf(subject, header)
	if n.Recipient != recipient || !agency.ValidID(n.Source) || !validToken(n.EventID) {
		return nil, Permanent(fmt.Errorf("%w: notice on %s names no body", ErrUndecodable, subject))
	}
	source, id := n.Source, n.EventID
	api := "$JS.API"
	if topology == AccountPerAgency {
		api = External(source, recipient).APIPrefix
	}
	body := BodySubject(source, recipient, id)
	get := api + ".DIRECT.GET." + OutboxStream(source) + "." + body
	for attempt := 1; ; attempt++ {
		resp, err := nc.RequestWithContext(ctx, get, nil)
		if err != nil {
			return nil, fmt.Errorf("body of event %s: %w", id, err)
		}
		switch status := resp.Header.Get("Status"); {
		case status == "404" && attempt < bodyGetAttempts:
			// Any replica answers a direct get, and one may not have stored the body yet.
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * 10 * time.Millisecond):
			}
			continue
		case status == "404":
			return nil, fmt.Errorf("event %s: %w", id, ErrBodyNotFound)
		case status != "":
			return nil, fmt.Errorf("body of event %s: status %s %s", id, status, resp.Header.Get("Description"))
		}
		if got := resp.Header.Get("Nats-Subject"); got != body {
			return nil, Permanent(fmt.Errorf("%w: body of event %s came from %q", ErrUndecodable, id, got))
		}
		return resp.Data, nil
	}
}

// bodyGetAttempts bounds the direct gets of one body before the handling is retried later.
const bodyGetAttempts = 3

// validToken reports whether s can be one token of a subject.
func validToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ". *>\t\r\n")
}

// OutboxMessage reads the message at seq of agency's outbox from the stream's leader
// (jetstream.ErrMsgNotFound when there is none): a direct get, which any replica answers
// now that recipients read bodies so, may miss a message the leader has just stored.
func OutboxMessage(ctx context.Context, js jetstream.JetStream, agency string, seq uint64) (*jetstream.RawStreamMsg, error) {
	req, err := json.Marshal(map[string]uint64{"seq": seq})
	if err != nil {
		return nil, err
	}
	msg, err := records.LeaderGet(ctx, js, OutboxStream(agency), req)
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("outbox message %d: %w", seq, err)
	}
	return msg, err
}
