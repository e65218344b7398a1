package engine

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"time"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
)

// session is what the server remembers about one client across its
// connections: its subscriptions and how far it has read. A session
// outlives its connection for the session timeout, so a client that
// reconnects with its session id resumes where it was. Sessions are owned
// by the dispatcher goroutine; nothing else touches them.
type session struct {
	id   sessionID
	slot uint32 // owner number in the filter index
	subs []subscription

	// auth is the token that created the session: its scope bounds every
	// subscription, and only the same holder may resume it. nil without auth.
	auth *auth.Claims

	conn       *conn // the attached connection; nil while detached
	detachedAt int64 // when conn went away (unix ns), for expiry

	// resumePoint: every owed event up to it has reached the client, as
	// its acks prove (ackLedger). While a connection is attached, its
	// ledger carries the live value; this is where a resume starts.
	resumePoint uint64
	// highestSent is the highest message_id any of the session's previous
	// connections wrote: acks up to it on a new connection may be stale.
	highestSent uint64

	// replayNext is the next message_id the replay pump looks at; zero when
	// the session is live. While it replays, live dispatch skips the
	// session: the pump walks the history up to the newest event, which
	// keeps the session's events in order with no gap and no duplicate.
	replayNext uint64

	// stored: what the fleet's session store was last told (fleetsessions.go);
	// nil on a single instance and until the session's first subscription.
	stored *storedSession
}

// subscription is one named filter of a session. The filter itself lives
// in the index only (Index.MatchesOne evaluates it for replays): an idle
// connection's memory is mostly its subscriptions.
type subscription struct {
	id  string
	sub filterindex.SubID
	// from: the subscription wants events with a message_id above it (the
	// moment it was made, or its `since`).
	from uint64
	// covered: events up to it that the subscription wants have already
	// been queued for the session, so a replay skips them. It only matters
	// while the session replays.
	covered uint64
}

func (s *session) find(id string) int {
	for i := range s.subs {
		if s.subs[i].id == id {
			return i
		}
	}
	return -1
}

// owed tells the pump whether event ev (message_id id) is owed to the
// session: some subscription wants it and none has covered it yet.
func (s *session) owed(ix *filterindex.Index, id uint64, ev *event.Event) bool {
	wanted := false
	for i := range s.subs {
		sub := &s.subs[i]
		if id <= sub.from || !ix.MatchesOne(sub.sub, ev) {
			continue
		}
		if id <= sub.covered {
			return false // already queued through this subscription
		}
		wanted = true
	}
	return wanted
}

// coverUpTo records that everything up to id that the subscriptions want
// has been queued: called when a replay starts or rewinds.
func (s *session) coverUpTo(id uint64) {
	for i := range s.subs {
		s.subs[i].covered = max(s.subs[i].covered, id)
	}
}

// sessionID is 128 random bits: unguessable, so a session id is as good as
// a bearer capability for resuming that session. Clients see it in hex; the
// server keeps the bytes, which a session holds inline instead of pointing
// at a 32-byte string of its own.
type sessionID [16]byte

func newSessionID() sessionID {
	var id sessionID
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails on Linux
	return id
}

func (id sessionID) String() string { return hex.EncodeToString(id[:]) }

// parseSessionID reads a client's session id; ok is false for anything
// this server cannot have handed out.
func parseSessionID(s string) (id sessionID, ok bool) {
	if len(s) != 2*len(id) {
		return id, false
	}
	_, err := hex.Decode(id[:], []byte(s))
	return id, err == nil
}

// attach gives a new connection its session: the one named by resumeID
// when it is still held (a resume, or a takeover of a live connection), or
// a fresh one. In a fleet a resume asks the fleet's session store first
// (claimFor), which may hold the session for another instance.
func (d *dispatcher) attach(c *conn, resumeID string, claims *auth.Claims, now time.Time) {
	id, ok := parseSessionID(resumeID)
	switch {
	case !ok:
		d.attachLocal(c, nil, resumeID, claims, now)
	case d.sync != nil:
		d.claimFor(c, id, claims, now)
	default:
		d.attachLocal(c, d.sessions[id], resumeID, claims, now)
	}
}

// attachLocal attaches c to s, this instance's session named resumeID, or
// to a fresh session when s is nil.
//
// A session is bound to the token that created it: only a token with the
// same subject and scope may resume or take it over. Any other is refused
// (UNAUTHORIZED, then a 1008 close); the connection still gets a session of
// its own, empty and never announced, so that commands it sent meanwhile
// find one, and the session it named is left untouched.
func (d *dispatcher) attachLocal(c *conn, s *session, resumeID string, claims *auth.Claims, now time.Time) {
	m := d.eng.metrics
	if s != nil && !s.auth.SameHolder(claims) {
		d.refuse(c, resumeID, claims)
		return
	}
	if s == nil {
		s = d.newSession()
		s.auth = claims
		d.bind(s, c)
		m.resumesFresh.Inc()
		d.reply(c, codec.AppendWelcome(d.payload[:0], s.id.String(), now, false))
		return
	}
	d.takeOver(s)
	d.resume(s, c, now)
}

// takeOver detaches s's connection, if any, and closes it as taken over.
// A takeover loses nothing a disconnect would not: the old connection's
// unacknowledged frames are replayed wherever the session resumes, and it
// is told why after whatever it was already sent.
func (d *dispatcher) takeOver(s *session) {
	if old := s.conn; old != nil {
		d.unbind(s, old)
		old.loop.closeAsync(old, codec.ReasonSessionTakenOver)
	}
}

// refuse answers a connection that named a session of another holder.
func (d *dispatcher) refuse(c *conn, resumeID string, claims *auth.Claims) {
	d.eng.metrics.refuse(refuseResume)
	s := d.newSession()
	s.auth, s.conn, c.sess = claims, c, s
	c.loop.refuseSession(c, "session "+resumeID+" belongs to another token holder")
}

// resume attaches c to the detached session s and replays what it is owed.
func (d *dispatcher) resume(s *session, c *conn, now time.Time) {
	d.bind(s, c)
	d.eng.metrics.resumesResumed.Inc()
	d.reply(c, codec.AppendWelcome(d.payload[:0], s.id.String(), now, true))
	from := s.resumePoint
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

// bind attaches c to s. c's ack ledger starts at the session's resume
// point; acks of frames only an earlier connection was sent are ignored.
// It is set before the welcome is queued, so before c's input is read.
func (d *dispatcher) bind(s *session, c *conn) {
	s.conn, c.sess = c, s
	c.loop.mu.Lock()
	c.acks.reset(s.resumePoint, s.highestSent)
	c.loop.mu.Unlock()
}

// unbind detaches c from s, taking over the resume point its acks proved.
func (d *dispatcher) unbind(s *session, c *conn) {
	point, written := c.loop.release(c)
	s.resumePoint = point
	s.highestSent = max(s.highestSent, written)
	s.conn = nil
}

func (d *dispatcher) newSession() *session {
	return d.newSessionNamed(newSessionID())
}

// newSessionNamed makes session id, owed nothing before now.
func (d *dispatcher) newSessionNamed(id sessionID) *session {
	s := &session{id: id, resumePoint: d.lastID}
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

func (d *dispatcher) detach(c *conn, now time.Time) {
	delete(d.claiming, c) // gone before the store answered its resume
	s := c.sess
	if s == nil || s.conn != c {
		return // taken over by a newer connection
	}
	d.unbind(s, c)
	s.detachedAt = now.UnixNano()
	if s.stored != nil {
		d.syncSession(s, s.resumePoint, s.highestSent, "", nil)
	}
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

// holds reports whether c still holds its session: commands from a
// connection that was taken over must not change the session.
func holds(c *conn) bool { return c.sess != nil && c.sess.conn == c }

func (d *dispatcher) subscribe(c *conn, m *codec.ClientMessage) {
	if !holds(c) {
		return
	}
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
	d.reply(c, codec.AppendSubscribed(d.payload[:0], sub.id, &filter, sub.from))
	if sub.from < d.lastID {
		// A backfill: events after sub.from are owed again, whatever the
		// client acked so far.
		c.loop.mu.Lock()
		c.acks.backfill(sub.from, d.lastID)
		c.loop.mu.Unlock()
		next := sub.from + 1
		if s.replayNext != 0 {
			next = min(next, s.replayNext)
		}
		d.startReplay(s, next)
	}
	if d.sync != nil {
		// After the backfill lowered the resume point: a move to another
		// instance replays it too.
		d.syncSubscription(s, c, sub.id, encodeSub(&filter, sub.from))
	}
}

func (d *dispatcher) unsubscribe(c *conn, m *codec.ClientMessage) {
	if !holds(c) {
		return
	}
	s := c.sess
	i := s.find(m.SubscriptionID)
	if i < 0 {
		d.replyError(c, codec.CodeNotFound, "no subscription "+strconv.Quote(m.SubscriptionID))
		return
	}
	d.index.Remove(s.subs[i].sub)
	s.subs = append(s.subs[:i], s.subs[i+1:]...)
	if d.sync != nil {
		d.syncSubscription(s, c, m.SubscriptionID, nil)
	}
	d.reply(c, codec.AppendUnsubscribed(d.payload[:0], m.SubscriptionID))
}
