package engine

import (
	"testing"
	"time"
)

// TestMemoryReturner: memory goes back once a burst has settled, not
// while it goes on, not after a trickle, and not twice within the gap.
func TestMemoryReturner(t *testing.T) {
	var r memoryReturner
	now := time.Unix(1000, 0)
	churn := uint64(0)
	step := func(delta uint64) bool {
		now = now.Add(returnMemoryTick)
		churn += delta
		return r.tick(churn, now)
	}
	for i := range 4 { // a burst of 4 × 600 connections
		if step(600) {
			t.Fatalf("returned during the burst (tick %d)", i)
		}
	}
	if !step(0) {
		t.Fatal("not returned once the burst settled")
	}
	if step(0) {
		t.Fatal("returned again with nothing new")
	}
	// Another burst within the gap waits for the gap to pass.
	step(2000)
	for now.Add(returnMemoryTick).Sub(r.last) < returnMemoryGap {
		if step(0) {
			t.Fatalf("returned %v after the last time", now.Sub(r.last))
		}
	}
	if !step(0) {
		t.Fatal("not returned after the gap")
	}
	// Churn at the busy rate is not returned while it goes on, but once
	// it stops.
	for range 100 {
		if step(returnMemoryQuiet) {
			t.Fatal("returned while connections kept coming")
		}
	}
	now = now.Add(returnMemoryGap)
	if !step(0) {
		t.Fatal("not returned after the churn stopped")
	}
	// A trickle below it never adds up to a burst.
	now = now.Add(returnMemoryGap)
	for range 1000 {
		if step(returnMemoryQuiet - 1) {
			t.Fatal("returned after a trickle")
		}
	}
}
