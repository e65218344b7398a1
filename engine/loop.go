package engine

import (
	"bytes"
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/panjf2000/gnet/v2"

	"github.com/flarecast/flarecast/codec"
)

// highWater is how many bytes may sit in gnet's outbound buffer for one
// connection before its frames stay in its own queue instead (as shared
// references, not copies). The kernel's socket buffer is full by then; more
// copying would only grow memory for a client that is not reading.
const highWater = 64 << 10

// maxIovecs bounds one writev: the kernel refuses more than IOV_MAX (1024).
const maxIovecs = 512

// loop is flarecast's state for one gnet event loop.
//
// Ownership: fields under mu are shared with the dispatcher (it queues
// frames; the loop writes them). Everything else belongs to the loop's own
// goroutine and is touched only inside gnet callbacks and runnables
// executed on this loop.
type loop struct {
	eng *Engine
	el  gnet.EventLoop

	mu        sync.Mutex
	dirty     []*conn // connections with queued frames
	scheduled bool    // a flush is queued on the loop

	// Owned by the dispatcher goroutine.
	deliveries []delivery

	// Owned by the loop goroutine.
	conns    connList
	spare    []*conn
	taken    []*outFrame
	takenBy  []takenRange
	iov      [][]byte
	scratch  []byte
	echoBuf  []byte // echo frames, apart from scratch, which may hold the message
	flushFn  gnet.Runnable
	upgrader ws.Upgrader
	hs       handshake
}

type takenRange struct {
	c          *conn
	start, end int
}

func newLoop(eng *Engine, el gnet.EventLoop) *loop {
	l := &loop{eng: eng, el: el}
	l.flushFn = gnet.RunnableFunc(func(context.Context) error { l.flush(false); return nil })
	l.initUpgrader()
	return l
}

// enqueue is called by the dispatcher: it appends frames to connection
// queues under the loop's lock and schedules one flush.
func (l *loop) enqueue(ds []delivery, maxPending int) {
	l.mu.Lock()
	for _, d := range ds {
		c := d.c
		if c.gone || c.slow {
			c.noteLost(d.f)
			continue
		}
		if len(c.queue) >= maxPending {
			c.slow = true // the flush closes it
			c.noteLost(d.f)
		} else {
			c.queue = queueInsert(c.queue, d.f)
		}
		if !c.dirty {
			c.dirty = true
			l.dirty = append(l.dirty, c)
		}
	}
	l.scheduleLocked()
	l.mu.Unlock()
}

// noteLost records that f, queued for c, will never be written. Guarded by loop.mu.
func (c *conn) noteLost(f *outFrame) {
	if f.id != 0 && (c.lost == 0 || f.id < c.lost) {
		c.lost = f.id
	}
}

// noteUnflushed records, after frames were written, the lowest event id
// among those gnet still holds in its outbound buffer (the last bytes
// written): if the connection closes before they reach the kernel, they
// are lost, and a client that never acks must get them again on resume.
func (c *conn) noteUnflushed(frames []*outFrame) {
	pending := c.gc.OutboundBuffered()
	for i := len(frames) - 1; i >= 0 && pending > 0; i-- {
		f := frames[i]
		pending -= len(f.bytesFor(c.deflate))
		if f.id != 0 && (c.unflushed == 0 || f.id < c.unflushed) {
			c.unflushed = f.id
		}
	}
}

// release stops queueing for c (it closed, or its session moved to another
// connection) and returns the lowest message_id queued for it that was
// never handed to its socket, or 0.
func (l *loop) release(c *conn) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	c.gone = true
	for _, f := range c.queue {
		c.noteLost(f)
	}
	c.queue = nil
	return c.lost
}

// pendingOf returns how many frames wait in c's queue.
func (l *loop) pendingOf(c *conn) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(c.queue)
}

// queueInsert puts f after every queued frame of its lane or a more urgent
// one: critical and high events overtake normal ones still waiting, and
// each lane keeps message_id order. A normal frame (nearly all of them) is
// a plain append; only an urgent one behind a backlog walks back over it.
func queueInsert(q []*outFrame, f *outFrame) []*outFrame {
	i := len(q)
	for i > 0 && q[i-1].lane > f.lane {
		i--
	}
	q = append(q, nil)
	copy(q[i+1:], q[i:])
	q[i] = f
	return q
}

// closeAsync closes c from any goroutine, telling the client why.
func (l *loop) closeAsync(c *conn, reason string) {
	_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		c.closeWith(reason, ws.StatusNormalClosure, reason)
		return nil
	}))
}

// scheduleLocked queues one flush on the loop unless one is queued already.
func (l *loop) scheduleLocked() {
	if l.scheduled || len(l.dirty) == 0 {
		return
	}
	l.scheduled = true
	if err := l.el.Execute(context.Background(), l.flushFn); err != nil {
		l.scheduled = false // the engine is shutting down
	}
}

// retry schedules a flush for connections that were over the high-water
// mark at the last one; the housekeeper calls it periodically.
func (l *loop) retry() {
	l.mu.Lock()
	l.scheduleLocked()
	l.mu.Unlock()
}

// flush runs on the loop: it takes every dirty connection's queued frames
// under the lock, then writes each connection's frames with one writev
// outside it. force writes even to connections over the high-water mark
// (at shutdown, when nothing else will).
func (l *loop) flush(force bool) {
	m := l.eng.metrics
	l.mu.Lock()
	l.scheduled = false
	dirty := l.dirty
	l.dirty = l.spare[:0]
	var slow []*conn
	wake := false
	for _, c := range dirty {
		switch {
		case c.gone:
			c.dirty = false
		case c.slow:
			c.dirty = false
			slow = append(slow, c)
		case !force && c.gc.OutboundBuffered() > highWater:
			l.dirty = append(l.dirty, c) // stays dirty; retried later
		default:
			c.dirty = false
			start := len(l.taken)
			l.taken = append(l.taken, c.queue...)
			clear(c.queue)
			c.queue = shrink(c.queue)
			wake = wake || c.replaying
			l.takenBy = append(l.takenBy, takenRange{c, start, len(l.taken)})
		}
	}
	l.mu.Unlock()
	l.spare = dirty[:0]
	if wake {
		// A replaying session's queue has room again: let its pump go on.
		l.eng.disp.cmds.push(command{kind: cmdWake})
	}

	now := time.Now().UnixNano()
	var sent, events int
	for _, r := range l.takenBy {
		c := r.c
		if c.closed {
			continue
		}
		frames := l.taken[r.start:r.end]
		if c.gc.OutboundBuffered() == 0 {
			c.unflushed = 0 // everything written before is in the kernel
		}
		for len(frames) > 0 && !c.closed {
			n := min(len(frames), maxIovecs)
			l.iov = l.iov[:0]
			for _, f := range frames[:n] {
				l.iov = append(l.iov, f.bytesFor(c.deflate))
				if f.id != 0 {
					events++
					m.latency.Update(float64(now-f.accepted) / 1e9)
				}
			}
			if n == 1 {
				_, _ = c.gc.Write(l.iov[0])
			} else {
				_, _ = c.gc.Writev(l.iov)
			}
			if !c.closed {
				c.noteUnflushed(frames[:n])
			}
			sent += n
			frames = frames[n:]
		}
		if !c.welcomed && !c.closed {
			// The welcome went out first: the client's frames that
			// arrived meanwhile can be answered now.
			c.welcomed = true
			if c.gc.InboundBuffered() > 0 {
				c.readInbound()
			}
		}
	}
	clear(l.taken)
	l.taken = l.taken[:0]
	clear(l.takenBy)
	l.takenBy = l.takenBy[:0]
	clear(l.iov)
	m.messagesSent.Add(sent)
	m.eventsDelivered.Add(events)

	for _, c := range slow {
		m.slowConsumers.Inc()
		c.closeWith(codec.ReasonSlowConsumer, ws.StatusGoingAway, "slow consumer")
	}
}

// shrink lets a queue that grew large during a burst go back to the GC, so
// an idle connection does not keep the capacity of its busiest moment.
func shrink(q []*outFrame) []*outFrame {
	if cap(q) > dispatchBatch { // a busy connection keeps one batch's worth
		return nil
	}
	return q[:0]
}

// connList is an intrusive doubly linked list of a loop's connections: no
// map entry and no allocation per connection.
type connList struct{ head *conn }

func (cl *connList) add(c *conn) {
	c.next = cl.head
	if cl.head != nil {
		cl.head.prev = c
	}
	cl.head = c
}

func (cl *connList) remove(c *conn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else if cl.head == c {
		cl.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
}

// each calls fn for every connection; fn may remove the connection it is given.
func (cl *connList) each(fn func(*conn)) {
	for c := cl.head; c != nil; {
		next := c.next
		fn(c)
		c = next
	}
}

// housekeep runs on the loop: heartbeat pings, idle and handshake timeouts.
func (l *loop) housekeep(now time.Time, ping bool) {
	cfg := &l.eng.cfg
	pingFrame := codec.AppendFrame(l.scratch[:0], codec.OpPing, nil)
	mono := l.eng.clock()
	l.conns.each(func(c *conn) {
		switch {
		case c.state == stateHandshake:
			if mono-c.openedAt > int64(cfg.HandshakeTimeout) {
				l.eng.metrics.handshakeRejected.Inc()
				l.eng.metrics.refuse(refuseHandshakeTime)
				_ = c.gc.Close()
			}
		case c.state != stateOpen:
		case c.auth != nil && c.auth.Expired(now):
			c.closeWith(codec.ReasonTokenExpired, ws.StatusPolicyViolation, "token expired")
		case mono-c.lastSeen > int64(cfg.SessionTimeout):
			c.closeWith(codec.ReasonSessionTimeout, ws.StatusGoingAway, "session timeout")
		case ping:
			_, _ = c.gc.Write(pingFrame)
		}
	})
}

// shutdown runs on the loop: it writes everything queued, then `closing`
// and a 1001 close frame to every client. Connections close once their
// goodbye has reached the kernel (closeDrained), so a backlog is not cut.
func (l *loop) shutdown(done func()) {
	l.flush(true)
	l.conns.each(func(c *conn) {
		if c.goodbye(codec.ReasonServerShutdown, ws.StatusGoingAway, "server shutdown") {
			c.draining = true
		} else {
			_ = c.gc.Close()
		}
	})
	done()
}

// closeDrained closes the shutting-down connections whose outbound data
// has all been handed to the kernel, or all of them when force is set.
func (l *loop) closeDrained(force bool) {
	l.conns.each(func(c *conn) {
		if c.draining && (force || c.gc.OutboundBuffered() == 0) {
			_ = c.gc.Close()
		}
	})
}

// handshake is the loop's scratch for one upgrade at a time.
type handshake struct {
	in      bytes.Reader
	out     bytes.Buffer
	path    bool // the request's path is the WebSocket endpoint
	echo    bool // the request's path is the echo endpoint (--echo-path)
	query   string
	deflate wsflate.Extension

	// Security: what admit needs of the request (security.go). Headers are
	// captured only when the configuration uses them.
	cfg       *Config
	bearer    string     // Authorization: Bearer …
	origin    string     // Origin, lowercased
	peer      netip.Addr // the TCP peer
	trustPeer bool       // the peer is a trusted proxy: believe its forwarding headers
	forwarded netip.Addr // rightmost untrusted X-Forwarded-For address
	realIP    netip.Addr // X-Real-IP
}

func (hs *handshake) Read(p []byte) (int, error)  { return hs.in.Read(p) }
func (hs *handshake) Write(p []byte) (int, error) { return hs.out.Write(p) }
