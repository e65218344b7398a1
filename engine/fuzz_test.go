package engine_test

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
)

// FuzzUpgradeRequest sends arbitrary request heads to a real server over
// loopback: each must get an HTTP response (101, or a 4xx/5xx error) or a
// closed connection — never a hang, never a crash — and the server must keep
// serving. The server is shared by all inputs of a run.
func FuzzUpgradeRequest(f *testing.F) {
	for _, s := range []string{
		"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
		"GET /ws?session_id=abc&token=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n",
		"POST /ws HTTP/1.1\r\n",
		"GET /ws HTTP/1.0\r\n",
		"GET /ws HTTP/1.1\r\nSec-WebSocket-Version: 8\r\nUpgrade: websocket\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
	} {
		f.Add([]byte(s))
	}
	fuzzServer := startServer(f, func(c *engine.Config) { c.HandshakeTimeout = 2 * time.Second })
	f.Fuzz(func(t *testing.T, head []byte) {
		if strings.Contains(string(head), "\r\n\r\n") {
			head = head[:strings.Index(string(head), "\r\n\r\n")]
		}
		c, err := net.DialTimeout("tcp", fuzzServer.hostPort(), 2*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(append(head, "\r\n\r\n"...)); err != nil {
			return // the server may close early on garbage
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("no answer within 5s to %q", head)
			}
			return // closed without a response: acceptable for bytes that are not HTTP
		}
		if resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode < 400 {
			t.Fatalf("status %d for %q", resp.StatusCode, head)
		}
	})
}
