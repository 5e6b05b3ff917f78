package ledger_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
	"github.com/throughcare/throughcare/pkg/ledger"
	"github.com/throughcare/throughcare/pkg/natstest"
)

func TestAppendChainsEntries(t *testing.T) {
	l := openLedger(t, natstest.Start(t).JetStream(t))

	var prevHash = make([]byte, sha256.Size)
	for n := 1; n <= 5; n++ {
		d := disclosure(n, "case-a", "A1234BC")
		entry := mustAppend(t, l, d)
		if entry.GetSequence() != uint64(n) {
			t.Fatalf("entry %d: sequence = %d", n, entry.GetSequence())
		}
		// Recompute the hash the documented way, independently of the package.
		unhashed := proto.CloneOf(entry)
		unhashed.EntryHash = nil
		canonical, err := proto.MarshalOptions{Deterministic: true}.Marshal(unhashed)
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(append(slices.Clone(prevHash), canonical...))
		if !bytes.Equal(entry.GetEntryHash(), want[:]) {
			t.Fatalf("entry %d: entry hash = %x, want %x", n, entry.GetEntryHash(), want)
		}
		if d.GetSequence() != 0 || d.GetEntryHash() != nil {
			t.Errorf("entry %d: Append changed its argument", n)
		}
		prevHash = entry.GetEntryHash()
	}
	mustVerifyIntact(t, l, 5)
}

func TestAppendManyVerifyAndList(t *testing.T) {
	ctx := testContext(t)
	js := natstest.Start(t).JetStream(t)
	l := openLedger(t, js)

	// Cases a and b are one person's, case c another's.
	subjects := []struct{ caseID, prisonNumber string }{
		{"case-a", "A1234BC"}, {"case-b", "A1234BC"}, {"case-c", "Z9999ZZ"},
	}
	const total = 60
	for n := 1; n <= total; n++ {
		s := subjects[n%len(subjects)]
		mustAppend(t, l, disclosure(n, s.caseID, s.prisonNumber))
	}
	mustVerifyIntact(t, l, total)

	tests := []struct {
		name      string
		subjects  []string
		match     func(*throughcarev1.Disclosure) bool
		limit     int
		wantTotal int
		wantPages int
	}{
		{"case", l.ByCase("case-a"), func(d *throughcarev1.Disclosure) bool { return d.GetCaseId() == "case-a" }, 6, 20, 4},
		{"case in one page", l.ByCase("case-c"), func(d *throughcarev1.Disclosure) bool { return d.GetCaseId() == "case-c" }, 20, 20, 1},
		{"person", l.ByPerson(testPersonKey.Hash("A1234BC")), personMatch("A1234BC"), 7, 40, 6},
		{"person typed in lower case", l.ByPerson(testPersonKey.Hash(" a1234bc")), personMatch(" a1234bc"), 40, 40, 1},
		{"nobody", l.ByPerson(testPersonKey.Hash("X0000XX")), personMatch("X0000XX"), 10, 0, 1},
		{"everything", nil, all, 25, total, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []*throughcarev1.Disclosure
			after, pages := uint64(0), 0
			for {
				entries, lastSeq, more, err := l.List(ctx, tt.subjects, tt.match, after, tt.limit)
				if err != nil {
					t.Fatalf("list after %d: %v", after, err)
				}
				pages++
				if len(entries) > tt.limit {
					t.Fatalf("page %d has %d entries, limit %d", pages, len(entries), tt.limit)
				}
				if more && len(entries) != tt.limit {
					t.Fatalf("page %d: more with a short page of %d", pages, len(entries))
				}
				got = append(got, entries...)
				if !more {
					break
				}
				if lastSeq != entries[len(entries)-1].GetSequence() {
					t.Fatalf("page %d: lastSeq %d, last entry %d", pages, lastSeq, entries[len(entries)-1].GetSequence())
				}
				after = lastSeq
			}
			if len(got) != tt.wantTotal || pages != tt.wantPages {
				t.Fatalf("got %d entries in %d pages, want %d in %d", len(got), pages, tt.wantTotal, tt.wantPages)
			}
			for i, entry := range got {
				if !tt.match(entry) {
					t.Errorf("entry %d does not match", entry.GetSequence())
				}
				if i > 0 && entry.GetSequence() <= got[i-1].GetSequence() {
					t.Errorf("entry %d listed after %d", entry.GetSequence(), got[i-1].GetSequence())
				}
			}
		})
	}

	// Every read removes its consumer rather than leaving it to idle out.
	stream, err := js.Stream(ctx, ledger.StreamName(agency))
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	if info.State.Consumers != 0 {
		t.Errorf("%d consumers left on the ledger stream", info.State.Consumers)
	}
}

func personMatch(prisonNumber string) func(*throughcarev1.Disclosure) bool {
	person := testPersonKey.Hash(prisonNumber)
	return func(d *throughcarev1.Disclosure) bool { return bytes.Equal(d.GetPersonHash(), person) }
}

func TestListAfterTheEnd(t *testing.T) {
	l := openLedger(t, natstest.Start(t).JetStream(t))
	ctx := testContext(t)
	if entries, _, more, err := l.List(ctx, nil, all, 0, 10); err != nil || len(entries) != 0 || more {
		t.Fatalf("empty ledger: list = %d entries, more %v, err %v", len(entries), more, err)
	}
	mustAppend(t, l, disclosure(1, "case-a", "A1234BC"))
	if entries, lastSeq, more, err := l.List(ctx, nil, all, 1, 10); err != nil || len(entries) != 0 || more || lastSeq != 1 {
		t.Fatalf("after the last entry: list = %d entries, last %d, more %v, err %v", len(entries), lastSeq, more, err)
	}
	if _, _, _, err := l.List(ctx, nil, all, 0, 0); err == nil {
		t.Fatal("list with limit 0: no error")
	}
}

// chain appends n entries and reads them back as stored.
func chain(t *testing.T, n int) []*throughcarev1.Disclosure {
	t.Helper()
	l := openLedger(t, natstest.Start(t).JetStream(t))
	for i := 1; i <= n; i++ {
		mustAppend(t, l, disclosure(i, "case-a", "A1234BC"))
	}
	entries, _, _, err := l.List(testContext(t), nil, all, 0, n)
	if err != nil || len(entries) != n {
		t.Fatalf("list = %d entries, %v", len(entries), err)
	}
	return entries
}

func TestVerifyChainDetectsTampering(t *testing.T) {
	stored := chain(t, 8)
	if ok, firstBad, problem := ledger.VerifyChain(stored); !ok {
		t.Fatalf("stored chain: not intact at %d: %s", firstBad, problem)
	}

	tests := []struct {
		name         string
		tamper       func([]*throughcarev1.Disclosure) []*throughcarev1.Disclosure
		wantFirstBad uint64
		wantProblem  string
	}{
		{"changed recipient", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			c[4].Recipient = "socialwork"
			return c
		}, 5, "hash"},
		{"changed withheld categories", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			c[2].WithheldCategories = nil
			return c
		}, 3, "hash"},
		{"changed first entry", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			c[0].Actor = "someone-else"
			return c
		}, 1, "hash"},
		{"changed last entry", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			c[7].Note = "added later"
			return c
		}, 8, "hash"},
		{"changed entry with its hash recomputed", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			c[3].LegalBasis = "none"
			c[3].EntryHash = rehash(t, c[2].GetEntryHash(), c[3])
			return c
		}, 5, "hash"},
		{"changed entry hash", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			c[5].EntryHash[0] ^= 1
			return c
		}, 6, "hash"},
		{"removed entry", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			return slices.Delete(c, 3, 4)
		}, 4, "entry 4 is missing"},
		{"removed first entry", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			return c[1:]
		}, 1, "entry 1 is missing"},
		{"removed entry and renumbered the rest", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			c = slices.Delete(c, 3, 4)
			for i := 3; i < len(c); i++ {
				c[i].Sequence = uint64(i + 1)
			}
			return c
		}, 4, "hash"},
		{"swapped two entries", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			c[5], c[6] = c[6], c[5]
			return c
		}, 6, "entry 6 is out of order"},
		{"swapped two entries and their sequences", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			c[1], c[2] = c[2], c[1]
			c[1].Sequence, c[2].Sequence = 2, 3
			return c
		}, 2, "hash"},
		{"moved an entry to the end", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			moved := c[1]
			return append(slices.Delete(c, 1, 2), moved)
		}, 2, "entry 2 is out of order"},
		{"repeated an entry", func(c []*throughcarev1.Disclosure) []*throughcarev1.Disclosure {
			return slices.Insert(c, 3, proto.CloneOf(c[2]))
		}, 4, "entry 4 is out of order"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries := make([]*throughcarev1.Disclosure, len(stored))
			for i, entry := range stored {
				entries[i] = proto.CloneOf(entry)
			}
			ok, firstBad, problem := ledger.VerifyChain(tt.tamper(entries))
			if ok || firstBad != tt.wantFirstBad || !strings.Contains(problem, tt.wantProblem) {
				t.Fatalf("VerifyChain = %v, %d, %q; want false, %d, containing %q", ok, firstBad, problem, tt.wantFirstBad, tt.wantProblem)
			}
			// The problem goes to callers and logs: sequences only, no data.
			for _, data := range []string{"case-a", "officer-7", "ev-", "Act"} {
				if strings.Contains(problem, data) {
					t.Errorf("problem %q contains %q", problem, data)
				}
			}
		})
	}
	if ok, _, _ := ledger.VerifyChain(stored); !ok {
		t.Error("VerifyChain: cases changed the stored chain")
	}
	if ok, _, _ := ledger.VerifyChain(nil); !ok {
		t.Error("VerifyChain(nil) is not intact")
	}
}

// rehash recomputes entry's hash the documented way, as a forger who knows the scheme would.
func rehash(t *testing.T, prevHash []byte, entry *throughcarev1.Disclosure) []byte {
	t.Helper()
	unhashed := proto.CloneOf(entry)
	unhashed.EntryHash = nil
	canonical, err := proto.MarshalOptions{Deterministic: true}.Marshal(unhashed)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(append(slices.Clone(prevHash), canonical...))
	return sum[:]
}

func TestStreamRefusesDeleteAndPurge(t *testing.T) {
	ctx := testContext(t)
	js := natstest.Start(t).JetStream(t)
	l := openLedger(t, js)
	for n := 1; n <= 5; n++ {
		mustAppend(t, l, disclosure(n, "case-a", "A1234BC"))
	}
	stream, err := js.Stream(ctx, ledger.StreamName(agency))
	if err != nil {
		t.Fatalf("stream: %v", err)
	}

	if err := stream.DeleteMsg(ctx, 3); err == nil {
		t.Error("DeleteMsg: no error")
	}
	if err := stream.SecureDeleteMsg(ctx, 3); err == nil {
		t.Error("SecureDeleteMsg: no error")
	}
	if err := stream.Purge(ctx); err == nil {
		t.Error("Purge: no error")
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeKeep(1)); err == nil {
		t.Error("Purge keeping one: no error")
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSequence(3)); err == nil {
		t.Error("Purge up to 3: no error")
	}
	// Nor can the protections be switched off, or entries dropped another way.
	cfg := stream.CachedInfo().Config
	cfg.DenyDelete, cfg.DenyPurge = false, false
	if _, err := js.UpdateStream(ctx, cfg); err == nil {
		t.Error("UpdateStream lifting DenyDelete and DenyPurge: no error")
	}
	rollup := nats.NewMsg(ledger.Subject(agency))
	rollup.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupAll)
	if _, err := js.PublishMsg(ctx, rollup); err == nil {
		t.Error("publish with a rollup header: no error")
	}
	if _, err := js.PublishMsg(ctx, nats.NewMsg(ledger.Subject(agency)), jetstream.WithMsgTTL(time.Minute)); err == nil {
		t.Error("publish with a message TTL: no error")
	}

	mustVerifyIntact(t, l, 5)
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	if info.State.Msgs != 5 || info.State.FirstSeq != 1 || info.State.LastSeq != 5 {
		t.Errorf("stream state = %d messages, %d to %d; want 5, 1 to 5", info.State.Msgs, info.State.FirstSeq, info.State.LastSeq)
	}
}

func TestVerifyDetectsEntryPublishedAroundTheLedger(t *testing.T) {
	ctx := testContext(t)
	js := natstest.Start(t).JetStream(t)
	l := openLedger(t, js)
	for n := 1; n <= 3; n++ {
		mustAppend(t, l, disclosure(n, "case-a", "A1234BC"))
	}
	// A well-formed entry that claims the next place but was not chained.
	forged := disclosure(4, "case-a", "A1234BC")
	forged.Sequence = 4
	forged.EntryHash = make([]byte, sha256.Size)
	data, err := proto.Marshal(forged)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, ledger.Subject(agency), data); err != nil {
		t.Fatalf("publish forged entry: %v", err)
	}
	// Entries after it chain correctly from it, which does not help it.
	mustAppend(t, l, disclosure(5, "case-a", "A1234BC"))

	got, err := l.Verify(ctx)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if got.GetIntact() || got.GetFirstBadSequence() != 4 || got.GetEntries() != 5 {
		t.Fatalf("verify = %v; want not intact at 4 of 5 entries", got)
	}

	// Something that is not an entry at all stops appends rather than being chained over.
	if _, err := js.Publish(ctx, ledger.Subject(agency), []byte("not a disclosure\xff")); err != nil {
		t.Fatalf("publish junk: %v", err)
	}
	if _, err := l.Append(ctx, disclosure(6, "case-a", "A1234BC"), "shared/ev-0006"); err == nil {
		t.Error("append onto junk: no error")
	}
}

func TestVerifyReportsUndecodableEntry(t *testing.T) {
	ctx := testContext(t)
	js := natstest.Start(t).JetStream(t)
	l := openLedger(t, js)
	mustAppend(t, l, disclosure(1, "case-a", "A1234BC"))
	if _, err := js.Publish(ctx, ledger.Subject(agency), []byte{0xff, 0xff}); err != nil {
		t.Fatalf("publish junk: %v", err)
	}
	got, err := l.Verify(ctx)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if got.GetIntact() || got.GetFirstBadSequence() != 2 || got.GetEntries() != 2 || !strings.Contains(got.GetProblem(), "does not decode") {
		t.Fatalf("verify = %v; want not intact at 2, 'does not decode'", got)
	}
}

func TestConcurrentAppendsFromTwoReplicasDoNotFork(t *testing.T) {
	srv := natstest.Start(t)
	// Two replicas of the service: two connections, two Ledgers, one stream.
	checkConcurrentAppendsDoNotFork(t, openLedger(t, srv.JetStream(t)), openLedger(t, srv.JetStream(t)))
}

// checkConcurrentAppendsDoNotFork appends through two Ledgers of one stream at once, many
// at a time through each, so they race each other for the tail, and checks that they made
// one intact chain of every disclosure, once each, and that each Append returned what was
// stored.
func checkConcurrentAppendsDoNotFork(t *testing.T, a, b *ledger.Ledger) {
	t.Helper()
	replicas := []*ledger.Ledger{a, b}
	const perReplica = 50

	ctx := testContext(t)
	var (
		mu       sync.Mutex
		stored   []*throughcarev1.Disclosure
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for r, l := range replicas {
		for i := range perReplica {
			wg.Go(func() {
				d := disclosure(r*perReplica+i+1, fmt.Sprintf("case-%d", r), "A1234BC")
				entry, err := l.Append(ctx, d, dedupeID(d))
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				mu.Lock()
				stored = append(stored, entry)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("append: %v", firstErr)
	}

	const total = 2 * perReplica
	mustVerifyIntact(t, replicas[0], total)
	entries, _, more, err := replicas[1].List(ctx, nil, all, 0, total+1)
	if err != nil || more || len(entries) != total {
		t.Fatalf("list = %d entries, more %v, err %v; want %d", len(entries), more, err, total)
	}
	events := make(map[string]bool)
	for i, entry := range entries {
		if entry.GetSequence() != uint64(i+1) {
			t.Fatalf("entry %d has sequence %d", i+1, entry.GetSequence())
		}
		events[entry.GetEventId()] = true
	}
	if len(events) != total {
		t.Errorf("%d distinct events stored, want %d", len(events), total)
	}
	// What each Append returned is exactly what was stored.
	for _, entry := range stored {
		if !proto.Equal(entry, entries[entry.GetSequence()-1]) {
			t.Errorf("Append returned entry %d unlike the stored one", entry.GetSequence())
		}
	}
}

func TestRetriedAppendIsStoredOnce(t *testing.T) {
	ctx := testContext(t)
	srv := natstest.Start(t)
	l := openLedger(t, srv.JetStream(t))

	first := disclosure(1, "case-a", "A1234BC")
	original := mustAppend(t, l, first)
	mustAppend(t, l, disclosure(2, "case-b", "A1234BC"))

	// The retry is rebuilt after a crash, so it differs in detail; the first one stands.
	retry := proto.CloneOf(first)
	retry.Time.Seconds++
	got, err := l.Append(ctx, retry, dedupeID(first))
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if !proto.Equal(got, original) {
		t.Errorf("retry returned entry %d, want the original entry %d", got.GetSequence(), original.GetSequence())
	}

	// A restarted replica, with no cached tail, retrying too.
	restarted := openLedger(t, srv.JetStream(t))
	got, err = restarted.Append(ctx, retry, dedupeID(first))
	if err != nil {
		t.Fatalf("retry after restart: %v", err)
	}
	if !proto.Equal(got, original) {
		t.Errorf("retry after restart returned entry %d, want the original", got.GetSequence())
	}

	mustVerifyIntact(t, l, 2)
	// Both Ledgers still append in the right place after the duplicates.
	if entry := mustAppend(t, restarted, disclosure(3, "case-a", "A1234BC")); entry.GetSequence() != 3 {
		t.Errorf("next append stored at %d, want 3", entry.GetSequence())
	}
	if entry := mustAppend(t, l, disclosure(4, "case-a", "A1234BC")); entry.GetSequence() != 4 {
		t.Errorf("next append stored at %d, want 4", entry.GetSequence())
	}
	mustVerifyIntact(t, l, 4)
}

func TestAppendRefusesBadInput(t *testing.T) {
	ctx := testContext(t)
	l := openLedger(t, natstest.Start(t).JetStream(t))
	if _, err := l.Append(ctx, disclosure(1, "case-a", "A1234BC"), ""); err == nil {
		t.Error("append without a dedupe id: no error")
	}
	if _, err := l.Append(ctx, nil, "shared/x"); err == nil {
		t.Error("append nil: no error")
	}
	bad := disclosure(1, "case-a", "A1234BC")
	bad.Note = "\xff not UTF-8"
	if _, err := l.Append(ctx, bad, "shared/x"); err == nil {
		t.Error("append with invalid UTF-8: no error")
	}
	mustVerifyIntact(t, l, 0)
}

func TestOpenRefusesBadArguments(t *testing.T) {
	ctx := testContext(t)
	js := natstest.Start(t).JetStream(t)
	if _, err := ledger.Open(ctx, js, "", 1); err == nil {
		t.Error("open for no agency: no error")
	}
	if _, err := ledger.Open(ctx, js, agency, 0); err == nil {
		t.Error("open with 0 replicas: no error")
	}
}

func TestOpenConfiguresStream(t *testing.T) {
	ctx := testContext(t)
	js := natstest.Start(t).JetStream(t)
	openLedger(t, js)
	stream, err := js.Stream(ctx, "LEDGER_PRISON")
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	cfg := stream.CachedInfo().Config
	if !slices.Equal(cfg.Subjects, []string{"tc.prison.ledger", "tc.prison.ledger.>"}) || cfg.Storage != jetstream.FileStorage ||
		!cfg.DenyDelete || !cfg.DenyPurge || cfg.AllowRollup || cfg.MaxAge != 0 ||
		cfg.Discard != jetstream.DiscardNew || cfg.Duplicates.Minutes() != 10 || cfg.Replicas != 1 {
		t.Errorf("stream config = %+v", cfg)
	}
	// Opening again, as every restart does, keeps the stream.
	openLedger(t, js)
}
