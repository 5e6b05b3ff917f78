package natstest_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/throughcare/throughcare/pkg/natstest"
)

func TestRestartKeepsData(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	kv, err := srv.JetStream(t).CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:  "restart",
		Storage: jetstream.FileStorage,
	})
	if err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	if _, err := kv.Put(ctx, "greeting", []byte("hello")); err != nil {
		t.Fatalf("put: %v", err)
	}
	url := srv.URL()

	srv.Restart(t)

	if srv.URL() != url {
		t.Errorf("URL after restart = %s, want %s", srv.URL(), url)
	}
	kv, err = srv.JetStream(t).KeyValue(ctx, "restart")
	if err != nil {
		t.Fatalf("open bucket after restart: %v", err)
	}
	entry, err := kv.Get(ctx, "greeting")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if string(entry.Value()) != "hello" {
		t.Errorf("value = %q, want %q", entry.Value(), "hello")
	}
}

func TestConnReconnectsAfterRestart(t *testing.T) {
	srv := natstest.Start(t)
	reconnected := make(chan struct{}, 1)
	nc := srv.Connect(t, nats.ReconnectHandler(func(*nats.Conn) {
		reconnected <- struct{}{}
	}))

	srv.Stop()
	srv.Restart(t)

	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("no reconnect within 10s")
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush after reconnect: %v", err)
	}
	sub, err := nc.SubscribeSync("ping")
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	if err := nc.Publish("ping", []byte("pong")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("next msg: %v", err)
	}
}
