package engine_test

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flarecast/flarecast/broker"
	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/internal/redistest"
)

// appendAndTrim appends n events and trims the stream to its last entry
// in one script: the instances' tailers, blocked on the stream, wake only
// after the script, to find the events trimmed before they read them, as
// a tailer that stalled while the stream moved on would. It returns the
// last id.
var appendAndTrim = redis.NewScript(`
local id = 0
for i = 1, tonumber(ARGV[1]) do
  id = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], id .. '-0', 'e', ARGV[2], 't', ARGV[3])
end
redis.call('XTRIM', KEYS[1], 'MINID', id .. '-0')
return id
`)

func TestFleetGivesHistoryGapForTrimmedEvents(t *testing.T) {
	rs := redistest.Start(t)
	a := startServer(t, func(c *engine.Config) { c.Broker = rs.URL() + "?stream=g" })
	waitReady(t, a)
	live := a.dial(t, "")
	live.subscribe("all", map[string]any{})
	ids := a.mustPublish(t, normalEv(`"severity":"P1"`), normalEv(`"severity":"P2"`))
	assertIDs(t, "before", live.events(2), ids)

	last, err := appendAndTrim.Run(context.Background(), rs.Client(), []string{"g", "g:id"},
		5, normalEv(`"severity":"P3"`), time.Now().UnixNano()).Uint64()
	if err != nil {
		t.Fatal(err)
	}
	gap := live.expectError("HISTORY_GAP")
	if got := uint64(gap["first_available"].(float64)); got != last {
		t.Fatalf("HISTORY_GAP first_available %d, want %d: %v", got, last, gap)
	}
	assertIDs(t, "after the gap", live.events(1), []uint64{last})

	// A client resuming from before the gap hears of it too, in order.
	late := a.dial(t, "")
	late.send(map[string]any{"type": "subscribe", "subscription_id": "all", "filters": map[string]any{}, "since": ids[1]})
	late.expect("subscribed")
	if gap := late.expectError("HISTORY_GAP"); uint64(gap["first_available"].(float64)) != last {
		t.Fatalf("replay's HISTORY_GAP: %v, want first_available %d", gap, last)
	}
	assertIDs(t, "replayed after the gap", late.events(1), []uint64{last})
	// One resuming after the gap does not.
	after := a.dial(t, "")
	after.send(map[string]any{"type": "subscribe", "subscription_id": "all", "filters": map[string]any{}, "since": last})
	after.expect("subscribed")
	more := a.mustPublish(t, normalEv(`"severity":"P4"`))
	assertIDs(t, "past the gap", after.events(1), more)
	a.metricEquals(t, "flarecast_broker_gaps_total", 1)
}

func TestFleetSkipsCorruptStreamEntries(t *testing.T) {
	rs := redistest.Start(t)
	a := startServer(t, func(c *engine.Config) { c.Broker = rs.URL() + "?stream=c" })
	waitReady(t, a)
	sub := a.dial(t, "")
	sub.subscribe("all", map[string]any{})
	before := a.mustPublish(t, normalEv(`"severity":"P1"`))
	assertIDs(t, "before", sub.events(1), before)

	rc := rs.Client()
	ctx := context.Background()
	for _, fields := range [][]any{
		{"garbage", "1"}, // no event at all
		{"e", `{"event_type":`, "t", strconv.FormatInt(time.Now().UnixNano(), 10)}, // not an event
	} {
		id := rc.Incr(ctx, "c:id").Val()
		if err := rc.XAdd(ctx, &redis.XAddArgs{Stream: "c", ID: strconv.FormatInt(id, 10) + "-0", Values: fields}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	after := a.mustPublish(t, normalEv(`"severity":"P2"`), normalEv(`"severity":"P3"`))
	assertIDs(t, "after", sub.events(2), after)
	a.waitMetric(t, "flarecast_broker_corrupt_entries_total", 2)
	if code := a.status(t, "/readyz"); code != 200 {
		t.Errorf("/readyz = %d after corrupt entries, want 200: the tailer must go on", code)
	}
}

// TestFleetReadyOnlyOnceLoaded: an instance starting on a long stream is
// not ready before its tailer has read the stream to the end it had.
func TestFleetReadyOnlyOnceLoaded(t *testing.T) {
	rs := redistest.Start(t)
	const n = 30000
	rc := rs.Client()
	ctx := context.Background()
	line := normalEv(`"severity":"P2"`)
	now := strconv.FormatInt(time.Now().UnixNano(), 10)
	for start := 1; start <= n; start += 1000 {
		p := rc.Pipeline()
		for id := start; id < start+1000; id++ {
			p.XAdd(ctx, &redis.XAddArgs{Stream: "r", ID: strconv.Itoa(id) + "-0", Values: []any{"e", line, "t", now}})
		}
		if _, err := p.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	rc.Set(ctx, "r:id", n, 0)
	const ringSize = 1024
	a := startServer(t, func(c *engine.Config) {
		c.Broker = rs.URL() + "?stream=r"
		c.HistorySize = n
		c.BroadcastCapacity = ringSize
	})
	sawLoading := false
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(a.admin + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 {
			break
		}
		if strings.Contains(string(body), "loading") {
			sawLoading = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("never ready: %d %s", resp.StatusCode, body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Ready: everything but what the ring still holds is in the history.
	if held := a.metric(t, "flarecast_history_events"); held < n-ringSize-dispatchSlack {
		t.Fatalf("ready with %v of the stream's %d events in the history", held, n)
	}
	t.Logf("saw the loading state: %v", sawLoading)
}

// dispatchSlack: events the dispatcher took from the ring but has not
// counted in the history gauge yet (one batch).
const dispatchSlack = 256

// TestFleetGivesHistoryGapForReusedIDs: after a failover to a replica
// that lacked the newest appends, an instance that had read less appends
// under ids this one already passed. Its sessions get HISTORY_GAP, live
// and on a later replay across that point, rather than a silent skip.
func TestFleetGivesHistoryGapForReusedIDs(t *testing.T) {
	rs := redistest.Start(t)
	a := startServer(t, func(c *engine.Config) { c.Broker = rs.URL() + "?stream=u" })
	waitReady(t, a)
	live := a.dial(t, "")
	live.subscribe("all", map[string]any{})
	var lines []string
	for range 5 {
		lines = append(lines, normalEv(`"severity":"P2"`))
	}
	ids := a.mustPublish(t, lines...)
	assertIDs(t, "before", live.events(5), ids)

	// The promoted replica lacks the last two appends.
	rc := rs.Client()
	ctx := context.Background()
	all, err := rc.XRange(ctx, "u", "-", "+").Result()
	if err != nil || len(all) != 5 {
		t.Fatalf("read the stream: %v (%d entries)", err, len(all))
	}
	p := rc.TxPipeline()
	p.Del(ctx, "u")
	for _, m := range all[:3] {
		p.XAdd(ctx, &redis.XAddArgs{Stream: "u", ID: m.ID, Values: m.Values})
	}
	p.Set(ctx, "u:id", ids[2], 0)
	if _, err := p.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	// An instance that had read only up to ids[2] appends twice, before
	// this one's tailer notices the failover.
	lagging, err := broker.NewRedis(rs.URL()+"?stream=u", 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer lagging.Close()
	for i := range 2 {
		id, err := lagging.Append(ctx, []byte(normalEv(`"severity":"P1"`)), time.Now())
		if err != nil || id != ids[3+i] {
			t.Fatalf("the lagging instance's append: id %d, %v; want the reused id %d", id, err, ids[3+i])
		}
	}
	if err := rc.Do(ctx, "CLIENT", "KILL", "TYPE", "normal").Err(); err != nil {
		t.Fatal(err)
	}
	gap := live.expectError("HISTORY_GAP")
	if got := uint64(gap["first_available"].(float64)); got != ids[4]+1 {
		t.Fatalf("HISTORY_GAP first_available %d, want %d: %v", got, ids[4]+1, gap)
	}
	// Ids go on above what the instance read.
	next := waitPublish(t, a, normalEv(`"severity":"P3"`))
	if next != ids[4]+1 {
		t.Fatalf("the next append got message_id %d, want %d", next, ids[4]+1)
	}
	assertIDs(t, "after the gap", live.events(1), []uint64{next})

	// A replay from before the reused ids reports the gap where it lies.
	late := a.dial(t, "")
	late.send(map[string]any{"type": "subscribe", "subscription_id": "all", "filters": map[string]any{}, "since": ids[2]})
	late.expect("subscribed")
	assertIDs(t, "replayed before the gap", late.events(2), ids[3:5])
	if gap := late.expectError("HISTORY_GAP"); uint64(gap["first_available"].(float64)) != ids[4]+1 {
		t.Fatalf("replay's HISTORY_GAP %v, want first_available %d", gap, ids[4]+1)
	}
	assertIDs(t, "replayed after the gap", late.events(1), []uint64{next})
	a.metricEquals(t, "flarecast_broker_gaps_total", 1)
}

// waitPublish publishes one line, retrying while the instance reconnects.
func waitPublish(t *testing.T, s *testServer, line string) uint64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := s.publish(t, line)[0]
		if r.Err == nil {
			return r.MessageID
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish never succeeded: %v", r.Err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
