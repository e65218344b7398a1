package engine

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
	"github.com/flarecast/flarecast/ring"
)

// The dispatcher is the one goroutine that owns the filter index, the
// sessions and their subscriptions. Event loops never touch those: they send
// commands (attach, subscribe, ack…) through commandQueue, and the
// dispatcher applies them between events. That single owner is why a
// subscription change needs no lock on the matching path, and why each
// change takes effect at a precise point of the event sequence: a
// `subscribed` reply is queued before the first event it matches.

// dispatchBatch bounds the events taken from the ring before the
// dispatcher hands what it queued to the event loops: large enough to
// amortise one wake-up per loop over many events, small enough to keep
// latency low.
const dispatchBatch = 256

type commandKind uint8

const (
	cmdAttach commandKind = iota
	cmdDetach
	cmdSubscribe
	cmdUnsubscribe
	cmdAck
	cmdSweep
)

// command is a request from an event loop (or the housekeeper) to the dispatcher.
type command struct {
	kind commandKind
	c    *conn
	msg  *codec.ClientMessage
	now  time.Time
}

// commandQueue is a mutex-guarded slice the dispatcher swaps out whole: the
// event loops never block on the dispatcher, whatever it is doing.
type commandQueue struct {
	mu     sync.Mutex
	items  []command
	signal chan struct{} // holds a token while items may be non-empty
}

func (q *commandQueue) push(cmd command) {
	q.mu.Lock()
	q.items = append(q.items, cmd)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// take swaps the pending commands for spare and returns them.
func (q *commandQueue) take(spare []command) []command {
	q.mu.Lock()
	items := q.items
	q.items = spare[:0]
	q.mu.Unlock()
	return items
}

// delivery is one frame for one connection, collected per event loop while
// the dispatcher works through a batch.
type delivery struct {
	c *conn
	f *outFrame
}

type dispatcher struct {
	eng   *Engine
	cfg   *Config
	ring  *ring.Ring[*event.Event]
	cmds  commandQueue
	index *filterindex.Index

	sessions  map[string]*session
	slots     []*session // by session slot (filter index owner)
	freeSlots []uint32

	lastID uint64 // message_id of the last event dispatched

	// Scratch reused for every event: the hot path allocates only the frame
	// it shares between connections.
	owners   []uint32
	payload  []byte
	compress []byte
	spare    []command
	touched  []*loop
	onEvent  func(seq uint64, ev *event.Event)
}

func newDispatcher(eng *Engine) *dispatcher {
	d := &dispatcher{
		eng:      eng,
		cfg:      &eng.cfg,
		ring:     ring.New[*event.Event](eng.cfg.BroadcastCapacity, 1),
		index:    filterindex.New(),
		sessions: make(map[string]*session),
	}
	d.cmds.signal = make(chan struct{}, 1)
	d.onEvent = d.dispatchEvent
	return d
}

// run dispatches until the ring is closed and drained.
func (d *dispatcher) run() {
	for {
		worked := d.runCommands()
		if d.ring.Consume(dispatchBatch, d.onEvent) > 0 {
			worked = true
		}
		d.handOff()
		if worked {
			continue
		}
		if err := d.ring.WaitOr(context.Background(), d.cmds.signal); errors.Is(err, ring.ErrClosed) {
			d.runCommands()
			d.handOff()
			return
		}
	}
}

func (d *dispatcher) runCommands() bool {
	cmds := d.cmds.take(d.spare)
	for i := range cmds {
		d.apply(&cmds[i])
		cmds[i] = command{}
	}
	d.spare = cmds
	return len(cmds) > 0
}

func (d *dispatcher) apply(cmd *command) {
	switch cmd.kind {
	case cmdAttach:
		d.attach(cmd.c, cmd.now)
	case cmdDetach:
		d.detach(cmd.c, cmd.now)
	case cmdSubscribe:
		d.subscribe(cmd.c, cmd.msg)
	case cmdUnsubscribe:
		d.unsubscribe(cmd.c, cmd.msg)
	case cmdAck:
		d.eng.metrics.acksReceived.Inc()
	case cmdSweep:
		d.sweep(cmd.now)
	}
}

func (d *dispatcher) attach(c *conn, now time.Time) {
	s := &session{id: newSessionID(), conn: c, startedAt: now}
	if n := len(d.freeSlots); n > 0 {
		s.slot = d.freeSlots[n-1]
		d.freeSlots = d.freeSlots[:n-1]
		d.slots[s.slot] = s
	} else {
		s.slot = uint32(len(d.slots))
		d.slots = append(d.slots, s)
	}
	d.sessions[s.id] = s
	c.sess = s
	d.reply(c, codec.AppendWelcome(d.payload[:0], s.id, now, false))
}

func (d *dispatcher) detach(c *conn, now time.Time) {
	s := c.sess
	if s == nil || s.conn != c {
		return
	}
	s.conn = nil
	s.detachedAt = now
	// Until sessions can be resumed, a detached session has nothing left to
	// serve: drop it now rather than keep matching its subscriptions.
	d.drop(s)
}

// sweep drops sessions detached for longer than the session timeout.
func (d *dispatcher) sweep(now time.Time) {
	for _, s := range d.sessions {
		if s.conn == nil && now.Sub(s.detachedAt) > d.cfg.SessionTimeout {
			d.drop(s)
		}
	}
}

func (d *dispatcher) drop(s *session) {
	for _, sub := range s.subs {
		d.index.Remove(sub.sub)
	}
	s.subs = nil
	delete(d.sessions, s.id)
	d.slots[s.slot] = nil
	d.freeSlots = append(d.freeSlots, s.slot)
	d.eng.metrics.activeSubscriptions.Store(int64(d.index.Len()))
}

func (d *dispatcher) subscribe(c *conn, m *codec.ClientMessage) {
	s := c.sess
	i := s.find(m.SubscriptionID)
	if i < 0 && len(s.subs) >= d.cfg.MaxSubscriptions {
		d.replyError(c, codec.CodeLimitExceeded, "a session may hold at most "+strconv.Itoa(d.cfg.MaxSubscriptions)+" subscriptions")
		return
	}
	sub := subscription{id: m.SubscriptionID, filter: m.Filter}
	if i >= 0 {
		d.index.Remove(s.subs[i].sub)
	}
	sub.sub = d.index.Add(s.slot, &sub.filter)
	if i >= 0 {
		s.subs[i] = sub
	} else {
		s.subs = append(s.subs, sub)
	}
	d.eng.metrics.activeSubscriptions.Store(int64(d.index.Len()))
	d.reply(c, codec.AppendSubscribed(d.payload[:0], sub.id, &sub.filter))
}

func (d *dispatcher) unsubscribe(c *conn, m *codec.ClientMessage) {
	s := c.sess
	i := s.find(m.SubscriptionID)
	if i < 0 {
		d.replyError(c, codec.CodeNotFound, "no subscription "+strconv.Quote(m.SubscriptionID))
		return
	}
	d.index.Remove(s.subs[i].sub)
	s.subs = append(s.subs[:i], s.subs[i+1:]...)
	d.eng.metrics.activeSubscriptions.Store(int64(d.index.Len()))
	d.reply(c, codec.AppendUnsubscribed(d.payload[:0], m.SubscriptionID))
}

func (d *dispatcher) reply(c *conn, payload []byte) {
	d.payload = payload[:0]
	d.deliver(c, controlFrame(payload))
}

func (d *dispatcher) replyError(c *conn, code, message string) {
	d.eng.metrics.errorSent(code)
	d.reply(c, codec.AppendError(d.payload[:0], code, message))
}

// dispatchEvent encodes one event once and queues it for every session
// whose subscriptions match it.
func (d *dispatcher) dispatchEvent(seq uint64, ev *event.Event) {
	d.lastID = seq
	f := d.encode(seq, ev)
	d.eng.metrics.eventsBroadcast.Inc()
	d.owners = d.index.Match(ev, d.owners[:0])
	for _, owner := range d.owners {
		if s := d.slots[owner]; s != nil && s.conn != nil {
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
// once for all of them.
func (d *dispatcher) deliver(c *conn, f *outFrame) {
	if c.deflate && f.deflated == nil && f.ev != nil {
		if payload := f.payload(); len(payload) >= d.cfg.CompressionMinSize {
			f.deflated, d.compress = codec.AppendCompressedFrame(make([]byte, 0, len(f.plain)), d.compress, payload)
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
		l.enqueue(l.deliveries, d.cfg.MaxPendingMessages)
		clear(l.deliveries)
		l.deliveries = l.deliveries[:0]
		d.touched[i] = nil
	}
	d.touched = d.touched[:0]
}
