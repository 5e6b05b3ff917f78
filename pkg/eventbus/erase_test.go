package eventbus_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// TestEraseHandledLeavesNoBytes consumes a work queue whose last message stays unhandled,
// so its block stays: a message handled (or dead-lettered) with EraseHandled is in no file
// of the stopped server's store; without, its bytes are still in the block, although the
// work queue deleted it.
func TestEraseHandledLeavesNoBytes(t *testing.T) {
	for _, erase := range []bool{true, false} {
		var eraseHandled func(jetstream.Msg) bool
		if erase {
			eraseHandled = func(jetstream.Msg) bool { return true }
		}
		ns := natstest.Start(t)
		js := ns.JetStream(t)
		ctx := t.Context()
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "WQ", Subjects: []string{"wq.>"}, Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy}); err != nil {
			t.Fatalf("create stream: %v", err)
		}
		dead, err := eventbus.OpenDeadLetters(ctx, js, "wq_deadletters")
		if err != nil {
			t.Fatalf("open dead letters: %v", err)
		}
		for _, body := range []string{"handled-MARKER", "refused-MARKER", "waiting"} {
			msg := nats.NewMsg("wq." + body[:3])
			msg.Data = []byte(body)
			if _, err := js.PublishMsg(ctx, msg); err != nil {
				t.Fatalf("publish: %v", err)
			}
		}
		cfg := eventbus.ConsumerConfig{Stream: "WQ", Durable: "wq", MaxDeliver: 3, AckWait: 2 * time.Second, CheckInterval: 100 * time.Millisecond, EraseHandled: eraseHandled}
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = eventbus.Consume(cctx, zaptest.NewLogger(t), js, cfg, dead, func(_ context.Context, msg jetstream.Msg) error {
				switch string(msg.Data()) {
				case "refused-MARKER":
					return eventbus.Permanent(context.Canceled)
				case "waiting":
					return &eventbus.LaterError{After: time.Hour}
				}
				return nil
			})
		}()
		eventually(t, 10*time.Second, func() (bool, string) {
			info, err := js.Stream(ctx, "WQ")
			if err != nil {
				return false, err.Error()
			}
			si, err := info.Info(ctx)
			return err == nil && si.State.Msgs == 1, "the handled messages are still in the work queue"
		})
		cancel()
		<-done
		ns.Stop()
		found := holding(t, ns.StoreDir(), "MARKER")
		if erase && len(found) > 0 {
			t.Errorf("with EraseHandled, handled messages are still in %v", found)
		}
		if !erase && len(found) == 0 {
			t.Errorf("without EraseHandled the handled messages are in no file: the search finds nothing")
		}
	}
}

func holding(t *testing.T, dir, marker string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err == nil && bytes.Contains(data, []byte(marker)) {
			found = append(found, path)
		}
		return err
	})
	if err != nil {
		t.Fatalf("search %s: %v", dir, err)
	}
	return found
}
