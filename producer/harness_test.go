package producer_test

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/internal/enginetest"
)

// server is a real flarecast engine on loopback (internal/enginetest) with
// its ingest socket at a path the test chooses, so a test can restart it on
// the same path.
type server struct {
	*enginetest.Server
	socket string
}

func startServer(t testing.TB, socket string) *server {
	t.Helper()
	if socket == "" {
		socket = filepath.Join(t.TempDir(), "ingest.sock")
	}
	cfg := enginetest.Config()
	cfg.AdminListen = ""
	cfg.IngestSocket = socket
	cfg.EventLoops = 2
	return &server{enginetest.MustStart(t, cfg), socket}
}

// wsClient is a real WebSocket client subscribed to every event.
type wsClient struct {
	t  testing.TB
	ws *websocket.Conn
}

func (s *server) subscribeAll(t testing.TB) *wsClient {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(s.WS, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", s.WS, err)
	}
	t.Cleanup(func() { ws.Close() })
	c := &wsClient{t: t, ws: ws}
	if m := c.next(); m["type"] != "welcome" {
		t.Fatalf("want welcome, got %v", m)
	}
	// since 0 backfills from the history window: events published before
	// the subscription arrive too, so no test races its own subscriber.
	if err := ws.WriteJSON(map[string]any{"type": "subscribe", "subscription_id": "all", "filters": map[string]any{}, "since": 0}); err != nil {
		t.Fatal(err)
	}
	if m := c.next(); m["type"] != "subscribed" {
		t.Fatalf("want subscribed, got %v", m)
	}
	return c
}

// next returns the next message, failing the test after 10s.
func (c *wsClient) next() map[string]any {
	c.t.Helper()
	m, err := c.tryNext(10 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

func (c *wsClient) tryNext(timeout time.Duration) (map[string]any, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(timeout))
	_, data, err := c.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// event is one delivered event: its message_id and payload.
type delivered struct {
	id    uint64
	event map[string]any
}

// events reads until n events have arrived.
func (c *wsClient) events(n int) []delivered {
	c.t.Helper()
	out := make([]delivered, 0, n)
	for len(out) < n {
		m := c.next()
		if m["type"] != "event" {
			c.t.Fatalf("want an event, got %v", m)
		}
		out = append(out, delivered{uint64(m["message_id"].(float64)), m["event"].(map[string]any)})
	}
	return out
}

// eventsUntilClosing reads events until the server's closing message.
func (c *wsClient) eventsUntilClosing() []delivered {
	c.t.Helper()
	var out []delivered
	for {
		m := c.next()
		switch m["type"] {
		case "event":
			out = append(out, delivered{uint64(m["message_id"].(float64)), m["event"].(map[string]any)})
		case "closing":
			return out
		default:
			c.t.Fatalf("unexpected message %v", m)
		}
	}
}
