package engine_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	gorilla "github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/engine"
)

// The echo endpoint (--echo-path) exposes the same engine, frame codec and
// permessage-deflate code to conformance suites. These tests drive it with
// three independent client implementations and with raw frames.

const echoMax = 1 << 16

func startEchoServer(t *testing.T, compression bool) *testServer {
	return startServer(t, func(c *engine.Config) {
		c.EchoPath = "/echo"
		c.MaxMessageSize = echoMax
		c.Compression = compression
	})
}

func (s *testServer) echoURL() string { return strings.Replace(s.wsURL, "/ws", "/echo", 1) }

// echoPayloads covers text and binary, empty, around the 125/126 and
// 65535/65536 length encodings, and up to max-message-size.
func echoPayloads() []struct {
	binary bool
	data   []byte
} {
	var out []struct {
		binary bool
		data   []byte
	}
	for _, n := range []int{0, 1, 125, 126, 127, 4096, 65535, echoMax} {
		text := bytes.Repeat([]byte("é-flare "), n/9+1)
		for len(text) > n { // trim to n bytes without splitting a rune
			text = bytes.TrimRight(text[:len(text)-1], "\xc3")
		}
		bin := make([]byte, n)
		for i := range bin {
			bin[i] = byte(i * 7)
		}
		out = append(out, struct {
			binary bool
			data   []byte
		}{false, text}, struct {
			binary bool
			data   []byte
		}{true, bin})
	}
	return out
}

func TestEchoGorilla(t *testing.T) {
	for _, compress := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "deflate"}[compress]
		t.Run(name, func(t *testing.T) {
			s := startEchoServer(t, true)
			d := gorilla.Dialer{EnableCompression: compress}
			ws, resp, err := d.Dial(s.echoURL(), nil)
			if err != nil {
				t.Fatalf("dial echo: %v", err)
			}
			defer ws.Close()
			ext := resp.Header.Get("Sec-WebSocket-Extensions")
			if compress != strings.Contains(ext, "permessage-deflate") {
				t.Fatalf("compression offered=%v, negotiated %q", compress, ext)
			}
			ws.EnableWriteCompression(compress)
			ws.SetReadLimit(echoMax + 1024)
			for _, p := range echoPayloads() {
				typ := gorilla.TextMessage
				if p.binary {
					typ = gorilla.BinaryMessage
				}
				if err := ws.WriteMessage(typ, p.data); err != nil {
					t.Fatalf("write %d bytes: %v", len(p.data), err)
				}
				_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
				gotType, got, err := ws.ReadMessage()
				if err != nil {
					t.Fatalf("read echo of %d bytes: %v", len(p.data), err)
				}
				if gotType != typ || !bytes.Equal(got, p.data) {
					t.Fatalf("echo of %d bytes (type %d) came back as %d bytes of type %d", len(p.data), typ, len(got), gotType)
				}
			}
			// One byte past the limit: 1009.
			_ = ws.WriteMessage(gorilla.BinaryMessage, make([]byte, echoMax+1))
			_, _, err = ws.ReadMessage()
			if !gorilla.IsCloseError(err, gorilla.CloseMessageTooBig) {
				t.Fatalf("oversized message: %v, want close 1009", err)
			}
		})
	}
}

func TestEchoCoderWebsocket(t *testing.T) {
	for _, mode := range []websocket.CompressionMode{websocket.CompressionDisabled, websocket.CompressionNoContextTakeover} {
		t.Run(map[websocket.CompressionMode]string{websocket.CompressionDisabled: "plain", websocket.CompressionNoContextTakeover: "deflate"}[mode], func(t *testing.T) {
			s := startEchoServer(t, true)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, s.echoURL(), &websocket.DialOptions{CompressionMode: mode, CompressionThreshold: 1})
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.CloseNow()
			if got := strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate"); got != (mode != websocket.CompressionDisabled) {
				t.Fatalf("negotiated deflate=%v with mode %v", got, mode)
			}
			c.SetReadLimit(echoMax + 1024)
			for _, p := range echoPayloads() {
				typ := websocket.MessageText
				if p.binary {
					typ = websocket.MessageBinary
				}
				if err := c.Write(ctx, typ, p.data); err != nil {
					t.Fatalf("write: %v", err)
				}
				gotType, got, err := c.Read(ctx)
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if gotType != typ || !bytes.Equal(got, p.data) {
					t.Fatalf("echo of %d bytes came back as %d bytes (type %v, want %v)", len(p.data), len(got), gotType, typ)
				}
			}
			if err := c.Close(websocket.StatusNormalClosure, "done"); err != nil {
				t.Fatalf("close handshake: %v", err)
			}
		})
	}
}

// TestEchoRawEdgeCases walks RFC 6455's rules over raw bytes on the echo path.
func TestEchoRawEdgeCases(t *testing.T) {
	s := startEchoServer(t, false)
	type step struct {
		send []byte
		want []wsFrame // frames expected back, in order (payload compared)
	}
	frag := func(fin bool, op byte, p string) []byte { return wsFrameBytes(fin, 0, op, []byte(p), true) }
	cases := []struct {
		name      string
		steps     []step
		closeCode int // 0: the connection stays open
	}{
		{"text echoed as text", []step{{frag(true, opText, "héllo"), []wsFrame{{op: opText, payload: []byte("héllo")}}}}, 0},
		{"binary echoed as binary", []step{{frag(true, 0x2, "\x00\xff"), []wsFrame{{op: 0x2, payload: []byte("\x00\xff")}}}}, 0},
		{"fragments with a ping between them", []step{
			{frag(false, opText, "frag"), nil},
			{frag(true, opPing, "p"), []wsFrame{{op: opPong, payload: []byte("p")}}},
			{frag(false, opCont, "ment"), nil},
			{frag(true, opCont, "ed"), []wsFrame{{op: opText, payload: []byte("fragmented")}}},
		}, 0},
		{"a code point split across fragments", []step{
			{frag(false, opText, "\xc3"), nil},
			{frag(true, opCont, "\xa9"), []wsFrame{{op: opText, payload: []byte("é")}}},
		}, 0},
		{"invalid UTF-8 split across fragments", []step{
			{frag(false, opText, "\xce\xba\xe1"), nil},
			{frag(true, opCont, "\x28"), nil},
		}, 1007},
		{"empty final continuation", []step{
			{frag(false, 0x2, "ab"), nil},
			{frag(true, opCont, ""), []wsFrame{{op: 0x2, payload: []byte("ab")}}},
		}, 0},
		{"close with code and reason is echoed", []step{{wsFrameBytes(true, 0, opClose, append([]byte{0x0f, 0xa0}, "bye"...), true), nil}}, 4000},
		{"close reason not UTF-8", []step{{wsFrameBytes(true, 0, opClose, []byte{0x03, 0xe8, 0xff}, true), nil}}, 1007},
		{"close code 1016 is not allowed", []step{{wsFrameBytes(true, 0, opClose, []byte{0x03, 0xf8}, true), nil}}, 1002},
		{"close code 5000 is not allowed", []step{{wsFrameBytes(true, 0, opClose, []byte{0x13, 0x88}, true), nil}}, 1002},
		{"text after a fragmented binary started", []step{{append(frag(false, 0x2, "a"), frag(true, opText, "b")...), nil}}, 1002},
		{"reserved opcode 0x7", []step{{frag(true, 0x7, ""), nil}}, 1002},
		{"RSV3 set", []step{{wsFrameBytes(true, 1, opText, []byte("x"), true), nil}}, 1002},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := s.rawDialPath(t, "/echo")
			for _, st := range tc.steps {
				r.write(st.send)
				for _, want := range st.want {
					got := r.mustFrame()
					if got.op != want.op || !got.fin || !bytes.Equal(got.payload, want.payload) {
						t.Fatalf("got op=%d fin=%v %q, want op=%d %q", got.op, got.fin, got.payload, want.op, want.payload)
					}
				}
			}
			if tc.closeCode != 0 {
				r.expectClose(tc.closeCode)
				return
			}
			r.write(frag(true, opPing, "still-open"))
			if f := r.mustFrame(); f.op != opPong || string(f.payload) != "still-open" {
				t.Fatalf("after the case: %+v, want the pong", f)
			}
		})
	}
}

// rawDialPath upgrades a raw connection on path, without expecting a welcome.
func (s *testServer) rawDialPath(t testing.TB, path string) *rawWS {
	t.Helper()
	c := s.dialTCP(t)
	key := newWSKey()
	if _, err := c.Write([]byte(upgradeRequest(s.hostPort(), path, key))); err != nil {
		t.Fatalf("write upgrade: %v", err)
	}
	r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade on %s: %v %v", path, resp, err)
	}
	return r
}

// TestEchoOffByDefault: without --echo-path the path is just unknown.
func TestEchoOffByDefault(t *testing.T) {
	s := startServer(t, nil)
	_, resp, err := gorilla.DefaultDialer.Dial(strings.Replace(s.wsURL, "/ws", "/echo", 1), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("dial /echo without --echo-path: %v (response %v), want 404", err, resp)
	}
}

// TestEchoNodeWS drives the echo endpoint with the Node.js ws package,
// with and without permessage-deflate.
func TestEchoNodeWS(t *testing.T) {
	node := requireNodeWS(t)
	for _, deflate := range []string{"false", "true"} {
		t.Run("deflate="+deflate, func(t *testing.T) {
			s := startEchoServer(t, true)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, node, "echo.js", s.echoURL(), deflate)
			cmd.Dir = nodeClientDir
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("node echo.js: %v\n%s", err, out)
			}
			var res struct {
				OK         bool   `json:"ok"`
				Message    string `json:"message"`
				Extensions string `json:"extensions"`
				Checked    int    `json:"checked"`
			}
			if err := json.Unmarshal(bytes.TrimSpace(out), &res); err != nil {
				t.Fatalf("node output %q: %v", out, err)
			}
			if !res.OK || res.Checked != 14 {
				t.Fatalf("node ws echo: %+v", res)
			}
			if got := strings.Contains(res.Extensions, "permessage-deflate"); got != (deflate == "true") {
				t.Fatalf("negotiated %q with deflate=%s", res.Extensions, deflate)
			}
		})
	}
}
