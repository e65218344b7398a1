package engine

import (
	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
)

// Lanes order a connection's backlog — the frames that wait because its
// socket does not drain (outbox.go): control messages and critical events
// first, then high, then normal. Within a lane frames keep message_id
// order, and a socket that drains gets every frame in message_id order.
const (
	laneCritical = iota
	laneHigh
	laneNormal
)

func laneOf(p event.Priority) uint8 {
	switch p {
	case event.Critical:
		return laneCritical
	case event.High:
		return laneHigh
	}
	return laneNormal
}

// outFrame is one encoded server message. An event is encoded (and
// compressed) once by the dispatcher; every connection it is queued for
// holds a pointer to the same outFrame and writes the same bytes. It is
// immutable once queued.
type outFrame struct {
	id       uint64 // message_id of an event; 0 for a control message
	lane     uint8
	accepted int64        // when the event was accepted, unix nanoseconds (latency metric)
	plain    []byte       // a complete text frame
	deflated []byte       // the same message as a compressed frame; nil when sent plain to all
	ev       *event.Event // the event, for replay matching; nil for control messages
}

// bytesFor returns the frame a connection writes: the compressed one when
// the connection negotiated permessage-deflate and one exists.
func (f *outFrame) bytesFor(deflate bool) []byte {
	if deflate && f.deflated != nil {
		return f.deflated
	}
	return f.plain
}

// payload returns the message inside the plain frame.
func (f *outFrame) payload() []byte {
	for _, h := range [...]int{2, 4, 10} {
		if codec.HeaderSize(len(f.plain)-h) == h {
			return f.plain[h:]
		}
	}
	return nil // unreachable: every length has exactly one header size
}

// size approximates the memory the frame holds, for the history bound.
func (f *outFrame) size() int {
	const overhead = 160 // outFrame + event headers
	n := overhead + len(f.plain) + len(f.deflated)
	if f.ev != nil {
		n += len(f.ev.Source) + len(f.ev.IncidentID) + len(f.ev.Severity) + len(f.ev.State)
		for _, r := range f.ev.Resources {
			n += 16 + len(r)
		}
		for _, l := range f.ev.Labels {
			n += 32 + len(l.Key) + len(l.Value)
		}
	}
	return n
}

// controlFrame builds a control message (welcome, subscribed, error…) for
// one connection. These are rare; they are not compressed. One that fits
// ctlInline is a single allocation, frame and bytes (inlineFrame): every
// connection's welcome and subscribed replies would otherwise leave two
// 80-byte outFrames of garbage in the size class its session lives in,
// and garbage interleaved with live objects leaves their spans half empty
// once collected (the density preset).
func controlFrame(payload []byte) *outFrame {
	if n := codec.HeaderSize(len(payload)) + len(payload); n <= ctlInline {
		f := &inlineFrame{}
		f.lane = laneCritical
		f.plain = codec.AppendFrame(f.buf[:0:n], codec.OpText, payload)
		return &f.outFrame
	}
	return &outFrame{lane: laneCritical, plain: codec.TextFrame(payload)}
}

// inlineFrame is a control frame with room for its bytes.
type inlineFrame struct {
	outFrame
	buf [ctlInline]byte
}

const ctlInline = 176 // with the outFrame: the 256-byte size class
