package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/klauspost/compress/flate"
)

// The client speaks RFC 6455 itself over a gobwas/ws handshake rather than
// through gorilla/websocket, because a load tester must cost much less per
// delivery than the server it measures, on the same two cores. Two things
// make the difference at fan-out:
//
//   - gorilla inflates every compressed message with its own decoder: at
//     1,000 receivers per event that is 1,000 inflations of the same bytes,
//     half the load tester's CPU in a profile. The server compresses each
//     event once and sends every deflate client the same frame, so here a
//     compressed payload is inflated once per process and the parsed result
//     is shared by every receiver (inflateCache); each distinct payload is
//     still inflated and checked.
//   - frames are read straight from a small per-connection bufio.Reader,
//     with no allocation per message.

// maxMessage bounds a message the client accepts (and what it inflates to).
const maxMessage = 1 << 20

// client is one WebSocket connection of the load test. Its reader
// goroutine owns everything below conn until it has exited.
type client struct {
	id      int
	group   int
	kind    FilterKind
	conn    net.Conn
	r       *bufio.Reader
	pre     *prefixed // what r reads from when the handshake read ahead; for detach (loop.go)
	deflate bool      // permessage-deflate negotiated

	msg  []byte // the message being read; reused
	ctrl []byte // a control frame's payload; reused
	out  []byte // an outgoing frame; reused

	got        bitset // events of the group received, by seq div groups
	dups       int64
	unexpected int64 // events of another group: a filter the server got wrong
	malformed  int64
	closeNote  string // why the connection ended early, if it did

	// The chaos and soak scenarios: a client is a session that outlives its
	// connections (see chaos.go). mu guards ended, clean, killedAt and the
	// replacement of conn, and orders acks with kills; the other fields are
	// the reader goroutine's.
	mu        sync.Mutex
	ended     bool        // the run closed the client: open no connection
	killed    atomic.Bool // the chaos controller ended this connection on purpose
	clean     bool        // ...with a close frame (churn): start a new session
	sessionID string
	maxID     uint64 // highest message_id received in the session (all events are normal priority: in order)
	connAcked uint64 // last ack sent on the current connection
	ackedAt   time.Time
	// recentAcks are the acks sent on the current connection less than
	// ackTaken ago; sureFloor is the replay floor of the newest ack older
	// than that, which the server surely took, or the session's start when
	// it took none (see chaos.go).
	recentAcks []sentAck
	sureFloor  uint64
	sureConn   int // the connection sureFloor's ack was sent on (-1: none)
	killedAt   time.Time
	sinceAck   int
	reconnects int
	// After a reconnect, a duplicate with a message_id in (replayFloor,
	// replayTop] is an allowed replay: received before the drop, at or
	// above the resume point the server made of the last ack it took. Any
	// other duplicate is a bug.
	replayFloor, replayTop uint64
	replayDups             int64
	ackBuf                 []byte
	connMaxID              uint64 // highest message_id on the current connection: what the client acks
	outOfOrder             int64  // events below connMaxID: the server broke its order
	connEvents             int    // events received on the current connection
	gapNote                string // the first gap seen on one connection (see readLoop)
	dupNote                string // the first illegal duplicate, for the report
	newSession             bool   // the last reconnect opened a new session (churn)
}

// deflateOffer asks for permessage-deflate with no context takeover either
// way: what browsers and gorilla offer, and what flarecast requires.
var deflateOffer = wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true}.Option()

// newDialer returns a WebSocket dialer whose TCP sockets come from dial.
func newDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error), compression bool, timeout time.Duration) *ws.Dialer {
	d := &ws.Dialer{NetDial: dial, Timeout: timeout, ReadBufferSize: 1024, WriteBufferSize: 1024}
	if compression {
		d.Extensions = []httphead.Option{deflateOffer}
	}
	return d
}

// connect dials, waits for welcome, subscribes with the client's filter and
// waits for subscribed, all within timeout.
func (c *client) connect(ctx context.Context, d *ws.Dialer, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, br, hs, err := d.Dial(ctx, url)
	if err != nil {
		return err
	}
	c.mu.Lock()
	ended := c.ended
	if !ended {
		c.conn = conn
		c.killed.Store(false)
		c.connMaxID, c.connEvents, c.connAcked = 0, 0, 0
		c.recentAcks = c.recentAcks[:0] // the old connection's acks are stale here
	}
	c.mu.Unlock()
	if ended {
		conn.Close()
		return errors.New("the run is over")
	}
	for _, ext := range hs.Extensions {
		if string(ext.Name) == "permessage-deflate" {
			c.deflate = true
		}
	}
	var rd io.Reader = conn
	c.pre = nil
	if br != nil {
		// The server's first frames came with the handshake response.
		c.pre = &prefixed{prefix: bytes.Clone(peekAll(br)), r: conn}
		rd = c.pre
		ws.PutReader(br)
	}
	c.r = bufio.NewReaderSize(rd, 2048)
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	fail := func(what string, err error) error {
		conn.Close()
		return fmt.Errorf("%s: %w", what, err)
	}
	welcome, err := c.await(typeWelcome)
	if err != nil {
		return fail("welcome", err)
	}
	resuming := c.sessionID != ""
	resumed := bytes.Contains(welcome, resumedTrue)
	if id, ok := stringAfter(welcome, keySessionID); ok {
		c.sessionID = string(id)
	}
	if resumed {
		// The subscription is kept and the replay follows at once.
		_ = conn.SetDeadline(time.Time{})
		return nil
	}
	sub := subscribeMessage(c.kind, c.group)
	if resuming {
		// A new session in place of an old one: backfill what the
		// session did not process.
		sub = append(sub[:len(sub)-1], `,"since":`...)
		sub = append(strconv.AppendUint(sub, c.maxID, 10), '}')
	}
	if err := c.write(ws.OpText, sub); err != nil {
		return fail("send subscribe", err)
	}
	if _, err := c.await(typeSubscribed); err != nil {
		return fail("subscribed", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return nil
}

// stringAfter returns the JSON string value following key.
func stringAfter(msg, key []byte) ([]byte, bool) {
	i := bytes.Index(msg, key)
	if i < 0 {
		return nil, false
	}
	rest := msg[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil, false
	}
	return rest[:j], true
}

func peekAll(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return b
}

// prefixed reads prefix, then r.
type prefixed struct {
	prefix []byte
	r      io.Reader
}

func (p *prefixed) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// await reads messages until one of type want and returns it (valid until
// the next read); an error or closing fails.
func (c *client) await(want []byte) ([]byte, error) {
	for {
		msg, compressed, err := c.next()
		if err != nil {
			return nil, err
		}
		if compressed {
			if msg, err = inflate(nil, msg); err != nil {
				return nil, err
			}
		}
		switch {
		case bytes.Contains(msg, want):
			return msg, nil
		case bytes.Contains(msg, typeError), bytes.Contains(msg, typeClosing):
			return nil, fmt.Errorf("server said %s", truncate(msg, 200))
		}
	}
}

// readLoop reads events until the connection closes, recording each
// delivery's latency (now minus the event's send time).
func (c *client) readLoop(r *runner) {
	var plain []byte // an inflated message that is not a cached event
	for {
		msg, compressed, err := c.next()
		if err != nil {
			if c.killed.Load() {
				return // the chaos controller's doing: the session goes on
			}
			if !r.closing.Load() {
				if c.closeNote == "" {
					c.closeNote = err.Error()
				}
				r.dropped.Add(1)
			}
			return
		}
		c.handle(r, msg, compressed, r.now(), &plain, c.id)
	}
}

// handle accounts for one data message received at now (Unix ns): both
// client engines (readLoop, and the event loops of loop.go) call it, so
// their loss, duplicate and latency accounting is the same code. plain is
// the caller's reusable buffer for an inflated message that is not a cached
// event; shard picks the latency shard. On the steady-state path (an
// event, cached or plain) it allocates nothing.
func (c *client) handle(r *runner, msg []byte, compressed bool, now int64, plain *[]byte, shard int) {
	var ev decoded
	hit := false
	if compressed {
		ev, hit = r.inflated.get(msg) // another receiver may have inflated these bytes
	}
	switch {
	case !compressed:
		ev = decode(msg)
	case !hit:
		var err error
		if *plain, err = inflate((*plain)[:0], msg); err != nil {
			c.malformed++
			return
		}
		if ev = decode(*plain); ev.event {
			r.inflated.put(msg, ev)
		}
		msg = *plain
	}
	if !ev.event {
		if bytes.Contains(msg, codeHistoryGap) {
			r.historyGaps.Add(1)
		}
		if bytes.Contains(msg, typeClosing) && !r.closing.Load() {
			c.closeNote = "closing: " + string(truncate(msg, 120))
		}
		return
	}
	if !ev.ok {
		c.malformed++
		return
	}
	if int(ev.seq%uint64(r.groups)) != c.group {
		c.unexpected++
		return
	}
	idx := ev.seq / uint64(r.groups)
	dup := c.got.set(idx)
	if r.chaotic && !dup && idx > 0 && !c.got.has(idx-1) && c.gapNote == "" {
		// The previous event of the group is missing: the server
		// skipped it on this connection (or on the one before, and
		// replays from after it). Kept for the report of a loss.
		c.gapNote = fmt.Sprintf("seq %d arrived (message_id %d, event %d on connection %d after %d reconnects) before seq %d",
			ev.seq, ev.id, c.connEvents+1, c.reconnects+1, c.reconnects, ev.seq-uint64(r.groups))
	}
	c.connEvents++
	if r.chaotic {
		if ev.id <= c.connMaxID {
			c.outOfOrder++
			c.overtaken(ev.id)
		}
		c.connMaxID = max(c.connMaxID, ev.id)
		c.acknowledge(r, ev.id, now)
	}
	if dup {
		if c.reconnects > 0 && ev.id > c.replayFloor && ev.id <= c.replayTop {
			c.replayDups++
		} else {
			c.dups++
			if c.dupNote == "" && r.chaotic {
				how := "resume"
				if c.newSession {
					how = "new session with since"
				}
				c.dupNote = fmt.Sprintf("message_id %d (seq %d) again, event %d on connection %d (after a %s; allowed replays (%d, %d])",
					ev.id, ev.seq, c.connEvents, c.reconnects+1, how, c.replayFloor, c.replayTop)
			}
		}
		return
	}
	r.lat.record(shard, (now-ev.sent)/1000)
}

// decoded is what the load tester needs from a server message.
type decoded struct {
	event bool // an event message
	ok    bool // with the load tester's seq and send time
	seq   uint64
	sent  int64
	id    uint64 // message_id
}

func decode(msg []byte) decoded {
	if !bytes.HasPrefix(msg, typeEvent) {
		return decoded{}
	}
	seq, sent, ok := parseEvent(msg)
	id, _ := uintAfter(msg, keyMessageID)
	return decoded{event: true, ok: ok, seq: seq, sent: sent, id: id}
}

// errClosed carries the server's close frame.
type errClosed struct {
	code   ws.StatusCode
	reason string
}

func (e *errClosed) Error() string { return fmt.Sprintf("close %d %s", e.code, e.reason) }

// next reads one data message: its payload (valid until the next call) and
// whether it is compressed. It answers pings on the way and returns
// *errClosed for a close frame.
func (c *client) next() (msg []byte, compressed bool, err error) {
	c.msg = c.msg[:0]
	first := true
	for {
		fin, rsv1, op, n, err := c.header()
		if err != nil {
			return nil, false, err
		}
		if op.IsControl() {
			if !fin || n > 125 {
				return nil, false, errors.New("protocol error: malformed control frame")
			}
			c.ctrl, err = c.payload(c.ctrl[:0], n)
			if err != nil {
				return nil, false, err
			}
			switch op {
			case ws.OpPing:
				if err := c.write(ws.OpPong, c.ctrl); err != nil {
					return nil, false, err
				}
			case ws.OpClose:
				code, reason := ws.ParseCloseFrameData(c.ctrl)
				return nil, false, &errClosed{code: code, reason: reason}
			}
			continue
		}
		if first {
			if op == ws.OpContinuation {
				return nil, false, errors.New("protocol error: continuation without a message")
			}
			compressed, first = rsv1, false
		} else if op != ws.OpContinuation {
			return nil, false, errors.New("protocol error: new message inside a fragmented one")
		}
		if len(c.msg)+n > maxMessage {
			return nil, false, fmt.Errorf("message over %d bytes", maxMessage)
		}
		if c.msg, err = c.payload(c.msg, n); err != nil {
			return nil, false, err
		}
		if fin {
			return c.msg, compressed, nil
		}
	}
}

// header reads a frame header. Server frames are never masked.
func (c *client) header() (fin, rsv1 bool, op ws.OpCode, n int, err error) {
	b, err := c.r.Peek(2)
	if err != nil {
		return false, false, 0, 0, err
	}
	fin, rsv1, op = b[0]&0x80 != 0, b[0]&0x40 != 0, ws.OpCode(b[0]&0x0f)
	if b[1]&0x80 != 0 {
		return false, false, 0, 0, errors.New("protocol error: masked server frame")
	}
	size, extra := int64(b[1]&0x7f), 0
	switch size {
	case 126:
		extra = 2
	case 127:
		extra = 8
	}
	if extra > 0 {
		if b, err = c.r.Peek(2 + extra); err != nil {
			return false, false, 0, 0, err
		}
		if extra == 2 {
			size = int64(binary.BigEndian.Uint16(b[2:]))
		} else {
			size = int64(binary.BigEndian.Uint64(b[2:]))
		}
	}
	if size < 0 || size > maxMessage {
		return false, false, 0, 0, fmt.Errorf("frame of %d bytes", size)
	}
	_, _ = c.r.Discard(2 + extra)
	return fin, rsv1, op, int(size), nil
}

// payload appends n bytes of payload to dst.
func (c *client) payload(dst []byte, n int) ([]byte, error) {
	l := len(dst)
	dst = growTo(dst, l+n)
	_, err := io.ReadFull(c.r, dst[l:l+n])
	return dst[:l+n], err
}

func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	return append(b[:cap(b)], make([]byte, n-cap(b))...)[:n]
}

// write sends one masked client frame (subscribe, pong).
func (c *client) write(op ws.OpCode, payload []byte) error {
	c.out = appendClientFrame(c.out[:0], true, op, payload)
	_, err := c.conn.Write(c.out)
	return err
}

// deflateTail is the empty stored block RFC 7692 §7.2.2 appends before inflating.
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

type inflater struct {
	src bytes.Reader
	fr  io.ReadCloser
}

var inflaters = sync.Pool{New: func() any {
	i := &inflater{}
	i.fr = flate.NewReader(&i.src)
	return i
}}

// inflate appends the inflated form of a permessage-deflate payload to dst.
func inflate(dst, payload []byte) ([]byte, error) {
	in := inflaters.Get().(*inflater)
	defer inflaters.Put(in)
	src := make([]byte, 0, len(payload)+len(deflateTail))
	src = append(append(src, payload...), deflateTail...)
	in.src.Reset(src)
	if err := in.fr.(flate.Resetter).Reset(&in.src, nil); err != nil {
		return dst, err
	}
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := in.fr.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if len(dst) > maxMessage {
			return dst, fmt.Errorf("message inflates beyond %d bytes", maxMessage)
		}
		// The tail is a sync flush, not the end of a stream: all the
		// input consumed is the end of the message.
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) || (n == 0 && in.src.Len() == 0) {
			return dst, nil
		}
		if err != nil {
			return dst, fmt.Errorf("inflate: %w", err)
		}
	}
}

// inflateCache maps a compressed event payload to what it decodes to. The
// server sends every deflate receiver of an event the same compressed
// bytes, so the first receiver inflates and the others look it up. Two
// generations per shard bound its memory: a payload is kept for at least
// one generation (a few seconds at 10,000 events/s), after which a late
// receiver inflates it again.
type inflateCache struct {
	shards [16]cacheShard
}

type cacheShard struct {
	mu        sync.RWMutex
	cur, prev map[string]decoded
	_         [32]byte
}

const cacheGeneration = 4096 // entries per shard and generation

func newInflateCache() *inflateCache {
	c := &inflateCache{}
	for i := range c.shards {
		c.shards[i].cur = make(map[string]decoded)
	}
	return c
}

func (c *inflateCache) shard(payload []byte) *cacheShard {
	if len(payload) == 0 {
		return &c.shards[0]
	}
	return &c.shards[int(payload[len(payload)/2]^payload[len(payload)-1])%len(c.shards)]
}

func (c *inflateCache) get(payload []byte) (decoded, bool) {
	s := c.shard(payload)
	s.mu.RLock()
	d, ok := s.cur[string(payload)]
	if !ok {
		d, ok = s.prev[string(payload)]
	}
	s.mu.RUnlock()
	return d, ok
}

func (c *inflateCache) put(payload []byte, d decoded) {
	s := c.shard(payload)
	s.mu.Lock()
	if len(s.cur) >= cacheGeneration {
		s.prev, s.cur = s.cur, make(map[string]decoded, cacheGeneration)
	}
	s.cur[string(payload)] = d
	s.mu.Unlock()
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
