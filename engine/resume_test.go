package engine_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/producer"
)

// Integration tests of issue 5's delivery guarantees: resume after a TCP
// reset (with and without acks), `since` backfill, HISTORY_GAP, and session
// takeover. Every client is a real WebSocket client over loopback. The
// events are incident_updated (normal priority) unless a test says
// otherwise, so that a connection's queue keeps message_id order and any
// reordering is a bug, not the priority lanes at work.

// ---- helpers shared by resume_test.go, slow_test.go, priority_test.go ----

// dialWelcome opens a WebSocket with query (and dialer d, nil for the
// default) and returns the client and its welcome message.
func (s *testServer) dialWelcome(t testing.TB, query string, d *websocket.Dialer) (*client, map[string]any) {
	t.Helper()
	if d == nil {
		d = websocket.DefaultDialer
	}
	url := s.wsURL
	if query != "" {
		url += "?" + query
	}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	t.Cleanup(func() { ws.Close() })
	c := &client{t: t, ws: ws}
	w := c.expect("welcome")
	c.sessionID, _ = w["session_id"].(string)
	if c.sessionID == "" {
		t.Fatalf("welcome without session_id: %v", w)
	}
	return c, w
}

// resume reconnects to session id and checks the welcome says it resumed it.
func (s *testServer) resume(t testing.TB, id string, d *websocket.Dialer) *client {
	t.Helper()
	c, w := s.dialWelcome(t, "session_id="+id, d)
	if w["resumed"] != true || c.sessionID != id {
		t.Fatalf("resuming session %s: welcome %v, want the same session_id and \"resumed\":true", id, w)
	}
	return c
}

// smallBufferDialer returns a dialer whose sockets have a receive buffer of
// about rcvbuf bytes, set before connect so the TCP window stays small: a
// client that stops reading then backs the server up after a few KB
// instead of the megabytes Linux's autotuning would otherwise absorb.
func smallBufferDialer(rcvbuf int) *websocket.Dialer {
	nd := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
		}); err != nil {
			return err
		}
		return serr
	}}
	return &websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 5 * time.Second}
}

// resetConn kills the client's TCP connection with a reset (SO_LINGER 0,
// then close): no close handshake, no FIN, and whatever was in flight in
// either direction is discarded, as when a laptop drops off the network
// and its stack later answers the server with RST.
func resetConn(t testing.TB, ws *websocket.Conn) {
	t.Helper()
	tc, ok := ws.UnderlyingConn().(*net.TCPConn)
	if !ok {
		t.Fatalf("underlying connection is %T, want *net.TCPConn", ws.UnderlyingConn())
	}
	if err := tc.SetLinger(0); err != nil {
		t.Fatalf("SetLinger(0): %v", err)
	}
	if err := tc.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// idsThrough reads event messages until the one with message_id last and
// returns every event id read, last included, in arrival order. A non-event
// message fails the test.
func (c *client) idsThrough(last uint64) []uint64 {
	c.t.Helper()
	var ids []uint64
	for {
		m, err := c.tryRead(10 * time.Second)
		if err != nil {
			c.t.Fatalf("waiting for event %d: %v (after %d events, the last ones %v)", last, err, len(ids), ids[max(0, len(ids)-5):])
		}
		if m["type"] != "event" {
			c.t.Fatalf("waiting for event %d (after %d events): got %v", last, len(ids), m)
		}
		id := msgID(c.t, m)
		ids = append(ids, id)
		if id == last {
			return ids
		}
	}
}

// idsThroughFrom is idsThrough for a client that has already read the
// events got: nothing more is read when got ends at or after last.
func (c *client) idsThroughFrom(got []uint64, last uint64) []uint64 {
	c.t.Helper()
	if len(got) > 0 && got[len(got)-1] >= last {
		return nil
	}
	return c.idsThrough(last)
}

// ackBarrier acks id cumulatively, then proves the server has applied the
// ack: commands from one connection are applied in order, so the NOT_FOUND
// error answering an unsubscribe of an unknown subscription comes after the
// ack took effect. The events that arrive meanwhile are returned.
func (c *client) ackBarrier(id uint64) []uint64 {
	c.t.Helper()
	c.send(map[string]any{"type": "ack", "message_id": id})
	c.send(map[string]any{"type": "unsubscribe", "subscription_id": "barrier-no-such-subscription"})
	var ids []uint64
	for {
		m := c.read(10 * time.Second)
		switch {
		case m["type"] == "event":
			ids = append(ids, msgID(c.t, m))
		case m["type"] == "error" && m["code"] == "NOT_FOUND":
			return ids
		default:
			c.t.Fatalf("waiting for the ack barrier: got %v", m)
		}
	}
}

// steadyProducer publishes one event at a time, paced, from its own
// goroutine, until stopped or until max events: the "events keep flowing"
// of the resume tests.
type steadyProducer struct {
	mu   sync.Mutex
	ids  []uint64
	stop chan struct{}
	done chan error
	max  int
}

func startSteadyProducer(t testing.TB, s *testServer, every time.Duration, max int, line func(i int) string) *steadyProducer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	pc, err := producer.Dial(ctx, s.socket)
	if err != nil {
		cancel()
		t.Fatalf("dial ingest: %v", err)
	}
	p := &steadyProducer{stop: make(chan struct{}), done: make(chan error, 1), max: max}
	go func() {
		defer cancel()
		defer pc.Close()
		for i := range max {
			select {
			case <-p.stop:
				p.done <- nil
				return
			default:
			}
			id, err := pc.PublishJSON(ctx, []byte(line(i)))
			if err != nil {
				p.done <- fmt.Errorf("publish event %d: %w", i, err)
				return
			}
			p.mu.Lock()
			p.ids = append(p.ids, id)
			p.mu.Unlock()
			time.Sleep(every) // pacing, not synchronisation
		}
		p.done <- nil
	}()
	t.Cleanup(func() { p.finish(t) })
	return p
}

// published returns a copy of the ids accepted so far.
func (p *steadyProducer) published() []uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ids)
}

// finish stops the producer and returns every id it got accepted; calling
// it again returns the same ids.
func (p *steadyProducer) finish(t testing.TB) []uint64 {
	t.Helper()
	select {
	case <-p.stop:
	default:
		close(p.stop)
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("steady producer: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("steady producer did not stop")
		}
	}
	return p.published()
}

// waitPublished waits until the producer has more than n events accepted
// and returns them, failing if it stopped (hit its bound) meanwhile.
func (p *steadyProducer) waitPublished(t testing.TB, n int) []uint64 {
	t.Helper()
	var ids []uint64
	if !pollUntil(20*time.Second, func() bool { ids = p.published(); return len(ids) > n }) {
		t.Fatalf("steady producer has only %d events accepted, want more than %d", len(ids), n)
	}
	if len(ids) >= p.max {
		t.Fatalf("steady producer reached its bound of %d events: the test no longer runs while events flow", p.max)
	}
	return ids
}

func steadyLine(i int) string { return evUpdated(fmt.Sprintf(`"source":"steady","n":%d`, i)) }

// steadyLines returns steadyLine(from) … steadyLine(from+n-1).
func steadyLines(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = steadyLine(from + i)
	}
	return out
}

// sameIDs reports whether a and b hold the same ids in the same order.
func sameIDs(a, b []uint64) bool { return slices.Equal(a, b) }

// idDiff describes how got differs from want: missing, unexpected and
// duplicated ids, or the first position where the order differs.
func idDiff(got, want []uint64) string {
	count := map[uint64]int{}
	for _, id := range got {
		count[id]++
	}
	wanted := map[uint64]bool{}
	var missing, extra, dup []uint64
	for _, id := range want {
		wanted[id] = true
		if count[id] == 0 {
			missing = append(missing, id)
		}
	}
	for _, id := range got {
		if !wanted[id] {
			extra = append(extra, id)
		}
		if count[id] > 1 {
			dup = append(dup, id)
			count[id] = 1 // report each once
		}
	}
	out := fmt.Sprintf("got %d ids, want %d: missing %d %v, unexpected %d %v, duplicated %d %v",
		len(got), len(want), len(missing), headIDs(missing), len(extra), headIDs(extra), len(dup), headIDs(dup))
	if len(missing)+len(extra)+len(dup) == 0 {
		for i := range got {
			if got[i] != want[i] {
				out += fmt.Sprintf("; same set, first difference at %d: got %v, want %v", i,
					got[i:min(i+5, len(got))], want[i:min(i+5, len(want))])
				break
			}
		}
	}
	return out
}

// expectIDs fails the test unless got and want are the same ids in the same order.
func expectIDs(t testing.TB, what string, got, want []uint64) {
	t.Helper()
	if !sameIDs(got, want) {
		t.Fatalf("%s: %s", what, idDiff(got, want))
	}
}

// headIDs returns at most the first 10 ids, for messages.
func headIDs(ids []uint64) []uint64 { return ids[:min(len(ids), 10)] }

// idsAfter returns the ids in all (sorted) greater than id.
func idsAfter(all []uint64, id uint64) []uint64 {
	i, _ := slices.BinarySearch(all, id+1)
	return all[i:]
}

// ---- resume after a TCP reset ----

// TestResumeAfterResetWithAcks: a client acks a prefix of the stream, is
// killed by a TCP reset while a producer keeps publishing, and reconnects
// with its session id. It must get every event after its ack, in order,
// each exactly once, the replay running straight into live events: the
// events it read but had not acked come again (that is at-least-once), and
// nothing else is duplicated or missing.
func TestResumeAfterResetWithAcks(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	p := startSteadyProducer(t, s, time.Millisecond, 20000, steadyLine)

	before := c.events(150)
	acked := before[99]
	before = append(before, c.ackBarrier(acked)...)
	// The client stops reading for a while, so that the reset discards
	// events the server wrote and the client never read.
	unread := len(p.published())
	p.waitPublished(t, unread+30)
	resetConn(t, c.ws)
	// Events go on being published while the client is away.
	atReset := len(p.published())
	p.waitPublished(t, atReset+50)

	c2 := s.resume(t, c.sessionID, nil)
	atResume := p.waitPublished(t, 0)
	lastAtResume := atResume[len(atResume)-1]
	// Read until 100 events published after the reconnect arrived: the
	// replay has handed over to live delivery by then.
	var after []uint64
	for live := 0; live < 100; {
		id := c2.events(1)[0]
		after = append(after, id)
		if id > lastAtResume {
			live++
		}
	}
	all := p.finish(t)
	after = append(after, c2.idsThroughFrom(after, all[len(all)-1])...)

	if !sameIDs(before, all[:len(before)]) {
		t.Fatalf("before the reset the client got %d events not in publish order: %s", len(before), idDiff(before, all[:len(before)]))
	}
	want := idsAfter(all, acked)
	if !sameIDs(after, want) {
		t.Fatalf("after resuming (acked %d; had read up to %d; %d published in all): %s",
			acked, before[len(before)-1], len(all), idDiff(after, want))
	}
	t.Logf("published %d events; acked message_id %d, read %d before the reset (%d of them again after it, as unacked); %d replayed or live after it",
		len(all), acked, len(before), len(idsAfter(before, acked)), len(after))
	s.waitMetric(t, `flarecast_session_resumes_total{result="resumed"}`, 1)
	s.metricEquals(t, "websocket_acks_received_total", 1)
}

// TestResumeWithoutAcksAfterQuietReset: a client that never acks resumes
// after the last event the server wrote to it. Here it had read everything
// written when it was reset, so it must get exactly the events published
// since: none twice, none lost, those published while it was away first,
// TestResumeWithoutAcksAfterQuietReset: a client that never acks proves
// nothing about what reached it, so its resume replays everything the
// session was owed since it began (at-least-once): the events it read come
// again, followed by those published while it was away, then live ones.
func TestResumeWithoutAcksAfterQuietReset(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	read := s.mustPublish(t, steadyLines(0, 50)...)
	expectIDs(t, "before the reset", c.events(50), read)
	resetConn(t, c.ws)
	s.waitMetric(t, "websocket_active_connections", 0)
	away := s.mustPublish(t, steadyLines(50, 30)...)
	c2 := s.resume(t, c.sessionID, nil)
	live := s.mustPublish(t, steadyLines(80, 20)...)
	want := append(append(slices.Clone(read), away...), live...)
	expectIDs(t, "after resuming", c2.events(100), want)
	fence := s.mustPublish(t, steadyLine(100))
	expectIDs(t, "fence", c2.events(1), fence)
}

// TestResumeWithoutAcksWhileFlowing: a client that never acks is reset while
// events flow. What the server had written but the client had not read is
// gone with the reset; as the client never acked, the resume replays the
// session from its start, in order and without a hole, then goes live.
func TestResumeWithoutAcksWhileFlowing(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	p := startSteadyProducer(t, s, time.Millisecond, 20000, steadyLine)
	before := c.events(150)
	// The client stops reading for a while: the server goes on writing,
	// and the reset discards what the client did not read.
	unread := len(p.published())
	p.waitPublished(t, unread+30)
	resetConn(t, c.ws)
	s.waitMetric(t, "websocket_active_connections", 0)
	written := int(s.metric(t, "websocket_events_delivered_total"))
	p.waitPublished(t, written+50)

	c2 := s.resume(t, c.sessionID, nil)
	atResume := p.waitPublished(t, 0)
	var after []uint64
	for live := 0; live < 100; {
		id := c2.events(1)[0]
		after = append(after, id)
		if id > atResume[len(atResume)-1] {
			live++
		}
	}
	all := p.finish(t)
	after = append(after, c2.idsThroughFrom(after, all[len(all)-1])...)

	if !sameIDs(before, all[:len(before)]) {
		t.Fatalf("before the reset: %s", idDiff(before, all[:len(before)]))
	}
	if !sameIDs(after, all) {
		t.Fatalf("after resuming (read %d events, server wrote %d): %s", len(before), written, idDiff(after, all))
	}
	t.Logf("client read %d events, server had written %d; the resume replayed all %d (never acked)", len(before), written, len(all))
}

// ---- since backfill ----

// TestSinceBackfillNarrowOverLargeWindow: a backfill over more history
// than the replay pumps look at in one dispatcher round (a narrow filter
// over 10,000 events, 1 in 1,000 matching) goes on over several rounds and
// still delivers every match, in order, then live events, to the
// subscriber; another client gets its live events meanwhile.
func TestSinceBackfillNarrowOverLargeWindow(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	other := s.dial(t, "")
	other.subscribe("wide", map[string]any{"sources": []string{"wide"}})
	lines := make([]string, 10_000)
	for i := range lines {
		src := "bulk"
		if i%1000 == 999 {
			src = "rare"
		}
		lines[i] = evUpdated(fmt.Sprintf(`"source":%q,"n":%d`, src, i))
	}
	ids := s.publishInProcess(t, lines)
	var want []uint64
	for i, id := range ids {
		if i%1000 == 999 {
			want = append(want, id)
		}
	}
	c := s.dial(t, "")
	c.send(map[string]any{"type": "subscribe", "subscription_id": "rare",
		"filters": map[string]any{"sources": []string{"rare"}}, "since": 0})
	c.expect("subscribed")
	wide := s.mustPublish(t, evUpdated(`"source":"wide"`))
	expectIDs(t, "the other client's live event", other.events(1), wide)
	fence := s.mustPublish(t, evUpdated(`"source":"rare","fence":true`))[0]
	expectIDs(t, "narrow backfill then live", c.idsThrough(fence), append(want, fence))
}

// TestSinceBackfill: a subscription with `since` first gets the window's
// matching events after that message_id, in order, then live ones.
func TestSinceBackfill(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	var lines []string
	for i := range 20 {
		lines = append(lines, evUpdated(fmt.Sprintf(`"source":%q,"n":%d`, []string{"a", "b"}[i%2], i)))
	}
	ids := s.mustPublish(t, lines...)
	c := s.dial(t, "")
	c.send(map[string]any{"type": "subscribe", "subscription_id": "sa",
		"filters": map[string]any{"sources": []string{"a"}}, "since": ids[5]})
	c.expect("subscribed")
	var want []uint64
	for i, id := range ids {
		if i%2 == 0 && id > ids[5] {
			want = append(want, id)
		}
	}
	live := s.mustPublish(t, evUpdated(`"source":"a"`), evUpdated(`"source":"b"`), evUpdated(`"source":"a"`))
	want = append(want, live[0], live[2])
	fence := s.mustPublish(t, evUpdated(`"source":"a","fence":true`))[0]
	expectIDs(t, "since backfill then live", c.idsThrough(fence), append(want, fence))
	// since=0 on another connection: the whole window.
	c2 := s.dial(t, "")
	c2.send(map[string]any{"type": "subscribe", "subscription_id": "sb",
		"filters": map[string]any{"sources": []string{"b"}}, "since": 0})
	c2.expect("subscribed")
	var wantB []uint64
	for i, id := range ids {
		if i%2 == 1 {
			wantB = append(wantB, id)
		}
	}
	wantB = append(wantB, live[1])
	fenceB := s.mustPublish(t, evUpdated(`"source":"b","fence":true`))[0]
	expectIDs(t, "since=0", c2.idsThrough(fenceB), append(wantB, fenceB))
}

// sinceCorpus is an event of the overlap tests: source x or y, severity P1
// or P3 (normal priority whatever the severity: incident_updated).
type sinceCorpus struct {
	id     uint64
	source string
	sev    string
}

func (e sinceCorpus) p1() bool { return e.sev == "P1" }
func (e sinceCorpus) x() bool  { return e.source == "x" }

func publishCorpus(t testing.TB, s *testServer, n int, pad string) []sinceCorpus {
	t.Helper()
	lines := make([]string, n)
	evs := make([]sinceCorpus, n)
	for i := range lines {
		// A cycle of 4 covers all four combinations.
		evs[i] = sinceCorpus{source: []string{"x", "y"}[i%2], sev: []string{"P1", "P1", "P3", "P3"}[i%4]}
		lines[i] = evUpdated(fmt.Sprintf(`"source":%q,"severity":%q,"pad":%q`, evs[i].source, evs[i].sev, pad))
	}
	for i, id := range s.mustPublish(t, lines...) {
		evs[i].id = id
	}
	return evs
}

// TestSinceWithOverlappingLiveSubscription: the session already has a live
// subscription (P1) when it subscribes with since=0 to source x. The
// backfill must not repeat the events that matched both and were already
// delivered through the first subscription; live events matching both come
// once.
func TestSinceWithOverlappingLiveSubscription(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	batchA := publishCorpus(t, s, 40, "") // before any subscription
	c := s.dial(t, "")
	c.subscribe("sev", map[string]any{"severities": []string{"P1"}})
	batchB := publishCorpus(t, s, 40, "") // delivered live through "sev"
	var wantB []uint64
	for _, e := range batchB {
		if e.p1() {
			wantB = append(wantB, e.id)
		}
	}
	expectIDs(t, "live through sev", c.events(len(wantB)), wantB)

	c.send(map[string]any{"type": "subscribe", "subscription_id": "src",
		"filters": map[string]any{"sources": []string{"x"}}, "since": 0})
	c.expect("subscribed")
	batchC := publishCorpus(t, s, 40, "") // live through both
	var want []uint64
	for _, e := range batchA {
		if e.x() {
			want = append(want, e.id) // backfill: only src matches what came before "sev"
		}
	}
	for _, e := range batchB {
		if e.x() && !e.p1() {
			want = append(want, e.id) // backfill: src-only; x∧P1 came through sev already
		}
	}
	for _, e := range batchC {
		if e.x() || e.p1() {
			want = append(want, e.id)
		}
	}
	fence := s.mustPublish(t, evUpdated(`"source":"x","severity":"P1","fence":true`))[0]
	expectIDs(t, "after subscribing with since", c.idsThrough(fence), append(want, fence))
}

// TestSinceDuringAnotherBackfill: a second `since` subscription arrives
// while the first one's backfill is still being pumped (1 KB events, a
// small receive buffer and a small queue keep the replay going for as long
// as the client reads slowly). The replay rewinds for the new
// subscription. Whatever the interleaving: each event matching either
// subscription arrives exactly once, and the events of each subscription's
// own kind arrive in message_id order (the P1 events, which the first
// subscription delivers, and the x∧P3 events, which only the second does).
func TestSinceDuringAnotherBackfill(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) { c.MaxPendingMessages = 40 })
	const n = 2000
	evs := publishCorpus(t, s, n, strings.Repeat("p", 1000))
	c, _ := s.dialWelcome(t, "", smallBufferDialer(4096))
	c.send(map[string]any{"type": "subscribe", "subscription_id": "sev",
		"filters": map[string]any{"severities": []string{"P1"}}, "since": 0})
	c.expect("subscribed")
	first := c.events(50) // the sev backfill is under way, far from done
	c.send(map[string]any{"type": "subscribe", "subscription_id": "src",
		"filters": map[string]any{"sources": []string{"x"}}, "since": 0})
	var got []uint64
	got = append(got, first...)
	beforeReply := len(got)
	for {
		m := c.read(10 * time.Second)
		if m["type"] == "subscribed" {
			break
		}
		if m["type"] != "event" {
			t.Fatalf("want events then subscribed, got %v", m)
		}
		got = append(got, msgID(t, m))
		beforeReply++
	}
	live := publishCorpus(t, s, 8, "")
	fence := s.mustPublish(t, evUpdated(`"source":"x","severity":"P1","fence":true`))[0]
	got = append(got, c.idsThrough(fence)...)

	byID := map[uint64]sinceCorpus{}
	for _, e := range append(evs, live...) {
		byID[e.id] = e
	}
	byID[fence] = sinceCorpus{id: fence, source: "x", sev: "P1"}
	var want []uint64
	for _, e := range append(evs, live...) {
		if e.x() || e.p1() {
			want = append(want, e.id)
		}
	}
	want = append(want, fence)
	sorted := slices.Clone(got)
	slices.Sort(sorted)
	if !sameIDs(sorted, want) {
		t.Fatalf("events received (sorted) differ from those matching either subscription: %s", idDiff(sorted, want))
	}
	var p1, xOnly []uint64
	for _, id := range got {
		if e := byID[id]; e.p1() {
			p1 = append(p1, id)
		} else {
			xOnly = append(xOnly, id)
		}
	}
	if !slices.IsSorted(p1) {
		t.Errorf("P1 events out of order: %v", headIDs(p1))
	}
	if !slices.IsSorted(xOnly) {
		t.Errorf("x∧P3 events (second subscription only) out of order: %v", headIDs(xOnly))
	}
	t.Logf("%d events before the second subscription was confirmed, %d in all", beforeReply, len(got))
}

// ---- HISTORY_GAP ----

func gapServer(t testing.TB) *testServer {
	return startServer(t, func(c *engine.Config) { c.HistorySize = 10 })
}

// expectGap reads a HISTORY_GAP error and returns its first_available.
func (c *client) expectGap() uint64 {
	c.t.Helper()
	m := c.expectError("HISTORY_GAP")
	f, ok := m["first_available"].(float64)
	if !ok || f < 1 {
		c.t.Fatalf("HISTORY_GAP without a positive first_available: %v", m)
	}
	return uint64(f)
}

// TestHistoryGapOnSince: since=0 when the window holds only the last 10 of
// 30 events: HISTORY_GAP naming the oldest held, then the held events,
// then live ones.
func TestHistoryGapOnSince(t *testing.T) {
	t.Parallel()
	s := gapServer(t)
	var lines []string
	for i := range 30 {
		lines = append(lines, steadyLine(i))
	}
	ids := s.mustPublish(t, lines...)
	s.waitMetric(t, "flarecast_history_events", 10)
	s.metricEquals(t, "flarecast_history_oldest_message_id", float64(ids[20]))
	c := s.dial(t, "")
	c.send(map[string]any{"type": "subscribe", "subscription_id": "all", "filters": map[string]any{}, "since": 0})
	c.expect("subscribed")
	if first := c.expectGap(); first != ids[20] {
		t.Fatalf("first_available = %d, want %d (the oldest of the 10 held)", first, ids[20])
	}
	expectIDs(t, "held events", c.events(10), ids[20:])
	live := s.mustPublish(t, steadyLine(30))
	expectIDs(t, "live", c.events(1), live)
	s.waitMetric(t, `flarecast_session_resumes_total{result="gap"}`, 1)
	s.metricEquals(t, `websocket_errors_total{code="HISTORY_GAP"}`, 1)
}

// TestHistoryGapOnResume: the client acked event 1 of 3 and went away; 30
// more events pushed the rest out of a 10-event window. The resume says
// HISTORY_GAP, then delivers the held events, then live ones.
func TestHistoryGapOnResume(t *testing.T) {
	t.Parallel()
	s := gapServer(t)
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	first := s.mustPublish(t, steadyLine(0), steadyLine(1), steadyLine(2))
	expectIDs(t, "first", c.events(3), first)
	if extra := c.ackBarrier(first[0]); len(extra) > 0 {
		t.Fatalf("unexpected events %v", extra)
	}
	resetConn(t, c.ws)
	s.waitMetric(t, "websocket_active_connections", 0)
	var lines []string
	for i := range 30 {
		lines = append(lines, steadyLine(3+i))
	}
	away := s.mustPublish(t, lines...)
	c2 := s.resume(t, c.sessionID, nil)
	if got := c2.expectGap(); got != away[20] {
		t.Fatalf("first_available = %d, want %d", got, away[20])
	}
	expectIDs(t, "held events", c2.events(10), away[20:])
	live := s.mustPublish(t, steadyLine(40))
	expectIDs(t, "live", c2.events(1), live)
	s.waitMetric(t, `flarecast_session_resumes_total{result="gap"}`, 1)
	s.metricEquals(t, `flarecast_session_resumes_total{result="resumed"}`, 1)
}

// TestResumeUnknownSessionIsFresh: an unknown session id is no error: the
// client gets a fresh session, "resumed":false, and works normally.
func TestResumeUnknownSessionIsFresh(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	const unknown = "0123456789abcdef0123456789abcdef"
	c, w := s.dialWelcome(t, "session_id="+unknown, nil)
	if w["resumed"] != false {
		t.Fatalf("welcome %v, want \"resumed\":false", w)
	}
	if c.sessionID == unknown {
		t.Fatalf("the server adopted the client's unknown session id %s", unknown)
	}
	c.subscribe("all", map[string]any{}) // the next message is not an error
	ids := s.mustPublish(t, steadyLine(0))
	expectIDs(t, "fresh session", c.events(1), ids)
	s.waitMetric(t, `flarecast_session_resumes_total{result="fresh"}`, 1)
	s.metricEquals(t, `flarecast_session_resumes_total{result="resumed"}`, 0)
	s.metricEquals(t, `websocket_errors_total{code="HISTORY_GAP"}`, 0)
}

// ---- takeover ----

// TestSessionTakeover: a second connection presenting a live session's id
// takes it over. The first gets closing/session_taken_over and a close
// frame; the second has the subscriptions, the events after the ack, and
// the live ones.
func TestSessionTakeover(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c1 := s.dial(t, "")
	c1.subscribe("all", map[string]any{})
	ids := s.mustPublish(t, steadyLine(0), steadyLine(1), steadyLine(2))
	expectIDs(t, "first connection", c1.events(3), ids)
	if extra := c1.ackBarrier(ids[0]); len(extra) > 0 {
		t.Fatalf("unexpected events %v", extra)
	}
	c2 := s.resume(t, c1.sessionID, nil)
	var tail []map[string]any
	for {
		m, err := c1.tryRead(10 * time.Second)
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("first connection ended with %v, want a close frame (after %v)", err, tail)
			}
			t.Logf("first connection: close frame %d %q", ce.Code, ce.Text)
			break
		}
		tail = append(tail, m)
	}
	if len(tail) != 1 || tail[0]["type"] != "closing" || tail[0]["reason"] != "session_taken_over" {
		t.Fatalf("first connection got %v before its close frame, want one closing/session_taken_over", tail)
	}
	live := s.mustPublish(t, steadyLine(3), steadyLine(4))
	expectIDs(t, "second connection", c2.events(4), append(ids[1:], live...))
	// The second connection is fully in charge: its own commands work.
	c2.subscribe("more", map[string]any{"sources": []string{"elsewhere"}})
	s.waitMetric(t, `websocket_connections_closed_total{reason="session_taken_over"}`, 1)
	s.metricEquals(t, "websocket_active_connections", 1)
}

// ---- the window's memory ----

// TestResumeWindowMemoryWithinBound: the history window is bounded by
// --history-max-bytes ("memory stays inside the bound", issue 5). 16 MB of
// 2 KB events go through a server whose window may hold 8 MiB, with no
// subscriber; the live Go heap the window then holds (the engine runs in
// this process) must stay within the bound, give or take 40% for the
// approximation of each entry's size and 1 MiB for the noise of measuring
// a whole process's heap.
//
// Not parallel: the heap of the whole test process is measured.
func TestResumeWindowMemoryWithinBound(t *testing.T) {
	const (
		bound     = 8 << 20
		eventSize = 2 << 10
		n         = 2 * bound / eventSize // fills the window, then evicts half of it again
	)
	s := startServer(t, func(c *engine.Config) {
		c.HistorySize = 1 << 20 // the byte bound binds first
		c.HistoryMaxBytes = bound
		c.BroadcastCapacity = 512
	})
	warm := publishPadded(t, s, 0, 10, eventSize, 10, false) // parsers and pools warmed up
	s.waitMetric(t, "websocket_events_broadcast_total", float64(len(warm)))
	base := slowLiveHeap()
	publishPadded(t, s, 10, n, eventSize, 200, false)
	s.waitMetric(t, "websocket_events_broadcast_total", float64(10+n))
	held := slowLiveHeap()
	growth := int64(held) - int64(base)
	window := s.metric(t, "flarecast_history_events")
	if window >= 10+n {
		t.Fatalf("setup: the window holds all %v events: the byte bound never bound", window)
	}
	t.Logf("window: %.0f events of %d B for a %d MiB bound; live heap %.1f MB -> %.1f MB (+%.1f MB, %.0f B per event held)",
		window, eventSize, bound>>20, slowMB(base), slowMB(held), slowMB(uint64(max(growth, 0))), float64(growth)/window)
	if limit := int64(bound)*7/5 + 1<<20; growth > limit {
		t.Errorf("the window holds %.1f MB of live heap, %.1fx --history-max-bytes (%d MiB): the size counted per entry "+
			"(outFrame.size, engine/frame.go) must cover everything an entry keeps alive (the frame, and the event kept for replay matching)",
			slowMB(uint64(growth)), float64(growth)/bound, bound>>20)
	}
}
