package engine_test

import (
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/engine"
)

// TestMetricsAgreeWithTraffic drives a known scenario and checks every
// series against it.
func TestMetricsAgreeWithTraffic(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) {
		// Short, so that closed sessions expire within the test and
		// their subscriptions go.
		c.SessionTimeout = 2 * time.Second
		c.CleanupInterval = 50 * time.Millisecond
	})
	body := s.metricsText(t)
	for _, name := range []string{
		"websocket_active_connections", "websocket_total_connections", "websocket_active_subscriptions",
		"websocket_messages_sent_total", "websocket_events_broadcast_total", "websocket_events_delivered_total",
		"websocket_acks_received_total", "flarecast_ingest_events_accepted_total", "flarecast_ingest_events_rejected_total",
		"websocket_session_duration_seconds_count", "websocket_session_duration_seconds_sum",
		"websocket_message_latency_seconds_count", "websocket_message_latency_seconds_sum",
		`websocket_message_latency_seconds_bucket{le="+Inf"}`, `websocket_session_duration_seconds_bucket{le="+Inf"}`,
		`websocket_errors_total{code="INVALID_MESSAGE"}`, `websocket_errors_total{code="UNSUPPORTED"}`,
		`websocket_errors_total{code="NOT_FOUND"}`, `websocket_errors_total{code="LIMIT_EXCEEDED"}`,
	} {
		if v := seriesValue(body, name); v != 0 {
			t.Errorf("fresh server: %s = %v, want 0 (present)", name, v)
		}
	}

	c1, c2, c3 := s.dial(t, ""), s.dial(t, ""), s.dial(t, "")
	s.waitMetric(t, "websocket_active_connections", 3)
	s.metricEquals(t, "websocket_total_connections", 3)

	c1.subscribe("all", map[string]any{})
	c1.subscribe("p1", map[string]any{"severities": []string{"P1"}})
	c2.subscribe("p1", map[string]any{"severities": []string{"P1"}})
	s.waitMetric(t, "websocket_active_subscriptions", 3)
	c1.send(`{"type":"unsubscribe","subscription_id":"p1"}`)
	c1.expect("unsubscribed")
	s.waitMetric(t, "websocket_active_subscriptions", 2)

	res := s.publish(t,
		evUpdated(`"severity":"P1"`), `{"event_type":"nope"}`, evUpdated(`"severity":"P2"`),
		evUpdated(`"severity":"P1"`), `not json`, evUpdated(`"severity":"P3"`), evUpdated(`"severity":"P4"`))
	var accepted []uint64
	for _, r := range res {
		if r.Err == nil {
			accepted = append(accepted, r.MessageID)
		}
	}
	if len(accepted) != 5 {
		t.Fatalf("publish results %+v: want 5 accepted", res)
	}
	c1.events(5)
	c2.events(2)
	s.waitMetric(t, "flarecast_ingest_events_accepted_total", 5)
	s.waitMetric(t, "flarecast_ingest_events_rejected_total", 2)
	s.waitMetric(t, "websocket_events_broadcast_total", 5)
	s.waitMetric(t, "websocket_events_delivered_total", 7)
	s.waitMetric(t, "websocket_message_latency_seconds_count", 7)

	c3.send(`{"type":"subscribe"}`)
	c3.expectError("INVALID_MESSAGE")
	c3.send(`[]`)
	c3.expectError("INVALID_MESSAGE")
	c3.send(`{"type":"bogus"}`)
	c3.expectError("UNSUPPORTED")
	c3.send(`{"type":"unsubscribe","subscription_id":"x"}`)
	c3.expectError("NOT_FOUND")
	c1.send(`{"type":"ack","message_id":1}`)
	c1.send(`{"type":"ack","message_id":2}`)
	c1.send(`{"type":"ping","timestamp":1}`)
	c1.expect("pong")
	s.waitMetric(t, `websocket_errors_total{code="INVALID_MESSAGE"}`, 2)
	s.waitMetric(t, `websocket_errors_total{code="UNSUPPORTED"}`, 1)
	s.waitMetric(t, `websocket_errors_total{code="NOT_FOUND"}`, 1)
	s.waitMetric(t, "websocket_acks_received_total", 2)

	// Messages sent: 3 welcome + 3 subscribed + 1 unsubscribed + 7 events
	// + 4 errors + 1 pong.
	s.waitMetric(t, "websocket_messages_sent_total", 19)

	body = s.metricsText(t)
	checkHistogram(t, body, "websocket_message_latency_seconds", 7)
	if sum := seriesValue(body, "websocket_message_latency_seconds_sum"); !(sum > 0) {
		t.Errorf("latency histogram sum %v, want > 0", sum)
	}

	// Close: two clean closes, one abrupt.
	_ = c1.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "done"), time.Now().Add(time.Second))
	c1.expectClose(1000)
	_ = c2.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	c2.expectClose(1000)
	c3.ws.Close()
	s.waitMetric(t, "websocket_active_connections", 0)
	s.waitMetric(t, "websocket_session_duration_seconds_count", 3)
	s.metricEquals(t, "websocket_total_connections", 3)
	s.waitMetric(t, `websocket_connections_closed_total{reason="client_closed"}`, 2)
	s.waitMetric(t, `websocket_connections_closed_total{reason="connection_lost"}`, 1)
	checkHistogram(t, s.metricsText(t), "websocket_session_duration_seconds", 3)
	// Once the closed sessions expire, their subscriptions are gone.
	var subs float64
	if !pollUntil(10*time.Second, func() bool { subs = s.metric(t, "websocket_active_subscriptions"); return subs == 0 }) {
		t.Errorf("websocket_active_subscriptions = %v long after every session closed and expired", subs)
	}
}

// seriesValue returns the value of one series in a /metrics body, or -1.
func seriesValue(body, series string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if name, val, ok := strings.Cut(line, " "); ok && name == series {
			f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				return -2
			}
			return f
		}
	}
	return -1
}

// checkHistogram checks a Prometheus histogram: cumulative buckets that
// never decrease, a +Inf bucket equal to _count, and _count equal to want.
func checkHistogram(t testing.TB, body, name string, want float64) {
	t.Helper()
	type bucket struct{ le, n float64 }
	var buckets []bucket
	inf := -1.0
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name+`_bucket{le="`)
		if !ok {
			continue
		}
		le, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			t.Fatalf("bucket line %q", line)
		}
		n, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("bucket line %q: %v", line, err)
		}
		if le == "+Inf" {
			inf = n
			continue
		}
		b, err := strconv.ParseFloat(le, 64)
		if err != nil {
			t.Fatalf("bucket bound in %q: %v", line, err)
		}
		buckets = append(buckets, bucket{b, n})
	}
	if len(buckets) == 0 {
		t.Fatalf("%s has no finite buckets", name)
	}
	sort.Slice(buckets, func(i, j int) bool { return buckets[i].le < buckets[j].le })
	for i := 1; i < len(buckets); i++ {
		if buckets[i].n < buckets[i-1].n {
			t.Errorf("%s buckets decrease: le=%v has %v, le=%v has %v", name, buckets[i-1].le, buckets[i-1].n, buckets[i].le, buckets[i].n)
		}
	}
	count := seriesValue(body, name+"_count")
	if inf != count || count != want || buckets[len(buckets)-1].n > inf {
		t.Errorf("%s: +Inf bucket %v, _count %v, largest finite bucket %v; want count %v", name, inf, count, buckets[len(buckets)-1].n, want)
	}
	if seriesValue(body, name+"_sum") < 0 {
		t.Errorf("%s_sum missing", name)
	}
}
