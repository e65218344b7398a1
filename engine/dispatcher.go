package engine

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/flarecast/flarecast/auth"
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

// coalesceWait is how long the dispatcher lets events gather before taking
// the next batch, while the previous one is less than coalesceWhile old.
// Sparse events go out at once; under load each adds at most this much
// latency and saves most write syscalls (see the closing note of the
// density issue for the measurement).
const (
	coalesceWait  = 250 * time.Microsecond
	coalesceWhile = 2 * time.Millisecond
)

type commandKind uint8

const (
	cmdAttach commandKind = iota
	cmdDetach
	cmdSubscribe
	cmdUnsubscribe
	cmdAck
	cmdSweep
	cmdWake
)

// command is a request from an event loop (or the housekeeper) to the dispatcher.
type command struct {
	kind     commandKind
	c        *conn
	msg      *codec.ClientMessage
	resumeID string
	claims   *auth.Claims // attach: the connection's token; nil without auth
	now      time.Time
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
	eng     *Engine
	cfg     *Config
	ring    *ring.Ring[*event.Event]
	cmds    commandQueue
	index   *filterindex.Index
	history *ring.History[*outFrame]

	sessions  map[string]*session
	slots     []*session // by session slot (filter index owner)
	freeSlots []uint32
	replaying []*session // sessions whose replay pump has work

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
		history:  ring.NewHistory[*outFrame](eng.cfg.HistorySize, eng.cfg.HistoryMaxBytes),
		sessions: make(map[string]*session),
	}
	d.cmds.signal = make(chan struct{}, 1)
	d.onEvent = d.dispatchEvent
	return d
}

// run dispatches until the ring is closed and drained.
func (d *dispatcher) run() {
	var lastEvents time.Time
	for {
		worked := d.runCommands()
		if !lastEvents.IsZero() && time.Since(lastEvents) < coalesceWhile {
			// Events are arriving back to back: let a few more gather, so
			// each connection gets them in one writev and each loop wakes
			// once for them, instead of a syscall per event per client.
			time.Sleep(coalesceWait)
		}
		if d.ring.Consume(dispatchBatch, d.onEvent) > 0 {
			worked = true
			lastEvents = time.Now()
		}
		if d.pumpReplays() {
			worked = true
		}
		d.handOff()
		d.publishGauges()
		if worked {
			continue
		}
		if err := d.ring.WaitOr(context.Background(), d.cmds.signal); errors.Is(err, ring.ErrClosed) {
			d.runCommands()
			d.pumpReplays()
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
		d.attach(cmd.c, cmd.resumeID, cmd.claims, cmd.now)
	case cmdDetach:
		d.detach(cmd.c, cmd.now)
	case cmdSubscribe:
		d.subscribe(cmd.c, cmd.msg)
	case cmdUnsubscribe:
		d.unsubscribe(cmd.c, cmd.msg)
	case cmdAck:
		if s := cmd.c.sess; s != nil && s.conn == cmd.c {
			s.acked = max(s.acked, cmd.msg.MessageID)
			s.everAcked = true
		}
		d.eng.metrics.acksReceived.Inc()
	case cmdSweep:
		d.sweep(cmd.now)
	case cmdWake:
		// The loop drained a replaying connection: run pumps again.
	}
}

// attach gives a new connection its session: the one named by resumeID
// when it is still held (a resume, or a takeover of a live connection), or
// a fresh one.
//
// A session is bound to the token that created it: only a token with the
// same subject and scope may resume or take it over. Any other is refused
// (UNAUTHORIZED, then a 1008 close); the connection still gets a session of
// its own, empty and never announced, so that commands it sent meanwhile
// find one, and the session it named is left untouched.
func (d *dispatcher) attach(c *conn, resumeID string, claims *auth.Claims, now time.Time) {
	m := d.eng.metrics
	s := d.sessions[resumeID]
	if s != nil && !s.auth.SameHolder(claims) {
		m.refuse(refuseResume)
		s = d.newSession(now)
		s.auth, s.conn, c.sess = claims, c, s
		c.loop.refuseSession(c, "session "+resumeID+" belongs to another token holder")
		return
	}
	if s == nil {
		s = d.newSession(now)
		s.auth = claims
		s.conn, c.sess = c, s
		m.resumesFresh.Inc()
		d.reply(c, codec.AppendWelcome(d.payload[:0], s.id, now, false))
		return
	}
	if old := s.conn; old != nil {
		s.resumeAfter = d.release(old)
		old.loop.closeAsync(old, codec.ReasonSessionTakenOver)
	}
	s.conn, c.sess = c, s
	m.resumesResumed.Inc()
	d.reply(c, codec.AppendWelcome(d.payload[:0], s.id, now, true))
	from := s.resumeAfter
	if s.everAcked {
		from = s.acked
	}
	for i := range s.subs {
		s.subs[i].covered = from
	}
	if from >= d.lastID {
		// Caught up: live now, even if the old connection was mid-replay
		// (its pump would otherwise wait for a queue that never drains).
		s.replayNext = 0
		return
	}
	d.startReplay(s, from+1)
}

func (d *dispatcher) newSession(now time.Time) *session {
	s := &session{id: newSessionID(), resumeAfter: d.lastID}
	if n := len(d.freeSlots); n > 0 {
		s.slot = d.freeSlots[n-1]
		d.freeSlots = d.freeSlots[:n-1]
		d.slots[s.slot] = s
	} else {
		s.slot = uint32(len(d.slots))
		d.slots = append(d.slots, s)
	}
	d.sessions[s.id] = s
	return s
}

// release stops queueing for c and returns the message_id up to which
// everything queued for c was handed to its socket.
func (d *dispatcher) release(c *conn) uint64 {
	lost := c.loop.release(c)
	written := d.lastID // everything owed up to here was queued…
	if next := c.sess.replayNext; next != 0 {
		written = next - 1 // …or up to the replay's position
	}
	if lost != 0 && lost-1 < written {
		written = lost - 1
	}
	return written
}

func (d *dispatcher) detach(c *conn, now time.Time) {
	s := c.sess
	if s == nil || s.conn != c {
		return // taken over by a newer connection
	}
	s.resumeAfter = d.release(c)
	s.conn = nil
	s.detachedAt = now.UnixNano()
}

// sweep drops sessions detached for longer than the session timeout.
func (d *dispatcher) sweep(now time.Time) {
	for _, s := range d.sessions {
		if s.conn == nil && now.UnixNano()-s.detachedAt > int64(d.cfg.SessionTimeout) {
			d.drop(s)
		}
	}
}

func (d *dispatcher) drop(s *session) {
	for _, sub := range s.subs {
		d.index.Remove(sub.sub)
	}
	s.subs = nil
	s.replayNext = 0
	delete(d.sessions, s.id)
	d.slots[s.slot] = nil
	d.freeSlots = append(d.freeSlots, s.slot)
}

func (d *dispatcher) subscribe(c *conn, m *codec.ClientMessage) {
	s := c.sess
	i := s.find(m.SubscriptionID)
	if i < 0 && len(s.subs) >= d.cfg.MaxSubscriptions {
		d.eng.metrics.refuse(refuseMaxSubs)
		d.replyError(c, codec.CodeLimitExceeded, "a session may hold at most "+strconv.Itoa(d.cfg.MaxSubscriptions)+" subscriptions")
		return
	}
	filter := m.Filter
	if s.auth != nil && s.auth.Scope != nil {
		// The token's scope bounds everything the session may see: the
		// subscription keeps only what lies inside it (the subscribed reply
		// shows the result), and one entirely outside is refused.
		var ok bool
		if filter, ok = auth.Intersect(&m.Filter, s.auth.Scope); !ok {
			d.eng.metrics.refuse(refuseScope)
			d.replyError(c, codec.CodeUnauthorized, "subscription "+strconv.Quote(m.SubscriptionID)+" lies outside the token's scope")
			return
		}
	}
	sub := subscription{id: m.SubscriptionID, from: d.lastID, covered: d.lastID}
	if m.HasSince && m.Since < d.lastID {
		sub.from, sub.covered = m.Since, m.Since
	}
	if i >= 0 {
		d.index.Remove(s.subs[i].sub)
		s.subs = append(s.subs[:i], s.subs[i+1:]...)
	}
	// What the session already has queued is covered for the other
	// subscriptions; the new one starts from its own point.
	if s.replayNext == 0 {
		s.coverUpTo(d.lastID)
	} else {
		s.coverUpTo(s.replayNext - 1)
	}
	sub.sub = d.index.Add(s.slot, &filter)
	s.subs = append(s.subs, sub)
	d.reply(c, codec.AppendSubscribed(d.payload[:0], sub.id, &filter))
	if sub.from < d.lastID {
		next := sub.from + 1
		if s.replayNext != 0 {
			next = min(next, s.replayNext)
		}
		d.startReplay(s, next)
	}
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

// startReplay makes the session's pump deliver, in order, every event from
// message_id next on that it is owed, before it goes live again.
func (d *dispatcher) startReplay(s *session, next uint64) {
	if next > d.lastID {
		return // nothing dispatched since: live already
	}
	if s.replayNext == 0 {
		d.replaying = append(d.replaying, s)
	}
	s.replayNext = next
	d.setReplaying(s, true)
}

func (d *dispatcher) setReplaying(s *session, on bool) {
	if c := s.conn; c != nil {
		c.loop.mu.Lock()
		c.replaying = on
		c.loop.mu.Unlock()
	}
}

// pumpReplays moves replaying sessions forward as far as their connection
// queues have room, so a replay of the whole window never overflows a
// queue. It reports whether it queued anything.
func (d *dispatcher) pumpReplays() bool {
	if len(d.replaying) == 0 {
		return false
	}
	worked := false
	keep := d.replaying[:0]
	for _, s := range d.replaying {
		if s.replayNext == 0 || s.conn == nil {
			if s.conn == nil && s.replayNext != 0 {
				keep = append(keep, s) // resumes when a connection attaches
			}
			continue
		}
		if d.pump(s) {
			worked = true
		}
		if s.replayNext != 0 {
			keep = append(keep, s)
		}
	}
	clear(d.replaying[len(keep):])
	d.replaying = keep
	return worked
}

func (d *dispatcher) pump(s *session) bool {
	c := s.conn
	room := max(1, d.cfg.MaxPendingMessages/2) - c.loop.pendingOf(c)
	if room <= 0 {
		return false
	}
	m := d.eng.metrics
	if first, ok := d.history.First(); !ok || first > s.replayNext {
		if !ok {
			first = d.lastID + 1
		}
		m.resumesGap.Inc()
		d.eng.metrics.errorSent(codec.CodeHistoryGap)
		d.reply(c, codec.AppendHistoryGap(d.payload[:0],
			"events from message_id "+strconv.FormatUint(s.replayNext, 10)+" are no longer held; continuing from "+strconv.FormatUint(first, 10),
			first))
		s.replayNext = first
	}
	queued := 0
	d.history.After(s.replayNext-1, func(id uint64, f *outFrame) bool {
		if queued >= room {
			return false
		}
		s.replayNext = id + 1
		if s.owed(d.index, id, f.ev) {
			d.deliver(c, f)
			queued++
		}
		return true
	})
	m.replayed.Add(queued)
	if s.replayNext > d.lastID {
		s.replayNext = 0 // caught up: live from the next event
		d.setReplaying(s, false)
	}
	return queued > 0
}

func (d *dispatcher) publishGauges() {
	m := d.eng.metrics
	m.activeSubscriptions.Store(int64(d.index.Len()))
	m.historyLen.Store(int64(d.history.Len()))
	m.lastDispatched.Store(d.lastID)
	if first, ok := d.history.First(); ok {
		m.historyFirst.Store(int64(first))
	}
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
