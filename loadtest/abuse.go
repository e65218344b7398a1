package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// The abuse scenario (Config.Abusers) runs the healthy workload beside one
// client of each abusive kind below, for the whole publishing phase, and
// compares the healthy clients' service with a run without them. Each
// abuser targets only the server under test (its URL passed the loopback
// check) and is bounded in time (it stops when the drain ends) and in
// traffic (the rates and counts below).
const (
	// neverReadsEvery: the never-reader opens a new connection this often,
	// keeping at most neverReadsKeep open (older ones are reset): in a
	// 30 s run none is retired early, and the oldest has been owed every
	// event of the run.
	neverReadsEvery = 5 * time.Second
	neverReadsKeep  = 8
	// abuseRcvBuf is the receive buffer of the never-reading connections,
	// so that the server's own bound, not the kernel's, is what they reach.
	abuseRcvBuf = 16 << 10
	// pingFloodRate bounds the ping flood: 16-byte pings per second.
	pingFloodRate = 20_000
	// subscribeRate and subscribeWindow bound each subscribe loop: at most
	// this many subscribes a second, and this many unanswered.
	subscribeRate   = 500
	subscribeWindow = 16
	// bigSubscribeBytes is the size of the 64 KiB subscribe (under the
	// default --max-message-size of 64 KiB).
	bigSubscribeBytes = 65_000
	// underLimitValues stays just under the server's default limit of
	// 1,000 values per filter.
	underLimitValues = 999
	// garbageConnRate bounds the garbage client's connections per second;
	// each sends garbageJSON malformed messages and one fatal frame.
	garbageConnRate = 10
	garbageJSON     = 20
	// ackAheadID is what the ack-ahead client acks, ackAheadRate times a
	// second; it resets and resumes its session every ackAheadResume
	// (shorter in short runs) to see whether the server honoured the acks.
	ackAheadID     = 1_000_000_000_000_000
	ackAheadRate   = 200
	ackAheadResume = 5 * time.Second
	// abuseReadTimeout bounds a wait for a reply or a close.
	abuseReadTimeout = 2 * time.Second
)

// abuserKind is one kind of abusive client.
type abuserKind struct {
	name, what string
	run        func(ctx context.Context, a *abuser)
}

// abuserKinds lists the abusive clients, in report order.
var abuserKinds = []abuserKind{
	{"never-reads", "subscribes to everything and never reads its socket (16 KiB receive buffer); a new connection every 5 s, at most 8 open",
		neverReads},
	{"ping-flood", fmt.Sprintf("WebSocket pings (16 B) at %s/s, never reads; reconnects when closed", num(pingFloodRate)),
		pingFlood},
	{"subscribe-64k", fmt.Sprintf("re-subscribes in a loop with a %s B filter (thousands of incident_ids); ≤ %d/s, ≤ %d unanswered",
		num(bigSubscribeBytes), subscribeRate, subscribeWindow), subscribeLoop(bigSubscribe(0))},
	{"subscribe-999", fmt.Sprintf("re-subscribes in a loop with %d incident_ids (just under the default limit of 1,000), ~63 KB; ≤ %d/s, ≤ %d unanswered",
		underLimitValues, subscribeRate, subscribeWindow), subscribeLoop(bigSubscribe(underLimitValues))},
	{"garbage", fmt.Sprintf("invalid UTF-8, reserved opcodes, unmasked and oversized frames, malformed JSON; reconnects, ≤ %d connections/s", garbageConnRate),
		garbage},
	{"ack-ahead", fmt.Sprintf("subscribes to everything, reads, acks message_id 1e15 %d times a second; resets and resumes its session every few seconds", ackAheadRate),
		ackAhead},
}

// AbuserStats is what one abusive client did and what the server answered.
type AbuserStats struct {
	Kind        string `json:"kind"`
	What        string `json:"what"`
	Connections int64  `json:"connections"`
	DialErrors  int64  `json:"dial_errors,omitempty"`
	FirstError  string `json:"first_dial_error,omitempty"`
	Frames      int64  `json:"frames_sent"`
	Bytes       int64  `json:"bytes_sent"`
	// StalledSec is how long its writes were blocked: the server stopped
	// reading from it (or its buffers were full).
	StalledSec float64 `json:"write_stalled_sec"`
	// Replies counts the server's messages by type ("subscribed") or by
	// error code and closing reason ("error LIMIT_EXCEEDED", "closing slow_consumer").
	Replies map[string]int64 `json:"replies,omitempty"`
	// Ends counts how its connections ended ("close 1002", "reset by the
	// server", "open at the end", …).
	Ends map[string]int64 `json:"ends,omitempty"`
	// UnreadBytes is what the never-reader's sockets held unread when retired.
	UnreadBytes int64 `json:"unread_bytes,omitempty"`
	// The ack-ahead client: events received (distinct), received again,
	// and events it was owed but never received (the server honoured an ack
	// for an id it never sent); resumes answered resumed:true or not.
	Events     int64 `json:"events,omitempty"`
	Duplicates int64 `json:"duplicates,omitempty"`
	Missing    int64 `json:"missing,omitempty"`
	Resumes    int64 `json:"resumes,omitempty"`
	NotResumed int64 `json:"not_resumed,omitempty"`
}

// abuser is one abusive client.
type abuser struct {
	r     *runner
	url   string
	ready chan struct{} // closed once its first connection is set up, or failed
	once  sync.Once
	mu    sync.Mutex
	st    AbuserStats
	// got is the ack-ahead client's events by seq, maxID the highest
	// message_id it received (both under mu).
	got   bitset
	maxID uint64
}

// abusers is the set running in the abusers' process.
type abusers struct {
	list []*abuser
	stop context.CancelFunc
	done sync.WaitGroup
}

// startAbusers starts one client of each kind (of --abuser-kinds) and waits
// until each has set up its first connection (the ack-ahead client:
// subscribed), so that all of them are in place before publishing begins.
// It runs in the abusers' process (RunAbusersOnly), not in the load tester
// that measures the healthy clients (abuseproc.go).
func (r *runner) startAbusers(ctx context.Context) *abusers {
	actx, stop := context.WithCancel(ctx)
	as := &abusers{stop: stop}
	only := r.cfg.abuserKinds()
	for i, k := range abuserKinds {
		if only != nil && !slices.Contains(only, k.name) {
			continue
		}
		a := &abuser{r: r, url: r.urls[i%len(r.urls)], ready: make(chan struct{}),
			st: AbuserStats{Kind: k.name, What: k.what, Replies: map[string]int64{}, Ends: map[string]int64{}}}
		as.list = append(as.list, a)
		as.done.Add(1)
		go func() {
			defer as.done.Done()
			defer a.markReady()
			k.run(actx, a)
		}()
	}
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, a := range as.list {
		select {
		case <-a.ready:
		case <-wait.Done():
			if ctx.Err() == nil {
				r.warn("abuser %s not set up within 10 s", a.st.Kind)
			}
		}
	}
	names := make([]string, len(as.list))
	for i, a := range as.list {
		names[i] = a.st.Kind
	}
	fmt.Fprintf(r.progress, "%s%s%d (%s)\n", r.clearLine(), abusersReady, len(as.list), strings.Join(names, ", "))
	return as
}

func abuserNames() string {
	names := make([]string, len(abuserKinds))
	for i, k := range abuserKinds {
		names[i] = k.name
	}
	return strings.Join(names, ", ")
}

// finish stops the abusers and returns what they did. The ack-ahead client
// first waits (a few seconds at most) for the events it is still owed.
func (as *abusers) finish(r *runner) []AbuserStats {
	as.stop()
	done := make(chan struct{})
	go func() { as.done.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		r.warn("abusers did not stop within 30 s")
	}
	out := make([]AbuserStats, len(as.list))
	for i, a := range as.list {
		a.mu.Lock()
		out[i] = a.st
		out[i].Replies, out[i].Ends = cloneCounts(a.st.Replies), cloneCounts(a.st.Ends)
		a.mu.Unlock()
	}
	return out
}

func cloneCounts(m map[string]int64) map[string]int64 {
	c := make(map[string]int64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func (a *abuser) markReady() { a.once.Do(func() { close(a.ready) }) }

func (a *abuser) count(f func(st *AbuserStats)) {
	a.mu.Lock()
	f(&a.st)
	a.mu.Unlock()
}

func (a *abuser) reply(key string) { a.count(func(st *AbuserStats) { st.Replies[key]++ }) }
func (a *abuser) end(how string)   { a.count(func(st *AbuserStats) { st.Ends[how]++ }) }

// abuseConn is one abusive connection: the socket, and a reader that starts
// with whatever arrived with the handshake response.
type abuseConn struct {
	net.Conn
	r *bufio.Reader
}

// dial opens a WebSocket connection (no compression) to the server under
// test, with query appended to its URL, and a receive buffer of rcvbuf
// bytes when rcvbuf > 0.
func (a *abuser) dial(ctx context.Context, query string, rcvbuf int) (*abuseConn, error) {
	url := a.url + query
	if err := checkLoopbackURL(url, "ws"); err != nil {
		return nil, err
	}
	nd := &net.Dialer{Timeout: 5 * time.Second}
	if rcvbuf > 0 {
		nd.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	d := ws.Dialer{NetDial: nd.DialContext, Timeout: 5 * time.Second}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, br, _, err := d.Dial(dctx, url)
	if err != nil {
		a.count(func(st *AbuserStats) {
			st.DialErrors++
			if st.FirstError == "" {
				st.FirstError = err.Error()
			}
		})
		return nil, err
	}
	var rd io.Reader = conn
	if br != nil {
		rd = &prefixed{prefix: bytes.Clone(peekAll(br)), r: conn}
		ws.PutReader(br)
	}
	a.count(func(st *AbuserStats) { st.Connections++ })
	return &abuseConn{Conn: conn, r: bufio.NewReaderSize(rd, 4096)}, nil
}

// reset closes c with a TCP reset: nothing it left unread is kept for it.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// writeAll writes b whole. A write blocked for a second (the server stopped
// reading from this connection, or its buffers are full) is retried until
// ctx ends, and the time counts as stalled.
func (a *abuser) writeAll(ctx context.Context, c net.Conn, b []byte) error {
	for len(b) > 0 {
		start := time.Now()
		_ = c.SetWriteDeadline(start.Add(time.Second))
		n, err := c.Write(b)
		b = b[n:]
		if err == nil {
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
		a.count(func(st *AbuserStats) { st.StalledSec += time.Since(start).Seconds() })
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// sendFrames writes frames (already encoded) and counts them.
func (a *abuser) sendFrames(ctx context.Context, c net.Conn, frames []byte, n int) error {
	err := a.writeAll(ctx, c, frames)
	if err == nil {
		a.count(func(st *AbuserStats) { st.Frames += int64(n); st.Bytes += int64(len(frames)) })
	}
	return err
}

// appendClientFrame appends one masked client frame.
func appendClientFrame(dst []byte, fin bool, op ws.OpCode, payload []byte) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	dst = append(dst, b0)
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	dst = append(dst, key[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], key, 0)
	return dst
}

// readFrame reads one server frame: its header and up to keep bytes of its
// payload (the rest is discarded). buf is reused.
func (c *abuseConn) readFrame(buf []byte, keep int) (ws.Header, []byte, error) {
	h, err := ws.ReadHeader(c.r)
	if err != nil {
		return h, nil, err
	}
	if h.Length < 0 || h.Length > 1<<30 {
		return h, nil, fmt.Errorf("frame of %d bytes", h.Length)
	}
	k := min(h.Length, int64(keep))
	buf = growTo(buf[:0], int(k))
	if _, err := io.ReadFull(c.r, buf); err != nil {
		return h, nil, err
	}
	if rest := h.Length - k; rest > 0 {
		if _, err := io.CopyN(io.Discard, c.r, rest); err != nil {
			return h, nil, err
		}
	}
	return h, buf, nil
}

var (
	keyType   = []byte(`"type":"`)
	keyCode   = []byte(`"code":"`)
	keyReason = []byte(`"reason":"`)
)

// replyKey names a server message for the counts: its type, with the code
// of an error and the reason of a closing.
func replyKey(msg []byte) string {
	t, ok := stringAfter(msg, keyType)
	if !ok {
		return "unparsed"
	}
	switch string(t) {
	case "error":
		if c, ok := stringAfter(msg, keyCode); ok {
			return "error " + string(c)
		}
	case "closing":
		if c, ok := stringAfter(msg, keyReason); ok {
			return "closing " + string(c)
		}
	}
	return string(t)
}

// readReplies reads server frames until the connection ends, counting text
// messages by replyKey and calling onText for each; it returns how the
// connection ended. The server's pings are not answered: an abuser is not
// a polite client, and its traffic keeps its session alive.
func (a *abuser) readReplies(c *abuseConn, onText func(key string, msg []byte)) string {
	var buf []byte
	for {
		h, p, err := c.readFrame(buf, 4096)
		if err != nil {
			return endOf(err)
		}
		buf = p
		switch h.OpCode {
		case ws.OpClose:
			if h.Masked {
				ws.Cipher(p, h.Mask, 0)
			}
			code, _ := ws.ParseCloseFrameData(p)
			return "close " + strconv.Itoa(int(code))
		case ws.OpText, ws.OpContinuation:
			key := replyKey(p)
			a.reply(key)
			if onText != nil {
				onText(key, p)
			}
		}
	}
}

// endOf names how a connection's read or write ended.
func endOf(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed by the server without a close frame"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset by the server"
	case errors.Is(err, syscall.EPIPE):
		return "closed by the server (broken pipe)"
	case errors.Is(err, net.ErrClosed):
		return "closed here"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	default:
		return "error: " + err.Error()
	}
}

// tcpState returns the kernel's TCP state of c and the bytes waiting unread
// in its receive queue, without reading them.
func tcpState(c net.Conn) (state uint8, unread int, err error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, 0, errors.New("not a socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		if info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); serr == nil {
			state = info.State
			unread, serr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		}
	})
	return state, unread, errors.Join(err, serr)
}

// Linux TCP states (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpClose       = 7
	tcpCloseWait   = 8
)

// neverReads subscribes to everything on a connection with a small receive
// buffer and never reads it again; every neverReadsEvery it opens another,
// retiring (resetting) the oldest beyond neverReadsKeep. Since it never
// reads, it learns how the server treated a connection only when retiring
// it, from the kernel's TCP state.
func neverReads(ctx context.Context, a *abuser) {
	sub := appendClientFrame(nil, true, ws.OpText, []byte(`{"type":"subscribe","subscription_id":"everything","filters":{}}`))
	var open []*abuseConn
	retire := func(c *abuseConn) {
		state, unread, err := tcpState(c.Conn)
		how := "unknown state"
		switch {
		case err != nil:
			how = "state unreadable: " + err.Error()
		case state == tcpEstablished:
			// A close by the server would wait behind what is unread.
			how = "ESTABLISHED when retired"
		case state == tcpCloseWait:
			how = "closed by the server (FIN)"
		case state == tcpClose:
			how = "reset by the server"
		default:
			how = "TCP state " + strconv.Itoa(int(state))
		}
		a.end(how)
		a.count(func(st *AbuserStats) { st.UnreadBytes += int64(unread) })
		reset(c)
	}
	defer func() {
		for _, c := range open {
			retire(c)
		}
	}()
	for {
		if c, err := a.dial(ctx, "", abuseRcvBuf); err == nil {
			if err := a.sendFrames(ctx, c, sub, 1); err != nil {
				a.end("subscribe not written: " + endOf(err))
				reset(c)
			} else {
				open = append(open, c)
			}
		}
		a.markReady()
		if len(open) > neverReadsKeep {
			retire(open[0])
			open = open[1:]
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(neverReadsEvery):
		}
	}
}

// pingFlood sends WebSocket pings at pingFloodRate and never reads; when the
// server ends the connection it waits a second and opens another.
func pingFlood(ctx context.Context, a *abuser) {
	payload := []byte("flarecast-abuse!")
	for ctx.Err() == nil {
		c, err := a.dial(ctx, "", abuseRcvBuf)
		a.markReady()
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		err = a.flood(ctx, c, pingFloodRate, func(dst []byte) []byte { return appendClientFrame(dst, true, ws.OpPing, payload) })
		if err == nil || ctx.Err() != nil {
			a.end("open at the end")
		} else {
			a.end(endOf(err))
		}
		reset(c)
		sleepCtx(ctx, time.Second)
	}
}

// flood writes frames at rate per second, in 10 ms batches, until ctx ends
// or a write fails. After a stall it sends at most 100 ms of frames at once.
func (a *abuser) flood(ctx context.Context, c net.Conn, rate int64, frame func([]byte) []byte) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	begin := time.Now()
	var sent int64
	var buf []byte
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		target := int64(time.Since(begin).Seconds() * float64(rate))
		if target-sent > rate/10 {
			sent = target - rate/10
		}
		due := target - sent
		if due <= 0 {
			continue
		}
		buf = buf[:0]
		for range due {
			buf = frame(buf)
		}
		if err := a.sendFrames(ctx, c, buf, int(due)); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		sent += due
	}
}

// bigSubscribe returns a subscribe message whose filter lists incident_ids:
// values of them, each padded so that the message is about 63 KB, or, with
// values 0, as many short ids as fit in bigSubscribeBytes.
func bigSubscribe(values int) []byte {
	msg := []byte(`{"type":"subscribe","subscription_id":"abuse","filters":{"incident_ids":[`)
	const tail = `]}}`
	if values == 0 {
		for i := 0; ; i++ {
			v := strconv.AppendInt([]byte(`"`), int64(i), 10)
			v = append(v, '"')
			if len(msg)+len(v)+1+len(tail) > bigSubscribeBytes {
				break
			}
			if i > 0 {
				msg = append(msg, ',')
			}
			msg = append(msg, v...)
		}
		return append(msg, tail...)
	}
	pad := max((bigSubscribeBytes-len(msg)-len(tail))/values-3, 8)
	for i := range values {
		if i > 0 {
			msg = append(msg, ',')
		}
		v := "abuse-" + strconv.Itoa(i) + "-"
		msg = append(msg, '"')
		msg = append(msg, v...)
		msg = append(msg, strings.Repeat("x", max(pad-len(v), 0))...)
		msg = append(msg, '"')
	}
	return append(msg, tail...)
}

// subscribeLoop re-subscribes the same subscription id with msg in a loop,
// at most subscribeRate a second with at most subscribeWindow unanswered,
// counting the replies; it reconnects a second after the server ends the
// connection.
func subscribeLoop(msg []byte) func(ctx context.Context, a *abuser) {
	return func(ctx context.Context, a *abuser) {
		var frame []byte
		for ctx.Err() == nil {
			c, err := a.dial(ctx, "", 0)
			a.markReady()
			if err != nil {
				sleepCtx(ctx, time.Second)
				continue
			}
			tokens := make(chan struct{}, subscribeWindow)
			readEnd := make(chan string, 1)
			go func() {
				readEnd <- a.readReplies(c, func(key string, _ []byte) {
					if key == "welcome" {
						return
					}
					select { // a reply to a subscribe frees a slot
					case <-tokens:
					default:
					}
				})
			}()
			pace := time.NewTicker(time.Second / subscribeRate)
			serverEnded := "" // set when the reader ended first
			var writeErr error
		loop:
			for {
				select {
				case <-ctx.Done():
					break loop
				case serverEnded = <-readEnd:
					break loop
				case tokens <- struct{}{}:
				}
				select {
				case <-ctx.Done():
					break loop
				case serverEnded = <-readEnd:
					break loop
				case <-pace.C:
				}
				frame = appendClientFrame(frame[:0], true, ws.OpText, msg)
				if writeErr = a.sendFrames(ctx, c, frame, 1); writeErr != nil {
					break loop
				}
			}
			pace.Stop()
			reset(c)
			how := serverEnded
			if how == "" {
				how = <-readEnd // the reader ends once the socket is closed
				switch {
				case ctx.Err() != nil:
					how = "open at the end"
				case how == "closed here" && writeErr != nil:
					how = endOf(writeErr)
				}
			}
			a.end(how)
			sleepCtx(ctx, time.Second)
		}
	}
}

// garbageFrames are the fatal frames the garbage client ends each
// connection with, in turn.
var garbageFrames = []struct {
	name  string
	frame func() []byte
}{
	{"invalid UTF-8", func() []byte {
		return appendClientFrame(nil, true, ws.OpText, []byte("{\"type\":\"ping\",\"timestamp\":\"\xff\xfe\"}"))
	}},
	{"reserved opcode", func() []byte { return appendClientFrame(nil, true, ws.OpCode(0x3), []byte("x")) }},
	{"unmasked frame", func() []byte { return append([]byte{0x81, 5}, "hello"...) }},
	{"oversized ping", func() []byte { return appendClientFrame(nil, true, ws.OpPing, bytes.Repeat([]byte("p"), 126)) }},
	{"fragmented ping", func() []byte { return appendClientFrame(nil, false, ws.OpPing, []byte("p")) }},
	{"continuation without a message", func() []byte { return appendClientFrame(nil, true, ws.OpContinuation, []byte("c")) }},
	{"frame of 2^62 bytes", func() []byte {
		return append(binary.BigEndian.AppendUint64([]byte{0x81, 0x80 | 127}, 1<<62), 1, 2, 3, 4)
	}},
	{"random bytes", func() []byte {
		b := make([]byte, 64)
		for i := range b {
			b[i] = byte(rand.Uint32())
		}
		return b
	}},
}

// malformedJSON are the text messages the garbage client sends first: each
// should get an error reply and leave the connection open.
var malformedJSON = []string{
	`{"type":"subscribe","filters":`, `[1,2,3]`, `{"type":`, `nul`, `{"type":"ack","message_id":"x"}`,
	`{"type":"subscribe","subscription_id":"g","filters":{"severities":["P9"]}}`, `{}`, `"just a string"`,
}

// garbage opens connections (at most garbageConnRate a second), sends
// malformed JSON and then one fatal frame, and reads the replies until the
// server closes the connection (or abuseReadTimeout).
func garbage(ctx context.Context, a *abuser) {
	for i := 0; ctx.Err() == nil; i++ {
		began := time.Now()
		c, err := a.dial(ctx, "", 0)
		a.markReady()
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		var out []byte
		for k := range garbageJSON {
			out = appendClientFrame(out, true, ws.OpText, []byte(malformedJSON[k%len(malformedJSON)]))
		}
		g := garbageFrames[i%len(garbageFrames)]
		out = append(out, g.frame()...)
		if err := a.sendFrames(ctx, c, out, garbageJSON+1); err != nil {
			a.end(g.name + ": " + endOf(err))
		} else {
			_ = c.SetReadDeadline(time.Now().Add(abuseReadTimeout))
			a.end(g.name + ": " + a.readReplies(c, nil))
		}
		reset(c)
		sleepCtx(ctx, time.Until(began.Add(time.Second/garbageConnRate)))
	}
}

// ackAhead subscribes to everything, reads every event and acks message_id
// 1e15 ackAheadRate times a second; every few seconds it resets its
// connection and resumes the session. The server must ignore acks for ids
// it never sent: after each resume the client must still receive every
// event it is owed. When ctx ends it stops acking and waits (a few
// seconds at most) for the events it is still owed.
func ackAhead(ctx context.Context, a *abuser) {
	resumeEvery := min(max(a.r.cfg.Duration/4, 500*time.Millisecond), ackAheadResume)
	ack := []byte(`{"type":"ack","message_id":` + strconv.FormatInt(ackAheadID, 10) + `}`)
	var sessionID string
	var c *abuseConn
	readEnd := make(chan string, 1)
	// connect opens a connection, resumes or subscribes, and starts its reader.
	connect := func() error {
		query := ""
		if sessionID != "" {
			query = "?session_id=" + sessionID
		}
		conn, err := a.dial(ctx, query, 0)
		if err != nil {
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(abuseReadTimeout))
		var buf []byte
		awaitType := func(want string) error {
			for {
				h, p, err := conn.readFrame(buf, 4096)
				if err != nil {
					return err
				}
				buf = p
				if h.OpCode == ws.OpClose {
					return errors.New("closed during set-up")
				}
				if h.OpCode != ws.OpText {
					continue
				}
				key := replyKey(p)
				a.reply(key)
				if key == want {
					if id, ok := stringAfter(p, keySessionID); ok && want == "welcome" {
						old := sessionID
						sessionID = string(id)
						switch {
						case bytes.Contains(p, resumedTrue):
							a.count(func(st *AbuserStats) { st.Resumes++ })
							return nil
						case old != "":
							a.count(func(st *AbuserStats) { st.NotResumed++ })
						}
						return errNeedSubscribe
					}
					return nil
				}
				if strings.HasPrefix(key, "error") || strings.HasPrefix(key, "closing") {
					return fmt.Errorf("server said %s", key)
				}
			}
		}
		err = awaitType("welcome")
		if errors.Is(err, errNeedSubscribe) {
			sub := `{"type":"subscribe","subscription_id":"everything","filters":{}`
			a.mu.Lock()
			since := a.maxID
			a.mu.Unlock()
			if since > 0 {
				sub += `,"since":` + strconv.FormatUint(since, 10)
			}
			if err = a.sendFrames(ctx, conn, appendClientFrame(nil, true, ws.OpText, []byte(sub+"}")), 1); err == nil {
				err = awaitType("subscribed")
			}
		}
		if err != nil {
			reset(conn)
			return err
		}
		_ = conn.SetReadDeadline(time.Time{})
		c = conn
		go func() {
			readEnd <- a.readReplies(conn, func(key string, msg []byte) {
				if key != "event" {
					return
				}
				seq, _, ok := parseEvent(msg)
				id, _ := uintAfter(msg, keyMessageID)
				if !ok {
					return
				}
				a.count(func(st *AbuserStats) {
					if a.got.set(seq) {
						st.Duplicates++
					} else {
						st.Events++
					}
					a.maxID = max(a.maxID, id)
				})
			})
		}()
		return nil
	}
	for try := 0; ctx.Err() == nil; try++ {
		if err := connect(); err == nil {
			break
		} else if try >= 3 {
			a.end("set-up failed: " + err.Error())
			a.markReady()
			return
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	a.markReady()
	if c == nil {
		return
	}
	pace := time.NewTicker(time.Second / ackAheadRate)
	defer pace.Stop()
	resumeAt := time.Now().Add(resumeEvery)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			continue
		case how := <-readEnd:
			// The server ended the connection: resume.
			a.end(how)
			c = nil
		case <-pace.C:
			if time.Now().After(resumeAt) {
				reset(c)
				a.end("reset here to resume: " + <-readEnd)
				c = nil
			} else if err := a.sendFrames(ctx, c, appendClientFrame(nil, true, ws.OpText, ack), 1); err != nil && ctx.Err() == nil {
				reset(c)
				a.end("ack not written: " + endOf(err) + "; " + <-readEnd)
				c = nil
			}
		}
		if c == nil {
			for try := 0; c == nil && ctx.Err() == nil; try++ {
				if err := connect(); err != nil {
					if try >= 3 {
						a.end("resume failed: " + err.Error())
						return
					}
					sleepCtx(ctx, 200*time.Millisecond)
				}
			}
			resumeAt = time.Now().Add(resumeEvery)
		}
	}
	if c == nil {
		return
	}
	// Stopped: no more acks; wait for what is still owed, then count it.
	deadline := time.Now().Add(min(a.r.cfg.DrainTimeout, 5*time.Second))
	for {
		missing := a.missing()
		if missing == 0 || time.Now().After(deadline) {
			a.count(func(st *AbuserStats) { st.Missing = missing })
			break
		}
		select {
		case how := <-readEnd:
			reset(c)
			a.end("ended while draining: " + how)
			a.count(func(st *AbuserStats) { st.Missing = a.missingLocked() })
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	reset(c)
	a.end("open at the end (" + <-readEnd + ")")
}

var errNeedSubscribe = errors.New("a new session: subscribe")

// missing counts the accepted events the ack-ahead client never received.
func (a *abuser) missing() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.missingLocked()
}

func (a *abuser) missingLocked() int64 {
	r := a.r
	r.accMu.Lock()
	defer r.accMu.Unlock()
	var n int64
	for s, end := uint64(0), uint64(r.published.Load()); s < end; s++ {
		if r.accepted.has(s) && !a.got.has(s) {
			n++
		}
	}
	return n
}

// summary is one line on what the abuser did and what it got.
func (s *AbuserStats) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s connections, %s frames (%s) sent", num(float64(s.Connections)), num(float64(s.Frames)), bytesText(s.Bytes))
	if s.StalledSec > 0 {
		fmt.Fprintf(&b, ", writes stalled %.1f s", s.StalledSec)
	}
	if s.DialErrors > 0 {
		fmt.Fprintf(&b, ", %d dials failed (%s)", s.DialErrors, s.FirstError)
	}
	if s.Kind == "ack-ahead" {
		fmt.Fprintf(&b, "; events %s, again %s, MISSING %d; resumes %d (not resumed %d)",
			num(float64(s.Events)), num(float64(s.Duplicates)), s.Missing, s.Resumes, s.NotResumed)
	}
	if s.UnreadBytes > 0 {
		fmt.Fprintf(&b, "; %s unread when retired", bytesText(s.UnreadBytes))
	}
	if len(s.Replies) > 0 {
		fmt.Fprintf(&b, "; replies: %s", countsText(s.Replies))
	}
	if len(s.Ends) > 0 {
		fmt.Fprintf(&b, "; ends: %s", countsText(s.Ends))
	}
	return b.String()
}

// countsText lists counts, largest first: "subscribed 120, error LIMIT_EXCEEDED 3".
func countsText(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + " ×" + num(float64(m[k]))
	}
	return strings.Join(parts, ", ")
}

// AbuseReport compares the healthy clients' service without and with the
// abusers (both runs of --abusers both; one side of on or off alone).
type AbuseReport struct {
	Without *HealthySummary `json:"without_abusers,omitempty"`
	With    *HealthySummary `json:"with_abusers,omitempty"`
	// Ratio is with ÷ without for the latencies and the server's memory.
	Ratio   map[string]float64 `json:"ratio_with_over_without,omitempty"`
	Abusers []AbuserStats      `json:"abusers,omitempty"`
	// Baseline is the whole first run (without abusers) of --abusers both.
	Baseline *Result `json:"baseline_run,omitempty"`
}

// HealthySummary is one run's service to the healthy clients and the
// server's cost.
type HealthySummary struct {
	Conns      int     `json:"healthy_conns"`
	Expected   int64   `json:"expected"`
	Received   int64   `json:"received"`
	Lost       int64   `json:"lost"`
	Duplicates int64   `json:"duplicates"`
	Dropped    int     `json:"dropped"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	P999       float64 `json:"p999_ms"`
	Max        float64 `json:"max_ms"`
	// RSSPeak is the server's highest RSS sampled while publishing and
	// draining; RSSEnd is read after publishing (and a forced GC).
	RSSPeak       int64   `json:"server_rss_peak_bytes"`
	RSSEnd        int64   `json:"server_rss_end_bytes"`
	HeapEnd       int64   `json:"server_heap_end_bytes"`
	SlowConsumers int64   `json:"slow_consumer_closes"`
	ServerCPUSec  float64 `json:"server_cpu_sec"`
	AchievedRate  float64 `json:"achieved_events_per_sec"`
}

func healthySummary(res *Result) *HealthySummary {
	h := &HealthySummary{Conns: res.Connections.Held, Expected: res.Deliveries.Expected, Received: res.Deliveries.Received,
		Lost: res.Deliveries.Lost, Duplicates: res.Deliveries.Duplicates, Dropped: res.Connections.Dropped,
		P50: res.Latency.P50, P99: res.Latency.P99, P999: res.Latency.P999, Max: res.Latency.Max,
		RSSEnd: res.Server.RSSEnd, HeapEnd: res.Server.HeapEnd, SlowConsumers: res.Server.SlowConsumers,
		ServerCPUSec: res.Server.CPUSec, AchievedRate: res.Events.AchievedRate}
	for _, s := range res.Timeline {
		if s.Phase == "publish" || s.Phase == "drain" || s.Phase == "done" {
			h.RSSPeak = max(h.RSSPeak, s.ServerRSS)
		}
	}
	h.RSSPeak = max(h.RSSPeak, h.RSSEnd)
	return h
}

// compare fills in the ratios of with over without.
func (ar *AbuseReport) compare() {
	w, o := ar.With, ar.Without
	if w == nil || o == nil {
		return
	}
	ratio := func(a, b float64) float64 {
		if b <= 0 {
			return 0
		}
		return a / b
	}
	ar.Ratio = map[string]float64{
		"p50": ratio(w.P50, o.P50), "p99": ratio(w.P99, o.P99), "p999": ratio(w.P999, o.P999), "max": ratio(w.Max, o.Max),
		"server_rss_peak": ratio(float64(w.RSSPeak), float64(o.RSSPeak)),
		"server_rss_end":  ratio(float64(w.RSSEnd), float64(o.RSSEnd)),
		"server_cpu":      ratio(w.ServerCPUSec, o.ServerCPUSec),
	}
}

// P99Goal is the goal for the healthy clients' p99 with the
// abusers, as a multiple of the p99 without them; the report says whether
// it was met (it does not fail the run: latency on a shared machine is noisy).
const P99Goal = 1.5

// write prints the comparison and what each abuser did.
func (ar *AbuseReport) write(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	col := func(h *HealthySummary, f func(*HealthySummary) string) string {
		if h == nil {
			return "—"
		}
		return f(h)
	}
	rt := func(k string) string {
		if v, ok := ar.Ratio[k]; ok && v > 0 {
			return fmt.Sprintf("%.2f×", v)
		}
		return ""
	}
	fmt.Fprintf(tw, "  abuse: healthy clients\twithout abusers\twith abusers\twith/without\n")
	line := func(name string, f func(*HealthySummary) string, ratioKey string) {
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", name, col(ar.Without, f), col(ar.With, f), rt(ratioKey))
	}
	line("connections", func(h *HealthySummary) string { return num(float64(h.Conns)) }, "")
	line("deliveries", func(h *HealthySummary) string {
		return num(float64(h.Received)) + " of " + num(float64(h.Expected))
	}, "")
	line("latency p50", func(h *HealthySummary) string { return ms(h.P50) }, "p50")
	line("latency p99", func(h *HealthySummary) string { return ms(h.P99) }, "p99")
	line("latency p99.9", func(h *HealthySummary) string { return ms(h.P999) }, "p999")
	line("latency max", func(h *HealthySummary) string { return ms(h.Max) }, "max")
	line("lost", func(h *HealthySummary) string { return strconv.FormatInt(h.Lost, 10) }, "")
	line("duplicates", func(h *HealthySummary) string { return strconv.FormatInt(h.Duplicates, 10) }, "")
	line("dropped by the server", func(h *HealthySummary) string { return strconv.Itoa(h.Dropped) }, "")
	line("server RSS peak", func(h *HealthySummary) string { return bytesText(h.RSSPeak) }, "server_rss_peak")
	line("server RSS at end", func(h *HealthySummary) string { return bytesText(h.RSSEnd) }, "server_rss_end")
	line("server CPU", func(h *HealthySummary) string { return fmt.Sprintf("%.1f s", h.ServerCPUSec) }, "server_cpu")
	line("slow-consumer closes", func(h *HealthySummary) string { return strconv.FormatInt(h.SlowConsumers, 10) }, "")
	tw.Flush()
	if v, ok := ar.Ratio["p99"]; ok && v > 0 {
		verdict := "met"
		if v > P99Goal {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "    p99 goal (with ≤ %.1f× without): %s\n", P99Goal, verdict)
	}
	if len(ar.Abusers) > 0 {
		fmt.Fprintf(w, "  abusers (one of each, while events were published):\n")
		for _, s := range ar.Abusers {
			fmt.Fprintf(w, "    %-14s %s\n", s.Kind, s.What)
			fmt.Fprintf(w, "    %-14s → %s\n", "", s.summary())
		}
	}
}

// runAbuseBoth runs the workload twice, without and then with the
// abusers, each against its own server when spawning, and returns the
// second run's result with the comparison (and the first run) in Abuse.
func runAbuseBoth(ctx context.Context, cfg Config, progress io.Writer) (*Result, error) {
	base := cfg
	base.Abusers, base.Name = "off", cfg.name()+"-baseline"
	fmt.Fprintf(progress, "flarecast-loadtest: run 1 of 2: %d healthy clients without abusers\n", cfg.Conns)
	b, err := runOne(ctx, base, progress)
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return b, nil
	}
	with := cfg
	with.Abusers = "on"
	fmt.Fprintf(progress, "flarecast-loadtest: run 2 of 2: the same with one abuser of each kind\n")
	res, err := runOne(ctx, with, progress)
	if err != nil {
		return nil, err
	}
	if res.Abuse == nil {
		res.Abuse = &AbuseReport{}
	}
	res.Abuse.Without = healthySummary(b)
	b.Abuse = nil
	res.Abuse.Baseline = b
	res.Abuse.compare()
	res.OK = res.OK && b.OK
	if !b.OK {
		res.Warnings = append(res.Warnings, "the run without abusers was not OK: "+strings.Join(b.Warnings, "; "))
	}
	return res, nil
}
