package eventbus

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go"
)

// connectionWatch hands out contexts that end when the connection next drops. nats.go
// keeps waiting for the reply to a request that was in flight when its connection dropped
// until the request's context ends, though no reply can come; work holding one is given
// up at the drop and retried at once, not held to its whole timeout.
type connectionWatch struct {
	mu     sync.Mutex
	ctx    context.Context
	cancel context.CancelFunc
}

// watchConnection follows nc's drops until stop is called. Its contexts do not end with
// stop: work in hand is finished when shutdown begins.
func watchConnection(nc *nats.Conn) (w *connectionWatch, stop func()) {
	w = &connectionWatch{}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	drops := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		defer nc.RemoveStatusListener(drops)
		for {
			select {
			case <-done:
				return
			case <-drops:
				w.mu.Lock()
				w.cancel()
				w.ctx, w.cancel = context.WithCancel(context.Background())
				w.mu.Unlock()
			}
		}
	}()
	return w, func() {
		close(done)
		<-finished
		w.cancel()
	}
}

// untilDrop returns a context ended when the connection next drops.
func (w *connectionWatch) untilDrop() context.Context {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ctx
}
