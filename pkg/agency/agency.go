// Package agency is the registry of a deployment's parties: the agencies its sharing
// protocol declares. Everything named after an agency (identity URIs, certificates, NATS
// accounts, streams, buckets, signing keys, dev's ports) is derived from an id here, so a
// new agency is configuration, not code.
package agency

import (
	"fmt"
	"regexp"
	"slices"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// idPattern is the contract's: ids name subjects, streams, buckets and accounts.
var idPattern = regexp.MustCompile(`^[a-z][a-z0-9]{0,30}$`)

// ValidID reports whether id can name an agency.
func ValidID(id string) bool { return idPattern.MatchString(id) }

// Registry is the agencies of one protocol, in the order it lists them, and who exchanges
// events with whom.
type Registry struct {
	list  []*throughcarev1.Agency
	byID  map[string]*throughcarev1.Agency
	peers map[string][]string
}

// FromProtocol is the registry sp declares. Two agencies exchange events when a rule lets
// either share with the other: referrals travel one way, receipts the other.
func FromProtocol(sp *throughcarev1.SharingProtocol) (*Registry, error) {
	r := &Registry{byID: map[string]*throughcarev1.Agency{}, peers: map[string][]string{}}
	for i, a := range sp.GetAgencies() {
		if !ValidID(a.GetId()) {
			return nil, fmt.Errorf("agencies[%d].id %q: want lower-case letters and digits, starting with a letter, at most 31", i, a.GetId())
		}
		if _, dup := r.byID[a.GetId()]; dup {
			return nil, fmt.Errorf("agencies[%d].id %q: declared twice", i, a.GetId())
		}
		r.byID[a.GetId()] = a
		r.list = append(r.list, a)
	}
	link := func(a, b string) {
		if !slices.Contains(r.peers[a], b) {
			r.peers[a] = append(r.peers[a], b)
		}
	}
	for i, rule := range sp.GetRules() {
		for _, id := range []string{rule.GetSender(), rule.GetRecipient()} {
			if !r.Has(id) {
				return nil, fmt.Errorf("rules[%d]: %q is not among the protocol's agencies", i, id)
			}
		}
		link(rule.GetSender(), rule.GetRecipient())
		link(rule.GetRecipient(), rule.GetSender())
	}
	for id := range r.peers {
		slices.SortFunc(r.peers[id], func(a, b string) int { return r.index(a) - r.index(b) })
	}
	return r, nil
}

// IDs are the agencies in the protocol's order.
func (r *Registry) IDs() []string {
	ids := make([]string, len(r.list))
	for i, a := range r.list {
		ids[i] = a.GetId()
	}
	return ids
}

// Has reports whether id is one of the agencies.
func (r *Registry) Has(id string) bool { _, ok := r.byID[id]; return ok }

// Name is how people write the agency ("social work"), or its id when it has no name.
func (r *Registry) Name(id string) string {
	if a, ok := r.byID[id]; ok && a.GetDisplayName() != "" {
		return a.GetDisplayName()
	}
	return id
}

// Role is what the agency does beyond referring and receiving cases.
func (r *Registry) Role(id string) throughcarev1.AgencyRole { return r.byID[id].GetRole() }

// Peers are the agencies id exchanges events with, in the protocol's order: its inbox
// sources their outboxes, and nothing else.
func (r *Registry) Peers(id string) []string { return slices.Clone(r.peers[id]) }

// Index is id's place in the protocol's order, or -1: dev derives ports from it.
func (r *Registry) Index(id string) int { return r.index(id) }

func (r *Registry) index(id string) int {
	return slices.IndexFunc(r.list, func(a *throughcarev1.Agency) bool { return a.GetId() == id })
}
