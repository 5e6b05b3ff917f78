package protocol

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"sync"

	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/agency"
	"github.com/throughcare/throughcare/pkg/fault"
)

// defaultProtocolFile is the illustrative protocol of PRODUCT.md, shipped as data so that
// replacing it is editing a file, not code.
//
//go:embed default.textproto
var defaultProtocolFile []byte

// defaultProtocolName is how errors and the embedded file name the default protocol.
const defaultProtocolName = "default.textproto"

// ErrNoRule means no rule of the protocol lets the sender share with the recipient for the
// purpose, so nothing may flow. Errors that wrap it also wrap fault.ErrPermissionDenied.
var ErrNoRule = errors.New("no sharing rule")

// Protocol is a loaded, validated sharing protocol. It does not change after Parse and is
// safe for concurrent use.
type Protocol struct {
	proto    *throughcarev1.SharingProtocol
	agencies *agency.Registry
	rules    map[ruleKey]*compiledRule
	// plans caches, per message descriptor, what the walk does with each field. Descriptors
	// never change, so an entry is built once and then only read.
	plans sync.Map // protoreflect.MessageDescriptor -> *messagePlan
}

type ruleKey struct {
	sender, recipient string
	purpose           throughcarev1.Purpose
}

// compiledRule is a rule with its category lists turned into sets, so the walk tests a
// field's category with one AND.
type compiledRule struct {
	rule            *throughcarev1.SharingRule
	allowed         categorySet
	consentRequired categorySet
}

// Load reads the protocol file at path; see Parse for the formats.
func Load(path string) (*Protocol, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		// The *PathError already names the file.
		return nil, fmt.Errorf("load protocol: %w", err)
	}
	return Parse(path, data)
}

// Parse reads a protocol from data, in text format when name ends in .textproto, .txtpb or
// .txt and in YAML when it ends in .yaml or .yml, and validates it. Every problem is
// reported on its own line as "name:line:column: reason" where the position is known and
// "name: field.path: reason" where it is not.
func Parse(name string, data []byte) (*Protocol, error) {
	sp, err := decode(name, data)
	if err != nil {
		return nil, err
	}
	return compile(sp)
}

// Default returns the illustrative default protocol of PRODUCT.md. Each call parses it
// afresh, so call it once and share the result.
func Default() *Protocol {
	p, err := Parse(defaultProtocolName, defaultProtocolFile)
	if err != nil {
		// Only a broken embedded file gets here, and TestDefaultProtocolLoads catches that.
		panic(fmt.Sprintf("embedded default protocol: %v", err))
	}
	return p
}

// compile indexes a validated protocol. Validation guarantees one rule per key.
func compile(sp *throughcarev1.SharingProtocol) (*Protocol, error) {
	agencies, err := agency.FromProtocol(sp)
	if err != nil {
		return nil, err
	}
	p := &Protocol{proto: sp, agencies: agencies, rules: make(map[ruleKey]*compiledRule, len(sp.GetRules()))}
	for _, r := range sp.GetRules() {
		p.rules[ruleKey{r.GetSender(), r.GetRecipient(), r.GetPurpose()}] = &compiledRule{
			rule:            r,
			allowed:         setOf(r.GetAllowed()),
			consentRequired: setOf(r.GetConsentRequired()),
		}
	}
	return p, nil
}

// ID is the protocol_id.
func (p *Protocol) ID() string { return p.proto.GetProtocolId() }

// Version is the protocol's version.
func (p *Protocol) Version() uint32 { return p.proto.GetVersion() }

// Agencies are the parties the protocol declares: the deployment's registry.
func (p *Protocol) Agencies() *agency.Registry { return p.agencies }

// Proto returns a copy of the protocol as loaded.
func (p *Protocol) Proto() *throughcarev1.SharingProtocol {
	return proto.Clone(p.proto).(*throughcarev1.SharingProtocol)
}

// Rule returns the rule for the flow, if there is one. The rule is shared with the
// protocol: read it, never modify it.
func (p *Protocol) Rule(sender, recipient string, purpose throughcarev1.Purpose) (*throughcarev1.SharingRule, bool) {
	cr, ok := p.rules[ruleKey{sender, recipient, purpose}]
	if !ok {
		return nil, false
	}
	return cr.rule, true
}

// RuleFor is Rule for callers that must refuse the flow when there is no rule: its error
// wraps ErrNoRule and fault.ErrPermissionDenied and names the missing rule.
func (p *Protocol) RuleFor(sender, recipient string, purpose throughcarev1.Purpose) (*throughcarev1.SharingRule, error) {
	cr, err := p.compiledRuleFor(sender, recipient, purpose)
	if err != nil {
		return nil, err
	}
	return cr.rule, nil
}

func (p *Protocol) compiledRuleFor(sender, recipient string, purpose throughcarev1.Purpose) (*compiledRule, error) {
	cr, ok := p.rules[ruleKey{sender, recipient, purpose}]
	if !ok {
		return nil, &noRuleError{
			protocolID: p.ID(),
			version:    p.Version(),
			sender:     p.agencies.Name(sender),
			recipient:  p.agencies.Name(recipient),
			purpose:    purpose,
		}
	}
	return cr, nil
}

// noRuleError names the flow no rule allows. Its text holds agency names and enum names
// only, never personal data, because the gRPC edge passes it to the caller.
type noRuleError struct {
	protocolID        string
	version           uint32
	sender, recipient string
	purpose           throughcarev1.Purpose
}

func (e *noRuleError) Error() string {
	return fmt.Sprintf("no rule in protocol %s v%d lets %s share with %s for %s",
		e.protocolID, e.version, e.sender, e.recipient, e.purpose)
}

func (e *noRuleError) Unwrap() []error { return []error{ErrNoRule, fault.ErrPermissionDenied} }
