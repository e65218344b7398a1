package engine

import (
	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
)

// delivery is one frame for one connection, collected per event loop while
// the dispatcher works through a batch.
type delivery struct {
	c *conn
	f *outFrame
}

// dispatchEvent encodes one event once and queues it for every session
// whose subscriptions match it.
func (d *dispatcher) dispatchEvent(seq uint64, ev *event.Event) {
	if ev.ID != 0 {
		seq = ev.ID // a fleet: the broker's global message_id
	}
	d.lastID = seq
	f := d.encode(seq, ev)
	d.eng.metrics.eventsBroadcast.Inc()
	// The frame holds the encoded event; the event itself is kept only for
	// replay matching, which needs its typed fields, not its JSON.
	ev.JSON = nil
	d.history.Append(seq, f, f.size())
	d.owners = d.index.Match(ev, d.owners[:0])
	for _, owner := range d.owners {
		if s := d.slots[owner]; s != nil && s.conn != nil && s.replayNext == 0 {
			d.deliver(s.conn, f)
		}
	}
}

func (d *dispatcher) encode(seq uint64, ev *event.Event) *outFrame {
	d.payload = codec.AppendEvent(d.payload[:0], seq, ev.Accepted, ev.JSON)
	return &outFrame{
		id:       seq,
		lane:     laneOf(ev.Priority),
		accepted: ev.Accepted.UnixNano(),
		plain:    codec.TextFrame(d.payload),
		ev:       ev,
	}
}

// deliver collects f for c's event loop; handOff passes the collection on.
// The compressed form is made the first time a deflate connection needs it,
// once for all of them, and counted in the history's byte bound.
func (d *dispatcher) deliver(c *conn, f *outFrame) {
	if c.deflate && f.deflated == nil && f.ev != nil {
		if payload := f.payload(); len(payload) >= d.cfg.CompressionMinSize {
			d.deflated, d.compress = codec.AppendCompressedFrame(d.deflated[:0], d.compress, payload)
			f.deflated = append([]byte(nil), d.deflated...) // exactly its size: it may live in the history
			d.history.Grow(f.id, len(f.deflated))
		}
	}
	l := c.loop
	if len(l.deliveries) == 0 {
		d.touched = append(d.touched, l)
	}
	l.deliveries = append(l.deliveries, delivery{c, f})
}

// handOff moves the collected deliveries into the connections' queues,
// taking each loop's lock once, and wakes each loop once.
func (d *dispatcher) handOff() {
	for i, l := range d.touched {
		l.enqueue(l.deliveries)
		clear(l.deliveries)
		l.deliveries = l.deliveries[:0]
		d.touched[i] = nil
	}
	d.touched = d.touched[:0]
}

func (d *dispatcher) reply(c *conn, payload []byte) {
	d.payload = payload[:0]
	d.deliver(c, controlFrame(payload))
}

func (d *dispatcher) replyError(c *conn, code, message string) {
	d.eng.metrics.errorSent(code)
	d.reply(c, codec.AppendError(d.payload[:0], code, message))
}
