package loadtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strconv"
	"time"

	"github.com/gobwas/ws"
)

// The chaos and soak scenarios (Config.DropRate, Config.ChurnRate) keep each
// client as a session that outlives its connections. At random, connections
// are reset (SetLinger(0), Close: the server sees an RST, nothing is said)
// and resume their session after a pause; in soak, others close cleanly and
// a new session takes their place, subscribing with since = the last
// message_id processed. A client's bitset of received events belongs to the
// session, so an event counts as lost only when none of the session's
// connections received it, and a duplicate is allowed only when it is a
// replay the protocol allows: an event received before the drop at or above
// the resume point the server made of the last ack it took (or, for a
// session that never had an ack taken, any event since it began).

var (
	keyMessageID   = []byte(`"message_id":`)
	keySessionID   = []byte(`"session_id":"`)
	resumedTrue    = []byte(`"resumed":true`)
	codeHistoryGap = []byte(`"HISTORY_GAP"`)
)

// Acks follow the plain rule of docs/protocol.md: each client acks the
// highest message_id it received on the current connection, every ackEvery
// events or ackInterval, whichever comes first. The server turns an ack of
// N into a resume point itself: the lowest owed event not yet written when
// the frame carrying N was written. Every load-test event is normal
// priority, so the events of one connection arrive in message_id order and
// that point is above N; an event that arrives below one already received
// (counted in OutOfOrder) was not written before any frame received so far,
// and lowers the resume point of their acks to it (overtaken).
const (
	ackEvery    = 50
	ackInterval = 200 * time.Millisecond
	// maxReconnectPause bounds the random pause before a dropped client
	// reconnects.
	maxReconnectPause = 500 * time.Millisecond
	reconnectTries    = 5
	// ackTaken is how long after an ack was written the client takes it as
	// applied by the server. An ack written just before a reset may still
	// be unread in the old connection's event loop when the resume is
	// attached on another loop; the server then ignores it and replays
	// from the ack before: duplicates the protocol allows.
	ackTaken = time.Second
)

// sentAck is one ack the client wrote.
type sentAck struct {
	id uint64
	// floor bounds the resume point the server makes of this ack from
	// below: it replays nothing at or below floor that the client received.
	floor uint64
	conn  int // the connection it was sent on (c.reconnects then)
	at    time.Time
}

// settleAcks takes the acks written before now-ackTaken as applied: the
// newest of them sets sureFloor.
func (c *client) settleAcks(now time.Time) {
	k := 0
	for ; k < len(c.recentAcks) && now.Sub(c.recentAcks[k].at) >= ackTaken; k++ {
		c.sureFloor, c.sureConn = c.recentAcks[k].floor, c.recentAcks[k].conn
	}
	c.recentAcks = append(c.recentAcks[:0], c.recentAcks[k:]...)
}

// overtaken lowers the floors of the acks sent on this connection: event id
// arrived after a frame with a higher message_id, so it was not yet written
// when any frame received so far was, and the resume point of an ack of
// any of them is at most id.
func (c *client) overtaken(id uint64) {
	for i := range c.recentAcks {
		c.recentAcks[i].floor = min(c.recentAcks[i].floor, id-1)
	}
	if c.sureConn == c.reconnects {
		c.sureFloor = min(c.sureFloor, id-1)
	}
}

// acknowledge records event id and sends an ack when one is due. It runs on
// the reader goroutine, after connMaxID took id in.
func (c *client) acknowledge(r *runner, id uint64, nowNS int64) {
	c.maxID = max(c.maxID, id)
	c.sinceAck++
	if c.connMaxID <= c.connAcked {
		return
	}
	now := time.Unix(0, nowNS)
	if c.sinceAck < ackEvery && now.Sub(c.ackedAt) < ackInterval {
		return
	}
	c.ack(r, now)
}

// ack acknowledges the highest message_id received on this connection. A
// session that has no ack taken replays everything it is owed since it
// began, so nothing is acked before the first event.
func (c *client) ack(r *runner, now time.Time) {
	id := c.connMaxID
	msg := append(c.ackBuf[:0], `{"type":"ack","message_id":`...)
	msg = append(strconv.AppendUint(msg, id, 10), '}')
	c.ackBuf = msg
	// mu orders the ack with a kill: it is written whole before the reset
	// or not at all (and then not recorded).
	c.mu.Lock()
	err := c.write(ws.OpText, msg)
	c.mu.Unlock()
	if err == nil {
		c.connAcked, c.ackedAt, c.sinceAck = id, now, 0
		c.settleAcks(now)
		c.recentAcks = append(c.recentAcks, sentAck{id: id, floor: id, conn: c.reconnects, at: now})
		r.acks.Add(1)
	}
}

// kill ends the client's connection for the chaos controller: a TCP reset,
// or (clean) a close frame and an orderly close. It reports whether there
// was a connection to end.
func (c *client) kill(clean bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended || c.conn == nil || c.killed.Load() {
		return false
	}
	c.killed.Store(true)
	c.clean = clean
	c.killedAt = time.Now()
	if clean {
		_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		// Not c.write: its buffer is the reader goroutine's.
		_ = ws.WriteFrame(c.conn, ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "churn"))))
	} else if tc, ok := c.conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.conn.Close()
	return true
}

// end closes the client for good at the end of the run.
func (c *client) end() {
	c.mu.Lock()
	c.ended = true
	if c.conn != nil {
		_ = c.conn.Close()
	}
	c.mu.Unlock()
}

// session reads the client's connection and, each time the chaos
// controller ends it, reconnects after a random pause: with the session id
// after a reset (resume), as a new session after a clean close (churn).
func (c *client) session(ctx context.Context, r *runner, d *ws.Dialer) {
	c.sureConn = -1 // no ack taken: the session replays from its start
	for {
		c.readLoop(r)
		if !c.killed.Load() || r.closing.Load() || ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		clean, killedAt := c.clean, c.killedAt
		c.mu.Unlock()
		sleepCtx(ctx, rand.N(maxReconnectPause))
		c.reconnects++
		c.newSession = clean
		if clean {
			// A new session: subscribe with since = what was processed.
			c.sessionID = "-"
			c.replayFloor = c.maxID
		} else {
			c.settleAcks(killedAt)
			c.replayFloor = c.sureFloor
		}
		c.replayTop = c.maxID
		url := r.urls[c.id%len(r.urls)]
		if !clean {
			url += "?session_id=" + c.sessionID
		}
		old := c.sessionID
		var err error
		for try := 0; try < reconnectTries && !r.closing.Load() && ctx.Err() == nil; try++ {
			if err = c.connect(ctx, d, url, r.cfg.HandshakeTimeout); err == nil {
				break
			}
			sleepCtx(ctx, time.Duration(try+1)*100*time.Millisecond)
		}
		if err != nil {
			if !r.closing.Load() {
				c.closeNote = "reconnect: " + err.Error()
				r.dropped.Add(1)
				r.reconnectFailures.Add(1)
			}
			return
		}
		// A resumed session keeps the resume point of the last ack the
		// server took; a new session (subscribed with since = maxID) has
		// none and replays from its since.
		switch {
		case clean:
			r.churned.Add(1)
			c.sureFloor, c.sureConn = c.maxID, -1
		case c.sessionID == old:
			r.resumed.Add(1)
		default:
			// The session was gone: connect subscribed again with since.
			r.notResumed.Add(1)
			c.replayFloor, c.sureFloor, c.sureConn = c.maxID, c.maxID, -1
		}
		c.ackedAt = time.Time{}
	}
}

// chaos ends connections at random until stop: DropRate of the clients
// per second with a TCP reset, ChurnRate with a clean close.
func (r *runner) chaos(stop <-chan struct{}) {
	const tick = 100 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	n := len(r.clients)
	var dropAcc, churnAcc float64
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		dropAcc += r.cfg.DropRate * float64(n) * tick.Seconds()
		churnAcc += r.cfg.ChurnRate * float64(n) * tick.Seconds()
		for ; dropAcc >= 1; dropAcc-- {
			if c := r.clients[rand.N(n)]; c != nil && c.kill(false) {
				r.resets.Add(1)
			}
		}
		for ; churnAcc >= 1; churnAcc-- {
			if c := r.clients[rand.N(n)]; c != nil && c.kill(true) {
				r.closes.Add(1)
			}
		}
	}
}

// sampleMemory reads the server's memory every ProgressInterval until stop,
// for the soak's flatness verdict.
func (r *runner) sampleMemory(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(r.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.addMemSample("soak", r.readMemory(ctx))
	}
}

// ChaosStats are the chaos and soak scenarios' figures.
type ChaosStats struct {
	DropRate  float64 `json:"drop_per_sec_fraction"`
	ChurnRate float64 `json:"churn_per_sec_fraction"`
	// Resets are connections ended with a TCP reset; Closes with a clean close.
	Resets int64 `json:"resets"`
	Closes int64 `json:"clean_closes"`
	// Resumed reconnects got welcome{"resumed":true}; NotResumed got a
	// new session and subscribed again with since; Churned are the new
	// sessions opened after a clean close.
	Resumed           int64 `json:"resumed"`
	NotResumed        int64 `json:"not_resumed"`
	Churned           int64 `json:"churned_new_sessions"`
	ReconnectFailures int64 `json:"reconnect_failures"`
	HistoryGaps       int64 `json:"history_gap_errors"`
	Acks              int64 `json:"acks_sent"`
	// ReplayDuplicates are events received again after a reconnect that
	// had been received at or above the resume point of the last ack the
	// server took: allowed (at-least-once).
	// Illegal duplicates are Deliveries.Duplicates.
	ReplayDuplicates int64 `json:"replay_duplicates_allowed"`
	// OutOfOrder counts events that arrived on a connection after one with
	// a higher message_id: the order acks rely on was broken.
	OutOfOrder int64 `json:"out_of_order"`

	// Memory is the soak's flatness verdict (nil when not judged).
	Memory *Flatness `json:"memory,omitempty"`
}

// Flatness compares the server's memory in the last quarter of the
// publishing window with the second quarter (medians of the samples): it
// is flat when neither RSS nor Go heap grew by more than FlatGrowth plus
// FlatSlack.
type Flatness struct {
	Samples     int     `json:"samples"`
	RSSQ2       int64   `json:"rss_q2_bytes"`
	RSSQ4       int64   `json:"rss_q4_bytes"`
	HeapQ2      int64   `json:"heap_q2_bytes"`
	HeapQ4      int64   `json:"heap_q4_bytes"`
	RSSGrowth   float64 `json:"rss_growth"`
	HeapGrowth  float64 `json:"heap_growth"`
	Flat        bool    `json:"flat"`
	Explanation string  `json:"explanation"`
}

// The flatness threshold: growth below FlatGrowth (relative) plus
// FlatSlack bytes (absolute, for allocator and GC noise on a small heap).
const (
	FlatGrowth = 0.15
	FlatSlack  = 4 << 20
)

// flatness judges the memory samples taken between from and to (seconds
// since the start of the run).
func flatness(samples []MemSample, from, to float64) *Flatness {
	q := (to - from) / 4
	var rss2, rss4, heap2, heap4 []int64
	n := 0
	for _, s := range samples {
		if s.Phase != "soak" || s.T < from || s.T > to {
			continue
		}
		n++
		switch {
		case s.T >= from+q && s.T < from+2*q:
			rss2, heap2 = append(rss2, s.RSS), append(heap2, s.Heap)
		case s.T >= from+3*q:
			rss4, heap4 = append(rss4, s.RSS), append(heap4, s.Heap)
		}
	}
	f := &Flatness{Samples: n}
	if len(rss2) == 0 || len(rss4) == 0 {
		f.Explanation = "too few memory samples to judge"
		return f
	}
	f.RSSQ2, f.RSSQ4, f.HeapQ2, f.HeapQ4 = median(rss2), median(rss4), median(heap2), median(heap4)
	grew := func(a, b int64) (float64, bool) {
		if a <= 0 {
			return 0, true
		}
		return float64(b-a) / float64(a), float64(b) <= float64(a)*(1+FlatGrowth)+FlatSlack
	}
	var okR, okH bool
	f.RSSGrowth, okR = grew(f.RSSQ2, f.RSSQ4)
	f.HeapGrowth, okH = grew(f.HeapQ2, f.HeapQ4)
	f.Flat = okR && okH
	f.Explanation = fmt.Sprintf("last quarter vs second quarter (medians): RSS %s → %s (%+.1f%%), heap %s → %s (%+.1f%%); flat means < %.0f%% + %s growth",
		bytesText(f.RSSQ2), bytesText(f.RSSQ4), 100*f.RSSGrowth, bytesText(f.HeapQ2), bytesText(f.HeapQ4), 100*f.HeapGrowth,
		100*FlatGrowth, bytesText(FlatSlack))
	return f
}

func median(v []int64) int64 {
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	return v[len(v)/2]
}
