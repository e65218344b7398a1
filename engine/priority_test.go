package engine_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
)

// TestPriorityUnderBacklog: within one connection's queue, critical and
// high events go out before normal ones still waiting, and each priority
// keeps message_id order (issue 5).
//
// How the backlog is built, and why the assertion is exact. The client
// stops reading (a 4 KB receive buffer). Filler events (normal, 4 KB each,
// 6 MB in all: more than the kernel's socket buffers, at most 4 MB of send
// buffer here, plus gnet's 64 KiB high-water mark) fill the connection, and
// then mixed events are published: normal, high (incident_created P1) and
// critical (escalated P0), interleaved. The server's event loop writes a
// connection's queue in flushes: each flush takes every frame queued so
// far, critical lane first, then high, then normal, and hands them to the
// socket, unless gnet's outbound buffer is over the high-water mark, in
// which case the frames stay queued. So the events ever handed to the
// socket are always a prefix of the stream by message_id (every flush takes
// all that was queued), and websocket_events_delivered_total, the count of
// event frames handed over (this client is the server's only one), tells
// where that prefix ends: message_id M. Once the socket is full and the
// client does not read, M cannot move.
//
// The test requires M to fall inside the filler (otherwise no mixed event
// was held back, and the run proves nothing: it fails as a setup error).
// Then, when the client reads everything, it must get: the events up to M
// in message_id order (they are all normal filler), then, from the single
// flush that takes the whole backlog once the socket drains (nothing new
// is published by then), every held critical event in message_id order,
// then every held high one, then every held normal one (the rest of the
// filler, then the mixed normal events). A FIFO queue would deliver the
// mixed events in publish order and fail; so would a queue that reorders
// within a priority.
func TestPriorityUnderBacklog(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) {
		c.MaxPendingMessages = 1 << 20 // a backlog, not a slow-consumer disconnect
		c.MaxPendingBytes = 1 << 30
	})
	c, _ := s.dialWelcome(t, "", smallBufferDialer(4096))
	c.subscribe("all", map[string]any{})

	const fillerN, fillerSize = 1500, 4 << 10
	filler := publishPadded(t, s, 0, fillerN, fillerSize, 100, false)

	type mixed struct {
		line, priority string
	}
	pad := strings.Repeat("m", 900)
	var mix []mixed
	for i := range 300 {
		switch i % 5 {
		case 1:
			mix = append(mix, mixed{fmt.Sprintf(`{"event_type":"escalated","severity":"P0","n":%d,"pad":%q}`, i, pad), "critical"})
		case 3:
			mix = append(mix, mixed{fmt.Sprintf(`{"event_type":"incident_created","severity":"P1","n":%d,"pad":%q}`, i, pad), "high"})
		default:
			mix = append(mix, mixed{evUpdated(fmt.Sprintf(`"severity":"P1","n":%d,"pad":%q`, i, pad)), "normal"})
		}
	}
	lines := make([]string, len(mix))
	for i, m := range mix {
		lines[i] = m.line
	}
	mixIDs := s.mustPublish(t, lines...)
	total := fillerN + len(mix)
	s.waitMetric(t, "websocket_events_broadcast_total", float64(total))

	// M: the events handed to the socket. Wait until the count has stopped
	// moving (the loop has flushed what it could); it cannot move again
	// while the client does not read and frames are held.
	var written float64
	stableSince := time.Now()
	if !pollUntil(20*time.Second, func() bool {
		v := s.metric(t, "websocket_events_delivered_total")
		if v != written {
			written, stableSince = v, time.Now()
		}
		return time.Since(stableSince) > 300*time.Millisecond
	}) {
		t.Fatalf("websocket_events_delivered_total never settled (last %v)", written)
	}
	m := int(written)
	if m >= fillerN {
		t.Fatalf("setup: the socket took %d events (%d filler events of %d B) without holding any back: no backlog to order",
			m, fillerN, fillerSize)
	}
	t.Logf("backlog: %d events were handed to the socket, %d held in the server's queue (%d of them mixed)", m, total-m, len(mix))

	priority := map[uint64]string{}
	for _, id := range filler {
		priority[id] = "normal"
	}
	var crit, high, norm []uint64
	for i, id := range mixIDs {
		priority[id] = mix[i].priority
		switch mix[i].priority {
		case "critical":
			crit = append(crit, id)
		case "high":
			high = append(high, id)
		default:
			norm = append(norm, id)
		}
	}
	want := slices.Clone(filler[:m])
	want = append(want, crit...)
	want = append(want, high...)
	want = append(want, filler[m:]...)
	want = append(want, norm...)

	got := make([]uint64, 0, total)
	for len(got) < total {
		msg := c.read(10 * time.Second)
		if msg["type"] != "event" {
			t.Fatalf("after %d events: got %v", len(got), msg)
		}
		id := msgID(t, msg)
		ev, _ := msg["event"].(map[string]any)
		if p := priority[id]; ev["priority"] != p {
			t.Fatalf("event %d has priority %v, want %s", id, ev["priority"], p)
		}
		got = append(got, id)
	}
	if !sameIDs(got, want) {
		// Say which rule broke, for the reader of a failure.
		arrival := map[uint64]int{}
		for i, id := range got {
			arrival[id] = i
		}
		lastCrit, firstHeldNormal := arrival[crit[len(crit)-1]], arrival[filler[m]]
		t.Fatalf("delivery order under a backlog (M=%d): %s; the last critical event arrived at position %d, the first held normal one at %d",
			m, idDiff(got, want), lastCrit, firstHeldNormal)
	}
}
