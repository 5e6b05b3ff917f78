package lifecycle

import (
	"fmt"
	"slices"
	"strings"
	"time"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// The handovers bucket holds, beside each record, index entries that point at it. They are
// a pure function of the record (IndexKeys), put in place after each write and, if the
// writer crashed first, by a follower of the change stream (records.Index.Follow), so every
// request path and periodic job reads only the entries it needs:
//
//	ix.case.<case>.<in|out>.<handover>       the handovers of a case (release, plans, consent)
//	ix.list.<in|out>.<state>.<handover>       ListHandovers by direction and state
//	ix.overdue.<in|out>.<state>.<handover>    ListHandovers with overdue_only
//	ix.due.<hour>.<handover>                  deadlines not yet marked, by the hour they fall due
//	ix.retain.<hour>.<handover>               received copies, by the hour their retention ends
//	ix.resend.<minute>.<handover>             unacknowledged events, by the minute they are re-sent
//
// Hours are hours since the Unix epoch. A time already past when the record was written is
// filed under the hour of that write, so a job that has read up to a checkpoint never misses
// an entry filed behind it.
// ResendUnit is the span of time the resend index files under one key: resends fall due
// minutes after a send, and a pass reads what is filed under the current unit.
const ResendUnit = time.Minute

// DirToken names a direction in index keys.
func DirToken(incoming bool) string {
	if incoming {
		return "in"
	}
	return "out"
}

// StateToken names a state in index keys.
func StateToken(st throughcarev1.HandoverState) string {
	return strings.ToLower(strings.TrimPrefix(st.String(), "HANDOVER_STATE_"))
}

// UnitOf is the index bucket of t, for an index filed by unit (an hour, a minute).
func UnitOf(t time.Time, unit time.Duration) int64 { return t.Unix() / int64(unit/time.Second) }

// UnitToken names a bucket of a time-filed index in its keys.
func UnitToken(unit int64) string { return fmt.Sprintf("%010d", unit) }

// filedUnit is the bucket a time is filed under: its own, or that of the write when it
// has already passed.
func filedUnit(at time.Time, rec *storev1.HandoverRecord, unit time.Duration) int64 {
	return max(UnitOf(at, unit), UnitOf(rec.GetHandover().GetUpdateTime().AsTime(), unit))
}

// IndexKeys are the index entries rec needs.
func (p *Party) IndexKeys(rec *storev1.HandoverRecord) []string {
	h := rec.GetHandover()
	id, dir, state := h.GetHandoverId(), DirToken(p.Incoming(h)), StateToken(h.GetState())
	keys := []string{
		"ix.case." + h.GetCaseId() + "." + dir + "." + id,
		"ix.list." + dir + "." + state + "." + id,
	}
	if h.GetAcknowledgeOverdue() || h.GetAcceptOverdue() {
		keys = append(keys, "ix.overdue."+dir+"."+state+"."+id)
	}
	for _, due := range pendingDeadlines(h) {
		keys = append(keys, "ix.due."+UnitToken(filedUnit(due, rec, time.Hour))+"."+id)
	}
	if due := rec.GetResendDueTime(); due != nil {
		keys = append(keys, "ix.resend."+UnitToken(filedUnit(due.AsTime(), rec, ResendUnit))+"."+id)
	}
	if until, ok := p.RetainUntil(rec); ok {
		keys = append(keys, "ix.retain."+UnitToken(filedUnit(until, rec, time.Hour))+"."+id)
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}
