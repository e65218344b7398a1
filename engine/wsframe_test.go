package engine_test

import (
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
)

// WebSocket correctness over raw TCP: the test writes its own frames.

func TestRawByteAtATime(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	r := s.rawDial(t, true) // the upgrade request one byte per write
	writeBytewise(t, r.c, maskedText(`{"type":"subscribe","subscription_id":"slow","filters":{"sources":["drip"]}}`))
	m := r.readJSON()
	if m["type"] != "subscribed" || m["subscription_id"] != "slow" {
		t.Fatalf("after a byte-at-a-time subscribe: %v", m)
	}
	ids := s.mustPublish(t, evUpdated(`"source":"drip"`))
	if m := r.readJSON(); m["type"] != "event" || msgID(t, m) != ids[0] {
		t.Fatalf("want event %d, got %v", ids[0], m)
	}
}

// TestRawSplitAcrossReads splits the upgrade request and then a frame in
// two writes with a pause between them, so the server reads each in two
// parts (the pause only defeats TCP coalescing).
func TestRawSplitAcrossReads(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dialTCP(t)
	key := newWSKey()
	req := []byte(upgradeRequest(s.hostPort(), "/ws", key))
	r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
	r.write(req[:len(req)/2])
	time.Sleep(50 * time.Millisecond)
	r.write(req[len(req)/2:])
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		t.Fatalf("upgrade request in two reads: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade request in two reads: HTTP %d", resp.StatusCode)
	}
	if m := r.readJSON(); m["type"] != "welcome" {
		t.Fatalf("got %v, want welcome", m)
	}
	for _, cut := range []int{1, 2, 6, 40} {
		sub := maskedText(`{"type":"subscribe","subscription_id":"split` + strconv.Itoa(cut) + `","filters":{}}`)
		r.write(sub[:cut])
		time.Sleep(50 * time.Millisecond)
		r.write(sub[cut:])
		m := r.readJSON()
		if m["type"] != "subscribed" || m["subscription_id"] != "split"+strconv.Itoa(cut) {
			t.Fatalf("frame split after %d bytes answered %v", cut, m)
		}
	}
}

func TestRawSeveralFramesInOneWrite(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	r := s.rawDial(t, false)
	var batch []byte
	batch = append(batch, maskedText(`{"type":"subscribe","subscription_id":"a","filters":{}}`)...)
	batch = append(batch, maskedText(`{"type":"ping","timestamp":"t1"}`)...)
	batch = append(batch, wsFrameBytes(true, 0, opPing, []byte("control"), true)...)
	batch = append(batch, maskedText(`{"type":"unsubscribe","subscription_id":"zzz"}`)...)
	batch = append(batch, maskedText(`{"type":"subscribe","subscription_id":"b","filters":{"severities":["P1"]}}`)...)
	r.write(batch)

	// Replies to dispatcher commands keep their order; pongs may come first.
	var order []string
	var wsPong []byte
	for len(order) < 5 {
		f := r.mustFrame()
		switch f.op {
		case opPong:
			wsPong = f.payload
			order = append(order, "ws-pong")
		case opText:
			m := decodeObject(t, f.payload)
			typ, _ := m["type"].(string)
			if typ == "subscribed" {
				typ += ":" + m["subscription_id"].(string)
			}
			if typ == "error" {
				typ += ":" + m["code"].(string)
			}
			order = append(order, typ)
		default:
			t.Fatalf("unexpected frame op=%d %q", f.op, f.payload)
		}
	}
	if string(wsPong) != "control" {
		t.Errorf("WebSocket pong payload %q, want %q", wsPong, "control")
	}
	var cmds []string
	seen := map[string]bool{}
	for _, o := range order {
		seen[o] = true
		if o != "ws-pong" && o != "pong" {
			cmds = append(cmds, o)
		}
	}
	if !seen["pong"] || !seen["ws-pong"] {
		t.Errorf("replies %v: missing a pong", order)
	}
	if want := []string{"subscribed:a", "error:NOT_FOUND", "subscribed:b"}; !equalStrings(cmds, want) {
		t.Errorf("replies %v: want %v in that order", order, want)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRawFragmentedMessage(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	r := s.rawDial(t, false)
	msg := `{"type":"subscribe","subscription_id":"frag","filters":{"sources":["pieces"]}}`
	p1, p2, p3 := msg[:20], msg[20:45], msg[45:]
	// Text (not final), a ping between fragments, then two continuations,
	// each in its own write.
	r.write(wsFrameBytes(false, 0, opText, []byte(p1), true))
	r.write(wsFrameBytes(true, 0, opPing, []byte("between"), true))
	r.write(wsFrameBytes(false, 0, opCont, []byte(p2), true))
	r.write(wsFrameBytes(true, 0, opCont, []byte(p3), true))
	f := r.mustFrame()
	if f.op != opPong || string(f.payload) != "between" {
		t.Fatalf("want the pong for the interleaved ping first, got op=%d %q", f.op, f.payload)
	}
	m := r.readJSON()
	if m["type"] != "subscribed" || m["subscription_id"] != "frag" {
		t.Fatalf("reassembled subscribe answered %v", m)
	}
	// All fragments in one write, a multi-byte rune split across them.
	ping := []byte(`{"type":"ping","timestamp":"caf` + "\u00e9" + `"}`)
	cut := bytes.Index(ping, []byte("\u00e9")) + 1 // inside the 2-byte rune
	var batch []byte
	batch = append(batch, wsFrameBytes(false, 0, opText, ping[:cut], true)...)
	batch = append(batch, wsFrameBytes(true, 0, opCont, ping[cut:], true)...)
	r.write(batch)
	if m := r.readJSON(); m["type"] != "pong" || m["timestamp"] != "caf\u00e9" {
		t.Fatalf("fragmented ping answered %v", m)
	}
	ids := s.mustPublish(t, evUpdated(`"source":"pieces"`))
	if m := r.readJSON(); m["type"] != "event" || msgID(t, m) != ids[0] {
		t.Fatalf("want event %d, got %v", ids[0], m)
	}
}

func TestRawProtocolViolationsClose(t *testing.T) {
	t.Parallel()
	const max = 4096
	s := startServer(t, func(c *engine.Config) { c.MaxMessageSize = max })
	bigHeader := func(n uint64) []byte { // a masked text frame header announcing n bytes
		h := []byte{0x81, 0x80 | 127}
		h = binary.BigEndian.AppendUint64(h, n)
		return append(h, 1, 2, 3, 4)
	}
	cases := []struct {
		name  string
		send  []byte
		code  int
		after func(r *rawWS) // optional extra frames
	}{
		{"unmasked frame", wsFrameBytes(true, 0, opText, []byte(`{"type":"ping","timestamp":1}`), false), 1002, nil},
		{"frame above max-message-size", bigHeader(1 << 20), 1009, nil},
		{"frame one byte above max-message-size", wsFrameBytes(true, 0, opText, bytes.Repeat([]byte(" "), max+1), true), 1009, nil},
		{"fragments adding up above max-message-size", append(
			wsFrameBytes(false, 0, opText, bytes.Repeat([]byte(" "), max-10), true),
			wsFrameBytes(true, 0, opCont, bytes.Repeat([]byte(" "), 20), true)...), 1009, nil},
		{"invalid UTF-8 text", maskedText("{\"type\":\"ping\",\"timestamp\":\"\xff\xfe\"}"), 1007, nil},
		{"invalid UTF-8 in a fragmented text", append(
			wsFrameBytes(false, 0, opText, []byte("{\"type\":\"ping\",\"timestamp\":\"\xc3"), true),
			wsFrameBytes(true, 0, opCont, []byte("(\"}"), true)...), 1007, nil},
		{"reserved data opcode", wsFrameBytes(true, 0, 0x3, []byte("x"), true), 1002, nil},
		{"reserved control opcode", wsFrameBytes(true, 0, 0xB, []byte("x"), true), 1002, nil},
		{"continuation without a message", wsFrameBytes(true, 0, opCont, []byte("x"), true), 1002, nil},
		{"new text inside a fragmented message", append(
			wsFrameBytes(false, 0, opText, []byte("{"), true),
			maskedText(`{"type":"ping","timestamp":1}`)...), 1002, nil},
		{"fragmented control frame", wsFrameBytes(false, 0, opPing, []byte("x"), true), 1002, nil},
		{"control frame above 125 bytes", wsFrameBytes(true, 0, opPing, bytes.Repeat([]byte("x"), 126), true), 1002, nil},
		{"RSV1 without an extension", wsFrameBytes(true, 4, opText, []byte(`{}`), true), 1002, nil},
		{"RSV2", wsFrameBytes(true, 2, opText, []byte(`{}`), true), 1002, nil},
		{"close with a one-byte payload", wsFrameBytes(true, 0, opClose, []byte{3}, true), 1002, nil},
		{"close with an invalid code", wsFrameBytes(true, 0, opClose, []byte{0x03, 0xED}, true), 1002, nil}, // 1005
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := s.rawDial(t, false)
			r.write(tc.send)
			r.expectClose(tc.code)
		})
	}
	s.waitMetric(t, "websocket_active_connections", 0)
	s.waitMetric(t, `websocket_connections_closed_total{reason="protocol_error"}`, float64(len(cases)))
}

func TestRawClientClose(t *testing.T) {
	t.Parallel()
	// A short session timeout, so that the closed sessions expire and their
	// subscriptions go (a session may outlive its connection for resume).
	s := startServer(t, func(c *engine.Config) {
		c.SessionTimeout = time.Second
		c.CleanupInterval = 50 * time.Millisecond
	})
	t.Run("with code and reason", func(t *testing.T) {
		r := s.rawDial(t, false)
		r.write(wsFrameBytes(true, 0, opClose, append([]byte{0x03, 0xE8}, "bye"...), true)) // 1000
		r.expectClose(1000)
	})
	t.Run("with an application code", func(t *testing.T) {
		r := s.rawDial(t, false)
		r.write(wsFrameBytes(true, 0, opClose, []byte{0x0F, 0xA0}, true)) // 4000
		r.expectClose(4000)
	})
	t.Run("empty", func(t *testing.T) {
		r := s.rawDial(t, false)
		r.write(wsFrameBytes(true, 0, opClose, nil, true))
		r.expectClose(0)
	})
	t.Run("after a subscription, with queued input ignored", func(t *testing.T) {
		r := s.rawDial(t, false)
		r.write(maskedText(`{"type":"subscribe","subscription_id":"x","filters":{}}`))
		if m := r.readJSON(); m["type"] != "subscribed" {
			t.Fatalf("got %v", m)
		}
		var batch []byte
		batch = append(batch, wsFrameBytes(true, 0, opClose, []byte{0x03, 0xE9}, true)...) // 1001
		batch = append(batch, maskedText(`{"type":"ping","timestamp":1}`)...)
		r.write(batch)
		r.expectClose(1001)
	})
	s.waitMetric(t, `websocket_connections_closed_total{reason="client_closed"}`, 4)
	s.waitMetric(t, "websocket_active_connections", 0)
	s.waitMetric(t, "websocket_active_subscriptions", 0)
}

// TestRawPermessageDeflate negotiates permessage-deflate by hand, sends a
// compressed message, and checks that events at or above
// CompressionMinSize arrive compressed (RSV1) and smaller ones plain.
func TestRawPermessageDeflate(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) { c.CompressionMinSize = 256 })
	r := s.rawDialDeflate(t)
	// Every message is its own deflate stream only if the server said so;
	// this client compresses each message independently either way.
	next := func() (map[string]any, bool) {
		t.Helper()
		for {
			f := r.mustFrame()
			if f.op == opPing {
				continue
			}
			if f.op != opText || !f.fin {
				t.Fatalf("want a final text frame, got op=%d fin=%v", f.op, f.fin)
			}
			payload := f.payload
			compressed := f.rsv&4 != 0
			if f.rsv&3 != 0 {
				t.Fatalf("RSV2/RSV3 set on a server frame")
			}
			if compressed {
				fr := flate.NewReader(io.MultiReader(bytes.NewReader(payload), bytes.NewReader([]byte{0, 0, 0xff, 0xff})))
				var err error
				payload, err = io.ReadAll(fr)
				if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("inflate server frame: %v", err)
				}
			}
			return decodeObject(t, payload), compressed
		}
	}
	// A compressed subscribe (RSV1).
	var buf bytes.Buffer
	fw, _ := flate.NewWriter(&buf, flate.BestCompression)
	_, _ = fw.Write([]byte(`{"type":"subscribe","subscription_id":"z","filters":{"sources":["zip","zip","zip"]}}`))
	_ = fw.Flush()
	r.write(wsFrameBytes(true, 4, opText, bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff}), true))
	if m, _ := next(); m["type"] != "subscribed" || m["subscription_id"] != "z" {
		t.Fatalf("compressed subscribe answered %v", m)
	}
	small := evUpdated(`"source":"zip"`)
	large := evUpdated(`"source":"zip","text":"` + strings.Repeat("compress me ", 60) + `"`)
	ids := s.mustPublish(t, small, large)
	for i, id := range ids {
		m, compressed := next()
		if m["type"] != "event" || msgID(t, m) != id {
			t.Fatalf("want event %d, got %v", id, m)
		}
		if want := i == 1; compressed != want {
			t.Errorf("event %d (%d bytes): compressed=%v, want %v (min size 256)", id, len([]string{small, large}[i]), compressed, want)
		}
	}
}

// TestRawMaxMessageSizeBoundary: a message of exactly max-message-size
// bytes, whole or fragmented, is accepted; a 125-byte ping is answered.
func TestRawMaxMessageSizeBoundary(t *testing.T) {
	t.Parallel()
	const max = 4096
	s := startServer(t, func(c *engine.Config) { c.MaxMessageSize = max })
	r := s.rawDial(t, false)
	exact := func(id string) []byte {
		msg := `{"type":"subscribe","subscription_id":"` + id + `","filters":{}}`
		return []byte(msg + strings.Repeat(" ", max-len(msg)))
	}
	r.write(wsFrameBytes(true, 0, opText, exact("whole"), true))
	if m := r.readJSON(); m["type"] != "subscribed" || m["subscription_id"] != "whole" {
		t.Fatalf("a %d-byte message (the maximum) answered %v", max, m)
	}
	msg := exact("fragments")
	r.write(append(wsFrameBytes(false, 0, opText, msg[:1000], true), wsFrameBytes(true, 0, opCont, msg[1000:], true)...))
	if m := r.readJSON(); m["type"] != "subscribed" || m["subscription_id"] != "fragments" {
		t.Fatalf("a fragmented %d-byte message answered %v", max, m)
	}
	payload := bytes.Repeat([]byte("p"), 125)
	r.write(wsFrameBytes(true, 0, opPing, payload, true))
	if f := r.mustFrame(); f.op != opPong || !bytes.Equal(f.payload, payload) {
		t.Fatalf("125-byte ping answered op=%d with %d bytes", f.op, len(f.payload))
	}
	// A compressed message that inflates beyond the limit is refused.
	var buf bytes.Buffer
	fw, _ := flate.NewWriter(&buf, flate.BestCompression)
	_, _ = fw.Write([]byte(`{"type":"ping","timestamp":"` + strings.Repeat("z", 100*max) + `"}`))
	_ = fw.Flush()
	r2 := s.rawDialDeflate(t)
	r2.write(wsFrameBytes(true, 4, opText, bytes.TrimSuffix(buf.Bytes(), []byte{0, 0, 0xff, 0xff}), true))
	r2.expectClose(1009)
}

// rawDialDeflate upgrades a raw connection offering permessage-deflate,
// checks the server accepted it, and reads the welcome (sent uncompressed).
func (s *testServer) rawDialDeflate(t testing.TB) *rawWS {
	t.Helper()
	c := s.dialTCP(t)
	key := newWSKey()
	req := strings.Replace(upgradeRequest(s.hostPort(), "/ws", key), "\r\n\r\n",
		"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n", 1)
	r := &rawWS{t: t, c: c, br: bufio.NewReader(c)}
	r.write([]byte(req))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade offering deflate: %v %v", resp, err)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
		t.Fatalf("compression is on, but the server answered Sec-WebSocket-Extensions %q", ext)
	}
	if m := r.readJSON(); m["type"] != "welcome" {
		t.Fatalf("want welcome, got %v", m)
	}
	return r
}
