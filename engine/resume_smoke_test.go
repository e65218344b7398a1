package engine_test

import (
	"testing"
)

func TestResumeSmoke(t *testing.T) {
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("s1", map[string]any{})
	ids := s.mustPublish(t, ev(`"severity":"P1"`), ev(`"severity":"P2"`), ev(`"severity":"P3"`))
	got := c.events(3)
	c.send(map[string]any{"type": "ack", "message_id": got[0]})
	// Make sure the ack is processed before the connection goes.
	c.send(map[string]any{"type": "unsubscribe", "subscription_id": "nope"})
	c.expect("error")
	c.ws.Close()
	more := s.mustPublish(t, ev(`"severity":"P4"`))
	c2 := s.dial(t, "session_id="+c.sessionID)
	got2 := c2.events(3)
	want := []uint64{ids[1], ids[2], more[0]}
	for i := range want {
		if got2[i] != want[i] {
			t.Fatalf("resumed events %v, want %v", got2, want)
		}
	}
	// since backfill on a fresh session
	c3 := s.dial(t, "")
	c3.send(map[string]any{"type": "subscribe", "subscription_id": "b", "filters": map[string]any{"severities": []string{"P2", "P4"}}, "since": 0})
	c3.expect("subscribed")
	got3 := c3.events(2)
	if got3[0] != ids[1] || got3[1] != more[0] {
		t.Fatalf("backfill %v", got3)
	}
}
