package engine_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
)

// TestHTTPRejections sends requests that are not a valid upgrade to the
// endpoint over raw TCP: each gets its status and the connection is
// closed; none hangs.
func TestHTTPRejections(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	host := s.hostPort()
	key := newWSKey()
	cases := []struct {
		name   string
		req    string
		status int
	}{
		{"plain GET on another path", "GET /other HTTP/1.1\r\nHost: " + host + "\r\n\r\n", http.StatusNotFound},
		{"upgrade on another path", upgradeRequest(host, "/other", key), http.StatusNotFound},
		{"upgrade on a path below the endpoint", upgradeRequest(host, "/ws/x", key), http.StatusNotFound},
		{"GET /ws without upgrade", "GET /ws HTTP/1.1\r\nHost: " + host + "\r\n\r\n", http.StatusUpgradeRequired},
		{"upgrade without Sec-WebSocket-Key", "GET /ws HTTP/1.1\r\nHost: " + host +
			"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", http.StatusBadRequest},
		{"upgrade with a malformed Sec-WebSocket-Key", "GET /ws HTTP/1.1\r\nHost: " + host +
			"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawHTTP(t, host, tc.req)
			if r.status != tc.status {
				t.Errorf("HTTP %d, want %d (body %q)", r.status, tc.status, r.body)
			}
			if !r.closed {
				t.Errorf("the server kept the connection open after HTTP %d", r.status)
			}
			if tc.status == http.StatusUpgradeRequired && !strings.EqualFold(r.header.Get("Upgrade"), "websocket") {
				t.Errorf("426 without Upgrade: websocket (headers %v)", r.header)
			}
		})
	}
	// No connection was counted as a WebSocket session.
	s.metricEquals(t, "websocket_total_connections", 0)
	s.metricEquals(t, "websocket_active_connections", 0)
	// The endpoint still works.
	s.dial(t, "")
}

// TestUpgradeWithQueryAndPipelinedFrame sends the upgrade request and a
// first frame in one write, with a query string on the path: the upgrade
// works, welcome is still the first message, and the ping is answered.
func TestUpgradeWithQueryAndPipelinedFrame(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dialTCP(t)
	key := newWSKey()
	req := upgradeRequest(s.hostPort(), "/ws?client=raw", key)
	r := &rawWS{t: t, c: c}
	r.write(append([]byte(req), maskedText(`{"type":"ping","timestamp":"first"}`)...))
	r.br = bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade with a query: %v %v", resp, err)
	}
	first, second := r.readJSON(), r.readJSON()
	if first["type"] != "welcome" || second["type"] != "pong" {
		t.Fatalf("messages %v then %v: want welcome first, then the pong", first, second)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
	})
	c := s.dialTCP(t)
	if _, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("a connection that never finished its upgrade request is still open after 10s (handshake timeout 300ms)")
	}
	s.waitMetric(t, "websocket_handshakes_rejected_total", 1)
}

func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	for path, want := range map[string]int{
		"/healthz": http.StatusOK,
		"/readyz":  http.StatusOK,
		"/metrics": http.StatusOK,
	} {
		resp, err := http.Get(s.admin + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: HTTP %d, want %d (%q)", path, resp.StatusCode, want, body)
		}
		if path == "/metrics" && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Errorf("/metrics Content-Type %q, want text/plain", resp.Header.Get("Content-Type"))
		}
	}
}
