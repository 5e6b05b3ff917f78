// Package tracing carries W3C trace context from a gRPC call into the events it causes
// and across NATS, so that one referral and its receipts are one trace across the
// agencies: the context waits in each outbox event (Event.trace_context) until the relay
// sends it, travels in the NATS headers, and the receiving inbox continues it.
//
// Spans are exported only when the standard OpenTelemetry variables ask for it
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, over OTLP/HTTP);
// otherwise the context still propagates and nothing leaves the process.
package tracing

import (
	"context"
	"os"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

// Tracer makes throughcare's own spans: relay and receive.
func Tracer() trace.Tracer { return otel.Tracer("github.com/throughcare/throughcare") }

func init() {
	// W3C trace context and baggage, whether or not spans are exported.
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
}

// Setup exports spans over OTLP/HTTP when the environment configures an endpoint, and
// returns what flushes and stops the export at shutdown; without one it changes nothing.
func Setup(ctx context.Context, service string) (func(context.Context) error, error) {
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx) // reads OTEL_EXPORTER_OTLP_* itself
	if err != nil {
		return nil, err
	}
	res, err := sdkresource.Merge(sdkresource.Default(), sdkresource.NewSchemaless(semconv.ServiceName(service)))
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

// Inject is ctx's trace context as a map, to keep in an event; nil when ctx has none.
func Inject(ctx context.Context) map[string]string {
	carrier := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, carrier)
	if len(carrier) == 0 {
		return nil
	}
	return carrier
}

// Extract continues, in ctx, the trace context an event kept.
func Extract(ctx context.Context, kept map[string]string) context.Context {
	return otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier(kept))
}

// Header is a TextMapCarrier over NATS message headers.
type Header nats.Header

func (h Header) Get(key string) string { return nats.Header(h).Get(key) }

func (h Header) Set(key, value string) { nats.Header(h).Set(key, value) }

func (h Header) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

var _ propagation.TextMapCarrier = Header{}

// InjectHeader puts ctx's trace context in NATS headers.
func InjectHeader(ctx context.Context, h nats.Header) {
	otel.GetTextMapPropagator().Inject(ctx, Header(h))
}

// ExtractHeader continues, in ctx, the trace context of NATS headers.
func ExtractHeader(ctx context.Context, h nats.Header) context.Context {
	return otel.GetTextMapPropagator().Extract(ctx, Header(h))
}
