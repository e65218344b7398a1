package engine_test

import (
	"testing"
	"time"
)

func TestEndToEndSmoke(t *testing.T) {
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("s1", map[string]any{"severities": []string{"P1"}})
	ids := s.mustPublish(t, ev(`"severity":"P1","title":"a"`), ev(`"severity":"P2"`), ev(`"severity":"P1"`))
	got := c.events(2)
	if got[0] != ids[0] || got[1] != ids[2] {
		t.Fatalf("got %v, want [%d %d]", got, ids[0], ids[2])
	}
	c.expectSilence(200 * time.Millisecond)
}
