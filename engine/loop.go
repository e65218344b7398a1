package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/internal/uring"
)

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

	// waitingCount is len(waiting), for the housekeeper's retry tick.
	waitingCount atomic.Int32

	// Owned by the loop goroutine.
	conns   connList
	waiting []*conn // connections to look at again on the retry tick (see wait)
	latency *latencyShard
	spare   []*conn
	taken   []*outFrame
	work    []flushWork
	slow    []*conn
	resumed []*conn
	lows    []uint64
	iov     [][]byte
	ring    *uring.Ring // --io-uring: a flush's single frames in one io_uring_enter (batchwrite.go)
	picked  []int       // l.work indexes written through ring
	scratch []byte
	echoBuf []byte // echo frames, apart from scratch, which may hold the message
	// Replies gathered while readInbound runs for replyTo (conn.write).
	replyTo     *conn
	replies     []byte
	pong        []byte // the payload of the last ping read, to answer
	pongPending bool
	flushFn     gnet.Runnable
	retryFn     gnet.Runnable
	upgrader    ws.Upgrader
	hs          handshake
}

func newLoop(eng *Engine, el gnet.EventLoop) *loop {
	l := &loop{eng: eng, el: el, latency: eng.metrics.latency.shard()}
	l.flushFn = gnet.RunnableFunc(func(context.Context) error { l.flush(false); return nil })
	l.retryFn = gnet.RunnableFunc(func(context.Context) error { l.retry(); return nil })
	l.initUpgrader()
	l.openRing()
	return l
}

// wait puts c on the list the retry tick looks at: a connection whose
// socket does not drain, whose input waits, or that lingers before closing.
// A connection that closes meanwhile is dropped from the list by the tick.
func (l *loop) wait(c *conn) {
	if !c.waiting && !c.closed {
		c.waiting = true
		l.waiting = append(l.waiting, c)
		l.waitingCount.Store(int32(len(l.waiting)))
	}
}

// retry runs on the loop every retryInterval while connections wait: gnet
// does not say when a socket drained, so the loop looks. Each waiting
// connection's backlog is flushed again, its paused input read again, its
// lingering close completed.
func (l *loop) retry() {
	list := l.waiting
	l.waiting = nil
	mono := l.eng.clock()
	l.mu.Lock()
	for _, c := range list {
		c.waiting = false
		if !c.dirty && len(c.queue) > 0 {
			c.dirty = true
			l.dirty = append(l.dirty, c)
		}
	}
	l.mu.Unlock()
	for _, c := range list {
		switch {
		case c.closed:
		case c.lingerUntil() != 0:
			if c.gc.OutboundBuffered() == 0 || mono > c.lingerUntil() {
				_ = c.gc.Close()
			} else {
				l.wait(c)
			}
		case c.readPaused:
			c.readInbound()
		}
	}
	clear(list)
	l.waitingCount.Store(int32(len(l.waiting)))
	l.flush(false)
}

// release stops queueing for c (it closed, or its session moved to another
// connection) and returns what its acks prove: the resume point and the
// highest message_id written to it.
func (l *loop) release(c *conn) (point, maxWritten uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c.gone = true
	clear(c.queue)
	c.queue, c.queuedBytes = nil, 0
	return c.acks.point, c.acks.maxWritten
}

// pendingOf returns what waits for c: the frames in its queue, and their
// bytes plus gnet's outbound buffer as of the last flush.
func (l *loop) pendingOf(c *conn) (frames, bytes int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(c.queue), c.queuedBytes + int(c.outbound)
}

// closeAsync closes c from any goroutine, telling the client why after
// whatever is already buffered for it.
func (l *loop) closeAsync(c *conn, reason string) {
	_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		c.closeAfterDrain(reason, ws.StatusNormalClosure, reason)
		return nil
	}))
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
	l.mu.Lock()
	l.conns.each(func(c *conn) {
		if len(c.queue) > 0 && !c.dirty { // a backlog waits for the retry tick
			c.dirty = true
			l.dirty = append(l.dirty, c)
		}
	})
	l.mu.Unlock()
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
