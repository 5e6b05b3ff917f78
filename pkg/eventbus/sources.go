package eventbus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// SourceStatus is how one source of an inbox is doing, from the inbox's StreamInfo.
type SourceStatus struct {
	// Inbox is the sourcing stream, Source the outbox it sources.
	Inbox, Source string
	// Lag is how many messages the inbox is behind the source, as last reported by the
	// sourcing consumer.
	Lag uint64
	// Active is the time since the source was last heard from (a message or a heartbeat,
	// every second while sourcing works); negative when never heard from.
	Active time.Duration
	// Error is the server's error sourcing, if any.
	Error string
}

// Inactive reports whether the source has been silent longer than maxSilence, was never
// heard from, or reports an error. A source filtered outside what its account exports
// is this: the server never answers its consumer creation, so it stays silently empty.
func (s SourceStatus) Inactive(maxSilence time.Duration) bool {
	return s.Active < 0 || s.Active > maxSilence || s.Error != ""
}

// InboxSources reports every source of the agency's inbox.
func InboxSources(ctx context.Context, js jetstream.JetStream, agency string) ([]SourceStatus, error) {
	return StreamSources(ctx, js, InboxStream(agency))
}

// StreamSources reports every source of a stream.
func StreamSources(ctx context.Context, js jetstream.JetStream, name string) ([]SourceStatus, error) {
	stream, err := js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", name, err)
	}
	out := make([]SourceStatus, 0, len(info.Sources))
	for _, src := range info.Sources {
		st := SourceStatus{Inbox: name, Source: src.Name, Lag: src.Lag, Active: src.Active}
		if src.Error != nil {
			st.Error = src.Error.Error()
		}
		out = append(out, st)
	}
	return out, nil
}

// SourceAlerts decides when a source is worth a warning.
type SourceAlerts struct {
	// Interval is how often the sources are checked.
	Interval time.Duration
	// MaxSilence is how long a source may go unheard before it is reported inactive;
	// healthy sources are heard from every second.
	MaxSilence time.Duration
	// MaxLag is the lag tolerated; above it, growth from one check to the next is reported.
	MaxLag uint64
}

// DefaultSourceAlerts checks every 30s, warns after 10s of silence or a lag above 1000
// that keeps growing.
var DefaultSourceAlerts = SourceAlerts{Interval: 30 * time.Second, MaxSilence: 10 * time.Second, MaxLag: 1000}

// check says what is wrong with a source, if anything, given its lag at the last check.
func (a SourceAlerts) check(st SourceStatus, prevLag uint64, seen bool) (string, bool) {
	switch {
	case st.Inactive(a.MaxSilence):
		return "inbox source inactive", true
	case st.Lag > a.MaxLag && (!seen || st.Lag > prevLag):
		return "inbox source lag growing", true
	}
	return "", false
}

// WatchSources checks the agency's inbox sources every Interval until ctx ends, logging
// at warn each source that is inactive or whose lag grows above MaxLag. Errors reading
// the stream are logged too: the watch never stops the service.
func WatchSources(ctx context.Context, log *zap.Logger, js jetstream.JetStream, agency string, alerts SourceAlerts) error {
	if alerts.Interval <= 0 {
		alerts.Interval = DefaultSourceAlerts.Interval
	}
	tick := time.NewTicker(alerts.Interval)
	defer tick.Stop()
	lags := map[string]uint64{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		reqCtx, cancel := context.WithTimeout(ctx, alerts.Interval)
		statuses, err := InboxSources(reqCtx, js, agency)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("cannot check inbox sources", zap.Error(err))
			}
			continue
		}
		for _, st := range statuses {
			prev, seen := lags[st.Source]
			if msg, bad := alerts.check(st, prev, seen); bad {
				log.Warn(msg, zap.String("stream", st.Inbox), zap.String("source", st.Source),
					zap.Uint64("lag", st.Lag), zap.Uint64("previous_lag", prev), zap.Duration("active", st.Active), zap.String("source_error", st.Error))
			}
			lags[st.Source] = st.Lag
		}
	}
}
