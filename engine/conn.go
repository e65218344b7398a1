package engine

import (
	"bytes"
	"errors"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
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

	// Owned by the loop goroutine.
	state       connState
	closed      bool         // OnClose ran: gc must not be written to
	upgraded    bool         // the WebSocket handshake succeeded: a session is attached
	welcomed    bool         // the welcome was written: client frames may be processed
	echo        bool         // on the echo path (--echo-path): data messages are sent back
	draining    bool         // shutting down: close once the goodbye reached the kernel
	deflate     bool         // permessage-deflate negotiated
	openedAt    int64        // engine clock (monotonic ns) at accept
	lastSeen    int64        // engine clock at the last frame from the client
	unflushed   uint64       // lowest event id maybe still in gnet's outbound buffer; 0 if none
	frag        *fragment    // a fragmented data message being reassembled; nil when none
	limited     bool         // holds a slot in eng.limits (security.go)
	rateStrikes uint8        // messages over the rate limit since the bucket was last half full
	prev, next  *conn        // loop.conns
	rateTAT     int64        // rate limit bucket (GCRA): ns after openedAt
	auth        *auth.Claims // the token's claims; nil without --auth jwt
	peer        *peerCount   // this connection's client address count; nil when not counted

	// Guarded by loop.mu: the queue the dispatcher fills and flush drains.
	queue     []*outFrame // by lane, then message_id: see queueInsert
	dirty     bool        // in loop.dirty
	slow      bool        // the queue overflowed: to be closed
	gone      bool        // closed or taken over: nothing more is queued
	replaying bool        // the session's replay pump waits for this queue to drain
	lost      uint64      // lowest message_id queued for c but never written; 0 if none

	// Owned by the dispatcher goroutine.
	sess *session
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
	return nil, gnet.None
}

func (h *handler) OnClose(gc gnet.Conn, err error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	l := c.loop
	l.conns.remove(c)
	c.closed = true
	c.frag = nil
	if c.unflushed != 0 && gc.OutboundBuffered() > 0 {
		// gnet has not handed these frames to the kernel and may not now.
		l.mu.Lock()
		c.noteLost(&outFrame{id: c.unflushed})
		l.mu.Unlock()
	}
	l.release(c)
	if c.limited {
		c.limited = false
		h.eng.limits.release(c.peer)
	}
	if !c.upgraded {
		return gnet.None
	}
	m := h.eng.metrics
	if c.state == stateOpen {
		m.closed("connection_lost")
	}
	m.activeConnections.Add(-1)
	m.sessionDuration.Update(float64(h.eng.clock()-c.openedAt) / 1e9)
	h.eng.disp.cmds.push(command{kind: cmdDetach, c: c, now: time.Now()})
	return gnet.None
}

func (h *handler) OnTraffic(gc gnet.Conn) gnet.Action {
	gc.Context().(*conn).readInbound()
	return gnet.None
}

// readInbound consumes what the client has sent: the upgrade request, then
// frames. Frames wait until the welcome has been written (flush calls
// readInbound again then), so every reply a client gets follows its welcome.
func (c *conn) readInbound() {
	buf, _ := c.gc.Peek(-1)
	used := 0
	if c.state == stateHandshake {
		used = c.handshake(buf)
	}
	for c.state == stateOpen && c.welcomed && used < len(buf) {
		n := c.readFrame(buf[used:])
		if n == 0 {
			break
		}
		used += n
	}
	if c.state == stateClosing {
		used = len(buf) // nothing after a close frame matters
	}
	if used > 0 { // Discard(0) would drop everything buffered
		_, _ = c.gc.Discard(used)
	}
}

// handshake upgrades the connection once the whole request header is in
// buf, and returns how many bytes it used. Anything that is not a valid
// upgrade to the endpoint gets an HTTP error response and is closed.
func (c *conn) handshake(buf []byte) int {
	maxHeader := c.eng().cfg.MaxHeaderSize
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 || end+4 > maxHeader {
		if len(buf) > maxHeader {
			c.reject(refusal{status: http.StatusRequestHeaderFieldsTooLarge, reason: refuseHeaderTooLarge,
				body: "request header larger than " + strconv.Itoa(maxHeader) + " bytes"})
			return len(buf)
		}
		return 0
	}
	req := buf[:end+4]
	l := c.loop
	hs := &l.hs
	hs.in.Reset(req)
	hs.out.Reset()
	hs.path, hs.query = false, ""
	hs.deflate.Reset()
	hs.bearer, hs.origin = "", ""
	hs.forwarded, hs.realIP = netip.Addr{}, netip.Addr{}
	hs.peer = peerAddr(c.gc.RemoteAddr())
	hs.trustPeer = containsAddr(hs.cfg.TrustedProxies, hs.peer)
	_, err := l.upgrader.Upgrade(hs)
	if err != nil {
		var rej *ws.ConnectionRejectedError
		switch {
		case !hasUpgradeHeader(req) && hs.path:
			c.reject(refusal{status: http.StatusUpgradeRequired, reason: refuseUpgradeRequired,
				body: "this endpoint speaks WebSocket only"})
		default:
			reason := refuseBadRequest
			if errors.As(err, &rej) && rej.StatusCode() == http.StatusNotFound {
				reason = refuseNotFound
			}
			m := c.eng().metrics
			m.handshakeRejected.Inc()
			m.refuse(reason)
			_, _ = c.gc.Write(hs.out.Bytes())
			_ = c.gc.Close()
			c.state = stateClosing
		}
		return len(req)
	}
	if r := c.admit(hs); r.status != 0 {
		c.reject(r)
		return len(req)
	}
	_, _ = c.gc.Write(hs.out.Bytes())
	if c.closed {
		// The write failed (the client reset) and gnet ran OnClose
		// already, before the connection counted as upgraded.
		return len(req)
	}
	_, c.deflate = hs.deflate.Accepted()
	c.state, c.upgraded = stateOpen, true
	m := c.eng().metrics
	m.activeConnections.Add(1)
	m.totalConnections.Inc()
	if hs.echo {
		// A conformance endpoint: no session, nothing to wait for.
		c.echo, c.welcomed = true, true
		return len(req)
	}
	c.eng().disp.cmds.push(command{kind: cmdAttach, c: c, resumeID: hs.param("session_id"), claims: c.auth, now: time.Now()})
	return len(req)
}

func (c *conn) eng() *Engine { return c.loop.eng }

// reject answers an upgrade request it refuses with an HTTP error, counts
// the refusal, and closes the connection.
func (c *conn) reject(r refusal) {
	status, reason := r.status, r.body
	m := c.eng().metrics
	m.handshakeRejected.Inc()
	m.refuse(r.reason)
	var b []byte
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"...)
	if status == http.StatusUpgradeRequired {
		b = append(b, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"...)
	}
	b = append(b, r.header...)
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(reason)+1), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, reason...)
	b = append(b, '\n')
	_, _ = c.gc.Write(b)
	_ = c.gc.Close()
	c.state = stateClosing
}

func hasUpgradeHeader(req []byte) bool {
	for _, line := range bytes.Split(req, []byte("\r\n")) {
		if k, _, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(bytes.TrimSpace(k), []byte("Upgrade")) {
			return true
		}
	}
	return false
}

// initUpgrader configures the loop's upgrader. Its callbacks write into the
// loop's handshake scratch: one upgrade runs at a time per loop.
func (l *loop) initUpgrader() {
	cfg := &l.eng.cfg
	hs := &l.hs
	hs.deflate.Parameters = wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true}
	hs.cfg = cfg
	l.upgrader = ws.Upgrader{
		OnHeader: hs.onHeader,
		OnRequest: func(uri []byte) error {
			path, query, _ := bytes.Cut(uri, []byte("?"))
			hs.echo = cfg.EchoPath != "" && string(path) == cfg.EchoPath
			if string(path) != cfg.Path && !hs.echo {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound),
					ws.RejectionReason("no WebSocket endpoint at this path; use "+cfg.Path))
			}
			hs.path = true
			hs.query = string(query)
			return nil
		},
	}
	if cfg.Compression {
		l.upgrader.Negotiate = hs.deflate.Negotiate
	}
}

// query returns one parameter of the upgrade request's query string.
func (hs *handshake) param(name string) string {
	if hs.query == "" {
		return ""
	}
	v, _ := url.ParseQuery(hs.query)
	return v.Get(name)
}

// readFrame handles the frame at the start of b and returns its size, or 0
// when b does not hold the whole frame yet.
func (c *conn) readFrame(b []byte) int {
	h, payload, n, err := codec.NextClientFrame(b, int64(c.eng().cfg.MaxMessageSize))
	if errors.Is(err, codec.ErrShortHeader) || errors.Is(err, codec.ErrShortFrame) {
		return 0
	}
	var perr *codec.ProtocolError
	if errors.As(err, &perr) {
		c.fail(perr.Code, perr.Reason)
		return len(b)
	}
	c.lastSeen = c.eng().clock()
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
		c.write(codec.AppendFrame(c.loop.scratch[:0], codec.OpPong, payload))
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
	if h.OpCode == codec.OpContinuation {
		if c.frag == nil {
			c.fail(ws.StatusProtocolError, "continuation frame without a message to continue")
			return
		}
		if compressed {
			c.fail(ws.StatusProtocolError, "RSV1 set on a continuation frame")
			return
		}
		if len(c.frag.data)+len(payload) > cfg.MaxMessageSize {
			c.fail(ws.StatusMessageTooBig, "message exceeds max-message-size")
			return
		}
		c.frag.data = append(c.frag.data, payload...)
		if h.Fin {
			f := c.frag
			c.frag = nil
			c.message(f.op, f.data, f.deflated)
		}
		return
	}
	if c.frag != nil {
		c.fail(ws.StatusProtocolError, "new data frame inside a fragmented message")
		return
	}
	if !h.Fin {
		c.frag = &fragment{op: h.OpCode, deflated: compressed,
			data: append(make([]byte, 0, len(payload)*2), payload...)}
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
	m, merr := codec.DecodeClientMessage(data)
	if merr != nil {
		c.sendError(merr.Code, merr.Message)
		return
	}
	switch m.Type {
	case codec.TypePing:
		c.write(codec.AppendFrame(l.scratch[:0], codec.OpText, codec.AppendPong(nil, m.Timestamp, time.Now())))
	case codec.TypeSubscribe:
		c.eng().disp.cmds.push(command{kind: cmdSubscribe, c: c, msg: m})
	case codec.TypeUnsubscribe:
		c.eng().disp.cmds.push(command{kind: cmdUnsubscribe, c: c, msg: m})
	case codec.TypeAck:
		c.eng().disp.cmds.push(command{kind: cmdAck, c: c, msg: m})
	case codec.TypeAuth:
		c.refreshAuth(m.Token)
	}
}

// sendError writes a protocol error message now, ahead of queued events.
func (c *conn) sendError(code, message string) {
	c.eng().metrics.errorSent(code)
	l := c.loop
	payload := codec.AppendError(nil, code, message)
	c.write(codec.AppendFrame(l.scratch[:0], codec.OpText, payload))
}

// write writes one frame from the loop; gnet copies what the socket does not take.
func (c *conn) write(frame []byte) {
	if c.closed {
		return
	}
	_, _ = c.gc.Write(frame)
	c.eng().metrics.messagesSent.Inc()
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
