package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/flow"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// BenchmarkTailReplay replays a FLOW stream of stored records through `events tail`
// (decode, filter, print) and, in the same iteration, through a raw ordered consumer that
// only counts the messages: the floor a replay can reach. Each iteration replays the
// whole stream once each way.
//
//	THROUGHCARE_TAIL_RECORDS=1000000 go test -run '^$' -bench BenchmarkTailReplay -benchtime 3x ./cmd/throughcare/
func BenchmarkTailReplay(b *testing.B) {
	records := 100_000
	if s := os.Getenv("THROUGHCARE_TAIL_RECORDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("THROUGHCARE_TAIL_RECORDS=%q: want a positive count", s)
		}
		records = n
	}
	srv := natstest.Start(b)
	js := srv.JetStream(b)
	ctx := context.Background()
	limits := flow.DefaultLimits
	limits.MaxBytes = -1
	if err := flow.Setup(ctx, js, limits); err != nil {
		b.Fatal(err)
	}
	fillFlow(b, js, records)

	for _, output := range []string{"json", "table"} {
		b.Run("output="+output, func(b *testing.B) {
			c := eventsConfig{Output: output, FromSeq: 1, Width: 160}
			var rawTime, tailTime time.Duration
			for b.Loop() {
				start := time.Now()
				rawReplay(b, js, records)
				rawTime += time.Since(start)

				start = time.Now()
				tailReplay(b, c, js, records)
				tailTime += time.Since(start)
			}
			n := float64(b.N * records)
			b.ReportMetric(n/tailTime.Seconds(), "tail-records/s")
			b.ReportMetric(n/rawTime.Seconds(), "raw-records/s")
			b.ReportMetric(rawTime.Seconds()/tailTime.Seconds(), "ratio")
		})
	}
}

// fillFlow stores n flow records as agencies publish them, round-robin over the pairs and
// stages a journey makes.
func fillFlow(b *testing.B, js jetstream.JetStream, n int) {
	b.Helper()
	ctx := context.Background()
	stages := []throughcarev1.FlowStage{throughcarev1.FlowStage_FLOW_STAGE_SENT, throughcarev1.FlowStage_FLOW_STAGE_RECEIVED}
	for i := range n {
		r := &throughcarev1.FlowRecord{
			EventId:          fmt.Sprintf("evt-%012d", i),
			Type:             throughcarev1.EventType_EVENT_TYPE_RECEIPT_ISSUED,
			Source:           "probation",
			Recipient:        "prison",
			CaseId:           fmt.Sprintf("case-%08d", i/8),
			HandoverId:       fmt.Sprintf("ho-%08d", i/8),
			Stage:            stages[i%len(stages)],
			Time:             timestamppb.Now(),
			Sequence:         uint64(i%8 + 1),
			SharedCategories: []throughcarev1.DataCategory{throughcarev1.DataCategory_DATA_CATEGORY_IDENTITY, throughcarev1.DataCategory_DATA_CATEGORY_RISK},
			ProtocolId:       "throughcare-default",
			ProtocolVersion:  3,
			Receipt:          throughcarev1.ReceiptType_RECEIPT_TYPE_DELIVERED,
			State:            throughcarev1.HandoverState_HANDOVER_STATE_DELIVERED,
		}
		body, err := proto.Marshal(r)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := js.PublishAsync(flow.Subject("probation", r), body); err != nil {
			b.Fatal(err)
		}
		if i%10_000 == 9_999 {
			waitPublished(b, ctx, js)
		}
	}
	waitPublished(b, ctx, js)
}

func waitPublished(b *testing.B, ctx context.Context, js jetstream.JetStream) {
	b.Helper()
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatalf("%d publishes not acknowledged within a minute", js.PublishAsyncPending())
	case <-ctx.Done():
	}
}

// rawReplay reads the whole stream through an ordered consumer and only counts.
func rawReplay(b *testing.B, js jetstream.JetStream, n int) {
	b.Helper()
	cons, err := js.OrderedConsumer(context.Background(), flow.Stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		b.Fatal(err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		b.Fatal(err)
	}
	defer msgs.Stop()
	var bytes int
	for range n {
		msg, err := msgs.Next()
		if err != nil {
			b.Fatal(err)
		}
		bytes += len(msg.Data())
	}
	if bytes == 0 {
		b.Fatal("raw replay read nothing")
	}
}

// tailReplay runs tail from the first record until it has printed n of them.
func tailReplay(b *testing.B, c eventsConfig, js jetstream.JetStream, n int) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lines := n
	if c.Output == "table" {
		lines++ // the header
	}
	out := &lineCounter{want: int64(lines), done: cancel}
	if err := tail(ctx, c, js, out, io.Discard); err != nil {
		b.Fatal(err)
	}
	if got := out.lines.Load(); got != int64(lines) {
		b.Fatalf("tail printed %d lines, want %d", got, lines)
	}
}

// lineCounter counts the lines written to it and calls done once it has seen want.
type lineCounter struct {
	lines atomic.Int64
	want  int64
	done  func()
}

func (w *lineCounter) Write(p []byte) (int, error) {
	if w.lines.Add(int64(bytes.Count(p, []byte{'\n'}))) >= w.want {
		w.done()
	}
	return len(p), nil
}
