package engine_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/engine"
)

func TestHeartbeatPings(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) { c.HeartbeatInterval = 100 * time.Millisecond })
	c := s.dial(t, "")
	var pings atomic.Int32
	three := make(chan struct{})
	c.ws.SetPingHandler(func(data string) error {
		if pings.Add(1) == 3 {
			close(three)
		}
		// Answer like a normal client would.
		return c.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	// Reading processes control frames; no message is expected.
	readErr := make(chan error, 1)
	go func() {
		_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := c.ws.ReadMessage()
		if err == nil {
			err = fmt.Errorf("unexpected message %s", data)
		}
		readErr <- err
	}()
	select {
	case <-three:
	case err := <-readErr:
		t.Fatalf("after %d pings: %v", pings.Load(), err)
	}
	c.ws.Close()
	<-readErr
}

func isNetTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

func TestSessionTimeoutClosesSilentClient(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) {
		c.HeartbeatInterval = 50 * time.Millisecond // pings keep coming, unanswered
		c.SessionTimeout = 300 * time.Millisecond
		c.CleanupInterval = 50 * time.Millisecond
	})
	start := time.Now()
	c := s.dial(t, "")
	c.ws.SetPingHandler(func(string) error { return nil }) // silent: no pong
	msgs := c.expectClose(1001)
	if len(msgs) != 1 || msgs[0]["type"] != "closing" || msgs[0]["reason"] != "session_timeout" || len(msgs[0]) != 2 {
		t.Fatalf("before the close frame got %v, want exactly {type:closing, reason:session_timeout}", msgs)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("closed %s after connecting, before the 300ms session timeout", el)
	}
	s.waitMetric(t, `websocket_connections_closed_total{reason="session_timeout"}`, 1)
	s.waitMetric(t, "websocket_active_connections", 0)
}

// TestActiveClientIsNotTimedOut: a client that answers pings (and sends
// nothing else) stays connected well past the session timeout.
func TestActiveClientIsNotTimedOut(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) {
		c.HeartbeatInterval = 100 * time.Millisecond
		c.SessionTimeout = time.Second
		c.CleanupInterval = 50 * time.Millisecond
	})
	r := s.rawDial(t, false)
	until := time.Now().Add(2500 * time.Millisecond)
	pings := 0
	for time.Now().Before(until) {
		f, err := r.readFrame(time.Until(until))
		if isNetTimeout(err) {
			break
		}
		if err != nil {
			t.Fatalf("after %d pings: %v", pings, err)
		}
		switch f.op {
		case opPing:
			pings++
			r.write(wsFrameBytes(true, 0, opPong, f.payload, true))
		default:
			t.Fatalf("a client answering pings got op=%d %q after %d pings", f.op, f.payload, pings)
		}
	}
	if pings < 5 {
		t.Fatalf("only %d pings in 2.5s with a 100ms heartbeat", pings)
	}
}

// TestGracefulShutdown: every client gets all events published before the
// shutdown, then closing/server_shutdown, then a 1001 close frame; Run
// returns nil.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	filters := []map[string]any{
		{},
		{"severities": []string{"P1"}},
		{"sources": []string{"s-3"}},
		{"labels": map[string]string{"team": "core"}},
	}
	clients := make([]*client, len(filters))
	for i, f := range filters {
		clients[i] = s.dial(t, "")
		clients[i].subscribe("f", f)
	}
	idle := s.dial(t, "") // no subscription at all
	const n = 300
	lines := make([]string, n)
	for i := range lines {
		sev := fmt.Sprintf("P%d", i%5)
		team := []string{"core", "edge"}[i%2]
		lines[i] = evUpdated(fmt.Sprintf(`"severity":%q,"source":"s-%d","labels":{"team":%q},"i":%d`, sev, i%7, team, i))
	}
	ids := s.mustPublish(t, lines...)
	want := make([][]uint64, len(filters))
	for i := range lines {
		sev, src, team := i%5, i%7, i%2
		for k := range filters {
			if k == 0 || (k == 1 && sev == 1) || (k == 2 && src == 3) || (k == 3 && team == 0) {
				want[k] = append(want[k], ids[i])
			}
		}
	}

	// Shut down right away: the events are accepted but maybe not yet
	// written. Clients read concurrently.
	type result struct {
		events []uint64
		tail   []map[string]any
		err    error
	}
	results := make([]result, len(clients)+1)
	var wg sync.WaitGroup
	for i, c := range append(clients, idle) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i].events, results[i].tail, results[i].err = readToClose(c.ws)
		}()
	}
	stopped := make(chan struct{})
	go func() { s.stop(t); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of the cancel")
	}
	wg.Wait()
	for i, r := range results {
		var ce *websocket.CloseError
		if !errors.As(r.err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Errorf("client %d: connection ended with %v, want a close frame 1001", i, r.err)
		}
		if len(r.tail) != 1 || r.tail[0]["type"] != "closing" || r.tail[0]["reason"] != "server_shutdown" {
			t.Errorf("client %d: non-event messages %v, want exactly closing/server_shutdown", i, r.tail)
		}
		if i < len(filters) && !equalIDs(r.events, want[i]) {
			t.Errorf("client %d (%v): got %d events, want %d: %s", i, filters[i], len(r.events), len(want[i]), diffIDs(r.events, want[i]))
		}
		if i == len(filters) && len(r.events) != 0 {
			t.Errorf("the client without subscriptions got %d events", len(r.events))
		}
	}
}

// readToClose reads until the connection ends. It returns the event
// message_ids, the other messages, and the error that ended the reading.
// A closing message must come last: an event after it is reported as an error.
func readToClose(ws *websocket.Conn) (events []uint64, other []map[string]any, err error) {
	for {
		_ = ws.SetReadDeadline(time.Now().Add(15 * time.Second))
		var m struct {
			Type      string `json:"type"`
			MessageID uint64 `json:"message_id"`
			Reason    string `json:"reason"`
		}
		if err := ws.ReadJSON(&m); err != nil {
			return events, other, err
		}
		if m.Type == "event" {
			if len(other) > 0 && other[len(other)-1]["type"] == "closing" {
				return events, other, fmt.Errorf("event %d after closing", m.MessageID)
			}
			events = append(events, m.MessageID)
			continue
		}
		other = append(other, map[string]any{"type": m.Type, "reason": m.Reason})
	}
}

func equalIDs(a, b []uint64) bool {
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

// diffIDs describes how got differs from want.
func diffIDs(got, want []uint64) string {
	g := map[uint64]int{}
	for _, id := range got {
		g[id]++
	}
	var missing, extra, dup []uint64
	w := map[uint64]bool{}
	for _, id := range want {
		w[id] = true
		if g[id] == 0 {
			missing = append(missing, id)
		}
	}
	for id, n := range g {
		if !w[id] {
			extra = append(extra, id)
		}
		if n > 1 {
			dup = append(dup, id)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "missing %d %v, unexpected %d %v, duplicated %v", len(missing), firstIDs(missing), len(extra), firstIDs(extra), firstIDs(dup))
	if len(missing)+len(extra)+len(dup) == 0 {
		b.WriteString(" (same set, different order)")
		for i := range got {
			if got[i] != want[i] {
				fmt.Fprintf(&b, "; first difference at %d: got %d, want %d", i, got[i], want[i])
				break
			}
		}
	}
	return b.String()
}

func firstIDs(ids []uint64) []uint64 {
	if len(ids) > 10 {
		return ids[:10]
	}
	return ids
}

// TestGracefulShutdownWithBacklog: the client has megabytes of events
// waiting when the server is stopped (more than the socket buffers hold).
// It reads them all, then closing and 1001: shutting down must not drop
// events that were accepted, nor the goodbye.
func TestGracefulShutdownWithBacklog(t *testing.T) {
	s := startServer(t, func(c *engine.Config) {
		c.MaxPendingMessages = 1 << 20 // this test is not about slow consumers
		c.MaxPendingBytes = 1 << 30
	})
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	const n = 3000
	pad := strings.Repeat("x", 2000)
	lines := make([]string, n)
	for i := range lines {
		lines[i] = evUpdated(fmt.Sprintf(`"i":%d,"pad":%q`, i, pad))
	}
	ids := s.mustPublish(t, lines...) // ~6 MB, not read yet
	s.waitMetric(t, "websocket_events_broadcast_total", n)

	stopped := make(chan struct{})
	go func() { s.stop(t); close(stopped) }()
	events, tail, err := readToClose(c.ws)
	<-stopped
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Errorf("connection ended with %v, want a close frame 1001", err)
	}
	if len(tail) != 1 || tail[0]["reason"] != "server_shutdown" {
		t.Errorf("non-event messages %v, want closing/server_shutdown", tail)
	}
	if !equalIDs(events, ids) {
		t.Errorf("got %d of %d events accepted before the shutdown: %s", len(events), n, diffIDs(events, ids))
	}
}
