// Package flow is what operators see of the events between agencies: a FlowRecord for
// every event an agency sends and every one it handles, routing metadata only, in the
// operators' FLOW stream. That stream lives in an account of its own (OPERATOR, when each
// agency has its account) that holds nothing else, so the operators' NATS credentials can
// open no stream that holds a payload. Agencies publish into it through a service import
// each, limited to their own subjects:
//
//	flow.<publisher>.<stage>.<source>.<recipient>.<type>
//
// Publishing is fire and forget: a record is telemetry and must never hold up or fail the
// delivery it describes. Each record carries a message id, so one published twice (a relay
// repeating a revision after a crash) is stored once.
package flow

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// Stream is the operators' stream of flow records.
const Stream = "FLOW"

// subjectRoot starts every flow subject.
const subjectRoot = "flow"

// Limits bound the FLOW stream: what an operator can replay.
type Limits struct {
	MaxAge   time.Duration
	MaxBytes int64
	Replicas int
}

// DefaultLimits keep a month of flow, up to 1 GiB.
var DefaultLimits = Limits{MaxAge: 30 * 24 * time.Hour, MaxBytes: 1 << 30, Replicas: 1}

// Setup creates or updates the FLOW stream in the account js belongs to: the operators'.
func Setup(ctx context.Context, js jetstream.JetStream, limits Limits) error {
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        Stream,
		Description: "what operators see of the events between agencies: routing metadata only",
		Subjects:    []string{subjectRoot + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      limits.MaxAge,
		MaxBytes:    limits.MaxBytes,
		Replicas:    limits.Replicas,
		Duplicates:  10 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("flow stream: %w", err)
	}
	return nil
}

// PublisherSubjects are the subjects agency may publish flow records on.
func PublisherSubjects(agency string) string { return subjectRoot + "." + agency + ".>" }

// Subject is where publisher files r.
func Subject(publisher string, r *throughcarev1.FlowRecord) string {
	return strings.Join([]string{subjectRoot, publisher, token(r.GetStage().String(), "FLOW_STAGE_"),
		r.GetSource(), r.GetRecipient(), token(r.GetType().String(), "EVENT_TYPE_")}, ".")
}

func token(name, prefix string) string { return strings.ToLower(strings.TrimPrefix(name, prefix)) }

// Filter is what an operator asks to see; empty fields match everything.
type Filter struct {
	// From and To are the source and recipient agencies.
	From, To string
	// Type is an event type, as in the contract or in lower case without its prefix
	// (receipt_issued).
	Type string
	// CaseID, HandoverID and State are checked on each record: they are not in the subject.
	CaseID, HandoverID string
	State              throughcarev1.HandoverState
}

// Subject is the subject filter of f: what the server can select for it.
func (f Filter) Subject() string {
	or := func(s string) string {
		if s == "" {
			return "*"
		}
		return s
	}
	typ := f.Type
	if typ != "" {
		typ = token(strings.ToUpper(typ), "EVENT_TYPE_")
	}
	return strings.Join([]string{subjectRoot, "*", "*", or(f.From), or(f.To), or(typ)}, ".")
}

// Matches reports whether r passes the parts of f the subject cannot select.
func (f Filter) Matches(r *throughcarev1.FlowRecord) bool {
	return (f.CaseID == "" || r.GetCaseId() == f.CaseID) &&
		(f.HandoverID == "" || r.GetHandoverId() == f.HandoverID) &&
		(f.State == throughcarev1.HandoverState_HANDOVER_STATE_UNSPECIFIED || r.GetState() == f.State)
}

// Record is the flow record of ev at stage, as agency sees it now: its routing metadata,
// the categories it carries and those held back from it.
func Record(ev *throughcarev1.Event, stage throughcarev1.FlowStage, now time.Time) *throughcarev1.FlowRecord {
	r := &throughcarev1.FlowRecord{
		EventId:          ev.GetEventId(),
		Type:             ev.GetType(),
		Source:           ev.GetSource(),
		Recipient:        ev.GetRecipient(),
		CaseId:           ev.GetCaseId(),
		HandoverId:       ev.GetHandoverId(),
		Stage:            stage,
		Time:             timestamppb.New(now),
		Sequence:         ev.GetSequence(),
		SharedCategories: protocol.Present(ev),
		ProtocolId:       ev.GetProtocolId(),
		ProtocolVersion:  ev.GetProtocolVersion(),
		Purpose:          ev.GetPurpose(),
	}
	for _, w := range ev.GetWithholdings() {
		r.WithheldCategories = append(r.WithheldCategories, w.GetCategory())
	}
	if receipt := ev.GetReceiptIssued().GetReceipt(); receipt != nil {
		r.Receipt, r.State = receipt.GetType(), receipt.GetState()
	}
	if h := ev.GetHandoverReferred().GetHandover(); h != nil {
		r.State = h.GetState()
	}
	return r
}

// Publisher publishes one agency's flow records on its connection.
type Publisher struct {
	agency string
	nc     *nats.Conn
	log    *zap.Logger
}

// NewPublisher publishes agency's records on nc; nil nc publishes nothing.
func NewPublisher(agency string, nc *nats.Conn, log *zap.Logger) *Publisher {
	return &Publisher{agency: agency, nc: nc, log: log}
}

// Publish sends r, without waiting: a failure is logged, never returned to the delivery
// that r describes.
func (p *Publisher) Publish(r *throughcarev1.FlowRecord) {
	if p == nil || p.nc == nil {
		return
	}
	if err := p.publish(r); err != nil {
		p.log.Warn("flow record not published", zap.String("event_id", r.GetEventId()), zap.String("stage", r.GetStage().String()), zap.Error(err))
	}
}

// publish sends r as it is: that no field of a flow record can carry a data category is
// checked on the contract itself (TestFlowRecordHoldsRoutingMetadataOnly), not on every
// event.
func (p *Publisher) publish(r *throughcarev1.FlowRecord) error {
	data, err := proto.Marshal(r)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(Subject(p.agency, r))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s.%s.%s.%d", r.GetEventId(), p.agency, token(r.GetStage().String(), "FLOW_STAGE_"), r.GetAttempt()))
	return p.nc.PublishMsg(msg)
}
