package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/fault"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// openUnprotected is a ledger on a stream that allows deletes, standing in for a store
// changed behind the server's back (a restored backup, edited files), to show that Verify
// notices entries gone from the stream and not only from a list.
func openUnprotected(t *testing.T, entries int) (*Ledger, jetstream.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	js := natstest.Start(t).JetStream(t)
	agency := "probation"
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     StreamName(agency),
		Subjects: []string{Subject(agency), Subject(agency) + ".>"},
		Storage:  jetstream.MemoryStorage,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	l := &Ledger{js: js, stream: stream, name: StreamName(agency), subject: Subject(agency)}
	for n := 1; n <= entries; n++ {
		d := &throughcarev1.Disclosure{CaseId: "case-a", EventId: fmt.Sprint(n), Time: timestamppb.Now()}
		if _, err := l.Append(ctx, d, fmt.Sprint("shared/", n)); err != nil {
			t.Fatalf("append %d: %v", n, err)
		}
	}
	return l, stream
}

func TestVerifyNoticesEntriesDeletedFromTheStream(t *testing.T) {
	tests := []struct {
		name         string
		deleted      []uint64
		wantFirstBad uint64
		wantProblem  string
	}{
		{"middle", []uint64{3}, 3, "entry 3 is missing"},
		{"first", []uint64{1}, 1, "entry 1 is missing"},
		{"last", []uint64{5}, 5, "entries 5 to 5 are missing from the end"},
		{"last two", []uint64{4, 5}, 4, "entries 4 to 5 are missing from the end"},
		{"all", []uint64{1, 2, 3, 4, 5}, 1, "entries 1 to 5 are missing from the end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l, stream := openUnprotected(t, 5)
			for _, seq := range tt.deleted {
				if err := stream.DeleteMsg(ctx, seq); err != nil {
					t.Fatalf("delete %d: %v", seq, err)
				}
			}
			got, err := l.Verify(ctx)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			wantEntries := uint64(5 - len(tt.deleted))
			if got.GetIntact() || got.GetFirstBadSequence() != tt.wantFirstBad || got.GetEntries() != wantEntries || !strings.Contains(got.GetProblem(), tt.wantProblem) {
				t.Fatalf("verify = %v; want not intact at %d of %d entries, %q", got, tt.wantFirstBad, wantEntries, tt.wantProblem)
			}
		})
	}
}

func TestAppendStopsWhenTheTailIsGone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, stream := openUnprotected(t, 3)
	if err := stream.DeleteMsg(ctx, 3); err != nil {
		t.Fatalf("delete: %v", err)
	}
	l.tailKnown = false // as after a restart
	_, err := l.Append(ctx, &throughcarev1.Disclosure{CaseId: "case-a"}, "shared/4")
	if err == nil || errors.Is(err, fault.ErrConflict) {
		t.Fatalf("append onto a deleted tail: err = %v, want an error naming the missing entry", err)
	}
}
