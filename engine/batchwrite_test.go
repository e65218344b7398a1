package engine_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/engine"
)

// With --io-uring, every connection gets every event in order: those that
// read along (plain and compressed) through the ring, and one that stops
// reading, whose writes come back short or -EAGAIN and go on through gnet.
func TestIOURingDeliversInOrder(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.IOURing, c.EventLoops = true, 2 })
	var readers []*client
	for i := range 8 {
		d := websocket.DefaultDialer
		if i%2 == 1 {
			d = &websocket.Dialer{EnableCompression: true}
		}
		c, _ := s.dialWelcome(t, "", d)
		c.subscribe("all", map[string]any{})
		readers = append(readers, c)
	}
	stalled, _ := s.dialWelcome(t, "", smallBufferDialer(4096))
	stalled.subscribe("all", map[string]any{})
	// The gauge operators read says which loops write through the ring.
	if n := s.metric(t, "flarecast_io_uring_loops"); n != 2 {
		if n != 0 {
			t.Fatalf("flarecast_io_uring_loops = %v with 2 event loops", n)
		}
		if os.Getenv("CI") == "true" {
			t.Fatal("io_uring is refused on this machine: the --io-uring path goes untested")
		}
		t.Skip("SKIPPING: io_uring is not available on this kernel; the loops write with write(2)")
	}

	pad := strings.Repeat("x", 600)
	var lines []string
	for range 400 {
		lines = append(lines, normalEv(`"source":"uring","title":"`+pad+`"`))
	}
	ids := s.mustPublish(t, lines...)
	for i, c := range readers {
		assertIDs(t, "reader "+itoa(i), c.events(len(ids)), ids)
	}
	time.Sleep(100 * time.Millisecond) // the stalled client's socket is full by now
	assertIDs(t, "the client that stopped reading", stalled.events(len(ids)), ids)
}
