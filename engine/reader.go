package engine

import (
	"errors"
	"time"

	"github.com/gobwas/ws"

	"github.com/flarecast/flarecast/codec"
)

// inboundSlack is how much unread input a connection may hold, beyond one
// message of max-message-size, while its input waits (see inputWaits).
// gnet reads every socket as soon as it is readable, so waiting input
// cannot be left in the kernel: it is held here, and this bound is what
// keeps that memory finite. 1 MiB lets a client pipeline its whole set-up
// (a hundred subscriptions of a few hundred values) without waiting for
// replies; a client that keeps sending past it is abusive.
const inboundSlack = 1 << 20

// readInbound consumes what the client has sent: the upgrade request, then
// frames, as long as its input need not wait (inputWaits). Input that
// waits stays in gnet's inbound buffer; the loop reads it when the reason
// is gone (after a flush, or on its retry tick), and a client that keeps
// sending meanwhile is closed once that buffer passes its bound.
//
// What the loop itself answers (pongs, errors, echoes) is gathered and
// written once at the end, one syscall for a whole read's worth of
// messages; of several pings in one read only the last is answered, as RFC
// 6455 (5.5.3) allows. A ping flood costs the server little more than
// reading it.
func (c *conn) readInbound() {
	if c.closed {
		return // gnet has taken the connection's buffers back
	}
	l := c.loop
	l.replyTo = c
	c.consumeInbound()
	l.replyTo = nil
	c.sendReplies()
}

func (c *conn) consumeInbound() {
	buf, _ := c.gc.Peek(-1)
	used := 0
	if c.state == stateHandshake {
		used = c.handshake(buf)
	}
	waited := c.readPaused
	c.readPaused = false
	why := inputReady
	for c.state == stateOpen && used < len(buf) && !c.closed {
		if why = c.inputWaits(); why != inputReady {
			break
		}
		n := c.readFrame(buf[used:])
		if n < 0 {
			why = waitRate
			break
		}
		if n == 0 {
			break
		}
		used += n
	}
	if c.closed {
		return // a write failed and gnet closed the connection meanwhile
	}
	if c.state == stateClosing {
		used = len(buf) // nothing after a close frame matters
	}
	if used > 0 { // Discard(0) would drop everything buffered
		_, _ = c.gc.Discard(used)
	}
	if why == inputReady {
		return
	}
	c.readPaused = true
	m := c.eng().metrics
	if !waited {
		m.inputWaits[why].Inc()
	}
	if len(buf)-used > c.eng().cfg.MaxMessageSize+inboundSlack {
		m.refuse(refuseInputOverflow)
		switch why {
		case waitWelcome:
			// No message may precede the welcome: the close frame says why.
			m.closed(codec.ReasonPolicyViolation)
			c.write(codec.AppendClose(c.loop.scratch[:0], ws.StatusPolicyViolation, "too much input before the welcome"))
			c.state = stateClosing
			_ = c.gc.Close()
		case waitUnread:
			c.closeSlow() // it sends but does not read
		default:
			c.closeWith(codec.ReasonPolicyViolation, ws.StatusPolicyViolation, "too much input while earlier input waits")
		}
		return
	}
	c.loop.wait(c)
}

// inputWait says why a client's input waits, if it does.
type inputWait uint8

const (
	inputReady   inputWait = iota
	waitWelcome            // the welcome is not written yet: every reply follows it
	waitUnread             // the client does not read what it is sent
	waitCommands           // maxCommandsInFlight commands wait for the dispatcher
	waitRate               // over --max-input-rate
)

var inputWaitReasons = [...]string{waitWelcome: "welcome", waitUnread: "unread_output", waitCommands: "commands", waitRate: "input_rate"}

// inputWaits reports whether the client's next message must wait, and why:
// until its welcome has been written; while what it is sent is not being
// read (the outbound buffer, with the replies gathered so far, is above
// the high-water mark: replies to a client that sends but never reads
// would otherwise grow without bound); or while maxCommandsInFlight of its
// commands wait for the dispatcher. The input rate is checked per frame
// (readFrame), once its size is known.
func (c *conn) inputWaits() inputWait {
	switch {
	case !c.welcomed:
		return waitWelcome
	case c.gc.OutboundBuffered()+len(c.loop.replies) > highWater:
		return waitUnread
	case c.inflight.Load() >= maxCommandsInFlight:
		return waitCommands
	}
	return inputReady
}

// sendReplies writes what readInbound gathered (see conn.write).
func (c *conn) sendReplies() {
	l := c.loop
	if l.pongPending {
		l.pongPending = false
		l.replies = codec.AppendFrame(l.replies, codec.OpPong, l.pong)
		c.eng().metrics.messagesSent.Inc()
	}
	if len(l.replies) > 0 && !c.closed {
		_, _ = c.gc.Write(l.replies)
	}
	if cap(l.replies) > 2*highWater {
		l.replies = nil // an echo of a large message: do not keep its buffer
	} else {
		l.replies = l.replies[:0]
	}
}

// readFrame handles the frame at the start of b and returns its size, 0
// when b does not hold the whole frame yet, or -1 when the frame must wait
// for the connection's input rate.
func (c *conn) readFrame(b []byte) int {
	now := c.eng().clock()
	if !c.inputAllowed(now) {
		return -1 // before NextClientFrame, which unmasks in place
	}
	h, payload, n, err := codec.NextClientFrame(b, int64(c.eng().cfg.MaxMessageSize))
	if errors.Is(err, codec.ErrShortHeader) || errors.Is(err, codec.ErrShortFrame) {
		return 0
	}
	if err != nil { // perr escapes: declared here, it is allocated only for an error
		var perr *codec.ProtocolError
		if errors.As(err, &perr) {
			c.fail(perr.Code, perr.Reason)
			return len(b)
		}
	}
	c.chargeInput(n, now)
	c.lastSeen = now
	if h.OpCode.IsControl() {
		c.control(h.OpCode, payload)
	} else {
		c.data(h, payload)
	}
	return n
}

func (c *conn) control(op ws.OpCode, payload []byte) {
	switch op {
	case codec.OpPing:
		l := c.loop
		l.pong = append(l.pong[:0], payload...) // answered once the read is done
		l.pongPending = true
	case codec.OpClose:
		code, err := codec.ParseClosePayload(payload)
		var perr *codec.ProtocolError
		if errors.As(err, &perr) {
			c.fail(perr.Code, perr.Reason)
			return
		}
		if code == ws.StatusNoStatusRcvd {
			c.write(codec.AppendFrame(c.loop.scratch[:0], codec.OpClose, nil))
		} else {
			c.write(codec.AppendClose(c.loop.scratch[:0], code, ""))
		}
		c.eng().metrics.closed("client_closed")
		c.state = stateClosing
		_ = c.gc.Close()
	}
}

// data handles a data frame: whole messages go straight to message;
// fragments are reassembled first (the only time a connection holds a buffer).
func (c *conn) data(h codec.Header, payload []byte) {
	cfg := &c.eng().cfg
	compressed := h.Rsv1()
	if h.Rsv&0b011 != 0 || (compressed && !c.deflate) {
		c.fail(ws.StatusProtocolError, "reserved bits set without a negotiated extension")
		return
	}
	frag := c.fragment()
	if h.OpCode == codec.OpContinuation {
		if frag == nil {
			c.fail(ws.StatusProtocolError, "continuation frame without a message to continue")
			return
		}
		if compressed {
			c.fail(ws.StatusProtocolError, "RSV1 set on a continuation frame")
			return
		}
		if len(frag.data)+len(payload) > cfg.MaxMessageSize {
			c.fail(ws.StatusMessageTooBig, "message exceeds max-message-size")
			return
		}
		frag.data = append(frag.data, payload...)
		if h.Fin {
			c.setFragment(nil)
			c.message(frag.op, frag.data, frag.deflated)
		}
		return
	}
	if frag != nil {
		c.fail(ws.StatusProtocolError, "new data frame inside a fragmented message")
		return
	}
	if !h.Fin {
		c.setFragment(&fragment{op: h.OpCode, deflated: compressed,
			data: append(make([]byte, 0, len(payload)*2), payload...)})
		return
	}
	c.message(h.OpCode, payload, compressed)
}

// message handles one complete data message.
func (c *conn) message(op ws.OpCode, data []byte, compressed bool) {
	l := c.loop
	if c.eng().cfg.RateLimit > 0 && !c.allowMessage() {
		return // refused before any decoding: a flood costs little
	}
	if compressed {
		inflated, err := codec.Inflate(l.scratch[:0], data, c.eng().cfg.MaxMessageSize)
		switch {
		case errors.Is(err, codec.ErrMessageTooLarge):
			c.fail(ws.StatusMessageTooBig, "message inflates beyond max-message-size")
			return
		case err != nil:
			c.fail(ws.StatusInvalidFramePayloadData, "invalid compressed data")
			return
		}
		l.scratch = inflated[:0]
		data = inflated
	}
	if op == codec.OpText && !codec.ValidText(data) {
		c.fail(ws.StatusInvalidFramePayloadData, "text message is not valid UTF-8")
		return
	}
	if c.echo {
		c.write(codec.AppendFrame(l.echoBuf[:0], op, data))
		return
	}
	if op == codec.OpBinary {
		c.sendError(codec.CodeUnsupported, "binary messages are not supported; send JSON text")
		return
	}
	m, merr := codec.DecodeClientMessage(data, codec.Limits{MaxFilterValues: c.eng().cfg.MaxFilterValues})
	if merr != nil {
		c.sendError(merr.Code, merr.Message)
		return
	}
	switch m.Type {
	case codec.TypePing:
		c.write(codec.AppendFrame(l.scratch[:0], codec.OpText, codec.AppendPong(nil, m.Timestamp, time.Now())))
	case codec.TypeSubscribe:
		c.inflight.Add(1)
		c.eng().disp.cmds.push(command{kind: cmdSubscribe, c: c, msg: m})
	case codec.TypeUnsubscribe:
		c.inflight.Add(1)
		c.eng().disp.cmds.push(command{kind: cmdUnsubscribe, c: c, msg: m})
	case codec.TypeAck:
		// Acks never reach the dispatcher: the ledger that turns them into
		// a resume point lives with the connection (acks.go).
		l.mu.Lock()
		c.acks.ack(m.MessageID)
		l.mu.Unlock()
		c.eng().metrics.acksReceived.Inc()
	case codec.TypeAuth:
		c.refreshAuth(m.Token)
	}
}
