package ledger

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

func genesisHash() []byte { return make([]byte, sha256.Size) }

// marshal gives the canonical bytes of an entry: deterministic, so the same entry always
// hashes the same.
func marshal(entry *throughcarev1.Disclosure) ([]byte, error) {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(entry)
	if err != nil {
		return nil, fmt.Errorf("marshal entry %d: %w", entry.GetSequence(), err)
	}
	return data, nil
}

// entryHash is SHA-256(prevHash || entry with EntryHash cleared).
func entryHash(prevHash []byte, entry *throughcarev1.Disclosure) ([]byte, error) {
	unhashed := entry
	if len(entry.GetEntryHash()) > 0 {
		unhashed = proto.CloneOf(entry)
		unhashed.EntryHash = nil
	}
	data, err := marshal(unhashed)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(prevHash)
	h.Write(data)
	return h.Sum(nil), nil
}

// VerifyChain checks entries read from a ledger in stream order: their sequences must run
// 1, 2, 3, ... and each EntryHash must match the entry and the hash before it. It reports
// the first sequence that does not fit and why; the problem names sequences, never data.
// It cannot see entries cut off the end; Ledger.Verify checks that against the stream.
func VerifyChain(entries []*throughcarev1.Disclosure) (ok bool, firstBad uint64, problem string) {
	v := newVerifier()
	for _, entry := range entries {
		v.add(entry)
	}
	return v.result()
}

// verifier checks entries one at a time, so Verify need not hold the ledger in memory.
type verifier struct {
	prevHash []byte
	// next is the sequence the next entry must carry.
	next uint64
	// seen counts the entries given to add or failNext.
	seen     uint64
	firstBad uint64
	problem  string
	// missing is the sequence that was expected where a later one stood; if it turns up
	// further on, the entry was moved rather than removed.
	missing uint64
}

func newVerifier() *verifier {
	return &verifier{prevHash: genesisHash(), next: 1}
}

func (v *verifier) add(entry *throughcarev1.Disclosure) {
	v.seen++
	seq := entry.GetSequence()
	if v.firstBad != 0 {
		if v.missing != 0 && seq == v.missing {
			v.problem = fmt.Sprintf("entry %d is out of order: it comes after entries that follow it", v.missing)
			v.missing = 0
		}
		return
	}
	want := v.next
	v.next++
	switch {
	case seq > want:
		v.fail(want, fmt.Sprintf("entry %d is missing: entry %d is in its place", want, seq))
		v.missing = want
		return
	case seq < want:
		v.fail(want, fmt.Sprintf("entry %d is out of order: entry %d is in its place", want, seq))
		return
	}
	hash, err := entryHash(v.prevHash, entry)
	if err != nil || !bytes.Equal(hash, entry.GetEntryHash()) {
		v.fail(want, fmt.Sprintf("entry %d does not match its hash: it, or the entry before it, was changed", want))
		return
	}
	v.prevHash = entry.GetEntryHash()
}

// failNext counts an entry that could not be read and marks it bad, if nothing was before.
func (v *verifier) failNext(problem string) {
	v.seen++
	if v.firstBad == 0 {
		v.fail(v.next, problem)
	}
	v.next++
}

func (v *verifier) fail(seq uint64, problem string) {
	if v.firstBad == 0 {
		v.firstBad, v.problem = seq, problem
	}
}

func (v *verifier) result() (ok bool, firstBad uint64, problem string) {
	return v.firstBad == 0, v.firstBad, v.problem
}
