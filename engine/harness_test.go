package engine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/producer"
)

// testServer is a real flarecast engine on loopback ports chosen by the
// kernel, with its ingest socket in the test's temporary directory.
type testServer struct {
	eng    *engine.Engine
	wsURL  string // ws://127.0.0.1:PORT/ws
	admin  string // http://127.0.0.1:PORT
	socket string
	cancel context.CancelFunc
	done   chan error
}

func startServer(t testing.TB, mutate func(*engine.Config)) *testServer {
	t.Helper()
	return startServerWith(t, mutate, nil)
}

// startServerWith is startServer calling prepare, if set, between New and Run.
func startServerWith(t testing.TB, mutate func(*engine.Config), prepare func(*engine.Engine)) *testServer {
	t.Helper()
	cfg := engine.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	cfg.IngestSocket = filepath.Join(t.TempDir(), "ingest.sock")
	cfg.EventLoops = 2
	if mutate != nil {
		mutate(&cfg)
	}
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatalf("engine.New: %v", err)
	}
	if prepare != nil {
		prepare(eng)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &testServer{eng: eng, socket: cfg.IngestSocket, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- eng.Run(ctx) }()
	select {
	case <-eng.Ready():
	case err := <-s.done:
		t.Fatalf("engine.Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("engine did not start")
	}
	s.wsURL = "ws://" + eng.Addr().String() + cfg.Path
	if a := eng.AdminAddr(); a != nil {
		s.admin = "http://" + a.String()
	}
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop shuts the server down and checks it stopped cleanly; calling it twice is fine.
func (s *testServer) stop(t testing.TB) {
	t.Helper()
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("engine.Run returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("engine did not stop within 15s")
	}
}

// publish sends raw NDJSON event lines through the real ingest socket.
func (s *testServer) publish(t testing.TB, lines ...string) []producer.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := producer.Dial(ctx, s.socket)
	if err != nil {
		t.Fatalf("dial ingest: %v", err)
	}
	defer c.Close()
	evs := make([][]byte, len(lines))
	for i, l := range lines {
		evs[i] = []byte(l)
	}
	return c.PublishBatch(ctx, evs)
}

// mustPublish publishes lines and fails the test if any is refused; it returns the ids.
func (s *testServer) mustPublish(t testing.TB, lines ...string) []uint64 {
	t.Helper()
	ids := make([]uint64, len(lines))
	for i, r := range s.publish(t, lines...) {
		if r.Err != nil {
			t.Fatalf("publish %s: %v", lines[i], r.Err)
		}
		ids[i] = r.MessageID
	}
	return ids
}

// client is a real WebSocket client (gorilla/websocket) over loopback.
type client struct {
	t         testing.TB
	ws        *websocket.Conn
	sessionID string
}

func (s *testServer) dial(t testing.TB, query string) *client {
	t.Helper()
	url := s.wsURL
	if query != "" {
		url += "?" + query
	}
	ws, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	c := &client{t: t, ws: ws}
	t.Cleanup(func() { ws.Close() })
	w := c.expect("welcome")
	c.sessionID, _ = w["session_id"].(string)
	if c.sessionID == "" {
		t.Fatalf("welcome without session_id: %v", w)
	}
	return c
}

func (c *client) send(v any) {
	c.t.Helper()
	var data []byte
	switch v := v.(type) {
	case string:
		data = []byte(v)
	default:
		var err error
		if data, err = json.Marshal(v); err != nil {
			c.t.Fatal(err)
		}
	}
	if err := c.ws.WriteMessage(websocket.TextMessage, data); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read returns the next message, failing the test after timeout.
func (c *client) read(timeout time.Duration) map[string]any {
	c.t.Helper()
	m, err := c.tryRead(timeout)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

func (c *client) tryRead(timeout time.Duration) (map[string]any, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(timeout))
	_, data, err := c.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("server sent invalid JSON %q: %w", data, err)
	}
	return m, nil
}

// expect reads the next message and checks its type.
func (c *client) expect(typ string) map[string]any {
	c.t.Helper()
	m := c.read(5 * time.Second)
	if m["type"] != typ {
		c.t.Fatalf("want a %q message, got %v", typ, m)
	}
	return m
}

func (c *client) subscribe(id string, filters map[string]any) map[string]any {
	c.t.Helper()
	c.send(map[string]any{"type": "subscribe", "subscription_id": id, "filters": filters})
	m := c.expect("subscribed")
	if m["subscription_id"] != id {
		c.t.Fatalf("subscribed %v, want %s", m, id)
	}
	return m
}

// events reads n event messages and returns their message_ids.
func (c *client) events(n int) []uint64 {
	c.t.Helper()
	ids := make([]uint64, 0, n)
	for len(ids) < n {
		m := c.read(5 * time.Second)
		if m["type"] != "event" {
			c.t.Fatalf("want an event, got %v", m)
		}
		ids = append(ids, uint64(m["message_id"].(float64)))
	}
	return ids
}

// expectSilence checks that nothing arrives within d and that the
// connection is still open: only a read that times out counts as silence.
// A close frame, a reset or EOF fails the test (a server that dropped the
// client is not a server that sent nothing), and so does a message that is
// not JSON. A timed-out read leaves a gorilla connection unusable, so this
// must be the last read on c.
func (c *client) expectSilence(d time.Duration) {
	c.t.Helper()
	m, err := c.tryRead(d)
	switch {
	case err == nil:
		c.t.Fatalf("expected nothing, got %v", m)
	case !isReadTimeout(err):
		c.t.Fatalf("expected silence on an open connection for %v, but the read ended with: %v", d, err)
	}
}

// metric returns the value of one series on /metrics, or -1 when absent.
func (s *testServer) metric(t testing.TB, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(s.metricsText(t), "\n") {
		if name, val, ok := strings.Cut(line, " "); ok && name == series {
			var f float64
			fmt.Sscan(val, &f)
			return f
		}
	}
	return -1
}

func ev(fields string) string {
	return `{"event_type":"incident_created",` + fields + `}`
}

// status returns the HTTP status of an admin path.
func (s *testServer) status(t testing.TB, path string) int {
	t.Helper()
	resp, err := http.Get(s.admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
