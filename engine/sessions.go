package engine

import (
	"crypto/rand"
	"encoding/hex"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

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
	// The subscriptions, a slice kept as its parts (subList, setSubs): the
	// length and capacity fit in what would be padding after slot, and
	// the session in the 64-byte size class instead of 80.
	nsubs, capSubs uint16
	subsAt         *subscription

	conn *conn // the attached connection; nil while detached
	// parked is where a resume starts, kept while no connection is
	// attached (the attached one's ack ledger carries it meanwhile): nil
	// while one is, and for a fresh session, owed nothing before it is
	// bound (at once, in the same command).
	parked *parked

	// replayNext is the next message_id the replay pump looks at; zero when
	// the session is live. While it replays, live dispatch skips the
	// session: the pump walks the history up to the newest event, which
	// keeps the session's events in order with no gap and no duplicate.
	replayNext uint64

	// rare: the token and the fleet's record, which a session on a single
	// instance without --auth does not have; nil then. Apart, like parked,
	// so that an attached session costs the 80-byte size class.
	rare *sessionRare
}

// parked is what a session remembers of its last connection while it has
// none.
type parked struct {
	at int64 // when the connection went away (unix ns), for expiry
	// resumePoint: every owed event up to it has reached the client, as
	// its acks proved (ackLedger); this is where a resume starts.
	resumePoint uint64
	// highestSent is the highest message_id any of the session's previous
	// connections wrote: acks up to it on a new connection may be stale.
	highestSent uint64
}

// resumeFrom returns where a connection bound to s now starts: its resume
// point and the highest message_id sent before. A session never bound is
// owed nothing before lastID.
func (s *session) resumeFrom(lastID uint64) (point, sent uint64) {
	if p := s.parked; p != nil {
		return p.resumePoint, p.highestSent
	}
	return lastID, 0
}

// sessionRare is what only some sessions have.
type sessionRare struct {
	// auth is the token that created the session: its scope bounds every
	// subscription, and only the same holder may resume it. nil without auth.
	auth *auth.Claims
	// stored: what the fleet's session store was last told (fleetsessions.go);
	// nil on a single instance and until the session's first subscription.
	stored *storedSession
}

// claims returns the token that created s; nil without auth.
func (s *session) claims() *auth.Claims {
	if s.rare == nil {
		return nil
	}
	return s.rare.auth
}

func (s *session) setClaims(a *auth.Claims) {
	if a != nil || s.rare != nil {
		s.more().auth = a
	}
}

// stored returns what the fleet's session store was last told of s; nil
// if nothing.
func (s *session) stored() *storedSession {
	if s.rare == nil {
		return nil
	}
	return s.rare.stored
}

func (s *session) more() *sessionRare {
	if s.rare == nil {
		s.rare = &sessionRare{}
	}
	return s.rare
}

// maxSessionSubs is the most subscriptions a session can hold (session.nsubs).
const maxSessionSubs = math.MaxUint16

// subList returns s's subscriptions. The slice is s's own: set it back with
// setSubs after changing its length.
func (s *session) subList() []subscription {
	if s.subsAt == nil {
		return nil
	}
	return unsafe.Slice(s.subsAt, s.capSubs)[:s.nsubs]
}

// setSubs makes l s's subscriptions; len(l) is at most maxSessionSubs.
func (s *session) setSubs(l []subscription) {
	if cap(l) > maxSessionSubs {
		l = slices.Clip(l)
	}
	if len(l) > maxSessionSubs {
		panic("engine: more subscriptions than a session holds")
	}
	s.subsAt, s.nsubs, s.capSubs = unsafe.SliceData(l), uint16(len(l)), uint16(cap(l))
	if cap(l) == 0 {
		s.subsAt = nil
	}
}

// subscription is one named filter of a session. The filter itself lives
// in the index only (Index.MatchesOne evaluates it for replays): an idle
// connection's memory is mostly its subscriptions.
type subscription struct {
	// id points at the subscription_id (internSubID): 8 bytes instead of a
	// string's 16 take the struct, and a session's one-element array of
	// it, from the 48-byte size class to 32.
	id  *string
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
	subs := s.subList()
	for i := range subs {
		if *subs[i].id == id {
			return i
		}
	}
	return -1
}

// owed tells the pump whether event ev (message_id id) is owed to the
// session: some subscription wants it and none has covered it yet.
func (s *session) owed(ix *filterindex.Index, id uint64, ev *event.Event) bool {
	wanted := false
	subs := s.subList()
	for i := range subs {
		sub := &subs[i]
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
	subs := s.subList()
	for i := range subs {
		subs[i].covered = max(subs[i].covered, id)
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
		d.attachLocal(c, d.session(id), resumeID, claims, now)
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
	if s != nil && !s.claims().SameHolder(claims) {
		d.refuse(c, resumeID, claims)
		return
	}
	if s == nil {
		s = d.newSession()
		s.setClaims(claims)
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
	s.setClaims(claims)
	s.conn, c.sess = c, s
	c.loop.refuseSession(c, "session "+resumeID+" belongs to another token holder")
}

// resume attaches c to the detached session s and replays what it is owed.
func (d *dispatcher) resume(s *session, c *conn, now time.Time) {
	from, _ := s.resumeFrom(d.lastID)
	d.bind(s, c)
	d.eng.metrics.resumesResumed.Inc()
	d.reply(c, codec.AppendWelcome(d.payload[:0], s.id.String(), now, true))
	subs := s.subList()
	for i := range subs {
		subs[i].covered = from
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
	point, sent := s.resumeFrom(d.lastID)
	s.conn, s.parked, c.sess = c, nil, s
	c.loop.mu.Lock()
	c.acks.reset(point, sent)
	c.loop.mu.Unlock()
}

// unbind detaches c from s, taking over the resume point its acks proved.
// What earlier connections were sent is in c's ledger too: it started at
// the highest of it (bind), and its maxWritten only grows.
func (d *dispatcher) unbind(s *session, c *conn) {
	point, written := c.loop.release(c)
	s.parked = &parked{resumePoint: point, highestSent: written}
	s.conn = nil
}

func (d *dispatcher) newSession() *session {
	return d.newSessionNamed(newSessionID())
}

// newSessionNamed makes session id, owed nothing before now.
func (d *dispatcher) newSessionNamed(id sessionID) *session {
	s := &session{id: id}
	if n := len(d.freeSlots); n > 0 {
		s.slot = d.freeSlots[n-1]
		d.freeSlots = d.freeSlots[:n-1]
		d.slots[s.slot] = s
	} else {
		s.slot = uint32(len(d.slots))
		d.slots = append(d.slots, s)
	}
	d.sessions.put(d.slots, s)
	return s
}

// session returns this instance's session named id, or nil.
func (d *dispatcher) session(id sessionID) *session { return d.sessions.get(d.slots, id) }

func (d *dispatcher) detach(c *conn, now time.Time) {
	delete(d.claiming, c) // gone before the store answered its resume
	s := c.sess
	if s == nil || s.conn != c {
		return // taken over by a newer connection
	}
	d.unbind(s, c)
	s.parked.at = now.UnixNano()
	if s.stored() != nil {
		d.syncSession(s, s.parked.resumePoint, s.parked.highestSent, "", nil)
	}
}

// sweep drops sessions detached for longer than the session timeout.
func (d *dispatcher) sweep(now time.Time) {
	for _, s := range d.slots {
		if s != nil && s.conn == nil && now.UnixNano()-s.parkedAt() > int64(d.cfg.SessionTimeout) {
			d.drop(s)
		}
	}
}

// parkedAt is when s's connection went away (unix ns); 0 if never.
func (s *session) parkedAt() int64 {
	if s.parked == nil {
		return 0
	}
	return s.parked.at
}

func (d *dispatcher) drop(s *session) {
	for _, sub := range s.subList() {
		d.index.Remove(sub.sub)
	}
	s.setSubs(nil)
	s.replayNext = 0
	d.sessions.remove(d.slots, s)
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
	if i < 0 && int(s.nsubs) >= d.cfg.MaxSubscriptions { // Validate keeps it ≤ maxSessionSubs
		d.eng.metrics.refuse(refuseMaxSubs)
		d.replyError(c, codec.CodeLimitExceeded, "a session may hold at most "+strconv.Itoa(d.cfg.MaxSubscriptions)+" subscriptions")
		return
	}
	filter := &m.Filter // not a copy: 168 bytes of garbage per subscribe
	if a := s.claims(); a != nil && a.Scope != nil {
		// The token's scope bounds everything the session may see: the
		// subscription keeps only what lies inside it (the subscribed reply
		// shows the result), and one entirely outside is refused.
		scoped, ok := auth.Intersect(&m.Filter, a.Scope)
		if !ok {
			d.eng.metrics.refuse(refuseScope)
			d.replyError(c, codec.CodeUnauthorized, "subscription "+strconv.Quote(m.SubscriptionID)+" lies outside the token's scope")
			return
		}
		filter = &scoped
	}
	sub := subscription{id: d.internSubID(m.SubscriptionID), from: d.lastID, covered: d.lastID}
	if m.HasSince && m.Since < d.lastID {
		sub.from, sub.covered = m.Since, m.Since
	}
	if i >= 0 {
		subs := s.subList()
		d.index.Remove(subs[i].sub)
		s.setSubs(append(subs[:i], subs[i+1:]...))
	}
	// What the session already has queued is covered for the other
	// subscriptions; the new one starts from its own point.
	if s.replayNext == 0 {
		s.coverUpTo(d.lastID)
	} else {
		s.coverUpTo(s.replayNext - 1)
	}
	sub.sub = d.index.Add(s.slot, filter)
	s.setSubs(append(s.subList(), sub))
	d.reply(c, codec.AppendSubscribed(d.payload[:0], *sub.id, filter, sub.from))
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
		d.syncSubscription(s, c, *sub.id, encodeSub(filter, sub.from))
	}
}

// Subscription ids are interned: clients mostly name their subscriptions
// alike (the JavaScript client's s1, s2, …), and a copy of its own per
// subscription would cost each idle connection a 16-byte allocation for
// the bytes (for a short id, pinning the tiny allocator's whole block from
// the handshake) and 16 more for the string header subscription.id points
// at. The table only grows, and only to internedIDs ids of at most
// internedIDBytes; an id it cannot take gets a header of its own, which
// costs what the pointer saves.
const (
	internedIDs     = 4096
	internedIDBytes = 32
)

// internSubID returns a pointer to id's interned copy, or to id itself
// when the table cannot take it.
func (d *dispatcher) internSubID(id string) *string {
	if p, ok := d.subIDs[id]; ok {
		return p
	}
	p := new(string) // not &id: that would move id to the heap on every call
	if len(id) > internedIDBytes || len(d.subIDs) >= internedIDs {
		*p = id
		return p
	}
	if d.subIDs == nil {
		d.subIDs = make(map[string]*string)
	}
	*p = strings.Clone(id)
	d.subIDs[*p] = p
	return p
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
	subs := s.subList()
	d.index.Remove(subs[i].sub)
	s.setSubs(append(subs[:i], subs[i+1:]...))
	if d.sync != nil {
		d.syncSubscription(s, c, m.SubscriptionID, nil)
	}
	d.reply(c, codec.AppendUnsubscribed(d.payload[:0], m.SubscriptionID))
}
