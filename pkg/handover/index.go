package handover

import (
	"fmt"
	"slices"
	"strings"
	"time"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// The handovers bucket holds, beside each record, index entries that point at it. They are
// a pure function of the record (indexKeys), put in place after each write and, if the
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
func dirToken(incoming bool) string {
	if incoming {
		return "in"
	}
	return "out"
}

func stateToken(st throughcarev1.HandoverState) string {
	return strings.ToLower(strings.TrimPrefix(st.String(), "HANDOVER_STATE_"))
}

// hourOf is the index bucket of t.
func hourOf(t time.Time) int64 { return unitOf(t, time.Hour) }

// unitOf is the index bucket of t, for an index filed by unit (an hour, a minute).
func unitOf(t time.Time, unit time.Duration) int64 { return t.Unix() / int64(unit/time.Second) }

func hourToken(hour int64) string { return fmt.Sprintf("%010d", hour) }

// filedHour is the bucket a time is filed under: its own hour, or the hour of the write
// when it has already passed.
func filedHour(at time.Time, rec *storev1.HandoverRecord) int64 { return filedUnit(at, rec, time.Hour) }

func filedUnit(at time.Time, rec *storev1.HandoverRecord, unit time.Duration) int64 {
	return max(unitOf(at, unit), unitOf(rec.GetHandover().GetUpdateTime().AsTime(), unit))
}

// indexKeys are the index entries rec needs.
func (s *Service) indexKeys(rec *storev1.HandoverRecord) []string {
	h := rec.GetHandover()
	id, dir, state := h.GetHandoverId(), dirToken(s.incoming(h)), stateToken(h.GetState())
	keys := []string{
		"ix.case." + h.GetCaseId() + "." + dir + "." + id,
		"ix.list." + dir + "." + state + "." + id,
	}
	if h.GetAcknowledgeOverdue() || h.GetAcceptOverdue() {
		keys = append(keys, "ix.overdue."+dir+"."+state+"."+id)
	}
	for _, due := range pendingDeadlines(h) {
		keys = append(keys, "ix.due."+hourToken(filedHour(due, rec))+"."+id)
	}
	if due := rec.GetResendDueTime(); due != nil {
		keys = append(keys, "ix.resend."+hourToken(filedUnit(due.AsTime(), rec, resendUnit))+"."+id)
	}
	if until, ok := s.retainUntil(rec); ok {
		keys = append(keys, "ix.retain."+hourToken(filedHour(until, rec))+"."+id)
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// pendingDeadlines are the due times of h's deadlines that are neither met nor marked.
func pendingDeadlines(h *throughcarev1.Handover) []time.Time {
	var due []time.Time
	if waitingForAcknowledgement(h) && !h.GetAcknowledgeOverdue() && h.GetAcknowledgeDueTime() != nil {
		due = append(due, h.GetAcknowledgeDueTime().AsTime())
	}
	if !finished(h) && !h.GetAcceptOverdue() && h.GetAcceptDueTime() != nil {
		due = append(due, h.GetAcceptDueTime().AsTime())
	}
	return due
}

// retainUntil is when this agency's copy brought by rec's handover may no longer be kept:
// for a received handover whose copy is still held, its rule's retention after delivery.
func (s *Service) retainUntil(rec *storev1.HandoverRecord) (time.Time, bool) {
	h := rec.GetHandover()
	if !s.incoming(h) || len(h.GetReceipts()) == 0 || rec.GetCopyRemoved() {
		return time.Time{}, false
	}
	rule, ok := s.cfg.Protocol.Rule(h.GetSender(), s.cfg.Agency, h.GetPurpose())
	if !ok {
		return time.Time{}, false
	}
	return h.GetReceipts()[0].GetTime().AsTime().Add(rule.GetRetention().AsDuration()), true
}
