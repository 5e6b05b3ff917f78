package main

import (
	"fmt"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TestOneReferralIsOneTraceAcrossAgencies: the ReferCase call, the prison's relay of the
// referral, probation's receipt of it, probation's relay of the delivered receipt and the
// prison's receipt of that are one trace, each span the child of the one before, and no
// span says anything about the person.
func TestOneReferralIsOneTraceAcrossAgencies(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev); _ = tp.Shutdown(t.Context()) })

	sys := newSystem(t)
	rc := openCase(t, sys.Prison)
	id := refer(t, sys, rc.GetCaseId(), probationAgency, purposeSupervision).GetHandoverId()
	waitState(t, sys.Handovers[prisonAgency], id, stateDelivered)

	chain := []string{
		"throughcare.v1.CaseService/ReferCase",
		"relay EVENT_TYPE_HANDOVER_REFERRED",
		"receive EVENT_TYPE_HANDOVER_REFERRED",
		"relay EVENT_TYPE_RECEIPT_ISSUED",
		"receive EVENT_TYPE_RECEIPT_ISSUED",
	}
	var found []tracetest.SpanStub
	eventually(t, crossAgencyWait, func() (bool, string) {
		found = found[:0]
		spans := exp.GetSpans()
		var refer *tracetest.SpanStub
		for i, s := range spans {
			if s.Name == chain[0] && s.SpanKind == trace.SpanKindServer {
				refer = &spans[i]
			}
		}
		if refer == nil {
			return false, "no ReferCase server span"
		}
		parent := refer.SpanContext
		found = append(found, *refer)
		for _, name := range chain[1:] {
			var next *tracetest.SpanStub
			for i, s := range spans {
				if s.Name == name && s.Parent.SpanID() == parent.SpanID() && s.SpanContext.TraceID() == refer.SpanContext.TraceID() {
					next = &spans[i]
				}
			}
			if next == nil {
				var names []string
				for _, s := range spans {
					if s.SpanContext.TraceID() == refer.SpanContext.TraceID() {
						names = append(names, s.Name)
					}
				}
				return false, fmt.Sprintf("no %q child of %q in the referral's trace, which holds %v", name, found[len(found)-1].Name, names)
			}
			found = append(found, *next)
			parent = next.SpanContext
		}
		return true, ""
	})
	p := rc.GetPerson()
	for _, s := range exp.GetSpans() {
		for _, a := range s.Attributes {
			for _, personal := range []string{p.GetGivenName(), p.GetFamilyName(), p.GetPrisonNumber(), "prison-worker-1"} {
				if strings.Contains(a.Value.Emit(), personal) {
					t.Errorf("span %q attribute %s = %q shows %q", s.Name, a.Key, a.Value.Emit(), personal)
				}
			}
		}
	}
	for _, s := range found[1:] {
		var handover string
		for _, a := range s.Attributes {
			if a.Key == "throughcare.handover_id" {
				handover = a.Value.AsString()
			}
		}
		if handover != id {
			t.Errorf("span %q is about handover %q, want %s", s.Name, handover, id)
		}
	}
}
