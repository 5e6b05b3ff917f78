package grpcserver

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A store that is out of reach for a moment is Unavailable, which clients retry; any
// other unknown failure stays a bare Internal.
func TestStoreOutOfReachIsUnavailable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("write ho_1: %w", nats.ErrTimeout), codes.Unavailable},
		{fmt.Errorf("publish: %w", jetstream.ErrNoStreamResponse), codes.Unavailable},
		{fmt.Errorf("get: %w", nats.ErrNoResponders), codes.Unavailable},
		{fmt.Errorf("get: %w", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}), codes.Unavailable},
		{fmt.Errorf("get: %w", &jetstream.APIError{Code: 500, ErrorCode: 10049, Description: "something broke"}), codes.Internal},
		{errors.New("something else"), codes.Internal},
	} {
		if got := status.Code(toStatus(zap.NewNop(), "/m", tc.err)); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.err, got, tc.want)
		}
	}
}
