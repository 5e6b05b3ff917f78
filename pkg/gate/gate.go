// Package gate is where the sharing protocol meets an event crossing between agencies:
// the outbound gate every event passes last before it leaves (enforce once more, record
// the disclosure, sign) and the inbound gate every event passes first when it arrives
// (verify the signature, refuse replays, refuse what the protocol does not let this agency
// have). Each verdict is recorded in the agency's ledger; nothing here stores handovers.
package gate

import (
	"context"

	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/protocol"
)

// Policy is the part of the sharing protocol the gates apply; *protocol.Protocol is the
// one implementation outside tests.
type Policy interface {
	ID() string
	Version() uint32
	Enforce(msg proto.Message, sender, recipient string, purpose throughcarev1.Purpose, consents []*throughcarev1.Consent) (protocol.Report, error)
	Check(msg proto.Message, sender, recipient string, purpose throughcarev1.Purpose, consents []*throughcarev1.Consent) ([]throughcarev1.DataCategory, error)
}

// CaseLookup returns this agency's record of a case (its own, or its copy), nil when it
// holds none: the gates read a case's current consents and its person reference.
type CaseLookup func(ctx context.Context, caseID string) (*throughcarev1.ReleaseCase, error)
