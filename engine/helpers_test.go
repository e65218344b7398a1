package engine_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Helpers shared by the integration tests, on top of harness_test.go:
// metric polling, reading until a fence event, and a raw TCP WebSocket
// client that writes its own frames.

// pollUntil polls cond every 10ms until it holds or d passes, and reports
// whether it held.
func pollUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metricsText returns the body of /metrics.
func (s *testServer) metricsText(t testing.TB) string {
	t.Helper()
	resp, err := http.Get(s.admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: HTTP %d", resp.StatusCode)
	}
	return string(body)
}

// waitMetric polls /metrics until series equals want, and fails the test
// with the last value seen if it does not within 5s. It then checks that
// the value stays put for a moment (a counter that overshoots is a bug too).
func (s *testServer) waitMetric(t testing.TB, series string, want float64) {
	t.Helper()
	var got float64
	if !pollUntil(5*time.Second, func() bool { got = s.metric(t, series); return got == want }) {
		t.Fatalf("metric %s = %v, want %v", series, got, want)
	}
}

// metricEquals checks series once, without waiting.
func (s *testServer) metricEquals(t testing.TB, series string, want float64) {
	t.Helper()
	if got := s.metric(t, series); got != want {
		t.Errorf("metric %s = %v, want %v", series, got, want)
	}
}

// dialGorilla opens a WebSocket without reading the welcome.
func (s *testServer) dialGorilla(t testing.TB, d *websocket.Dialer) (*websocket.Conn, *http.Response) {
	t.Helper()
	if d == nil {
		d = websocket.DefaultDialer
	}
	ws, resp, err := d.Dial(s.wsURL, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", s.wsURL, err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws, resp
}

// readRaw returns the next message's bytes, failing the test after timeout.
func (c *client) readRaw(timeout time.Duration) []byte {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(timeout))
	_, data, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return data
}

// untilEvent reads messages until the event with message_id fence arrives
// and returns every event before it (the fence excluded) in arrival order.
// Any non-event message fails the test.
func (c *client) untilEvent(fence uint64) []map[string]any {
	c.t.Helper()
	var out []map[string]any
	for {
		m := c.read(10 * time.Second)
		if m["type"] != "event" {
			c.t.Fatalf("waiting for event %d: got a non-event message %v", fence, m)
		}
		id := msgID(c.t, m)
		if id == fence {
			return out
		}
		out = append(out, m)
	}
}

func msgID(t testing.TB, m map[string]any) uint64 {
	t.Helper()
	switch v := m["message_id"].(type) {
	case float64:
		if v >= 1 && v == float64(uint64(v)) {
			return uint64(v)
		}
	case json.Number:
		if n, err := strconv.ParseUint(string(v), 10, 64); err == nil && n >= 1 {
			return n
		}
	}
	t.Fatalf("message without a positive integer message_id: %v", m)
	return 0
}

// expectError reads the next message and checks it is an error with code
// whose message contains every one of substrings.
func (c *client) expectError(code string, substrings ...string) map[string]any {
	c.t.Helper()
	m := c.expect("error")
	if m["code"] != code {
		c.t.Fatalf("want error %s, got %v", code, m)
	}
	msg, _ := m["message"].(string)
	if msg == "" {
		c.t.Fatalf("error without a message: %v", m)
	}
	for _, sub := range substrings {
		if !strings.Contains(msg, sub) {
			c.t.Fatalf("error message %q does not mention %q", msg, sub)
		}
	}
	return m
}

// expectClose reads until the server's close frame and checks its code.
// Text messages before it are returned.
func (c *client) expectClose(code int) []map[string]any {
	c.t.Helper()
	var msgs []map[string]any
	for {
		_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				c.t.Fatalf("want a close frame with code %d, got error %v (after %d messages)", code, err, len(msgs))
			}
			if ce.Code != code {
				c.t.Fatalf("close code %d (%q), want %d", ce.Code, ce.Text, code)
			}
			return msgs
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			c.t.Fatalf("server sent invalid JSON %q", data)
		}
		msgs = append(msgs, m)
	}
}

// ---- raw TCP WebSocket client ----

// rawWS is a WebSocket client that writes its own frames over TCP, for the
// protocol cases a library client refuses to produce.
type rawWS struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

type wsFrame struct {
	fin     bool
	rsv     byte
	op      byte
	masked  bool
	payload []byte
}

const (
	opCont   = 0x0
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xA
)

func (s *testServer) hostPort() string {
	u, _ := url.Parse(s.wsURL)
	return u.Host
}

// dialTCP opens a TCP connection to the WebSocket listener.
func (s *testServer) dialTCP(t testing.TB) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.hostPort(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial tcp: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newWSKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

func upgradeRequest(host, path, key string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: " + host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
}

// rawDial upgrades a raw TCP connection (one byte per write when
// byteByByte), checks the 101 response and reads the welcome message.
func (s *testServer) rawDial(t testing.TB, byteByByte bool) *rawWS {
	t.Helper()
	return s.rawUpgrade(t, s.dialTCP(t), byteByByte)
}

// rawUpgrade upgrades c, a fresh TCP connection to s, and reads the welcome.
func (s *testServer) rawUpgrade(t testing.TB, c net.Conn, byteByByte bool) *rawWS {
	t.Helper()
	key := newWSKey()
	req := []byte(upgradeRequest(s.hostPort(), "/ws", key))
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if byteByByte {
		writeBytewise(t, c, req)
	} else if _, err := c.Write(req); err != nil {
		t.Fatalf("write upgrade: %v", err)
	}
	r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		t.Fatalf("read upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: HTTP %d, want 101", resp.StatusCode)
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != wsAccept(key) {
		t.Fatalf("Sec-WebSocket-Accept %q, want %q", got, wsAccept(key))
	}
	if m := r.readJSON(); m["type"] != "welcome" {
		t.Fatalf("first message %v, want welcome", m)
	}
	return r
}

// wsFrameBytes encodes one client frame. Masked frames get a random key.
func wsFrameBytes(fin bool, rsv, op byte, payload []byte, masked bool) []byte {
	b0 := op | rsv<<4
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	var mbit byte
	if masked {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		out = append(out, mbit|byte(n))
	case n <= 0xffff:
		out = append(out, mbit|126)
		out = binary.BigEndian.AppendUint16(out, uint16(n))
	default:
		out = append(out, mbit|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	if !masked {
		return append(out, payload...)
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	out = append(out, key[:]...)
	for i, b := range payload {
		out = append(out, b^key[i%4])
	}
	return out
}

// maskedText is a masked, final text frame.
func maskedText(payload string) []byte { return wsFrameBytes(true, 0, opText, []byte(payload), true) }

// writeBytewise writes b one byte per write, pausing a millisecond after
// each so that the server gets the bytes in many separate reads (TCP_NODELAY
// is on). The pause synchronises nothing; it only defeats coalescing.
func writeBytewise(t testing.TB, c net.Conn, b []byte) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	for i := range b {
		if _, err := c.Write(b[i : i+1]); err != nil {
			t.Fatalf("write byte %d of %d: %v", i, len(b), err)
		}
		time.Sleep(time.Millisecond)
	}
}

func (r *rawWS) write(b []byte) {
	r.t.Helper()
	_ = r.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("raw write: %v", err)
	}
}

// readFrame reads one server frame; server frames must not be masked.
func (r *rawWS) readFrame(timeout time.Duration) (wsFrame, error) {
	_ = r.c.SetReadDeadline(time.Now().Add(timeout))
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return wsFrame{}, err
	}
	f := wsFrame{fin: h[0]&0x80 != 0, rsv: (h[0] >> 4) & 7, op: h[0] & 0x0f, masked: h[1]&0x80 != 0}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return f, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return f, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if f.masked {
		return f, fmt.Errorf("server sent a masked frame")
	}
	if n > 16<<20 {
		return f, fmt.Errorf("server frame of %d bytes", n)
	}
	f.payload = make([]byte, n)
	if _, err := io.ReadFull(r.br, f.payload); err != nil {
		return f, err
	}
	return f, nil
}

func (r *rawWS) mustFrame() wsFrame {
	r.t.Helper()
	f, err := r.readFrame(5 * time.Second)
	if err != nil {
		r.t.Fatalf("read frame: %v", err)
	}
	return f
}

// readJSON reads the next frame, which must be a final text frame holding a JSON object.
func (r *rawWS) readJSON() map[string]any {
	r.t.Helper()
	f := r.mustFrame()
	if f.op != opText || !f.fin || f.rsv != 0 {
		r.t.Fatalf("want a final text frame, got op=%d fin=%v rsv=%d payload %q", f.op, f.fin, f.rsv, f.payload)
	}
	var m map[string]any
	if err := json.Unmarshal(f.payload, &m); err != nil {
		r.t.Fatalf("server sent invalid JSON %q", f.payload)
	}
	return m
}

// expectClose reads frames until a close frame, checks its status code,
// and then checks that the server closes the TCP connection.
func (r *rawWS) expectClose(code int) {
	r.t.Helper()
	for {
		f, err := r.readFrame(5 * time.Second)
		if err != nil {
			r.t.Fatalf("want a close frame with code %d, got %v", code, err)
		}
		if f.op != opClose {
			continue
		}
		if code == 0 {
			if len(f.payload) != 0 {
				r.t.Fatalf("want an empty close frame, got payload %q", f.payload)
			}
		} else {
			if len(f.payload) < 2 {
				r.t.Fatalf("close frame without a status code (payload %q), want %d", f.payload, code)
			}
			if got := int(binary.BigEndian.Uint16(f.payload)); got != code {
				r.t.Fatalf("close code %d (%q), want %d", got, f.payload[2:], code)
			}
		}
		r.expectEOF()
		return
	}
}

// expectEOF checks the server closes the connection (nothing more but EOF).
func (r *rawWS) expectEOF() {
	r.t.Helper()
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(r.br)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		r.t.Fatalf("server did not close the connection (read %d more bytes)", len(rest))
	case len(rest) > 0:
		r.t.Fatalf("%d unexpected bytes after the close frame: %q", len(rest), rest)
	}
}

// ---- raw HTTP ----

type rawResponse struct {
	status int
	header http.Header
	body   string
	closed bool // the server closed the connection after the response
}

// rawHTTP writes req on a fresh TCP connection to addr and reads one
// response, with deadlines so that a server that hangs fails the test.
func rawHTTP(t testing.TB, addr, req string) rawResponse {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response to %q: %v", firstLineOf(req), err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	resp.Body.Close()
	out := rawResponse{status: resp.StatusCode, header: resp.Header, body: string(body)}
	// Closed: EOF (or a reset) before the deadline, with nothing more sent.
	rest, err := io.ReadAll(br)
	var ne net.Error
	out.closed = len(rest) == 0 && !(errors.As(err, &ne) && ne.Timeout())
	return out
}

func firstLineOf(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}

// ---- events ----

// eventLine builds an ingest line from a JSON object literal's fields.
func eventLine(fields map[string]any) string {
	b, err := json.Marshal(fields)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// decodeObject decodes a JSON object, failing the test otherwise.
func decodeObject(t testing.TB, b []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("invalid JSON object %q: %v", b, err)
	}
	return m
}

func itoa(i int) string { return strconv.Itoa(i) }
