package engine_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/producer"
)

// Slow consumers (issue 5): a client that stops reading is disconnected
// once its queue reaches --max-pending-messages, the server's memory stays
// bounded meanwhile, and the client loses nothing still in the window when
// it resumes. The stalled clients use a 4 KB receive buffer
// (smallBufferDialer), so that their side holds next to nothing; the
// server's send buffer still grows to a few MB before frames stay queued.

// paddedLine is an incident_updated event of about size bytes, numbered n.
func paddedLine(n, size int) []byte {
	pad := strings.Repeat("s", max(0, size-80))
	return []byte(evUpdated(`"source":"slow","n":` + strconv.Itoa(n) + `,"pad":"` + pad + `"`))
}

// publishPadded publishes n events of about size bytes each (paddedLine),
// numbered from start, in batches of batch, and returns their ids. When
// paced is set, it waits after each batch until the dispatcher has handed
// the batch to the connections: a burst larger than max-pending-messages
// queued at once would mark a reading client slow before its event loop
// wrote anything, and these tests are about clients whose socket is full.
func publishPadded(t testing.TB, s *testServer, start, n, size, batch int, paced bool) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	pc, err := producer.Dial(ctx, s.socket)
	if err != nil {
		t.Fatalf("dial ingest: %v", err)
	}
	defer pc.Close()
	ids := make([]uint64, 0, n)
	lines := make([][]byte, 0, batch)
	for i := 0; i < n; i += batch {
		lines = lines[:0]
		for j := i; j < min(n, i+batch); j++ {
			lines = append(lines, paddedLine(start+j, size))
		}
		for k, r := range pc.PublishBatch(ctx, lines) {
			if r.Err != nil {
				t.Fatalf("publish event %d: %v", start+i+k, r.Err)
			}
			ids = append(ids, r.MessageID)
		}
		if paced {
			last := ids[len(ids)-1]
			if !pollUntil(10*time.Second, func() bool { return s.metric(t, "websocket_events_broadcast_total") >= float64(last) }) {
				t.Fatalf("the dispatcher did not reach event %d", last)
			}
		}
	}
	return ids
}

// publishUntilSlow publishes n events of size bytes, paced in batches of 20
// while the subscriber is connected, then in bulk once the server has
// disconnected it as a slow consumer.
func publishUntilSlow(t testing.TB, s *testServer, start, n, size int) []uint64 {
	t.Helper()
	var ids []uint64
	for len(ids) < n && s.metric(t, "websocket_slow_consumer_disconnects_total") == 0 {
		ids = append(ids, publishPadded(t, s, start+len(ids), min(20, n-len(ids)), size, 20, true)...)
	}
	if len(ids) == n {
		t.Fatalf("%d events published and the stalled subscriber is still connected (max-pending-messages 200)", n)
	}
	t.Logf("disconnected as a slow consumer after %d events", len(ids))
	return append(ids, publishPadded(t, s, start+len(ids), n-len(ids), size, 200, false)...)
}

// drainUntilClosed reads what the server sent before it closed the
// connection, until the connection ends. It returns the event ids and
// whether a closing/slow_consumer message got through (the server sends it
// when it can; with the client's buffers full it usually cannot).
func (c *client) drainUntilClosed() (ids []uint64, sawClosing bool) {
	c.t.Helper()
	for {
		m, err := c.tryRead(10 * time.Second)
		if err != nil {
			if isReadTimeout(err) {
				c.t.Fatalf("the server did not close the slow consumer's connection (read %d events after it stopped)", len(ids))
			}
			return ids, sawClosing
		}
		switch m["type"] {
		case "event":
			if sawClosing {
				c.t.Fatalf("event %v after closing", m["message_id"])
			}
			ids = append(ids, msgID(c.t, m))
		case "closing":
			if m["reason"] != "slow_consumer" {
				c.t.Fatalf("closing %v, want reason slow_consumer", m)
			}
			sawClosing = true
		default:
			c.t.Fatalf("unexpected message while draining: %v", m)
		}
	}
}

func isReadTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// slowN events of slowSize bytes (10 MB) are published to the stalled
// subscriber of the resume tests: about a third of it fills the socket
// buffers (the kernel lets the send buffer grow to a few MB even though the
// client's receive buffer is small) before frames queue in the server.
const slowN, slowSize = 2500, 4 << 10

// stalledSubscriber dials with a small receive buffer, subscribes to
// everything, reads 10 events, and acks the last of them when ack is set.
// It returns the client and the 10 events' ids.
func stalledSubscriber(t testing.TB, s *testServer, ack bool) (*client, []uint64) {
	t.Helper()
	c, _ := s.dialWelcome(t, "", smallBufferDialer(4096))
	c.subscribe("all", map[string]any{})
	first := publishPadded(t, s, 0, 10, 200, 10, false)
	expectIDs(t, "first events", c.events(10), first)
	if ack {
		if extra := c.ackBarrier(first[9]); len(extra) > 0 {
			t.Fatalf("unexpected events %v", extra)
		}
	}
	return c, first
}

// TestSlowConsumerResumesWithAcks: a client acks 10 events, then stops
// reading while 2,500 events of 4 KB are published. The server disconnects
// it as a slow consumer; the client reads what had reached it; resuming
// with its session id it gets every event after its ack (the window holds
// them all), in order, once, then live ones.
func TestSlowConsumerResumesWithAcks(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) { c.MaxPendingMessages = 200 })
	c, _ := stalledSubscriber(t, s, true)
	ids := publishUntilSlow(t, s, 10, slowN, slowSize)
	s.waitMetric(t, "websocket_slow_consumer_disconnects_total", 1)
	s.waitMetric(t, `websocket_connections_closed_total{reason="slow_consumer"}`, 1)

	drained, closing := c.drainUntilClosed()
	if !sameIDs(drained, ids[:len(drained)]) {
		t.Fatalf("what reached the slow consumer is not a prefix of the stream: %s", idDiff(drained, ids[:len(drained)]))
	}
	c2 := s.resume(t, c.sessionID, nil)
	live := publishPadded(t, s, 10+slowN, 5, slowSize, 5, false)
	want := append(slices.Clone(ids), live...)
	got := c2.idsThrough(want[len(want)-1])
	if !sameIDs(got, want) {
		t.Fatalf("after resuming: %s", idDiff(got, want))
	}
	t.Logf("the slow consumer had %d of %d events when it was closed (closing message got through: %v); the resume delivered %d",
		len(drained), len(ids), closing, len(got))
}

// TestSlowConsumerWithoutAcksLosesNothing: the same client, never acking.
// Its acks prove nothing, so its resume replays everything since the
// session began: the resumed stream is every event published, in order.
func TestSlowConsumerWithoutAcksLosesNothing(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) { c.MaxPendingMessages = 200 })
	c, first := stalledSubscriber(t, s, false)
	ids := publishUntilSlow(t, s, 10, slowN, slowSize)
	s.waitMetric(t, "websocket_slow_consumer_disconnects_total", 1)
	drained, _ := c.drainUntilClosed()
	c2 := s.resume(t, c.sessionID, nil)
	live := publishPadded(t, s, 10+slowN, 5, slowSize, 5, false)
	all := append(append(slices.Clone(first), ids...), live...)
	after := c2.idsThrough(all[len(all)-1])

	had := append(slices.Clone(first), drained...)
	if !sameIDs(had, all[:len(had)]) {
		t.Fatalf("before the resume: %s", idDiff(had, all[:len(had)]))
	}
	if !sameIDs(after, all) {
		t.Fatalf("the client had read %d events (through message_id %d); the resumed stream starts at %v: %s",
			len(had), had[len(had)-1], headIDs(after), idDiff(after, all))
	}
}

// slowHeapSampler records the Go heap of the test process, which runs the
// engine: the live heap after a forced collection, sampled periodically.
type slowHeapSampler struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	peak uint64
	n    int
}

// slowLiveHeap collects garbage and returns the heap it marked live
// (runtime/metrics /gc/heap/live:bytes): unlike HeapAlloc, it does not
// count what the engine's goroutines allocate while the collection runs.
func slowLiveHeap() uint64 {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

func startSlowHeapSampler(every time.Duration) *slowHeapSampler {
	h := &slowHeapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-tick.C:
				v := slowLiveHeap()
				h.mu.Lock()
				h.peak = max(h.peak, v)
				h.n++
				h.mu.Unlock()
			}
		}
	}()
	return h
}

func (h *slowHeapSampler) finish() (peak uint64, samples int) {
	close(h.stop)
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return max(h.peak, slowLiveHeap()), h.n + 1
}

// raceDetector reports whether the test binary was built with -race, which
// makes every byte the engine copies several times dearer: the memory test
// scales its volume down then (the bounds scale with it).
func raceDetector() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, st := range bi.Settings {
			if st.Key == "-race" {
				return st.Value == "true"
			}
		}
	}
	return false
}

// TestSlowConsumerMemoryBounded: a subscriber stops reading and V bytes of
// events are published (100 MB; 32 MB under the race detector). An
// unbounded queue would keep all of it alive for that client (the frames,
// and the events they were encoded from: more than V). flarecast keeps the
// window (--history-max-bytes V/32), the ring between ingest and the
// dispatcher (512 events here), and at most max-pending-messages frames
// for the client, then disconnects it. The live Go heap of the process
// (the engine runs in it), sampled during the publishing, must grow by
// less than V/2. Resuming after its ack, the client gets HISTORY_GAP (the
// window moved on), then every event still held, in order, then live ones.
//
// Not parallel: the heap of the whole test process is measured.
func TestSlowConsumerMemoryBounded(t *testing.T) {
	const eventSize = 4 << 10
	volume := 100 << 20
	if raceDetector() {
		volume = 32 << 20
	}
	n := volume / eventSize
	historyMax := int64(volume / 32)
	heapBound := int64(volume / 2)
	s := startServer(t, func(c *engine.Config) {
		c.MaxPendingMessages = 200
		c.HistorySize = 1 << 20 // the byte bound binds first
		c.HistoryMaxBytes = historyMax
		c.BroadcastCapacity = 512
	})
	c, _ := stalledSubscriber(t, s, true)
	base := slowLiveHeap()
	sampler := startSlowHeapSampler(200 * time.Millisecond)
	start := time.Now()
	ids := publishUntilSlow(t, s, 10, n, eventSize)
	s.waitMetric(t, "websocket_events_broadcast_total", float64(10+n))
	elapsed := time.Since(start)
	peak, samples := sampler.finish()
	growth := int64(peak) - int64(base)
	t.Logf("published %d events of %d B (%d MB) in %v; live heap: base %.1f MB, peak %.1f MB (+%.1f MB) over %d samples; window %d events for a %.1f MB bound",
		n, eventSize, volume>>20, elapsed.Round(time.Millisecond), slowMB(base), slowMB(peak), slowMB(uint64(growth)), samples,
		int(s.metric(t, "flarecast_history_events")), slowMB(uint64(historyMax)))
	if growth > heapBound {
		t.Errorf("live heap grew by %.1f MB while %d MB were published to a client that does not read (bound %d MB)",
			slowMB(uint64(growth)), volume>>20, heapBound>>20)
	}

	drained, _ := c.drainUntilClosed()
	if !sameIDs(drained, ids[:len(drained)]) {
		t.Fatalf("what reached the slow consumer is not a prefix of the stream: %s", idDiff(drained, ids[:len(drained)]))
	}
	oldest := uint64(s.metric(t, "flarecast_history_oldest_message_id"))
	held := idsAfter(ids, oldest-1)
	if len(held) == 0 || len(held) == len(ids) || held[0] != oldest {
		t.Fatalf("window starts at %d: want it inside the %d events published (%d..%d)", oldest, len(ids), ids[0], ids[len(ids)-1])
	}
	c2 := s.resume(t, c.sessionID, nil)
	if got := c2.expectGap(); got != oldest {
		t.Fatalf("first_available %d, want %d (flarecast_history_oldest_message_id)", got, oldest)
	}
	live := publishPadded(t, s, 10+n, 3, 200, 3, false)
	want := append(slices.Clone(held), live...)
	got := c2.idsThrough(want[len(want)-1])
	if !sameIDs(got, want) {
		t.Fatalf("after resuming: %s", idDiff(got, want))
	}
}

func slowMB(b uint64) float64 { return float64(b) / (1 << 20) }
