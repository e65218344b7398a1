package loadtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/klauspost/compress/flate"
)

// TestLoopFramesAcrossReads drives one event loop over a real loopback TCP
// connection with the awkward cases a goroutine reader gets from bufio for
// free: bytes read ahead by the handshake, a frame split over several
// reads, a fragmented message with a ping between its fragments, a
// duplicate, a message of another group, and a close frame, which counts
// as a drop before the run's end. The same with the uring engine's loops,
// where each send is one multishot receive's completion.
func TestLoopFramesAcrossReads(t *testing.T) {
	for _, engine := range []string{"loop", "uring"} {
		t.Run(engine, func(t *testing.T) { testLoopFramesAcrossReads(t, engine == "uring") })
	}
	// Buffers smaller than a frame, and too few: every frame spans
	// completions, and receives end with ENOBUFS and are armed again.
	t.Run("uring-small-buffers", func(t *testing.T) {
		size, n := uringBufSize, uringBufs
		uringBufSize, uringBufs = 16, 2
		defer func() { uringBufSize, uringBufs = size, n }()
		testLoopFramesAcrossReads(t, true)
	})
}

func testLoopFramesAcrossReads(t *testing.T, ring bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	r := &runner{groups: 2, lat: newRecorder(), inflated: newInflateCache()}
	e, err := newLoopEngine(r, 2, loopOpts{ring: ring})
	if errors.Is(err, errRingRefused) {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer e.stop()
	event := func(seq int) []byte {
		return []byte(fmt.Sprintf(`{"type":"event","message_id":%d,"event":{"data":{"lt_seq":%d,"lt_sent_ns":%d}}}`, seq+1, seq, time.Now().UnixNano()))
	}
	frame := func(f ws.Frame) []byte {
		var b strings.Builder
		if err := ws.WriteFrame(&b, f); err != nil {
			t.Fatal(err)
		}
		return []byte(b.String())
	}
	send := func(b []byte) {
		t.Helper()
		if _, err := srv.Write(b); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // a read of its own
	}

	// The handshake's reader already holds seq 0 (group 0) when the loop takes over.
	ahead := frame(ws.NewTextFrame(event(0)))
	c := &client{group: 0, conn: cli, r: bufio.NewReader(strings.NewReader(string(ahead)))}
	_, _ = c.r.Peek(len(ahead))
	if err := e.enroll(c); err != nil {
		t.Fatal(err)
	}

	split := frame(ws.NewTextFrame(event(2)))
	send(split[:1])
	send(split[1:9])
	send(split[9:])
	first := ws.NewFrame(ws.OpText, false, event(4)[:10])
	rest := ws.NewFrame(ws.OpContinuation, true, event(4)[10:])
	send(append(frame(first), frame(ws.NewPingFrame([]byte("hb")))...))
	pong, err := ws.ReadFrame(srv)
	if err != nil || pong.Header.OpCode != ws.OpPong {
		t.Fatalf("no pong to a ping between fragments: %+v, %v", pong.Header, err)
	}
	if ws.Cipher(pong.Payload, pong.Header.Mask, 0); string(pong.Payload) != "hb" {
		t.Errorf("pong payload %q", pong.Payload)
	}
	send(frame(rest))
	send(frame(ws.NewTextFrame(event(2)))) // again: a duplicate
	send(frame(ws.NewTextFrame(event(3)))) // group 1: not this client's
	send(frame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "bye"))))

	deadline := time.Now().Add(5 * time.Second)
	for r.dropped.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	e.stop() // the loop's goroutines are done with c: its fields may be read
	if n := r.lat.count(); n != 3 {
		t.Errorf("%d deliveries recorded, want 3 (seq 0, 2, 4)", n)
	}
	for _, idx := range []uint64{0, 1, 2} {
		if !c.got.has(idx) {
			t.Errorf("seq %d not received", idx*2)
		}
	}
	if c.dups != 1 || c.unexpected != 1 || c.malformed != 0 {
		t.Errorf("dups %d (want 1), unexpected %d (want 1), malformed %d", c.dups, c.unexpected, c.malformed)
	}
	rearms := 0
	for _, l := range e.loops {
		rearms += l.rearms
	}
	if small := uringBufs < 4; ring && small != (rearms > 0) {
		t.Errorf("%d receives armed again with %d buffers of %d bytes", rearms, uringBufs, uringBufSize)
	}
	if r.dropped.Load() != 1 || !strings.Contains(c.closeNote, "1001") {
		t.Errorf("dropped %d, close note %q; want the server's close 1001 counted as a drop", r.dropped.Load(), c.closeNote)
	}
}

// TestLoopAndGoroutineEnginesAgree runs the same small workload against a
// real server with each client engine: every expected delivery arrives
// exactly once with both, and both report CPU per delivery.
func TestLoopAndGoroutineEnginesAgree(t *testing.T) {
	for _, engine := range []string{"loop", "uring", "goroutine"} {
		t.Run(engine, func(t *testing.T) {
			cfg, err := Preset("smoke")
			if err != nil {
				t.Fatal(err)
			}
			cfg.Spawn, cfg.ServerBin, cfg.Out = true, serverBinary(t), ""
			cfg.Conns, cfg.Rate, cfg.Match, cfg.Duration, cfg.Settle = 300, 200, 30, 1500*time.Millisecond, 300*time.Millisecond
			cfg.ClientEngine, cfg.ClientLoops = engine, 3
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			res, err := Run(ctx, cfg, io.Discard)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if engine == "uring" && res.Settings.ClientEngine == "loop" {
				t.Skipf("io_uring unavailable here: %v", res.Warnings)
			}
			d := res.Deliveries
			if want := res.Events.Accepted * 30; d.Expected != want || d.Received != want {
				t.Errorf("expected %d, received %d; want %d", d.Expected, d.Received, want)
			}
			if d.Lost != 0 || d.Duplicates != 0 || d.Unexpected != 0 || d.Malformed != 0 || !res.OK {
				t.Errorf("deliveries %+v, ok %v, warnings %v", d, res.OK, res.Warnings)
			}
			if res.Latency.Count != d.Received {
				t.Errorf("latency histogram holds %d of %d deliveries", res.Latency.Count, d.Received)
			}
			if res.Settings.ClientEngine != engine || (engine != "goroutine") != (res.Settings.Loops == 3) {
				t.Errorf("settings say engine %q with %d loops", res.Settings.ClientEngine, res.Settings.Loops)
			}
			if res.Loadtest.CPUPerDeliveryUS <= 0 {
				t.Errorf("no CPU per delivery: %+v", res.Loadtest)
			}
			var table strings.Builder
			res.WriteTable(&table)
			if !strings.Contains(table.String(), "µs CPU per delivery ("+engine+" engine") {
				t.Errorf("the table does not give CPU per delivery and engine:\n%s", table.String())
			}
		})
	}
}

func TestClientEngineFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--scenario", "seed"}, "uring"},
		{[]string{"--scenario", "smoke", "--client-engine", "loop"}, "loop"},
		{[]string{"--scenario", "smoke", "--client-engine", "goroutine"}, "goroutine"},
		{[]string{"--scenario", "smoke", "--client-engine", "uring"}, "uring"},
		{[]string{"--scenario", "chaos"}, "goroutine"},
		{[]string{"--scenario", "abuse"}, "goroutine"},
		{[]string{"--scenario", "smoke", "--drop-rate", "0.01"}, "goroutine"},
	} {
		cfg, err := ParseArgs(tc.args, io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if got := cfg.engine(); got != tc.want {
			t.Errorf("%q: engine %q, want %q", tc.args, got, tc.want)
		}
	}
	for _, bad := range [][]string{
		{"--scenario", "chaos", "--client-engine", "loop"},
		{"--scenario", "chaos", "--client-engine", "uring"},
		{"--client-engine", "threads"},
		{"--client-loops", "-1"},
		{"--client-coalesce", "-1ms"},
		{"--client-coalesce", "1s"},
	} {
		if _, err := ParseArgs(bad, io.Discard); err == nil {
			t.Errorf("ParseArgs(%q) accepted", bad)
		}
	}
}

// TestLoopFramesAllocateNothing: the steady-state receive path, plain and
// compressed (inflated once, then shared), allocates nothing per message.
func TestLoopFramesAllocateNothing(t *testing.T) {
	r := &runner{groups: 1, lat: newRecorder(), inflated: newInflateCache()}
	l := &eventLoop{e: &loopEngine{r: r}}
	c := &client{}
	c.got.set(1 << 12) // grown once, as it is after the first few seconds
	lc := &loopConn{c: c}
	msg := []byte(fmt.Sprintf(`{"type":"event","message_id":1,"event":{"data":{"lt_seq":1,"lt_sent_ns":%d}}}`, time.Now().UnixNano()))
	var plain strings.Builder
	if err := ws.WriteFrame(&plain, ws.NewTextFrame(msg)); err != nil {
		t.Fatal(err)
	}
	compressed := compressFrame(t, msg)
	for name, data := range map[string][]byte{"plain": []byte(plain.String()), "compressed": compressed} {
		if _, err := l.frames(lc, data, time.Now().UnixNano()); err != nil { // fills the inflate cache
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(200, func() { _, _ = l.frames(lc, data, time.Now().UnixNano()) }); n != 0 {
			t.Errorf("%s: %.1f allocations per message", name, n)
		}
	}
	if c.malformed != 0 || r.lat.count() != 1 || c.dups != 2*201+1 {
		t.Errorf("malformed %d, received %d, duplicates %d: the frames were not taken as events", c.malformed, r.lat.count(), c.dups)
	}
}

// compressFrame returns msg as one permessage-deflate text frame.
func compressFrame(t *testing.T, msg []byte) []byte {
	t.Helper()
	var buf strings.Builder
	fw := wsflate.NewWriter(&buf, func(w io.Writer) wsflate.Compressor {
		fw, _ := flate.NewWriter(w, flate.BestSpeed)
		return fw
	})
	if _, err := fw.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	f := ws.NewTextFrame([]byte(buf.String()))
	f.Header.Rsv = ws.Rsv(true, false, false)
	var out strings.Builder
	if err := ws.WriteFrame(&out, f); err != nil {
		t.Fatal(err)
	}
	return []byte(out.String())
}
