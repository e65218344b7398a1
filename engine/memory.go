package engine

import (
	"context"
	"runtime/debug"
	"time"
)

// Returning memory after a burst of connections (Config.ReturnMemory).
//
// A burst of accepts (a deploy, a reconnect storm, a load test) leaves the
// Go heap with the garbage of every handshake and subscribe; collected, its
// pages stay with the process. The runtime's scavenger gives back only
// what lies above the next GC goal (1.5× the live heap at GOGC 50), and
// slowly, so after 19,000 connections about 4.4 MiB of free heap stayed
// resident (230 bytes per connection, the density preset). Once the
// churn has settled, one debug.FreeOSMemory (a collection, then every free
// page back to the OS) returns it: at most once per returnMemoryGap, and
// only after a burst, ticks of returnMemoryQuiet or more connections opened
// or closed adding up to returnMemoryBurst. A trickle below that rate never
// adds up, and churn above it never settles: a server in a steady state,
// which the runtime's scavenger serves well, never pays for it.

const (
	// returnMemoryTick is how often the churn is looked at.
	returnMemoryTick = 500 * time.Millisecond
	// returnMemoryBurst is how many connections must have opened or closed
	// since memory was last returned.
	returnMemoryBurst = 1000
	// returnMemoryQuiet: a tick with fewer connections opened or closed
	// than this means the burst has settled.
	returnMemoryQuiet = 50
	// returnMemoryGap is the least time between two returns.
	returnMemoryGap = 10 * time.Second
)

// memoryReturner decides when to return memory, from the engine's count of
// connections opened and closed (Engine.churn), sampled every tick.
type memoryReturner struct {
	seen    uint64    // churn at the last tick
	pending uint64    // churn in busy ticks since memory was last returned
	last    time.Time // when memory was last returned
}

// tick takes the churn count at now and reports whether to return memory.
func (r *memoryReturner) tick(churn uint64, now time.Time) bool {
	delta := churn - r.seen
	r.seen = churn
	if delta >= returnMemoryQuiet {
		r.pending += delta // busy: a burst goes on
		return false
	}
	if r.pending < returnMemoryBurst || now.Sub(r.last) < returnMemoryGap {
		return false
	}
	r.pending, r.last = 0, now
	return true
}

// returnMemory runs until ctx ends, returning memory after each settled burst.
func (e *Engine) returnMemory(ctx context.Context) {
	t := time.NewTicker(returnMemoryTick)
	defer t.Stop()
	var r memoryReturner
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if r.tick(e.churn.Load(), now) {
				debug.FreeOSMemory()
			}
		}
	}
}
