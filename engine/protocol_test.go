package engine_test

import (
	"encoding/json"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/engine"
)

var sessionIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestWelcome(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	var ids []string
	for i := 0; i < 2; i++ {
		ws, _ := s.dialGorilla(t, nil)
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, data, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("read welcome: %v", err)
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("welcome is not JSON: %q", data)
		}
		if len(m) != 4 || m["type"] != "welcome" || m["resumed"] != false {
			t.Fatalf("welcome %s: want exactly type=welcome, session_id, server_time, resumed=false", data)
		}
		id, _ := m["session_id"].(string)
		if !sessionIDPattern.MatchString(id) {
			t.Errorf("session_id %q is not 128 bits of hex", id)
		}
		st, _ := m["server_time"].(string)
		ts, err := time.Parse(time.RFC3339Nano, st)
		if err != nil {
			t.Fatalf("server_time %q is not RFC3339Nano: %v", st, err)
		}
		if d := time.Since(ts); d < -time.Minute || d > time.Minute {
			t.Errorf("server_time %s is %s away from the test's clock", st, d)
		}
		ids = append(ids, id)
	}
	if ids[0] == ids[1] {
		t.Errorf("two connections got the same session_id %s", ids[0])
	}
}

func TestSubscribeNormalisesFilters(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	m := c.subscribe("norm", map[string]any{
		"severities":         []string{"P2", "P0", "P2"},
		"sources":            []string{"zeta", "alpha", "alpha"},
		"event_types":        []string{"incident_updated", "alert_received", "incident_updated"},
		"states":             []string{"Triaged", "Detected"},
		"affected_resources": []string{"db", "api", "db"},
		"labels":             map[string]string{"team": "core", "env": "prod"},
	})
	want := map[string]any{
		"event_types":        []any{"alert_received", "incident_updated"},
		"severities":         []any{"P0", "P2"},
		"states":             []any{"Detected", "Triaged"},
		"sources":            []any{"alpha", "zeta"},
		"affected_resources": []any{"api", "db"},
		"incident_ids":       []any{},
		"labels":             map[string]any{"env": "prod", "team": "core"},
	}
	if !reflect.DeepEqual(m["filters"], want) {
		t.Errorf("subscribed filters\n got %v\nwant %v", m["filters"], want)
	}
	if len(m) != 4 {
		t.Errorf("subscribed has keys %v, want type, subscription_id, filters, from", mapKeys(m))
	}

	// Empty filters: all seven keys, all empty.
	m = c.subscribe("all", map[string]any{})
	want = map[string]any{
		"event_types": []any{}, "severities": []any{}, "states": []any{}, "sources": []any{},
		"affected_resources": []any{}, "incident_ids": []any{}, "labels": map[string]any{},
	}
	if !reflect.DeepEqual(m["filters"], want) {
		t.Errorf("subscribed filters for {}\n got %v\nwant %v", m["filters"], want)
	}
	// null lists count as absent.
	m = c.subscribe("nulls", map[string]any{"severities": nil, "labels": nil, "incident_ids": []string{"INC-2", "INC-1"}})
	want["incident_ids"] = []any{"INC-1", "INC-2"}
	if !reflect.DeepEqual(m["filters"], want) {
		t.Errorf("subscribed filters with nulls\n got %v\nwant %v", m["filters"], want)
	}
}

func mapKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// fenceFilter is subscribed by clients that must prove they received nothing
// more: the fence event, published last, matches it.
var fenceFilter = map[string]any{"labels": map[string]string{"fence": "yes"}}

const fenceEvent = `{"event_type":"system_event","labels":{"fence":"yes"}}`

// evUpdated builds an incident_updated line (normal priority, so deliveries
// keep message_id order) with extra fields.
func evUpdated(fields string) string {
	if fields == "" {
		return `{"event_type":"incident_updated"}`
	}
	return `{"event_type":"incident_updated",` + fields + `}`
}

func eventIDs(t testing.TB, evs []map[string]any) []uint64 {
	t.Helper()
	out := make([]uint64, len(evs))
	for i, m := range evs {
		out[i] = msgID(t, m)
	}
	return out
}

func TestResubscribeReplacesFilters(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) { c.MaxSubscriptions = 2 })
	c := s.dial(t, "")
	c.subscribe("fence", fenceFilter)
	c.subscribe("a", map[string]any{"severities": []string{"P1"}})
	m := c.subscribe("a", map[string]any{"severities": []string{"P2"}})
	if sev := m["filters"].(map[string]any)["severities"]; !reflect.DeepEqual(sev, []any{"P2"}) {
		t.Fatalf("re-subscribe answered severities %v, want [P2]", sev)
	}
	s.waitMetric(t, "websocket_active_subscriptions", 2)
	ids := s.mustPublish(t, evUpdated(`"severity":"P1"`), evUpdated(`"severity":"P2"`), fenceEvent)
	got := eventIDs(t, c.untilEvent(ids[2]))
	if !reflect.DeepEqual(got, []uint64{ids[1]}) {
		t.Fatalf("after replacing P1 by P2 got events %v, want only %d", got, ids[1])
	}
}

func TestUnsubscribe(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("fence", fenceFilter)
	c.subscribe("p1", map[string]any{"severities": []string{"P1"}})
	ids := s.mustPublish(t, evUpdated(`"severity":"P1"`), fenceEvent)
	if got := eventIDs(t, c.untilEvent(ids[1])); !reflect.DeepEqual(got, []uint64{ids[0]}) {
		t.Fatalf("subscribed: got %v, want [%d]", got, ids[0])
	}

	c.send(`{"type":"unsubscribe","subscription_id":"p1"}`)
	m := c.expect("unsubscribed")
	if m["subscription_id"] != "p1" || len(m) != 2 {
		t.Fatalf("unsubscribed %v, want {type:unsubscribed, subscription_id:p1}", m)
	}
	ids = s.mustPublish(t, evUpdated(`"severity":"P1"`), fenceEvent)
	if got := c.untilEvent(ids[1]); len(got) != 0 {
		t.Fatalf("after unsubscribe got %v", got)
	}

	c.send(`{"type":"unsubscribe","subscription_id":"p1"}`)
	c.expectError("NOT_FOUND", "p1")
	c.send(`{"type":"unsubscribe","subscription_id":"never-was"}`)
	c.expectError("NOT_FOUND", "never-was")
	s.waitMetric(t, `websocket_errors_total{code="NOT_FOUND"}`, 2)
	c.subscribe("again", map[string]any{})
}

func TestPingPong(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	for _, ts := range []string{
		`"2026-11-26T01:00:00.123456789Z"`,
		`1764118800123`,
		`1.5e3`,
		`{"client":[1,2,{"x":null}]}`,
		`{ "spaced" : [ 1, 2 ] }`,
		`-0.0`,
		`"with \"quotes\" and \\ and \u00e9"`,
	} {
		c.send(`{"type":"ping","timestamp":` + ts + `}`)
		raw := c.readRaw(5 * time.Second)
		m := decodeObject(t, raw)
		if m["type"] != "pong" || len(m) != 3 {
			t.Fatalf("ping %s: reply %s, want a pong with type, timestamp, server_time", ts, raw)
		}
		// Echoed verbatim: the exact bytes of the ping's value.
		if !strings.Contains(string(raw), `"timestamp":`+ts+`,`) {
			t.Errorf("pong %s does not echo timestamp %s verbatim", raw, ts)
		}
		st, _ := m["server_time"].(string)
		if _, err := time.Parse(time.RFC3339, st); err != nil {
			t.Errorf("pong server_time %q is not RFC3339: %v", st, err)
		}
	}
	s.metricEquals(t, `websocket_errors_total{code="INVALID_MESSAGE"}`, 0)
}

// TestClientErrors sends every malformed message the protocol knows on one
// connection; each gets its error and the connection keeps working.
func TestClientErrors(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	cases := []struct {
		name, msg, code string
		mention         []string
	}{
		{"malformed JSON", `{"type":"subscribe",`, "INVALID_MESSAGE", nil},
		{"garbage", `hello`, "INVALID_MESSAGE", nil},
		{"array", `[{"type":"ping","timestamp":1}]`, "INVALID_MESSAGE", []string{"object"}},
		{"string", `"ping"`, "INVALID_MESSAGE", []string{"object"}},
		{"number", `42`, "INVALID_MESSAGE", []string{"object"}},
		{"empty object", `{}`, "INVALID_MESSAGE", []string{"type"}},
		{"missing type", `{"subscription_id":"x","filters":{}}`, "INVALID_MESSAGE", []string{"type"}},
		{"type not a string", `{"type":7}`, "INVALID_MESSAGE", []string{"type"}},
		{"type null", `{"type":null}`, "INVALID_MESSAGE", []string{"type"}},
		{"subscribe without subscription_id", `{"type":"subscribe","filters":{}}`, "INVALID_MESSAGE", []string{"subscription_id"}},
		{"subscribe with empty subscription_id", `{"type":"subscribe","subscription_id":"","filters":{}}`, "INVALID_MESSAGE", []string{"subscription_id"}},
		{"subscription_id not a string", `{"type":"subscribe","subscription_id":5,"filters":{}}`, "INVALID_MESSAGE", []string{"subscription_id"}},
		{"subscribe without filters", `{"type":"subscribe","subscription_id":"x"}`, "INVALID_MESSAGE", []string{"filters"}},
		{"filters not an object", `{"type":"subscribe","subscription_id":"x","filters":["P1"]}`, "INVALID_MESSAGE", []string{"filters"}},
		{"severities a string", `{"type":"subscribe","subscription_id":"x","filters":{"severities":"P1"}}`, "INVALID_MESSAGE", []string{"severities"}},
		{"sources of numbers", `{"type":"subscribe","subscription_id":"x","filters":{"sources":[1,2]}}`, "INVALID_MESSAGE", []string{"sources"}},
		{"labels not strings", `{"type":"subscribe","subscription_id":"x","filters":{"labels":{"env":1}}}`, "INVALID_MESSAGE", []string{"labels"}},
		{"labels an array", `{"type":"subscribe","subscription_id":"x","filters":{"labels":["env"]}}`, "INVALID_MESSAGE", []string{"labels"}},
		{"unknown filter key", `{"type":"subscribe","subscription_id":"x","filters":{"colour":["red"]}}`, "INVALID_MESSAGE", []string{"colour"}},
		{"unknown filter key next to good ones", `{"type":"subscribe","subscription_id":"x","filters":{"severities":["P1"],"priority":["high"]}}`, "INVALID_MESSAGE", []string{"priority"}},
		{"invalid severity", `{"type":"subscribe","subscription_id":"x","filters":{"severities":["P1","P9"]}}`, "INVALID_MESSAGE", []string{"P9"}},
		{"lower-case severity", `{"type":"subscribe","subscription_id":"x","filters":{"severities":["p1"]}}`, "INVALID_MESSAGE", []string{"p1"}},
		{"invalid state", `{"type":"subscribe","subscription_id":"x","filters":{"states":["Open"]}}`, "INVALID_MESSAGE", []string{"Open"}},
		{"invalid event type", `{"type":"subscribe","subscription_id":"x","filters":{"event_types":["incident_exploded"]}}`, "INVALID_MESSAGE", []string{"incident_exploded"}},
		{"empty string in a list", `{"type":"subscribe","subscription_id":"x","filters":{"sources":[""]}}`, "INVALID_MESSAGE", []string{"sources"}},
		{"unsubscribe without subscription_id", `{"type":"unsubscribe"}`, "INVALID_MESSAGE", []string{"subscription_id"}},
		{"ping without timestamp", `{"type":"ping"}`, "INVALID_MESSAGE", []string{"timestamp"}},
		{"ack without message_id", `{"type":"ack"}`, "INVALID_MESSAGE", []string{"message_id"}},
		{"ack with a string message_id", `{"type":"ack","message_id":"7"}`, "INVALID_MESSAGE", []string{"message_id"}},
		{"ack with a negative message_id", `{"type":"ack","message_id":-1}`, "INVALID_MESSAGE", []string{"message_id"}},
		{"trailing garbage", `{"type":"ping","timestamp":1} trailing`, "INVALID_MESSAGE", nil},
		{"two objects", `{"type":"ping","timestamp":1}{"type":"ping","timestamp":2}`, "INVALID_MESSAGE", nil},
		{"timestamp with a leading zero", `{"type":"ping","timestamp":01}`, "INVALID_MESSAGE", nil},
		{"timestamp with a trailing comma", `{"type":"ping","timestamp":[1,]}`, "INVALID_MESSAGE", nil},
		{"timestamp with a bad escape", `{"type":"ping","timestamp":"\x41"}`, "INVALID_MESSAGE", nil},
		{"timestamp NaN", `{"type":"ping","timestamp":NaN}`, "INVALID_MESSAGE", nil},
		{"unknown type", `{"type":"frobnicate"}`, "UNSUPPORTED", []string{"frobnicate"}},
		{"type with wrong case", `{"type":"Subscribe","subscription_id":"x","filters":{}}`, "UNSUPPORTED", []string{"Subscribe"}},
	}
	counts := map[string]float64{}
	for _, tc := range cases {
		c.send(tc.msg)
		m := c.read(5 * time.Second)
		if m["type"] != "error" || m["code"] != tc.code {
			t.Fatalf("%s: %s answered %v, want error %s", tc.name, tc.msg, m, tc.code)
		}
		if len(m) != 3 {
			t.Errorf("%s: error %v should have exactly type, code, message", tc.name, m)
		}
		msg, _ := m["message"].(string)
		if msg == "" {
			t.Errorf("%s: error without a message", tc.name)
		}
		for _, sub := range tc.mention {
			if !strings.Contains(msg, sub) {
				t.Errorf("%s: error message %q does not mention %q", tc.name, msg, sub)
			}
		}
		counts[tc.code]++
		// The connection still works: the error did not leave a subscription behind.
		c.subscribe("probe", map[string]any{"severities": []string{"P4"}})
	}

	// A binary frame is refused with UNSUPPORTED, not a close.
	if err := c.ws.WriteMessage(websocket.BinaryMessage, []byte(`{"type":"ping","timestamp":1}`)); err != nil {
		t.Fatal(err)
	}
	c.expectError("UNSUPPORTED")
	counts["UNSUPPORTED"]++

	// Still a working connection: subscribe and receive an event.
	c.subscribe("final", map[string]any{"sources": []string{"after-errors"}})
	ids := s.mustPublish(t, evUpdated(`"source":"after-errors"`))
	if got := c.events(1); got[0] != ids[0] {
		t.Fatalf("after errors got event %d, want %d", got[0], ids[0])
	}
	s.waitMetric(t, "websocket_active_subscriptions", 2) // probe (replaced each time) + final
	for code, n := range counts {
		s.waitMetric(t, `websocket_errors_total{code="`+code+`"}`, n)
	}
}

func TestSubscriptionLimit(t *testing.T) {
	t.Parallel()
	s := startServer(t, func(c *engine.Config) { c.MaxSubscriptions = 3 })
	c := s.dial(t, "")
	for _, id := range []string{"s1", "s2", "s3"} {
		c.subscribe(id, map[string]any{})
	}
	c.send(map[string]any{"type": "subscribe", "subscription_id": "s4", "filters": map[string]any{}})
	c.expectError("LIMIT_EXCEEDED", "3")
	// Replacing an existing subscription is not a new one.
	c.subscribe("s2", map[string]any{"severities": []string{"P0"}})
	s.waitMetric(t, "websocket_active_subscriptions", 3)
	// The refused s4 does not exist.
	c.send(`{"type":"unsubscribe","subscription_id":"s4"}`)
	c.expectError("NOT_FOUND", "s4")
	// Room again after an unsubscribe.
	c.send(`{"type":"unsubscribe","subscription_id":"s1"}`)
	c.expect("unsubscribed")
	c.subscribe("s4", map[string]any{})
	c.send(map[string]any{"type": "subscribe", "subscription_id": "s5", "filters": map[string]any{}})
	c.expectError("LIMIT_EXCEEDED")
	s.waitMetric(t, `websocket_errors_total{code="LIMIT_EXCEEDED"}`, 2)
	s.waitMetric(t, "websocket_active_subscriptions", 3)

	// The limit is per session: another client has its own three.
	c2 := s.dial(t, "")
	for _, id := range []string{"s1", "s2", "s3"} {
		c2.subscribe(id, map[string]any{})
	}
	s.waitMetric(t, "websocket_active_subscriptions", 6)
}

func TestAckIsSilentAndCounted(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	ids := s.mustPublish(t, evUpdated(""), evUpdated(""))
	got := c.events(2)
	if !reflect.DeepEqual(got, ids) {
		t.Fatalf("got events %v, want %v", got, ids)
	}
	for _, id := range got {
		c.send(map[string]any{"type": "ack", "message_id": id})
	}
	c.send(`{"type":"ack","message_id":0}`)
	// Acks and unsubscribe go the same way: the NOT_FOUND must be the very
	// next message, with no reply to the acks before it.
	c.send(`{"type":"unsubscribe","subscription_id":"nope"}`)
	c.expectError("NOT_FOUND")
	s.waitMetric(t, "websocket_acks_received_total", 3)
}

func TestDedupeAcrossSubscriptions(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("fence", fenceFilter)
	c.subscribe("by-sev", map[string]any{"severities": []string{"P2"}})
	c.subscribe("by-source", map[string]any{"sources": []string{"x"}})
	c.subscribe("all", map[string]any{})
	c.subscribe("by-label", map[string]any{"labels": map[string]string{"env": "prod"}})
	other := s.dial(t, "")
	other.subscribe("fence", fenceFilter)
	other.subscribe("by-sev", map[string]any{"severities": []string{"P2"}})
	other.subscribe("by-source", map[string]any{"sources": []string{"x"}})

	ids := s.mustPublish(t,
		evUpdated(`"severity":"P2","source":"x","labels":{"env":"prod"}`), // every subscription of c
		evUpdated(`"severity":"P3","source":"x"`),                         // by-source and all
		evUpdated(`"severity":"P2"`),
		fenceEvent, // also matches "all": still once
	)
	if got := eventIDs(t, c.untilEvent(ids[3])); !reflect.DeepEqual(got, ids[:3]) {
		t.Errorf("client with 5 overlapping subscriptions got %v, want %v (each once)", got, ids[:3])
	}
	if got := eventIDs(t, other.untilEvent(ids[3])); !reflect.DeepEqual(got, ids[:3]) {
		t.Errorf("second client got %v, want %v", got, ids[:3])
	}
	// 3 events to each client plus the fence to each.
	s.waitMetric(t, "websocket_events_delivered_total", 8)
}

// The subscribed reply says from where the subscription delivers: the last
// event dispatched when it was made, or its since.
func TestSubscribedSaysFrom(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	ids := s.mustPublish(t, ev(`"severity":"P1"`), ev(`"severity":"P2"`), ev(`"severity":"P3"`))
	c := s.dial(t, "")
	saysFrom := func(sub map[string]any, want uint64) {
		t.Helper()
		if got, _ := sub["from"].(float64); uint64(got) != want {
			t.Errorf("subscribed %v: from %v, want %d", sub["subscription_id"], sub["from"], want)
		}
	}
	// The dispatcher may not have reached the last event when the
	// subscription is made; poll until it has.
	if !pollUntil(5*time.Second, func() bool { return s.metric(t, "websocket_events_broadcast_total") == 3 }) {
		t.Fatal("the events were not dispatched")
	}
	saysFrom(c.subscribe("now", map[string]any{}), ids[2])
	c.send(map[string]any{"type": "subscribe", "subscription_id": "since", "filters": map[string]any{"severities": []string{"P4"}}, "since": ids[0]})
	saysFrom(c.expect("subscribed"), ids[0])
	c.expectSilence(100 * time.Millisecond) // no P4 among them: nothing to backfill
}
