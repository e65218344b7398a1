package engine

import (
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/codec"
)

type connState uint8

const (
	stateHandshake connState = iota // waiting for the HTTP upgrade request
	stateOpen                       // WebSocket frames flow
	stateClosing                    // close frame sent; reading stops
)

// conn is flarecast's state for one TCP connection, kept as the gnet
// connection's context. It holds no buffer while the connection is idle:
// reads use gnet's per-loop buffer, and queued frames are shared pointers.
type conn struct {
	gc   gnet.Conn
	loop *loop

	// The flags come first and together: an idle connection costs its
	// struct's size class (176 bytes), and padding between scattered
	// bools would cost a class more. What few connections need is apart,
	// in rare.

	// Owned by the loop goroutine.
	state       connState
	closed      bool  // OnClose ran: gc and its buffers must not be touched
	upgraded    bool  // the WebSocket handshake succeeded: a session is attached
	welcomed    bool  // the welcome was written: client frames may be processed
	echo        bool  // on the echo path (--echo-path): data messages are sent back
	draining    bool  // shutting down: close once the goodbye reached the kernel
	deflate     bool  // permessage-deflate negotiated
	readPaused  bool  // input waits (see readInbound); the loop looks again on its retry tick
	waiting     bool  // in loop.waiting
	limited     bool  // holds a slot in eng.limits (limits.go)
	rateStrikes uint8 // messages over the rate limit since the bucket was last half full

	// Guarded by loop.mu.
	backlog   bool // the last flush left frames queued: the socket is not draining
	dirty     bool // in loop.dirty
	slow      bool // over the pending bounds: to be closed
	gone      bool // closed or taken over: nothing more is queued
	replaying bool // the session's replay pump waits for this queue to drain

	// Shared: subscribe and unsubscribe commands the dispatcher has not
	// applied yet (maxCommandsInFlight).
	inflight atomic.Int32

	// Guarded by loop.mu: gnet's outbound buffer after the last flush (the
	// dispatcher cannot ask gnet). An int32, in what would be padding: a
	// flush stops adding to that buffer once it holds highWater bytes, so
	// only a forced flush at shutdown could pass 2 GiB; it saturates.
	outbound int32

	// Owned by the loop goroutine.
	openedAt   int64        // engine clock (monotonic ns) at accept
	lastSeen   int64        // engine clock at the last frame from the client
	prev, next *conn        // loop.conns
	inputTAT   int64        // input rate bucket (GCRA, allowInput): ns after openedAt
	auth       *auth.Claims // the token's claims; nil without --auth jwt
	rare       *connRare    // nil unless one of its fields is set

	// Guarded by loop.mu: the queue the dispatcher fills and flush drains.
	queue       []*outFrame // in the order queued: message_id order, but for backfills
	queuedBytes int         // the bytes this connection writes for the frames in queue
	acks        ackLedger   // the resume point this connection's acks prove

	// Owned by the dispatcher goroutine.
	sess *session
}

// connRare is the state few connections need, kept apart so that the
// others do not pay for it: 32 bytes where a connection has any of it,
// instead of 32 more in every connection's struct (two size classes more).
// Owned by the loop goroutine.
type connRare struct {
	frag        *fragment  // a fragmented data message being reassembled; nil when none
	peer        *peerCount // this connection's client address count (--max-connections-per-ip); nil when not counted
	lingerUntil int64      // closing after a takeover: close at this engine clock at the latest; 0 if not
	rateTAT     int64      // --rate-limit's bucket (GCRA, allowMessage): ns after openedAt
}

// more returns c's rare state, making it if c has none.
func (c *conn) more() *connRare {
	if c.rare == nil {
		c.rare = &connRare{}
	}
	return c.rare
}

// fragment returns the fragmented message c is reassembling, or nil.
func (c *conn) fragment() *fragment {
	if c.rare == nil {
		return nil
	}
	return c.rare.frag
}

// setFragment sets (or, with nil, ends) the message being reassembled;
// ending it lets the rare state go when nothing else is in it.
func (c *conn) setFragment(f *fragment) {
	if f != nil {
		c.more().frag = f
		return
	}
	if r := c.rare; r != nil {
		r.frag = nil
		if *r == (connRare{}) {
			c.rare = nil
		}
	}
}

// lingerUntil is the engine clock by which c, closing after a takeover,
// closes at the latest; 0 if it is not lingering.
func (c *conn) lingerUntil() int64 {
	if c.rare == nil {
		return 0
	}
	return c.rare.lingerUntil
}

// fragment is a data message arriving in several frames: the only time a
// connection holds a buffer of its own.
type fragment struct {
	data     []byte
	op       ws.OpCode
	deflated bool
}

// handler adapts gnet's callbacks to the engine.
type handler struct {
	gnet.BuiltinEventEngine
	eng *Engine
}

func (h *handler) OnBoot(e gnet.Engine) gnet.Action {
	h.eng.booted(e)
	return gnet.None
}

func (h *handler) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	l := h.eng.loopFor(gc.EventLoop())
	now := h.eng.clock()
	c := &conn{gc: gc, loop: l, openedAt: now, lastSeen: now}
	gc.SetContext(c)
	l.conns.add(c)
	h.eng.churn.Add(1)
	return nil, gnet.None
}

func (h *handler) OnClose(gc gnet.Conn, err error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	l := c.loop
	l.conns.remove(c)
	h.eng.churn.Add(1)
	// gnet gives the connection's buffers back to its pools after this
	// callback: nothing may read or write them from now on.
	c.closed = true
	c.setFragment(nil)
	l.release(c)
	c.releaseSlot()
	if !c.upgraded {
		return gnet.None
	}
	m := h.eng.metrics
	if c.state == stateOpen {
		m.closed("connection_lost")
	}
	m.activeConnections.Add(-1)
	m.sessionDuration.Update(float64(h.eng.clock()-c.openedAt) / 1e9)
	if !c.echo {
		h.eng.disp.cmds.push(command{kind: cmdDetach, c: c, now: time.Now()})
	}
	return gnet.None
}

func (h *handler) OnTraffic(gc gnet.Conn) gnet.Action {
	gc.Context().(*conn).readInbound()
	return gnet.None
}

func (c *conn) eng() *Engine { return c.loop.eng }

// write writes one frame the loop produced itself (a pong, an error reply,
// an echo, a goodbye); gnet copies what the socket does not take. Such
// frames answer the client's input, whose reading pauses while the
// connection's outbound buffer is above the high-water mark, so they
// cannot pile up (see readInbound). While readInbound runs for c, frames
// are gathered and written once when it is done.
func (c *conn) write(frame []byte) {
	if c.closed {
		return
	}
	if l := c.loop; l.replyTo == c {
		l.replies = append(l.replies, frame...)
	} else {
		_, _ = c.gc.Write(frame)
	}
	c.eng().metrics.messagesSent.Inc()
}

// sendError writes a protocol error message now, ahead of queued events.
func (c *conn) sendError(code, message string) {
	c.eng().metrics.errorSent(code)
	l := c.loop
	payload := codec.AppendError(nil, code, message)
	c.write(codec.AppendFrame(l.scratch[:0], codec.OpText, payload))
}

// fail answers a protocol violation with a close frame carrying code and closes.
func (c *conn) fail(code ws.StatusCode, reason string) {
	c.eng().metrics.closed("protocol_error")
	c.write(codec.AppendClose(c.loop.scratch[:0], code, reason))
	c.state = stateClosing
	_ = c.gc.Close()
}

// closeWith tells the client why in a closing message, then closes with code.
func (c *conn) closeWith(reason string, code ws.StatusCode, closeReason string) {
	if c.goodbye(reason, code, closeReason) {
		_ = c.gc.Close()
	}
}

// closeSlow closes a connection that does not read what it is sent.
func (c *conn) closeSlow() {
	if c.state == stateOpen && !c.closed {
		c.eng().metrics.slowConsumers.Inc()
	}
	c.closeWith(codec.ReasonSlowConsumer, ws.StatusGoingAway, "slow consumer")
}

// closeAfterDrain says goodbye after everything already buffered for the
// client (so its stream never ends mid-frame), and closes once that has
// reached the kernel, or after lingerTimeout.
func (c *conn) closeAfterDrain(reason string, code ws.StatusCode, closeReason string) {
	if !c.goodbye(reason, code, closeReason) {
		return
	}
	if c.gc.OutboundBuffered() == 0 {
		_ = c.gc.Close()
		return
	}
	c.more().lingerUntil = c.eng().clock() + int64(lingerTimeout)
	c.loop.wait(c)
}

// goodbye writes the closing message and a close frame, and stops reading;
// it reports whether it did (the connection was open).
func (c *conn) goodbye(reason string, code ws.StatusCode, closeReason string) bool {
	if c.closed || c.state != stateOpen {
		return false
	}
	c.eng().metrics.closed(reason)
	c.write(codec.TextFrame(codec.AppendClosing(c.loop.scratch[:0], reason)))
	c.write(codec.AppendClose(c.loop.scratch[:0], code, closeReason))
	c.state = stateClosing
	return true
}
