package engine

import (
	"math/rand/v2"
	"testing"
)

// TestSessionTable checks the table against a map through random adds and
// removes, growing past several resizes and shrinking back.
func TestSessionTable(t *testing.T) {
	var (
		tab   sessionTable
		slots []*session
		free  []uint32
		want  = map[sessionID]*session{}
		ids   []sessionID // every id ever made, held or not
	)
	rng := rand.New(rand.NewPCG(1, 2))
	add := func() {
		s := &session{id: newSessionID()}
		if n := len(free); n > 0 {
			s.slot, free = free[n-1], free[:n-1]
			slots[s.slot] = s
		} else {
			s.slot = uint32(len(slots))
			slots = append(slots, s)
		}
		tab.put(slots, s)
		want[s.id] = s
		ids = append(ids, s.id)
	}
	remove := func() {
		for _, s := range want { // a random one: map order
			tab.remove(slots, s)
			slots[s.slot] = nil
			free = append(free, s.slot)
			delete(want, s.id)
			return
		}
	}
	check := func() {
		t.Helper()
		if tab.n != len(want) {
			t.Fatalf("table holds %d, want %d", tab.n, len(want))
		}
		for _, id := range ids {
			if got := tab.get(slots, id); got != want[id] {
				t.Fatalf("get(%s) = %p, want %p", id, got, want[id])
			}
		}
	}
	for round := range 3 {
		for range 3000 {
			if rng.IntN(4) == 0 {
				remove()
			} else {
				add()
			}
		}
		check()
		for len(want) > 10 {
			if rng.IntN(4) == 0 {
				add()
			} else {
				remove()
			}
		}
		check()
		if len(tab.buckets) > 4*sessionTableMin {
			t.Fatalf("round %d: %d buckets for %d sessions: the table did not shrink", round, len(tab.buckets), tab.n)
		}
		ids = ids[:0]
		for id := range want {
			ids = append(ids, id)
		}
	}
}
