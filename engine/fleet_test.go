package engine_test

import (
	"errors"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/internal/redistest"
	"github.com/flarecast/flarecast/producer"
)

// startFleet starts n engines sharing one real Redis.
func startFleet(t *testing.T, rs *redistest.Server, n int) []*testServer {
	t.Helper()
	fleet := make([]*testServer, n)
	for i := range fleet {
		fleet[i] = startServer(t, func(c *engine.Config) { c.Broker = rs.URL() })
	}
	for _, s := range fleet {
		waitReady(t, s)
	}
	return fleet
}

func waitReady(t *testing.T, s *testServer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s.status(t, "/readyz") == 200 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("instance never became ready")
}

func TestFleetDeliversEverywhereWithGlobalIDs(t *testing.T) {
	rs := redistest.Start(t)
	fleet := startFleet(t, rs, 3)
	a, b, c := fleet[0], fleet[1], fleet[2]
	onB := b.dial(t, "")
	onB.subscribe("p1", map[string]any{"severities": []string{"P1"}})
	onC := c.dial(t, "")
	onC.subscribe("all", map[string]any{})

	var lines []string
	for i := range 60 {
		sev := []string{"P1", "P2", "P3"}[i%3]
		lines = append(lines, normalEv(`"severity":"`+sev+`"`))
	}
	idsA := a.mustPublish(t, lines[:30]...)
	idsC := c.mustPublish(t, lines[30:]...) // producers on two instances
	ids := append(idsA, idsC...)
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("message_ids not strictly increasing across instances: %v", ids)
		}
	}
	var wantB []uint64
	for i, id := range ids {
		if i%3 == 0 {
			wantB = append(wantB, id)
		}
	}
	assertIDs(t, "B", onB.events(len(wantB)), wantB)
	assertIDs(t, "C", onC.events(len(ids)), ids)
	onB.expectSilence(200 * time.Millisecond)
}

func TestFleetSurvivesRedisRestart(t *testing.T) {
	rs := redistest.Start(t)
	fleet := startFleet(t, rs, 2)
	a, b := fleet[0], fleet[1]
	sub := b.dial(t, "")
	sub.subscribe("all", map[string]any{})
	before := a.mustPublish(t, ev(`"severity":"P1"`), ev(`"severity":"P2"`))
	assertIDs(t, "before restart", sub.events(2), before)

	rs.Stop()
	// While Redis is down nothing is accepted: the producer hears UNAVAILABLE.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := a.publish(t, ev(`"severity":"P3"`))[0]
		var perr *producer.Error
		if errors.As(r.Err, &perr) && perr.Code == "UNAVAILABLE" {
			break
		}
		if r.Err == nil {
			t.Fatalf("an event was accepted (id %d) while Redis was down", r.MessageID)
		}
		if time.Now().After(deadline) {
			t.Fatalf("want UNAVAILABLE while Redis is down, got %v", r.Err)
		}
	}
	if code := a.status(t, "/readyz"); code != 503 {
		t.Errorf("/readyz = %d while Redis is down, want 503", code)
	}
	rs.Restart()
	var after []uint64
	deadline = time.Now().Add(15 * time.Second)
	for len(after) < 5 {
		r := a.publish(t, ev(`"severity":"P4"`))[0]
		if r.Err == nil {
			after = append(after, r.MessageID)
		} else if time.Now().After(deadline) {
			t.Fatalf("publishing never recovered after Redis restart: %v", r.Err)
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The subscriber stayed connected and gets every accepted event, once.
	assertIDs(t, "after restart", sub.events(len(after)), after)
	sub.expectSilence(200 * time.Millisecond)
}

func TestFleetClientMovesWithSince(t *testing.T) {
	rs := redistest.Start(t)
	fleet := startFleet(t, rs, 3)
	a, b, c := fleet[0], fleet[1], fleet[2]
	onB := b.dial(t, "")
	onB.subscribe("s", map[string]any{"sources": []string{"pay"}})
	ids := a.mustPublish(t, ev(`"source":"pay"`), ev(`"source":"other"`), ev(`"source":"pay"`))
	got := onB.events(2)
	assertIDs(t, "on B", got, []uint64{ids[0], ids[2]})
	// The client processed only the first event, then B goes away.
	onB.ws.Close()
	more := a.mustPublish(t, ev(`"source":"pay"`), ev(`"source":"pay"`))
	onC := c.dial(t, "")
	onC.send(map[string]any{"type": "subscribe", "subscription_id": "s",
		"filters": map[string]any{"sources": []string{"pay"}}, "since": got[0]})
	onC.expect("subscribed")
	assertIDs(t, "on C", onC.events(3), []uint64{ids[2], more[0], more[1]})
}

// normalEv builds an event of normal priority, so delivery order is
// message_id order whatever the backlog (priority lanes reorder otherwise).
func normalEv(fields string) string {
	return `{"event_type":"incident_updated",` + fields + `}`
}

func assertIDs(t *testing.T, what string, got, want []uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s: got %v, want %v", what, got, want)
		}
	}
}
