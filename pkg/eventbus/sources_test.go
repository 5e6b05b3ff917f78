package eventbus_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/throughcare/throughcare/pkg/eventbus"
	"github.com/throughcare/throughcare/pkg/natstest"
)

// Probation's inbox alone: the outboxes it sources do not exist, so its sources are
// inactive and the watch warns about each.
func TestWatchSourcesWarnsAboutInactiveSources(t *testing.T) {
	js := natstest.Start(t).JetStream(t)
	if err := eventbus.Setup(t.Context(), js, probation, testAgencies.Peers(probation), eventbus.DefaultLimits); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = eventbus.WatchSources(ctx, zap.New(core), js, probation, eventbus.SourceAlerts{Interval: 100 * time.Millisecond, MaxSilence: time.Second, MaxLag: 10})
	})
	defer func() { cancel(); wg.Wait() }()

	eventuallyTrue(t, 10*time.Second, func() (bool, string) {
		seen := map[string]bool{}
		for _, e := range logs.FilterMessage("inbox source inactive").All() {
			seen[e.ContextMap()["source"].(string)] = true
		}
		return seen["OUTBOX_PRISON"] && seen["OUTBOX_SOCIALWORK"], "no warning for both sources yet"
	})
}
