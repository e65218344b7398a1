package engine

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/bytedance/sonic"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/broker"
	"github.com/flarecast/flarecast/filterindex"
)

// In a fleet a session resumes on any instance: what it needs (who may
// resume it, its subscriptions, its acked position) is mirrored into the
// broker's session store, and a resume goes through the store, which names
// the instance holding the session and hands it over.
//
// The mirror is written cheaply: subscription changes and detaches are
// queued by the dispatcher and written in one pipelined round trip every
// syncInterval; acks are not written as they come but read off the
// attached connections' ledgers once a second (syncSessions), so a session
// costs Redis nothing per delivered event. What the store lags behind by
// (under a second of acks) is replayed again after a move, never lost: a
// resume starts at the stored resume point, at or below the true one.

const (
	// syncInterval: how often queued session writes reach Redis.
	syncInterval = 200 * time.Millisecond
	// ackSyncInterval: how often the acked positions of attached sessions
	// are read and queued when they moved.
	ackSyncInterval = time.Second
	// claimTimeout bounds the wait of a resuming connection for the store:
	// past it the instance resumes from what it holds itself, if anything.
	claimTimeout = 2 * time.Second
)

// sessionSync is an engine's link to the fleet's session store.
type sessionSync struct {
	store *broker.Sessions
	self  string        // this instance's id: the owner of the sessions it holds
	ttl   time.Duration // the session timeout
	log   *slog.Logger

	mu      sync.Mutex
	pending map[string]*broker.SessionWrite // guarded by mu
	claims  mailbox[claimRequest]           // resumes waiting for the store

	failures func() // counts a failed write (metrics)
}

func newSessionSync(store *broker.Sessions, ttl time.Duration, log *slog.Logger, failures func()) *sessionSync {
	y := &sessionSync{
		store:    store,
		self:     newSessionID().String(),
		ttl:      ttl,
		log:      log,
		pending:  make(map[string]*broker.SessionWrite),
		failures: failures,
	}
	y.claims.signal = make(chan struct{}, 1)
	return y
}

// queue merges a change to session id into the writes not sent yet. subID
// names a subscription added or replaced (enc) or removed (enc nil); ""
// when none changed.
func (y *sessionSync) queue(id string, resume, sent uint64, holder []byte, subID string, enc []byte) {
	y.mu.Lock()
	defer y.mu.Unlock()
	w := y.pending[id]
	if w == nil {
		w = &broker.SessionWrite{ID: id}
		y.pending[id] = w
	}
	w.Resume, w.Sent = resume, sent
	if holder != nil {
		w.Holder = holder
	}
	if subID != "" {
		if w.Subs == nil {
			w.Subs = make(map[string][]byte)
		}
		w.Subs[subID] = enc
	}
}

// run writes the queued changes every syncInterval, sends resumes' claims
// (answer) and relays claims made by other instances (claimed), until ctx
// ends.
func (y *sessionSync) run(ctx context.Context, answer func(*claimRequest), claimed func(id string)) {
	go y.store.Claims(ctx, y.self, claimed)
	go y.claimer(ctx, answer)
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			y.flush(ctx)
		}
	}
}

// flush writes the queued changes. Writes that fail are queued again
// under any newer change to the same session, so a Redis outage delays
// the mirror instead of losing subscriptions from it.
func (y *sessionSync) flush(ctx context.Context) {
	y.mu.Lock()
	if len(y.pending) == 0 {
		y.mu.Unlock()
		return
	}
	batch := make([]broker.SessionWrite, 0, len(y.pending))
	for _, w := range y.pending {
		batch = append(batch, *w)
	}
	clear(y.pending)
	y.mu.Unlock()

	wctx, cancel := context.WithTimeout(ctx, claimTimeout)
	err := y.store.Save(wctx, y.self, y.ttl, batch)
	cancel()
	if err == nil {
		return
	}
	y.failures()
	y.log.Warn("writing sessions to the fleet's store failed; retrying", "sessions", len(batch), "err", err)
	y.mu.Lock()
	defer y.mu.Unlock()
	for i := range batch {
		old := &batch[i]
		w := y.pending[old.ID]
		if w == nil {
			y.pending[old.ID] = old
			continue
		}
		if w.Holder == nil {
			w.Holder = old.Holder
		}
		for id, enc := range old.Subs {
			if _, newer := w.Subs[id]; !newer {
				if w.Subs == nil {
					w.Subs = make(map[string][]byte)
				}
				w.Subs[id] = enc
			}
		}
	}
}

// storedHolder is the session holder as stored: the token's subject and
// scope. Its encoding is deterministic (a normalized scope, fields in
// declaration order), so the store compares holders byte for byte.
type storedHolder struct {
	Subject string              `json:"sub,omitempty"`
	Scope   *filterindex.Filter `json:"scope,omitempty"`
}

func encodeHolder(c *auth.Claims) []byte {
	h := storedHolder{}
	if c != nil {
		h.Subject, h.Scope = c.Subject, c.Scope
		if h.Subject == "" {
			// Tell "authenticated with no subject" from "no token".
			h.Subject = "\x00"
		}
	}
	b, _ := sonic.Marshal(&h) // a string and a filter of strings always encode
	return b
}

// storedSub is one subscription as stored.
type storedSub struct {
	Filter filterindex.Filter `json:"f"`
	From   uint64             `json:"from"`
}

func encodeSub(f *filterindex.Filter, from uint64) []byte {
	b, _ := sonic.Marshal(&storedSub{Filter: *f, From: from})
	return b
}

// The dispatcher's side. Everything below runs on the dispatcher goroutine.

// storedSession is what the store was last told of a session: its resume
// point, and when (unix ns). A pointer in session, so that only sessions of
// a fleet pay for it.
type storedSession struct {
	point uint64
	at    int64
}

// syncSession queues session s's state, with a change to one subscription
// (subID, enc) or none (subID "").
func (d *dispatcher) syncSession(s *session, point, sent uint64, subID string, enc []byte) {
	var holder []byte
	st := s.stored()
	if st == nil {
		holder = encodeHolder(s.claims())
		st = &storedSession{}
		s.more().stored = st
	}
	st.point, st.at = point, time.Now().UnixNano()
	d.sync.queue(s.id.String(), point, sent, holder, subID, enc)
}

// syncSubscription queues a change to one subscription of s, attached to c.
func (d *dispatcher) syncSubscription(s *session, c *conn, subID string, enc []byte) {
	c.loop.mu.Lock()
	point, written := c.acks.point, c.acks.maxWritten // written: at least what earlier connections were (bind)
	c.loop.mu.Unlock()
	d.syncSession(s, point, written, subID, enc)
}

// syncAcks queues the acked positions of attached sessions that moved since
// they were last stored, and refreshes the expiry of the others well before
// the session timeout (an attached session must outlive its instance by
// the timeout).
func (d *dispatcher) syncAcks(now time.Time) {
	refreshBefore := now.UnixNano() - int64(d.sync.ttl/3)
	for _, s := range d.slots {
		if s == nil {
			continue
		}
		c := s.conn
		st := s.stored()
		if c == nil || st == nil {
			continue
		}
		c.loop.mu.Lock()
		point, written := c.acks.point, c.acks.maxWritten
		c.loop.mu.Unlock()
		if point != st.point || st.at < refreshBefore {
			d.syncSession(s, point, written, "", nil)
		}
	}
}

// claimFor asks the store for session id on behalf of connection c; the
// answer comes back as a cmdRestore. The connection's input waits for its
// welcome meanwhile.
func (d *dispatcher) claimFor(c *conn, id sessionID, claims *auth.Claims, now time.Time) {
	d.claiming[c] = struct{}{}
	d.sync.claimLater(claimRequest{c: c, id: id, claims: claims, now: now, Claim: broker.Claim{ID: id.String(), Holder: encodeHolder(claims)}})
}

// claimRequest is a resume waiting for the store.
type claimRequest struct {
	broker.Claim
	id     sessionID // Claim.ID, parsed
	c      *conn
	claims *auth.Claims
	now    time.Time
}

func (y *sessionSync) claimLater(r claimRequest) { y.claims.push(r) }

// claimer sends the waiting claims to the store, all at once, and hands
// each answer to the dispatcher (answer), until ctx ends.
func (y *sessionSync) claimer(ctx context.Context, answer func(*claimRequest)) {
	var batch []broker.Claim
	for {
		select {
		case <-ctx.Done():
			return
		case <-y.claims.signal:
		}
		// Not reused: the dispatcher keeps pointers into it (answer).
		reqs := y.claims.take(nil)
		batch = batch[:0]
		for i := range reqs {
			batch = append(batch, reqs[i].Claim)
		}
		cctx, cancel := context.WithTimeout(ctx, claimTimeout)
		y.store.ClaimAll(cctx, y.self, y.ttl, batch)
		cancel()
		for i := range reqs {
			reqs[i].Claim = batch[i]
			answer(&reqs[i])
		}
	}
}

// restore attaches a resuming connection once the store answered the
// claim of its session.
func (d *dispatcher) restore(r *claimRequest) {
	c, id := r.c, r.id
	if _, waiting := d.claiming[c]; !waiting {
		return // c went away meanwhile; the session stays in the store
	}
	delete(d.claiming, c)
	local := d.session(id)
	rec, err := r.Record, r.Err
	switch {
	case errors.Is(err, broker.ErrSessionHolder):
		d.refuse(c, r.ID, r.claims)
		return
	case errors.Is(err, broker.ErrNoSession):
		// Never stored (no subscription yet) or expired: only this
		// instance can hold it.
		d.attachLocal(c, local, r.ID, r.claims, r.now)
		return
	case err != nil:
		// The store is away: resume from what this instance holds, if
		// anything. Better than refusing while Redis fails over.
		d.eng.metrics.sessionStoreFailures.Inc()
		d.eng.log.Warn("session store unreachable; resuming from this instance's copy", "err", err)
		d.attachLocal(c, local, r.ID, r.claims, r.now)
		return
	case rec.Owner == d.sync.self && local != nil:
		// Held here: the local copy is the freshest there is.
		d.attachLocal(c, local, r.ID, r.claims, r.now)
		return
	}
	// Held by another instance (alive or not): this copy, if any, is stale.
	if local != nil {
		d.release(local)
	}
	if rec.Owner != d.sync.self {
		d.eng.metrics.sessionsMoved.Inc()
	}
	s := d.newSessionNamed(id)
	s.setClaims(r.claims)
	// What the old connection was sent is known only up to the last sync:
	// acks up to anything the fleet may have sent it are treated as stale.
	s.parked = &parked{resumePoint: rec.Resume, highestSent: max(rec.Sent, d.lastID, d.eng.broker.Newest())}
	s.more().stored = &storedSession{point: rec.Resume, at: time.Now().UnixNano()}
	for subID, enc := range rec.Subs {
		var st storedSub
		if err := sonic.Unmarshal(enc, &st); err != nil {
			d.eng.log.Error("skipping an unreadable stored subscription", "session", id, "subscription", subID, "err", err)
			continue
		}
		st.Filter.Normalize()
		if s.nsubs == maxSessionSubs {
			d.eng.log.Error("skipping stored subscriptions past what a session holds", "session", id, "max", maxSessionSubs)
			break
		}
		s.setSubs(append(s.subList(), subscription{id: d.internSubID(subID), from: st.From, sub: d.index.Add(s.slot, &st.Filter)}))
	}
	d.resume(s, c, r.now)
}

// released lets go of session id, claimed by another instance: its
// connection here, if any, is closed as taken over.
func (d *dispatcher) released(hexID string) {
	if id, ok := parseSessionID(hexID); !ok {
		return
	} else if s := d.session(id); s != nil {
		d.release(s)
	}
}

func (d *dispatcher) release(s *session) {
	d.takeOver(s)
	d.drop(s)
}
