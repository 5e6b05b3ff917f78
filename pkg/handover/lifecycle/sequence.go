package lifecycle

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	storev1 "github.com/throughcare/throughcare/gen/throughcare/store/v1"
	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// Delivery end to end. JetStream delivers at least once between the streams, but a message
// lost inside NATS (a purged inbox, a restored backup) would go unnoticed. So, as AS4
// reliability does, each agency numbers the events it sends along a handover (the write
// that puts an event in the outbox gives it the next sequence), keeps each signed event
// until the other agency acknowledges it, and re-sends what is unacknowledged after
// ResendAfter. The receiver applies the events of a handover in sequence: a duplicate is
// acknowledged again and not applied, a gap is not applied and answered with a resend
// request. Acknowledgements are cumulative and ride on every event back
// (acknowledged_sequence), or on an acknowledgement event of their own when the receiver
// has nothing else to send back; neither those nor resend requests are sequenced.

// Sequenced reports whether ev takes a place in its handover's sequence.
func Sequenced(ev *throughcarev1.Event) bool {
	switch ev.GetPayload().(type) {
	case *throughcarev1.Event_SequenceAcknowledged, *throughcarev1.Event_ResendRequested:
		return false
	}
	return true
}

// Number gives each new event of rec's outbox the handover's next sequence and the last
// sequence received in order, and schedules a resend while any is unacknowledged. Every
// write calls it, so an event's sequence commits with the event.
func (p *Party) Number(rec *storev1.HandoverRecord) {
	for _, ev := range rec.GetOutbox() {
		ev.AcknowledgedSequence = rec.GetLastReceivedSequence()
		if Sequenced(ev) && ev.GetSequence() == 0 {
			rec.LastSentSequence++
			ev.Sequence = rec.GetLastSentSequence()
		}
	}
	if rec.GetLastSentSequence() > rec.GetPeerAcknowledgedSequence() && rec.GetResendDueTime() == nil {
		rec.ResendDueTime = timestamppb.New(p.Now().Add(p.ResendAfter))
	}
}

// TakeAcknowledgement records on rec that the other agency received everything up to
// ack, and reports whether that is news.
func (p *Party) TakeAcknowledgement(rec *storev1.HandoverRecord, ack uint64) bool {
	ack = min(ack, rec.GetLastSentSequence())
	if ack <= rec.GetPeerAcknowledgedSequence() {
		return false
	}
	rec.PeerAcknowledgedSequence = ack
	if ack == rec.GetLastSentSequence() {
		rec.ResendDueTime = nil
	} else {
		rec.ResendDueTime = timestamppb.New(p.Now().Add(p.ResendAfter)) // progress: wait again
	}
	return true
}

// Settle records on rec, in the write that applies ev, that ev was received and the
// acknowledgement it carries; when the write sends nothing else back, it sends an
// acknowledgement. It reports whether rec changed.
func (p *Party) Settle(rec *storev1.HandoverRecord, ev *throughcarev1.Event) bool {
	changed := p.TakeAcknowledgement(rec, ev.GetAcknowledgedSequence())
	if seq := ev.GetSequence(); seq == 0 || seq != rec.GetLastReceivedSequence()+1 {
		return changed
	}
	rec.LastReceivedSequence = ev.GetSequence()
	if len(rec.GetOutbox()) == 0 {
		h := rec.GetHandover()
		ack := p.NewEvent(h, p.PeerOf(h), "", throughcarev1.EventType_EVENT_TYPE_SEQUENCE_ACKNOWLEDGED)
		ack.Payload = &throughcarev1.Event_SequenceAcknowledged{SequenceAcknowledged: &throughcarev1.SequenceAcknowledged{}}
		rec.Outbox = append(rec.Outbox, ack)
	}
	return true
}
