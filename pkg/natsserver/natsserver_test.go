package natsserver_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/throughcare/throughcare/pkg/natsserver"
)

func TestStartServesJetStream(t *testing.T) {
	srv, err := natsserver.Start(natsserver.Config{
		Host:       "127.0.0.1",
		Port:       -1,
		StoreDir:   t.TempDir(),
		SyncAlways: true,
		ServerName: "test",
	}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.JetStreamConfig().SyncAlways {
		t.Error("SyncAlways not applied")
	}

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     "EVENTS",
		Subjects: []string{"events.>"},
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	ack, err := js.Publish(ctx, "events.created", []byte("hello"))
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if ack.Sequence != 1 {
		t.Errorf("sequence = %d, want 1", ack.Sequence)
	}
	msg, err := stream.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatalf("get msg: %v", err)
	}
	if string(msg.Data) != "hello" {
		t.Errorf("data = %q, want %q", msg.Data, "hello")
	}
}

func TestStartRejectsEmptyStoreDir(t *testing.T) {
	if _, err := natsserver.Start(natsserver.Config{Port: -1}, zaptest.NewLogger(t)); err == nil {
		t.Fatal("want error for empty store dir")
	}
}
