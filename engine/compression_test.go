package engine_test

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/engine"
)

// permessage-deflate (issue 4) with real clients: gorilla/websocket and
// the Node.js `ws` package negotiate it and get correct events, small ones
// plain and large ones compressed, and their compressed messages are
// understood; a zip bomb gets 1009 without costing the server memory;
// clients that do not offer the extension, and servers with --compression
// false, exchange plain frames.

// countingConn counts the bytes that cross a client connection, to tell a
// compressed message from a plain one when the library hides RSV1.
type countingConn struct {
	net.Conn
	read, written atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// compressingDialer is a gorilla dialer offering permessage-deflate whose
// connection is counted.
func compressingDialer(counted **countingConn) *websocket.Dialer {
	return &websocket.Dialer{
		EnableCompression: true,
		HandshakeTimeout:  5 * time.Second,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			cc := &countingConn{Conn: nc}
			*counted = cc
			return cc, nil
		},
	}
}

// deflateExtensionOK checks the server's Sec-WebSocket-Extensions answer:
// permessage-deflate without context takeover in either direction.
func deflateExtensionOK(t testing.TB, header string) {
	t.Helper()
	for _, want := range []string{"permessage-deflate", "server_no_context_takeover", "client_no_context_takeover"} {
		if !strings.Contains(header, want) {
			t.Fatalf("Sec-WebSocket-Extensions %q does not contain %s", header, want)
		}
	}
}

// compressible is text that deflates to a small fraction of its size.
func compressible(n int) string {
	return strings.Repeat("incident escalated to the on-call engineer; ", n/44+1)[:n]
}

// manySources is a filter long enough to be worth compressing.
func manySources(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("service-%03d.production.example", i)
	}
	return out
}

// TestCompressionGorilla: gorilla/websocket with EnableCompression
// negotiates the extension, receives small events plain and large ones
// compressed (told apart by the bytes on the wire), decodes both
// correctly, and its own compressed messages are understood.
func TestCompressionGorilla(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) { c.CompressionMinSize = 256 })
	var cc *countingConn
	ws, resp, err := compressingDialer(&cc).Dial(s.wsURL, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	deflateExtensionOK(t, resp.Header.Get("Sec-WebSocket-Extensions"))
	c := &client{t: t, ws: ws}
	c.expect("welcome")

	// A compressed subscribe: gorilla compresses every data message once
	// write compression is on.
	ws.EnableWriteCompression(true)
	sources := manySources(60)
	sub, _ := json.Marshal(map[string]any{"type": "subscribe", "subscription_id": "z", "filters": map[string]any{"sources": sources}})
	before := cc.written.Load()
	c.send(string(sub))
	if wire := cc.written.Load() - before; wire*2 > int64(len(sub)) {
		t.Fatalf("the subscribe (%d bytes) took %d bytes on the wire: gorilla did not compress it", len(sub), wire)
	}
	m := c.expect("subscribed")
	if got, _ := m["filters"].(map[string]any)["sources"].([]any); len(got) != len(sources) {
		t.Fatalf("subscribed echoes %d sources, want %d: %v", len(got), len(sources), m)
	}

	type sent struct {
		text       string
		compressed bool
	}
	cases := []sent{
		{"short", false},
		{compressible(10000), true},
		{"tiny", false},
		{compressible(3000) + "x", true},
		{compressible(5000) + "y", true}, // no context takeover: each message stands alone
	}
	for i, tc := range cases {
		id := s.mustPublish(t, evUpdated(fmt.Sprintf(`"source":%q,"n":%d,"text":%q`, sources[i], i, tc.text)))[0]
		r0 := cc.read.Load()
		raw := c.readRaw(5 * time.Second)
		wire := cc.read.Load() - r0
		m := decodeObject(t, raw)
		ev, _ := m["event"].(map[string]any)
		if m["type"] != "event" || msgID(t, m) != id || ev["text"] != tc.text || ev["source"] != sources[i] {
			t.Fatalf("event %d: got %.200s", i, raw)
		}
		switch {
		case tc.compressed && wire*4 > int64(len(raw)):
			t.Errorf("event %d (%d bytes) took %d bytes on the wire: not compressed", i, len(raw), wire)
		case !tc.compressed && wire < int64(len(raw)):
			t.Errorf("event %d (%d bytes, under compression-min-size) took only %d bytes on the wire: compressed", i, len(raw), wire)
		}
	}
	// A compressed ack, then a compressed unsubscribe of an unknown
	// subscription: the error proves both were read.
	if extra := c.ackBarrier(1); len(extra) > 0 {
		t.Fatalf("unexpected events %v", extra)
	}
	s.waitMetric(t, "websocket_acks_received_total", 1)
}

// rawDeflateDial upgrades a raw TCP connection offering the extension
// header offer (none when empty) and reads the welcome.
func (s *testServer) rawDeflateDial(t testing.TB, offer string) (*rawWS, *http.Response) {
	t.Helper()
	c := s.dialTCP(t)
	key := newWSKey()
	req := upgradeRequest(s.hostPort(), "/ws", key)
	if offer != "" {
		req = strings.Replace(req, "\r\n\r\n", "\r\nSec-WebSocket-Extensions: "+offer+"\r\n\r\n", 1)
	}
	r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
	r.write([]byte(req))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade offering %q: %v %v", offer, resp, err)
	}
	if m := r.readJSON(); m["type"] != "welcome" {
		t.Fatalf("first message %v, want welcome", m)
	}
	return r, resp
}

// deflateMessage compresses payload as one permessage-deflate message.
func deflateMessage(t testing.TB, payload []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	fw, err := flate.NewWriter(&buf, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff})
}

func heapAllocated() uint64 {
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

// TestCompressionZipBomb: a compressed message of 16 KB that inflates to
// 16 MB of zeros (max-message-size is 64 KiB) is refused with close 1009,
// and inflating it costs the server next to nothing: the inflater stops at
// the limit. The server stays healthy: a new client works.
//
// Not parallel: the allocations of the whole test process are measured.
func TestCompressionZipBomb(t *testing.T) {
	s := startServer(t, nil)
	r, resp := s.rawDeflateDial(t, "permessage-deflate; client_max_window_bits")
	deflateExtensionOK(t, resp.Header.Get("Sec-WebSocket-Extensions"))
	const inflated = 16 << 20
	bomb := deflateMessage(t, make([]byte, inflated))
	frame := wsFrameBytes(true, 4, opText, bomb, true)
	if len(bomb) >= engine.DefaultConfig().MaxMessageSize {
		t.Fatalf("setup: the bomb is %d bytes compressed, not under max-message-size", len(bomb))
	}
	allocated := heapAllocated()
	r.write(frame)
	r.expectClose(websocket.CloseMessageTooBig)
	cost := heapAllocated() - allocated
	t.Logf("bomb: %d bytes compressed, %d MB inflated; the process allocated %.1f MB while the server refused it", len(bomb), inflated>>20, float64(cost)/(1<<20))
	if cost > 4<<20 {
		t.Errorf("refusing a zip bomb allocated %.1f MB: the server inflated more than max-message-size", float64(cost)/(1<<20))
	}
	s.waitMetric(t, `websocket_connections_closed_total{reason="protocol_error"}`, 1)

	var cc *countingConn
	ws, _, err := compressingDialer(&cc).Dial(s.wsURL, nil)
	if err != nil {
		t.Fatalf("dial after the bomb: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	c := &client{t: t, ws: ws}
	c.expect("welcome")
	c.subscribe("all", map[string]any{})
	ids := s.mustPublish(t, evUpdated(`"text":"`+compressible(2000)+`"`))
	expectIDs(t, "after the bomb", c.events(1), ids)
}

// TestCompressionNotOffered: a client that does not offer the extension
// gets no Sec-WebSocket-Extensions and only plain frames (readJSON fails on
// RSV1), large events included.
func TestCompressionNotOffered(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	r, resp := s.rawDeflateDial(t, "")
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Fatalf("no extension offered, server answered Sec-WebSocket-Extensions %q", ext)
	}
	plainEventsOnly(t, s, r)
}

// plainEventsOnly subscribes r to everything and checks that a small and a
// large event arrive as plain text frames with the right content.
func plainEventsOnly(t testing.TB, s *testServer, r *rawWS) {
	t.Helper()
	r.write(maskedText(`{"type":"subscribe","subscription_id":"all","filters":{}}`))
	if m := r.readJSON(); m["type"] != "subscribed" {
		t.Fatalf("want subscribed, got %v", m)
	}
	texts := []string{"small", compressible(8000)}
	for i, text := range texts {
		id := s.mustPublish(t, evUpdated(fmt.Sprintf(`"n":%d,"text":%q`, i, text)))[0]
		m := r.readJSON() // a plain final text frame, or the test fails
		ev, _ := m["event"].(map[string]any)
		if m["type"] != "event" || msgID(t, m) != id || ev["text"] != text {
			t.Fatalf("event %d: got %.200v", i, m)
		}
	}
}

// TestCompressionDisabled: with --compression false nothing is
// negotiated, whatever the client offers; events come plain, and a
// compressed frame is a protocol error (1002).
func TestCompressionDisabled(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) { c.Compression = false })
	var cc *countingConn
	ws, resp, err := compressingDialer(&cc).Dial(s.wsURL, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Fatalf("compression is off, server answered Sec-WebSocket-Extensions %q to gorilla", ext)
	}
	c := &client{t: t, ws: ws}
	c.expect("welcome")
	c.subscribe("all", map[string]any{})
	text := compressible(8000)
	id := s.mustPublish(t, evUpdated(`"text":"`+text+`"`))[0]
	r0 := cc.read.Load()
	raw := c.readRaw(5 * time.Second)
	if m := decodeObject(t, raw); msgID(t, m) != id {
		t.Fatalf("got %.200s", raw)
	}
	if wire := cc.read.Load() - r0; wire < int64(len(raw)) {
		t.Errorf("event of %d bytes took %d bytes on the wire with compression off", len(raw), wire)
	}

	r, resp := s.rawDeflateDial(t, "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Fatalf("compression is off, server answered Sec-WebSocket-Extensions %q", ext)
	}
	plainEventsOnly(t, s, r)
	r.write(wsFrameBytes(true, 4, opText, deflateMessage(t, []byte(`{"type":"ping"}`)), true))
	r.expectClose(websocket.CloseProtocolError)
}

// ---- Node.js ws ----

// nodeClientDir holds client.js and its package.json (the ws package).
var nodeClientDir = filepath.Join("testdata", "node")

var npmInstall sync.Once

// requireNodeWS returns the node binary, once the ws package is installed
// in nodeClientDir (it runs `npm ci` there when it is not). Without node or
// npm the test is skipped, loudly, except in CI (CI=true), where it fails:
// .ci/run installs them.
func requireNodeWS(t *testing.T) string {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...) + "; install Node.js and npm, then run (cd engine/testdata/node && npm ci)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPING the Node.js ws client test: " + msg)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not on PATH")
	}
	wsPackage := filepath.Join(nodeClientDir, "node_modules", "ws", "package.json")
	if _, err := os.Stat(wsPackage); err == nil {
		return node
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		missing("the ws package is not installed and npm is not on PATH")
	}
	var out []byte
	npmInstall.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = nodeClientDir
		out, err = cmd.CombinedOutput()
	})
	if _, serr := os.Stat(wsPackage); serr != nil {
		missing("npm ci failed (%v): %s", err, out)
	}
	return node
}

// countingProxy forwards TCP connections to upstream and counts the bytes
// clients send, to see whether a client compressed its messages.
type countingProxy struct {
	addr string
	up   atomic.Int64 // client → server bytes
}

func startCountingProxy(t testing.TB, upstream string) *countingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &countingProxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", upstream, 5*time.Second)
			if err != nil {
				in.Close()
				continue
			}
			wg.Add(2)
			go func() {
				defer wg.Done()
				n, _ := io.Copy(out, in)
				p.up.Add(n)
				out.(*net.TCPConn).CloseWrite()
			}()
			go func() {
				defer wg.Done()
				_, _ = io.Copy(in, out)
				in.Close()
				out.Close()
			}()
		}
	}()
	return p
}

// TestCompressionNodeWS: the Node.js ws package, with perMessageDeflate,
// negotiates the extension (no context takeover either way), sends its
// subscribe compressed (ws compresses messages of 1 KB and more), and
// prints the events it receives: small and large ones, all correct.
func TestCompressionNodeWS(t *testing.T) {
	t.Parallel()
	node := requireNodeWS(t)
	s := startServer(t, nil)
	proxy := startCountingProxy(t, s.hostPort())
	sources := manySources(120)
	sub, _ := json.Marshal(map[string]any{"type": "subscribe", "subscription_id": "node", "filters": map[string]any{"sources": sources}})

	const n = 6
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "client.js", "ws://"+proxy.addr+"/ws", string(sub), fmt.Sprint(n))
	cmd.Dir = nodeClientDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	lines := make(chan map[string]any, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = map[string]any{"type": "unparsable", "line": sc.Text()}
			}
			lines <- m
		}
	}()
	next := func(what string) map[string]any {
		t.Helper()
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatalf("node exited while waiting for %s; stderr: %s", what, stderr.String())
			}
			if m["type"] == "node_error" || m["type"] == "unparsable" {
				t.Fatalf("node client: %v; stderr: %s", m, stderr.String())
			}
			return m
		case <-time.After(20 * time.Second):
			t.Fatalf("no %s from the node client within 20s; stderr: %s", what, stderr.String())
		}
		return nil
	}

	open := next("node_open")
	if open["type"] != "node_open" || open["extensions"] != "permessage-deflate" {
		t.Fatalf("node client: %v, want node_open with permessage-deflate negotiated", open)
	}
	header, _ := open["header"].(string)
	deflateExtensionOK(t, header)
	if m := next("welcome"); m["type"] != "welcome" {
		t.Fatalf("want welcome, got %v", m)
	}
	m := next("subscribed")
	if got, _ := m["filters"].(map[string]any)["sources"].([]any); m["type"] != "subscribed" || len(got) != len(sources) {
		t.Fatalf("want subscribed with %d sources, got %v", len(sources), m)
	}
	// Everything node sent so far: the upgrade request and the subscribe.
	if up := proxy.up.Load(); up*2 > int64(len(sub)) {
		t.Errorf("node sent %d bytes for a %d-byte subscribe (plus its upgrade request): not compressed", up, len(sub))
	}

	texts := make([]string, n)
	var wantIDs []uint64
	for i := range texts {
		texts[i] = fmt.Sprintf("event %d", i)
		if i%2 == 1 {
			texts[i] = compressible(4000*i) + texts[i]
		}
		wantIDs = append(wantIDs, s.mustPublish(t, evUpdated(fmt.Sprintf(`"source":%q,"n":%d,"text":%q`, sources[i], i, texts[i])))[0])
	}
	for i := range texts {
		m := next("event")
		ev, _ := m["event"].(map[string]any)
		if m["type"] != "event" || msgID(t, m) != wantIDs[i] || ev["text"] != texts[i] || ev["source"] != sources[i] {
			t.Fatalf("node client event %d: got %.300v", i, m)
		}
	}
	if m := next("node_close"); m["type"] != "node_close" || m["code"] != float64(1000) {
		t.Fatalf("want node_close 1000, got %v", m)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("node client: %v; stderr: %s", err, stderr.String())
	}
}
