package engine_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/engine"
)

// Fault injection over loopback (issue 10): clients and producers that
// misbehave the way broken networks and hostile peers do. Each test checks
// that the server closes what it must, counts it on /metrics, frees what it
// held, and still serves a healthy client afterwards (faultProbe).
//
// None of these tests calls t.Parallel: several measure the process's heap,
// goroutines or file descriptors, which only mean something while no other
// test's server runs in the process (parallel tests start after the
// sequential ones have finished).

// Series on /metrics the fault tests check.
const (
	fmActive    = "websocket_active_connections"
	fmSubs      = "websocket_active_subscriptions"
	fmTotal     = "websocket_total_connections"
	fmRejected  = "websocket_handshakes_rejected_total"
	fmAccepted  = "flarecast_ingest_events_accepted_total"
	fmIngestRej = "flarecast_ingest_events_rejected_total"
	fmSlow      = "websocket_slow_consumer_disconnects_total"
	fmBroadcast = "websocket_events_broadcast_total"
	fmDelivered = "websocket_events_delivered_total"
)

func fmClosed(reason string) string {
	return `websocket_connections_closed_total{reason="` + reason + `"}`
}

func fmRefused(reason string) string { return `flarecast_refused_total{reason="` + reason + `"}` }

// faultSnapshot returns every series on /metrics by name.
func faultSnapshot(t testing.TB, s *testServer) map[string]float64 {
	t.Helper()
	snap, err := scrape(s.admin)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// scrape reads /metrics from the admin address; it does not fail the
// test, so goroutines other than the test's may call it.
func scrape(admin string) (map[string]float64, error) {
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read /metrics: %w", err)
	}
	out := make(map[string]float64)
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ') // label values may hold spaces
		if i < 0 {
			continue
		}
		f, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics line %q: %w", line, err)
		}
		out[line[:i]] = f
	}
	return out, nil
}

// faultExpect polls /metrics until every series in want has its value, and
// fails the test after d, listing the series that disagree.
func faultExpect(t testing.TB, s *testServer, d time.Duration, want map[string]float64) map[string]float64 {
	t.Helper()
	var snap map[string]float64
	var diff []string
	ok := pollUntil(d, func() bool {
		snap = faultSnapshot(t, s)
		diff = diff[:0]
		for k, v := range want {
			got, present := snap[k]
			if !present {
				got = -1
			}
			if got != v {
				diff = append(diff, fmt.Sprintf("%s = %v, want %v", k, got, v))
			}
		}
		return len(diff) == 0
	})
	if !ok {
		sort.Strings(diff)
		t.Fatalf("/metrics after %v:\n\t%s", d, strings.Join(diff, "\n\t"))
	}
	return snap
}

var probeSeq atomic.Int64

// faultProbe checks that the server still serves a healthy client: it
// connects, subscribes, publishes an event only that subscription selects,
// receives it, unsubscribes and closes with a close handshake. On /metrics
// it adds one connection (closed as client_closed), one accepted and
// broadcast event, and no subscription.
func faultProbe(t testing.TB, s *testServer) {
	t.Helper()
	label := "probe-" + strconv.FormatInt(probeSeq.Add(1), 10)
	c := s.dial(t, "")
	c.subscribe("probe", map[string]any{"labels": map[string]any{"probe": label}})
	ids := s.mustPublish(t, ev(`"labels":{"probe":"`+label+`"}`))
	if got := c.events(1); got[0] != ids[0] {
		t.Fatalf("probe: received event %d, published %d", got[0], ids[0])
	}
	c.send(map[string]any{"type": "unsubscribe", "subscription_id": "probe"})
	c.expect("unsubscribed")
	if err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
		time.Now().Add(5*time.Second)); err != nil {
		t.Fatalf("probe: write close: %v", err)
	}
	c.expectClose(websocket.CloseNormalClosure)
}

// ---- a raw client that returns errors, for worker goroutines ----

// wireConn is a minimal WebSocket client over TCP for worker goroutines
// (which must not call t.Fatal): the upgrade request and the first frames
// go out in one write, and it reads just enough to know where it stands.
type wireConn struct {
	c   *net.TCPConn
	br  *bufio.Reader
	buf []byte
}

// wireDial connects to addr, writes out (an upgrade request, possibly
// followed by frames) and reads the 101 response's header. br is reset
// onto the connection, so a worker reuses one reader for all its cycles.
func wireDial(addr string, out []byte, br *bufio.Reader) (*wireConn, error) {
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	w := &wireConn{c: nc.(*net.TCPConn), br: br}
	_ = w.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := w.c.Write(out); err != nil {
		w.c.Close()
		return nil, fmt.Errorf("write upgrade: %w", err)
	}
	br.Reset(w.c)
	line, err := br.ReadSlice('\n')
	if err != nil {
		w.c.Close()
		return nil, fmt.Errorf("read upgrade response: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 101 ")) {
		w.c.Close()
		return nil, fmt.Errorf("upgrade answered %q", line)
	}
	for {
		line, err = br.ReadSlice('\n')
		if err != nil {
			w.c.Close()
			return nil, fmt.Errorf("read upgrade response header: %w", err)
		}
		if len(line) <= 2 { // the blank line
			return w, nil
		}
	}
}

// readFrame reads one server frame; payload is valid until the next call.
func (w *wireConn) readFrame() (h0 byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(w.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(w.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if h[1]&0x80 != 0 || n > 1<<20 {
		return 0, nil, fmt.Errorf("bad server frame header %x (length %d)", h, n)
	}
	if uint64(cap(w.buf)) < n {
		w.buf = make([]byte, n)
	}
	w.buf = w.buf[:n]
	if _, err := io.ReadFull(w.br, w.buf); err != nil {
		return 0, nil, err
	}
	return h[0], w.buf, nil
}

// expect reads frames, skipping pings, until a text message and checks
// that it has the given type.
func (w *wireConn) expect(typ string) ([]byte, error) {
	for {
		h0, p, err := w.readFrame()
		if err != nil {
			return nil, fmt.Errorf("waiting for %s: %w", typ, err)
		}
		switch h0 & 0x0f {
		case opPing:
			continue
		case opText:
			if !bytes.HasPrefix(p, []byte(`{"type":"`+typ+`"`)) {
				return nil, fmt.Errorf("waiting for %s: got %q", typ, p)
			}
			return p, nil
		}
		return nil, fmt.Errorf("waiting for %s: got frame %#x %q", typ, h0, p)
	}
}

// reset closes the connection with a TCP RST (SO_LINGER 0): no FIN, no
// TIME_WAIT, the peer's unread data is thrown away.
func (w *wireConn) reset() {
	_ = w.c.SetLinger(0)
	_ = w.c.Close()
}

// wireCycles runs n connect / subscribe / reset cycles on workers
// goroutines: each writes the upgrade request and frame(i) (a masked
// subscribe) in one write, reads the welcome and the subscribed reply, and
// resets the connection. The sessions stay, detached, for the session
// timeout.
func wireCycles(t testing.TB, s *testServer, n, workers int, frame func(i int) []byte) {
	t.Helper()
	addr := s.hostPort()
	upgrade := []byte(upgradeRequest(addr, "/ws", newWSKey()))
	var next atomic.Int64
	var errs errorList
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReaderSize(nil, 4096)
			out := slices.Clone(upgrade)
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				out = append(out[:len(upgrade)], frame(i)...)
				w, err := wireDial(addr, out, br)
				if err == nil {
					if _, err = w.expect("welcome"); err == nil {
						_, err = w.expect("subscribed")
					}
					w.reset()
				}
				if err != nil {
					errs.add(fmt.Errorf("cycle %d: %w", i, err))
				}
			}
		}()
	}
	wg.Wait()
	errs.check(t, "connect / subscribe / disconnect cycles")
}

// errorList collects worker errors, keeping the first few.
type errorList struct {
	mu    sync.Mutex
	n     int
	first []error
}

func (e *errorList) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if len(e.first) < 5 {
		e.first = append(e.first, err)
	}
}

func (e *errorList) check(t testing.TB, what string) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n > 0 {
		t.Fatalf("%d of the %s failed; first: %v", e.n, what, errors.Join(e.first...))
	}
}

// ---- the process's resources ----

// liveHeap returns the heap the last GC found live (no garbage counted).
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// heapWatch samples the live heap until stopped and reports the peak: if
// a fault made the server hold what it was sent, a GC during the fault
// finds it live.
type heapWatch struct {
	base, peak atomic.Uint64
	baseAlloc  uint64
	stop       chan struct{}
	done       chan struct{}
}

func watchHeap() *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w := &heapWatch{baseAlloc: ms.TotalAlloc, stop: make(chan struct{}), done: make(chan struct{})}
	w.base.Store(liveHeap())
	w.peak.Store(w.base.Load())
	go func() {
		defer close(w.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
				if h := liveHeap(); h > w.peak.Load() {
					w.peak.Store(h)
				}
			}
		}
	}()
	return w
}

// end stops the sampling and returns the peak live heap's growth over the
// baseline, the live heap's growth after a final GC, and the bytes
// allocated meanwhile.
func (w *heapWatch) end() (peakGrowth, afterGrowth int64, allocated uint64) {
	close(w.stop)
	<-w.done
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := int64(w.base.Load())
	return int64(max(w.peak.Load(), liveHeap())) - base, int64(liveHeap()) - base, ms.TotalAlloc - w.baseAlloc
}

// openFDs counts this process's open file descriptors: client and server
// sockets alike, since both live here.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count file descriptors: %v", err)
	}
	return len(ents)
}

// closeIdleHTTP drops the keep-alive connections of /metrics polling, so
// that they do not count as leaked goroutines or descriptors.
func closeIdleHTTP() { http.DefaultClient.CloseIdleConnections() }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// ---- tests ----

// TestFaultClientVanishesMidFrame: clients stop in the middle of a frame
// (in its header, its extended length, its mask key, its payload, and in
// the continuation of a fragmented message) and reset the connection. Each
// is counted once as connection_lost, its partial frame and session are
// freed, and nothing is mistaken for a protocol error.
func TestFaultClientVanishesMidFrame(t *testing.T) {
	s := startServer(t, func(c *engine.Config) {
		c.SessionTimeout = 2 * time.Second // detached sessions (and their subscriptions) go soon
		c.CleanupInterval = 100 * time.Millisecond
	})
	big := maskedText(`{"type":"subscribe","subscription_id":"big","filters":{"sources":["` +
		strings.Repeat("s", 1000) + `"]}}`) // a 16-bit extended length
	first := wsFrameBytes(false, 0, opText, []byte(`{"type":"subscribe",`), true)
	cont := wsFrameBytes(true, 0, opCont, []byte(`"subscription_id":"frag","filters":{}}`), true)
	cuts := []struct {
		name string
		tail []byte
	}{
		{"header", big[:1]},
		{"extended length", big[:3]},
		{"mask key", big[:6]},
		{"payload", big[:len(big)/2]},
		{"continuation", append(slices.Clone(first), cont[:len(cont)-7]...)},
	}
	const perCut = 8
	ping := wsFrameBytes(true, 0, opPing, []byte("mid"), true)
	for _, cut := range cuts {
		for i := range perCut {
			r := s.rawDial(t, false)
			r.write(maskedText(`{"type":"subscribe","subscription_id":"v` + strconv.Itoa(i) + `","filters":{"sources":["vanish"]}}`))
			if m := r.readJSON(); m["type"] != "subscribed" {
				t.Fatalf("%s: got %v, want subscribed", cut.name, m)
			}
			// A ping and the partial frame in one write: the pong shows the
			// server read past the ping, with the partial frame behind it.
			r.write(append(slices.Clone(ping), cut.tail...))
			if f := r.mustFrame(); f.op != opPong || string(f.payload) != "mid" {
				t.Fatalf("%s: got op=%d %q, want the pong", cut.name, f.op, f.payload)
			}
			tc := r.c.(*net.TCPConn)
			_ = tc.SetLinger(0)
			_ = tc.Close()
		}
	}
	n := float64(len(cuts) * perCut)
	faultExpect(t, s, 10*time.Second, map[string]float64{
		fmActive:                    0,
		fmTotal:                     n,
		fmClosed("connection_lost"): n,
		fmClosed("protocol_error"):  0,
		fmClosed("client_closed"):   0,
		fmRejected:                  0,
	})
	// The sessions outlive their connections for the session timeout; then
	// the sweep drops them and their subscriptions leave the index.
	faultExpect(t, s, 10*time.Second, map[string]float64{fmSubs: 0})
	faultProbe(t, s)
	faultExpect(t, s, 5*time.Second, map[string]float64{
		fmActive: 0, fmTotal: n + 1, fmClosed("client_closed"): 1, fmClosed("connection_lost"): n, fmAccepted: 1,
	})
}

// TestFaultHalfOpenReaped: clients upgrade, subscribe, then go silent: no
// FIN, no data, pings unanswered, nothing read, as a peer whose machine
// vanished looks. Heartbeats go out, the session timeout closes each with
// `closing` session_timeout and a 1001, the active connections drop back,
// and the sweep later empties the index.
func TestFaultHalfOpenReaped(t *testing.T) {
	const timeout = 1500 * time.Millisecond
	s := startServer(t, func(c *engine.Config) {
		c.HeartbeatInterval = 100 * time.Millisecond
		c.SessionTimeout = timeout
		c.CleanupInterval = 100 * time.Millisecond
	})
	const n = 20
	conns := make([]*rawWS, n)
	start := time.Now() // before any client's last word: none may be reaped sooner than timeout after it
	for i := range conns {
		// Heartbeats come often here: the client skips any that arrive
		// before its welcome and subscribed reply.
		sub := maskedText(`{"type":"subscribe","subscription_id":"h","filters":{"incident_ids":["INC-half-` + strconv.Itoa(i) + `"]}}`)
		w, err := wireDial(s.hostPort(), append([]byte(upgradeRequest(s.hostPort(), "/ws", newWSKey())), sub...), bufio.NewReader(nil))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.c.Close() })
		for _, typ := range []string{"welcome", "subscribed"} {
			if _, err := w.expect(typ); err != nil {
				t.Fatal(err)
			}
		}
		r := &rawWS{t: t, c: w.c, br: w.br}
		conns[i] = r
	}
	faultExpect(t, s, 5*time.Second, map[string]float64{fmActive: n, fmSubs: n, fmTotal: n})
	faultExpect(t, s, 10*time.Second, map[string]float64{
		fmActive:                    0,
		fmClosed("session_timeout"): n,
		fmClosed("connection_lost"): 0,
	})
	if el := time.Since(start); el < timeout {
		t.Errorf("all reaped %v after the first connected, before the session timeout %v", el, timeout)
	}
	// What each silent client would have read: heartbeats, then the goodbye.
	for i, r := range conns {
		pings := 0
		for {
			f, err := r.readFrame(5 * time.Second)
			if err != nil {
				t.Fatalf("client %d after %d pings: %v", i, pings, err)
			}
			if f.op == opPing {
				pings++
				continue
			}
			if f.op != opText || !bytes.Equal(f.payload, []byte(`{"type":"closing","reason":"session_timeout"}`)) {
				t.Fatalf("client %d: got op=%d %q, want closing session_timeout", i, f.op, f.payload)
			}
			break
		}
		if pings == 0 {
			t.Errorf("client %d was reaped without a heartbeat ping first", i)
		}
		r.expectClose(1001)
	}
	faultExpect(t, s, 10*time.Second, map[string]float64{fmSubs: 0})
	faultProbe(t, s)
	faultExpect(t, s, 5*time.Second, map[string]float64{
		fmActive: 0, fmTotal: n + 1, fmClosed("client_closed"): 1, fmClosed("session_timeout"): n,
	})
}

// TestFaultSlowlorisUpgrade: many connections trickle an upgrade request a
// byte at a time, far slower than the handshake timeout allows. The server
// closes each without an answer and counts it, while a client that is slow
// but finishes in time is upgraded, and a healthy client is served
// throughout.
func TestFaultSlowlorisUpgrade(t *testing.T) {
	const timeout = time.Second
	s := startServer(t, func(c *engine.Config) { c.HandshakeTimeout = timeout })
	req := []byte(upgradeRequest(s.hostPort(), "/ws", newWSKey()))
	const attackers = 16
	type result struct {
		sent    int
		got     []byte
		err     error
		elapsed time.Duration
	}
	results := make(chan result, attackers)
	for range attackers {
		go func() {
			start := time.Now()
			c, err := net.DialTimeout("tcp", s.hostPort(), 5*time.Second)
			if err != nil {
				results <- result{err: err}
				return
			}
			defer c.Close()
			var sent atomic.Int64
			go func() {
				for i := range req {
					if _, err := c.Write(req[i : i+1]); err != nil {
						return
					}
					sent.Store(int64(i + 1))
					time.Sleep(100 * time.Millisecond) // the attack: 15 s for the whole request
				}
			}()
			_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
			got, err := io.ReadAll(c)
			results <- result{sent: int(sent.Load()), got: got, err: err, elapsed: time.Since(start)}
		}()
	}

	// A client slow in its own way: its request comes in three parts, well
	// within the timeout.
	c := s.dialTCP(t)
	third := len(req) / 3
	for _, part := range [][]byte{req[:third], req[third : 2*third], req[2*third:]} {
		if _, err := c.Write(part); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	legit := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(legit.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("a request sent in three parts within the timeout: %v %v", resp, err)
	}
	if m := legit.readJSON(); m["type"] != "welcome" {
		t.Fatalf("got %v, want welcome", m)
	}
	faultProbe(t, s) // served while the attack goes on

	for range attackers {
		r := <-results
		var ne net.Error
		switch {
		case errors.As(r.err, &ne) && ne.Timeout():
			t.Fatalf("a trickling handshake was still open after %v (%d bytes sent)", r.elapsed, r.sent)
		case r.err != nil && !errors.Is(r.err, io.EOF) && !errors.Is(r.err, net.ErrClosed) && !isConnReset(r.err):
			t.Fatalf("slowloris connection: %v", r.err)
		case len(r.got) != 0:
			t.Fatalf("the server answered a trickling handshake with %q; it should just close", r.got)
		case r.sent >= len(req):
			t.Fatalf("the whole request went out (%d bytes in %v) before the server closed", r.sent, r.elapsed)
		}
	}
	legit.write(wsFrameBytes(true, 0, opClose, []byte{0x03, 0xe8}, true))
	legit.expectClose(1000)
	faultExpect(t, s, 5*time.Second, map[string]float64{
		fmRefused("handshake_timeout"): attackers,
		fmRejected:                     attackers,
		fmTotal:                        2, // the slow client and the probe
		fmClosed("client_closed"):      2,
		fmActive:                       0,
	})
	faultProbe(t, s)
}

// TestFaultResetDuringUpgrade: clients write an upgrade request and reset
// the connection at once, before the answer. Whether or not the server
// upgraded a connection before it noticed the reset, nothing of it may
// stay: no active connection, no session attached to a dead connection.
func TestFaultResetDuringUpgrade(t *testing.T) {
	s := startServer(t, nil)
	req := []byte(upgradeRequest(s.hostPort(), "/ws", newWSKey()))
	const n = 200
	for range n {
		c := s.dialTCP(t)
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		tc := c.(*net.TCPConn)
		_ = tc.SetLinger(0)
		_ = tc.Close()
	}
	// Every connection the server upgraded is also closed (connection_lost).
	var snap map[string]float64
	if !pollUntil(10*time.Second, func() bool {
		snap = faultSnapshot(t, s)
		return snap[fmActive] == 0 && snap[fmClosed("connection_lost")] == snap[fmTotal]
	}) {
		t.Fatalf("after %d upgrade requests reset at once: %s = %v (want 0), %s = %v, connection_lost = %v (want equal)",
			n, fmActive, snap[fmActive], fmTotal, snap[fmTotal], snap[fmClosed("connection_lost")])
	}
	t.Logf("%v of %d upgraded before the reset", snap[fmTotal], n)
	faultProbe(t, s)
}

func isConnReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// TestFaultFloodConnectDisconnect: several goroutines open and drop
// connections as fast as they can, in every way a connection can end: a
// close handshake, a FIN, a reset, a connect with nothing sent, and an
// upgrade request followed at once by a reset. Every connection is
// accounted for on /metrics, none stays active, the sessions and their
// subscriptions expire, and the file descriptors return to their baseline.
func TestFaultFloodConnectDisconnect(t *testing.T) {
	s := startServer(t, func(c *engine.Config) {
		c.SessionTimeout = 2 * time.Second
		c.CleanupInterval = 100 * time.Millisecond
	})
	s.metricsText(t)
	closeIdleHTTP()
	fdBase := openFDs(t)

	const (
		cycles  = 2000
		workers = 8
		modes   = 5
	)
	addr := s.hostPort()
	upgrade := []byte(upgradeRequest(addr, "/ws", newWSKey()))
	withSub := append(slices.Clone(upgrade),
		maskedText(`{"type":"subscribe","subscription_id":"f","filters":{"severities":["P1"],"sources":["flood"]}}`)...)
	closeFrame := wsFrameBytes(true, 0, opClose, []byte{0x03, 0xe8}, true)
	cycle := func(i int, br *bufio.Reader) error {
		switch i % modes {
		case 0: // close handshake
			w, err := wireDial(addr, upgrade, br)
			if err != nil {
				return err
			}
			defer w.c.Close()
			if _, err := w.expect("welcome"); err != nil {
				return err
			}
			if _, err := w.c.Write(closeFrame); err != nil {
				return err
			}
			for {
				h0, p, err := w.readFrame()
				if err != nil {
					return fmt.Errorf("waiting for the close reply: %w", err)
				}
				if h0&0x0f == opClose {
					if !bytes.Equal(p, []byte{0x03, 0xe8}) {
						return fmt.Errorf("close reply %x, want 1000", p)
					}
					break
				}
			}
			if _, err := w.br.ReadByte(); err != io.EOF {
				return fmt.Errorf("after the close handshake: %v, want EOF", err)
			}
			return nil
		case 1, 2: // FIN or RST after subscribing
			w, err := wireDial(addr, withSub, br)
			if err != nil {
				return err
			}
			if _, err := w.expect("welcome"); err != nil {
				w.c.Close()
				return err
			}
			if _, err := w.expect("subscribed"); err != nil {
				w.c.Close()
				return err
			}
			if i%modes == 2 {
				w.reset()
			} else {
				w.c.Close()
			}
			return nil
		case 3: // connect, send nothing, go
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				return err
			}
			return c.Close()
		default: // upgrade request, then a reset before any answer
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				return err
			}
			tc := c.(*net.TCPConn)
			_, err = tc.Write(upgrade)
			_ = tc.SetLinger(0)
			tc.Close()
			return err
		}
	}
	var next atomic.Int64
	var errs errorList
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReaderSize(nil, 4096)
			for {
				i := int(next.Add(1) - 1)
				if i >= cycles {
					return
				}
				if err := cycle(i, br); err != nil {
					errs.add(fmt.Errorf("cycle %d (mode %d): %w", i, i%modes, err))
				}
			}
		}()
	}
	wg.Wait()
	errs.check(t, "flood cycles")

	per := float64(cycles / modes)
	snap := faultExpect(t, s, 10*time.Second, map[string]float64{
		fmActive:                   0,
		fmClosed("client_closed"):  per,
		fmClosed("protocol_error"): 0,
		fmRejected:                 0,
	})
	// An upgrade request reset at once was upgraded if the server read it
	// before the reset arrived: either way it is counted consistently.
	total := snap[fmTotal]
	if total < 3*per || total > 4*per {
		t.Fatalf("%s = %v, want between %v and %v", fmTotal, total, 3*per, 4*per)
	}
	if lost := snap[fmClosed("connection_lost")]; lost != total-per {
		t.Fatalf("connection_lost = %v, want every upgraded connection but the %v closed cleanly: %v", lost, per, total-per)
	}
	t.Logf("%d cycles: %v upgraded (%v of the %v reset right after their request)", cycles, total, total-3*per, per)
	faultExpect(t, s, 10*time.Second, map[string]float64{fmSubs: 0})

	var fds int
	if !pollUntil(5*time.Second, func() bool { closeIdleHTTP(); fds = openFDs(t); return fds <= fdBase+2 }) {
		t.Fatalf("%d file descriptors open after the flood, %d before", fds, fdBase)
	}
	faultProbe(t, s)
	faultExpect(t, s, 5*time.Second, map[string]float64{
		fmActive: 0, fmTotal: total + 1, fmClosed("client_closed"): per + 1,
	})
}

// writeGarbage writes size pseudo-random bytes to c in 64 KiB chunks (one
// buffer, refilled) after prefix, and returns how many it wrote before the
// first error.
func writeGarbage(c net.Conn, prefix []byte, size int64, seed uint64) (int64, error) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 64<<10)
	var sent int64
	_ = c.SetWriteDeadline(time.Now().Add(60 * time.Second))
	if len(prefix) > 0 {
		n, err := c.Write(prefix)
		sent += int64(n)
		if err != nil {
			return sent, err
		}
	}
	for sent < size {
		for i := 0; i+8 <= len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
		}
		n, err := c.Write(buf[:min(int64(len(buf)), size-sent)])
		sent += int64(n)
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// TestFaultGarbage100MB: a client sends 100 MB of random bytes, after a
// valid upgrade and before any. The server closes it at the first bytes it
// cannot parse, with a protocol error (a close frame, or an HTTP error
// before the upgrade), reads no more of it, allocates nothing in proportion
// to it, and a subscribed client is not disturbed.
func TestFaultGarbage100MB(t *testing.T) {
	const size = 100 << 20
	s := startServer(t, nil)
	watcher := s.dial(t, "")
	watcher.subscribe("w", map[string]any{"labels": map[string]any{"watch": "garbage"}})

	type sendResult struct {
		sent int64
		err  error
	}
	cases := []struct {
		name    string
		upgrade bool
		prefix  []byte
		codes   []int // close codes (after the upgrade) or HTTP statuses (before) that are right
	}{
		{"random frames", true, nil, []int{1002, 1007, 1009}},
		// A frame header that announces 100 MB: refused before its payload.
		{"one huge frame", true, []byte{0x82, 0xff, 0, 0, 0, 0, 0x06, 0x40, 0, 0, 1, 2, 3, 4}, []int{1009}},
		{"before the upgrade", false, nil, []int{http.StatusRequestHeaderFieldsTooLarge, http.StatusBadRequest}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := faultSnapshot(t, s)
			hw := watchHeap()
			var c net.Conn
			var br *bufio.Reader
			if tc.upgrade {
				r := s.rawDial(t, false)
				c, br = r.c, r.br
			} else {
				c = s.dialTCP(t)
				br = bufio.NewReader(c)
			}
			done := make(chan sendResult, 1)
			go func() {
				n, err := writeGarbage(c, tc.prefix, size, uint64(i+1))
				done <- sendResult{n, err}
			}()
			if tc.upgrade {
				r := &rawWS{t: t, c: c, br: br}
				for {
					f, err := r.readFrame(20 * time.Second)
					if err != nil {
						t.Fatalf("waiting for the server to close: %v", err)
					}
					if f.op == opText {
						continue // e.g. UNSUPPORTED for a binary message that happened to parse
					}
					if f.op != opClose {
						t.Fatalf("got op=%d %q, want a close frame", f.op, f.payload)
					}
					if len(f.payload) < 2 || !slices.Contains(tc.codes, int(binary.BigEndian.Uint16(f.payload))) {
						t.Fatalf("close payload %q, want one of the codes %v", f.payload, tc.codes)
					}
					t.Logf("closed with %d %q", binary.BigEndian.Uint16(f.payload), f.payload[2:])
					break
				}
			} else {
				_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("waiting for the HTTP error: %v", err)
				}
				resp.Body.Close()
				if !slices.Contains(tc.codes, resp.StatusCode) {
					t.Fatalf("HTTP %d, want one of %v", resp.StatusCode, tc.codes)
				}
				t.Logf("answered HTTP %d", resp.StatusCode)
			}
			var res sendResult
			select {
			case res = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("the garbage writer is still writing 30 s after the server closed")
			}
			if res.err == nil {
				t.Fatalf("all %d bytes were accepted: the server kept reading after it closed", res.sent)
			}
			peak, after, alloc := hw.end()
			t.Logf("sent %s before the server's close stopped the writer (%v); live heap peak +%s, after GC +%s; allocated %s",
				mib(res.sent), res.err, mib(peak), mib(after), mib(int64(alloc)))
			// The server reads into its event loop's buffer and keeps
			// nothing: what it allocates is per read, not per byte. 16 MiB
			// of live heap and 32 MiB allocated leave room for the GC's
			// and the test's own noise, and are far below the 100 MB sent.
			if peak > 16<<20 {
				t.Errorf("live heap grew by %s while the garbage arrived", mib(peak))
			}
			if alloc > 32<<20 {
				t.Errorf("%s allocated while the garbage arrived", mib(int64(alloc)))
			}
			want := map[string]float64{fmActive: before[fmActive]}
			if tc.upgrade {
				want[fmClosed("protocol_error")] = before[fmClosed("protocol_error")] + 1
				want[fmRejected] = before[fmRejected]
			} else {
				want[fmRejected] = before[fmRejected] + 1
				want[fmClosed("protocol_error")] = before[fmClosed("protocol_error")]
			}
			snap := faultExpect(t, s, 5*time.Second, want)
			if !tc.upgrade {
				got := snap[fmRefused("header_too_large")] + snap[fmRefused("bad_request")]
				was := before[fmRefused("header_too_large")] + before[fmRefused("bad_request")]
				if got != was+1 {
					t.Errorf("refused header_too_large + bad_request = %v, want %v", got, was+1)
				}
			}
			// The subscribed client is unaffected.
			ids := s.mustPublish(t, ev(`"labels":{"watch":"garbage"}`))
			if got := watcher.events(1); got[0] != ids[0] {
				t.Fatalf("watcher received event %d, want %d", got[0], ids[0])
			}
		})
	}
	faultProbe(t, s)
	faultExpect(t, s, 5*time.Second, map[string]float64{
		fmActive: 1, fmTotal: 4, fmClosed("protocol_error"): 2, fmRejected: 1, fmClosed("client_closed"): 1,
	})
}

// TestFaultProducerDisconnectsMidLine: a producer writes some full lines
// and then part of one, and goes away (a half close, after which it reads
// its replies, or a full close without reading them). The full lines are
// accepted, in order, and reach the subscriber; the partial one never is,
// not even when it is a complete JSON object missing only its newline, or
// a line long enough to be assembled from several reads.
func TestFaultProducerDisconnectsMidLine(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.MaxMessageSize = 256 << 10 })
	line := func(name, seq, extra string) string {
		return `{"event_type":"comment_added","labels":{"midline":"` + name + `"},"seq":"` + seq + `"` + extra + `}`
	}
	cases := []struct {
		name, label string
		partial     string
		readReplies bool
	}{
		{"complete object without newline", "a", line("a", "partial", ""), true},
		{"complete object without newline, replies unread", "b", line("b", "partial", ""), false},
		{"cut inside the object", "c", line("c", "partial", "")[:30], true},
		// Longer than the ingest reader's 64 KiB buffer: assembled from pieces.
		{"long line cut", "d", line("d", "partial", `,"title":"`+strings.Repeat("x", 100<<10)+`"`), true},
	}
	var accepted float64
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := tc.label
			sub := s.dial(t, "")
			sub.subscribe("m", map[string]any{"labels": map[string]any{"midline": name}})
			p := s.dialIngest(t)
			var data strings.Builder
			for i := range 3 {
				data.WriteString(line(name, "full-"+strconv.Itoa(i), "") + "\n")
			}
			data.WriteString(tc.partial)
			p.write(data.String())
			var ids []uint64
			if tc.readReplies {
				// Gone mid-line, but still listening: a half close.
				if err := p.c.(*net.UnixConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
				for range 3 {
					r := p.reply()
					if !r.OK {
						t.Fatalf("full line refused: %s", r.raw)
					}
					ids = append(ids, r.MessageID)
				}
				if rest, err := io.ReadAll(p.br); err != nil || len(rest) != 0 {
					t.Fatalf("after the three replies: %q, %v; want the server to close", rest, err)
				}
			}
			if err := p.c.Close(); err != nil {
				t.Fatal(err)
			}
			accepted += 3
			// The fence must come after the three lines: wait until the
			// server has taken them.
			faultExpect(t, s, 5*time.Second, map[string]float64{fmAccepted: accepted, fmIngestRej: 0})
			fence := s.mustPublish(t, line(name, "fence", ""))[0]
			accepted++
			got := sub.untilEvent(fence)
			if len(got) != 3 {
				t.Fatalf("the subscriber got %d events before the fence, want the 3 full lines: %v", len(got), got)
			}
			for i, m := range got {
				e, _ := m["event"].(map[string]any)
				if e["seq"] != "full-"+strconv.Itoa(i) {
					t.Fatalf("event %d is %v, want seq full-%d", i, m, i)
				}
				if ids != nil && msgID(t, m) != ids[i] {
					t.Fatalf("event %d has message_id %d, the producer was told %d", i, msgID(t, m), ids[i])
				}
			}
			if last := msgID(t, got[2]); fence != last+1 {
				t.Fatalf("fence got message_id %d after %d: the partial line took an id", fence, last)
			}
			// Nothing of the partial line arrives after the fence either.
			fence2 := s.mustPublish(t, line(name, "fence2", ""))[0]
			accepted++
			if rest := sub.untilEvent(fence2); len(rest) != 0 {
				t.Fatalf("after the fence: %v", rest)
			}
			faultExpect(t, s, 5*time.Second, map[string]float64{fmAccepted: accepted, fmIngestRej: 0})
		})
	}
	faultProbe(t, s)
}

// TestFaultProducerRepliesBeforePartialLine: a producer that has sent two
// full lines and the start of a third gets the replies to the two full
// lines without sending more. A producer's writes need not end on a line
// boundary (a buffered writer flushes when its buffer is full), and one
// that waits for its replies before going on must not wait forever.
func TestFaultProducerRepliesBeforePartialLine(t *testing.T) {
	s := startServer(t, nil)
	p := s.dialIngest(t)
	p.write(ev(`"seq":"1"`) + "\n" + ev(`"seq":"2"`) + "\n" + `{"event_type":"incident_`)
	_ = p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range 2 {
		line, err := p.br.ReadString('\n')
		if err != nil {
			t.Fatalf("reply %d of 2 to the full lines sent before a partial one: %v (%q so far); "+
				"the ingest server waits for the rest of a partial line before answering the complete lines ahead of it", i+1, err, line)
		}
		if !strings.HasPrefix(line, `{"ok":true,`) {
			t.Fatalf("reply %d: %q", i+1, line)
		}
	}
	p.write(`updated"}` + "\n")
	if r := p.reply(); !r.OK {
		t.Fatalf("the completed third line: %s", r.raw)
	}
	faultExpect(t, s, 5*time.Second, map[string]float64{fmAccepted: 3, fmIngestRej: 0})
}

// TestFaultProducerFasterThanRing: producers pipeline 50,000 events into a
// ring of 64 faster than the dispatcher drains it. Ingest waits (the
// replies are delayed), nothing is lost: each producer gets an ok for
// every line, the message_ids are exactly 1…50,000, and a subscriber
// reading everything receives each once, in order. The ring never holds
// more than its capacity (accepted − broadcast on /metrics), and the heap
// stays bounded.
func TestFaultProducerFasterThanRing(t *testing.T) {
	const (
		ringCap   = 64
		producers = 4
	)
	// 50,000 events; under the race detector, whose instrumentation slows
	// the engine tenfold, 10,000 (they fill the ring just the same).
	perProd := 12_500
	if raceEnabled {
		perProd = 2_500
	}
	total := producers * perProd
	s := startServer(t, func(c *engine.Config) {
		c.BroadcastCapacity = ringCap
		c.HistorySize = 1024 // the replay window is not what this test measures
		// Nor is the slow-consumer bound: at the server's full rate, a
		// loaded machine that leaves the subscriber's goroutine unscheduled
		// for a tenth of a second trips the default 1,000. 10,000 (under a
		// second of lag) keeps the test about the ring, and still bounds
		// the subscriber's backlog well below the 50,000 events.
		c.MaxPendingMessages = 10_000
	})
	// For the ring to fill, the dispatcher must be the slowest stage, and
	// for nothing to be lost the subscriber must keep up with it, on any
	// machine: 2,000 sessions whose connections are gone (waiting, detached,
	// to be resumed) match every event, which the dispatcher pays for on
	// each event and the subscriber does not.
	const parked = 2000
	matchAll := maskedText(`{"type":"subscribe","subscription_id":"p","filters":{}}`)
	wireCycles(t, s, parked, 8, func(int) []byte { return matchAll })
	sub := newWireSubscriber(t, s)
	faultExpect(t, s, 10*time.Second, map[string]float64{fmSubs: parked + 1, fmActive: 1})

	hw := watchHeap()
	// Ring occupancy as /metrics shows it: accepted is written before
	// broadcast (the series are sorted by name), so accepted − broadcast
	// never exceeds what the ring holds.
	var maxOcc, atCap, samples atomic.Int64
	stopOcc := make(chan struct{})
	occDone := make(chan struct{})
	go func() {
		defer close(occDone)
		for {
			select {
			case <-stopOcc:
				return
			case <-time.After(10 * time.Millisecond):
			}
			snap, err := scrape(s.admin)
			if err != nil {
				continue
			}
			occ := int64(snap[fmAccepted] - snap[fmBroadcast])
			samples.Add(1)
			if occ >= ringCap {
				atCap.Add(1)
			}
			if occ > maxOcc.Load() {
				maxOcc.Store(occ)
			}
		}
	}()

	title := strings.Repeat("lorem ipsum dolor sit amet ", 20)
	replies := make([][]uint64, producers)
	var errs errorList
	var wg sync.WaitGroup
	for p := range producers {
		c, err := net.DialTimeout("unix", s.socket, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(120 * time.Second))
		wg.Add(2)
		go func() { // writer: every line at once, as fast as the socket takes them
			defer wg.Done()
			w := bufio.NewWriterSize(c, 64<<10)
			for i := range perProd {
				fmt.Fprintf(w, `{"event_type":"comment_added","source":"p%d","labels":{"seq":"%d"},"title":%q}`+"\n", p, i, title)
			}
			if err := w.Flush(); err != nil {
				errs.add(fmt.Errorf("producer %d: write: %w", p, err))
			}
		}()
		go func() { // reader: one ok per line, ids increasing
			defer wg.Done()
			br := bufio.NewReader(c)
			ids := make([]uint64, 0, perProd)
			for range perProd {
				line, err := br.ReadSlice('\n')
				if err != nil {
					errs.add(fmt.Errorf("producer %d: reply %d: %w", p, len(ids), err))
					return
				}
				rest, ok := bytes.CutPrefix(line, []byte(`{"ok":true,"message_id":`))
				id, err := strconv.ParseUint(string(bytes.TrimSuffix(rest, []byte("}\n"))), 10, 64)
				if !ok || err != nil {
					errs.add(fmt.Errorf("producer %d: reply %q", p, line))
					return
				}
				if n := len(ids); n > 0 && id <= ids[n-1] {
					errs.add(fmt.Errorf("producer %d: message_id %d after %d", p, id, ids[n-1]))
					return
				}
				ids = append(ids, id)
			}
			replies[p] = ids
		}()
	}
	wg.Wait()
	errs.check(t, "producers")
	got := sub.waitFor(t, total)
	close(stopOcc)
	<-occDone
	peak, after, _ := hw.end()

	all := slices.Concat(replies...)
	slices.Sort(all)
	for i, id := range all {
		if id != uint64(i+1) {
			t.Fatalf("accepted message_ids: position %d holds %d, want 1…%d without gap or repeat", i, id, total)
		}
	}
	if len(got) != total {
		t.Fatalf("subscriber received %d events, want %d", len(got), total)
	}
	for i, id := range got {
		if id != uint64(i+1) {
			t.Fatalf("subscriber: event %d has message_id %d, want %d (each once, in order)", i, id, i+1)
		}
	}
	t.Logf("ring occupancy (accepted − broadcast): max %d of %d; at capacity in %d of %d samples",
		maxOcc.Load(), ringCap, atCap.Load(), samples.Load())
	t.Logf("live heap: peak +%s, after GC +%s", mib(peak), mib(after))
	if m := maxOcc.Load(); m > ringCap {
		t.Errorf("accepted − broadcast reached %d: the ring held more than its capacity %d", m, ringCap)
	}
	// 50,000 events of ~700 bytes are 35 MB as lines and about 90 MB as
	// parsed events and frames; a bounded pipeline holds 64 in the ring,
	// 1,024 in the history and at most 10,000 in the subscriber's queue
	// (about 18 MB, if the subscriber ever lags that far).
	if peak > 48<<20 {
		t.Errorf("live heap grew by %s while %d events went through", mib(peak), total)
	}
	faultExpect(t, s, 5*time.Second, map[string]float64{
		fmAccepted: float64(total), fmBroadcast: float64(total), fmDelivered: float64(total), fmSlow: 0, fmIngestRej: 0,
	})
	sub.close(t)
	faultProbe(t, s)
}

// wireSubscriber is a raw subscriber that reads every event as fast as it
// can and records the message_ids (it inflates compressed ones, should a
// test negotiate permessage-deflate).
type wireSubscriber struct {
	w    *wireConn
	mu   sync.Mutex
	ids  []uint64
	err  error
	done chan struct{}
}

func newWireSubscriber(t testing.TB, s *testServer) *wireSubscriber {
	t.Helper()
	req := upgradeRequest(s.hostPort(), "/ws", newWSKey())
	out := append([]byte(req), maskedText(`{"type":"subscribe","subscription_id":"all","filters":{}}`)...)
	w, err := wireDial(s.hostPort(), out, bufio.NewReaderSize(nil, 64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.c.Close() })
	_ = w.c.SetDeadline(time.Now().Add(120 * time.Second))
	if _, err := w.expect("welcome"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.expect("subscribed"); err != nil {
		t.Fatal(err)
	}
	ws := &wireSubscriber{w: w, done: make(chan struct{})}
	go ws.run()
	return ws
}

func (ws *wireSubscriber) run() {
	defer close(ws.done)
	var inflated []byte
	prefix := []byte(`{"type":"event","message_id":`)
	for {
		h0, p, err := ws.w.readFrame()
		if err != nil {
			ws.mu.Lock()
			ws.err = err
			ws.mu.Unlock()
			return
		}
		if h0&0x0f != opText {
			continue
		}
		if h0&0x40 != 0 { // RSV1: compressed
			if inflated, err = codec.Inflate(inflated[:0], p, 1<<20); err != nil {
				ws.mu.Lock()
				ws.err = fmt.Errorf("inflate: %w", err)
				ws.mu.Unlock()
				return
			}
			p = inflated
		}
		rest, ok := bytes.CutPrefix(p, prefix)
		if !ok {
			ws.mu.Lock()
			ws.err = fmt.Errorf("unexpected message %q", p)
			ws.mu.Unlock()
			return
		}
		end := bytes.IndexByte(rest, ',')
		id, err := strconv.ParseUint(string(rest[:max(end, 0)]), 10, 64)
		ws.mu.Lock()
		if err != nil {
			ws.err = fmt.Errorf("event without message_id: %q", p)
			ws.mu.Unlock()
			return
		}
		ws.ids = append(ws.ids, id)
		ws.mu.Unlock()
	}
}

// waitFor waits until n events have arrived and returns their ids.
func (ws *wireSubscriber) waitFor(t testing.TB, n int) []uint64 {
	t.Helper()
	var got int
	var err error
	ok := pollUntil(60*time.Second, func() bool {
		ws.mu.Lock()
		defer ws.mu.Unlock()
		got, err = len(ws.ids), ws.err
		return got >= n || err != nil
	})
	if err != nil {
		t.Fatalf("subscriber stopped after %d events: %v", got, err)
	}
	if !ok {
		t.Fatalf("subscriber has %d events after 60s, want %d", got, n)
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return slices.Clone(ws.ids)
}

// close ends the subscriber with a close handshake (client_closed).
func (ws *wireSubscriber) close(t testing.TB) {
	t.Helper()
	if _, err := ws.w.c.Write(wsFrameBytes(true, 0, opClose, []byte{0x03, 0xe8}, true)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ws.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not close the subscriber after its close frame")
	}
}
