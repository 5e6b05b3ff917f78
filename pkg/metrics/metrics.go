// Package metrics is one agency service's Prometheus metrics: gRPC calls by method and
// code, the events it sends and receives by type, stage and peer, the time from a
// referral to its delivery, and, read from JetStream at each scrape, its consumers'
// backlog, its inbox sources' lag, its dead letters and its ledger. No label holds a case,
// a handover, a person or a worker: only agencies, event types, stages, methods, codes.
package metrics

import (
	"context"
	"net/http"
	"strings"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// State is what a scrape reads from JetStream: counts, never records.
type State struct {
	// Consumers are the agency's durable consumers by name (inbox, outbox relay).
	Consumers []Consumer
	// SourceLag is each inbox source's lag, by the outbox it sources.
	SourceLag map[string]uint64
	// DeadLetters and LedgerEntries are stream message counts.
	DeadLetters, LedgerEntries uint64
}

// Consumer is one durable consumer's backlog.
type Consumer struct {
	Name                             string
	Pending, AckPending, Redelivered uint64
}

// StateFunc reads State; a scrape calls it with a bounded context.
type StateFunc func(context.Context) (State, error)

// Agency is one agency service's metrics, on a registry of their own.
type Agency struct {
	registry  *prometheus.Registry
	grpc      *grpcprom.ServerMetrics
	events    *prometheus.CounterVec
	delivered prometheus.Histogram
}

// New registers an agency's metrics; state, when not nil, is read at every scrape.
func New(agency string, state StateFunc, log *zap.Logger) *Agency {
	reg := prometheus.NewRegistry()
	constLabels := prometheus.Labels{"agency": agency}
	m := &Agency{
		registry: reg,
		grpc: grpcprom.NewServerMetrics(
			grpcprom.WithServerCounterOptions(grpcprom.WithConstLabels(constLabels)),
			grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramConstLabels(constLabels),
				grpcprom.WithHistogramBuckets([]float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5})),
		),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "throughcare_events_total",
			Help:        "Events this agency sent (stage sent or resent) or handled (received, duplicate, gap, refused), by type and the other agency.",
			ConstLabels: constLabels,
		}, []string{"stage", "type", "peer"}),
		delivered: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "throughcare_refer_to_delivered_seconds",
			Help:        "Time from a referral this agency made to the recipient's delivered receipt reaching it.",
			ConstLabels: constLabels,
			Buckets:     []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
	}
	reg.MustRegister(m.grpc, m.events, m.delivered,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if state != nil {
		reg.MustRegister(&stateCollector{read: state, log: log, labels: constLabels})
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Agency) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

// Registry is where the metrics live, for tests and linting.
func (m *Agency) Registry() *prometheus.Registry { return m.registry }

// GRPC is the gRPC interceptors' metrics.
func (m *Agency) GRPC() *grpcprom.ServerMetrics { return m.grpc }

// Event counts one event at stage; peer is the other agency. A nil Agency counts nothing.
func (m *Agency) Event(stage throughcarev1.FlowStage, t throughcarev1.EventType, peer string) {
	if m == nil {
		return
	}
	m.events.WithLabelValues(label(stage.String(), "FLOW_STAGE_"), label(t.String(), "EVENT_TYPE_"), peer).Inc()
}

// Delivered observes how long a referral took to be delivered.
func (m *Agency) Delivered(d time.Duration) {
	if m == nil {
		return
	}
	m.delivered.Observe(d.Seconds())
}

func label(name, prefix string) string { return strings.ToLower(strings.TrimPrefix(name, prefix)) }

// stateCollector reads State at each scrape.
type stateCollector struct {
	read   StateFunc
	log    *zap.Logger
	labels prometheus.Labels
}

var (
	descPending     = desc("throughcare_consumer_pending_messages", "Messages a consumer has yet to be delivered.", "consumer")
	descAckPending  = desc("throughcare_consumer_ack_pending_messages", "Messages delivered to a consumer and not yet acknowledged.", "consumer")
	descRedelivered = desc("throughcare_consumer_redelivered_messages", "Messages delivered to a consumer more than once and not yet acknowledged.", "consumer")
	descSourceLag   = desc("throughcare_inbox_source_lag_messages", "How many messages the inbox is behind each outbox it sources.", "source")
	descDead        = desc("throughcare_dead_letters", "Messages this agency could never process.")
	descLedger      = desc("throughcare_ledger_entries", "Entries in this agency's disclosure ledger.")
	descUp          = desc("throughcare_jetstream_state_up", "1 when the last scrape read the JetStream state, 0 when it could not.")
)

// desc is a metric of the agency; its agency label is filled per collector.
func desc(name, help string, labels ...string) func(prometheus.Labels) *prometheus.Desc {
	return func(c prometheus.Labels) *prometheus.Desc { return prometheus.NewDesc(name, help, labels, c) }
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []func(prometheus.Labels) *prometheus.Desc{descPending, descAckPending, descRedelivered, descSourceLag, descDead, descLedger, descUp} {
		ch <- d(c.labels)
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.read(ctx)
	if err != nil {
		c.log.Warn("metrics: JetStream state not read", zap.Error(err))
		ch <- prometheus.MustNewConstMetric(descUp(c.labels), prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp(c.labels), prometheus.GaugeValue, 1)
	for _, cons := range st.Consumers {
		ch <- prometheus.MustNewConstMetric(descPending(c.labels), prometheus.GaugeValue, float64(cons.Pending), cons.Name)
		ch <- prometheus.MustNewConstMetric(descAckPending(c.labels), prometheus.GaugeValue, float64(cons.AckPending), cons.Name)
		ch <- prometheus.MustNewConstMetric(descRedelivered(c.labels), prometheus.GaugeValue, float64(cons.Redelivered), cons.Name)
	}
	for source, lag := range st.SourceLag {
		ch <- prometheus.MustNewConstMetric(descSourceLag(c.labels), prometheus.GaugeValue, float64(lag), source)
	}
	ch <- prometheus.MustNewConstMetric(descDead(c.labels), prometheus.GaugeValue, float64(st.DeadLetters))
	ch <- prometheus.MustNewConstMetric(descLedger(c.labels), prometheus.GaugeValue, float64(st.LedgerEntries))
}
