package engine

import (
	"context"
	"errors"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
	"github.com/flarecast/flarecast/ring"
)

// The dispatcher is the one goroutine that owns the filter index, the
// sessions and their subscriptions. Event loops never touch those: they send
// commands (attach, subscribe…) through mailbox[command], and the dispatcher
// applies them between events. That single owner is why a subscription
// change needs no lock on the matching path, and why each change takes
// effect at a precise point of the event sequence: a `subscribed` reply is
// queued before the first event it matches.
//
// Its work is split by noun: sessions.go (attach, detach, subscribe),
// replay.go (resume and backfill), fanout.go (one event to every matching
// connection).

// dispatchBatch bounds the events taken from the ring before the
// dispatcher hands what it queued to the event loops: large enough to
// amortise one wake-up per loop over many events, small enough to keep
// latency low.
const dispatchBatch = 256

// coalesceWait is how long the dispatcher lets events gather before taking
// the next batch, while the previous one is less than coalesceWhile old
// and the ring holds less than a batch. Sparse events go out at once;
// under load each adds at most this much latency and saves most write
// syscalls (see the closing note of the density issue for the measurement).
const (
	coalesceWait  = 250 * time.Microsecond
	coalesceWhile = 2 * time.Millisecond
)

type dispatcher struct {
	eng     *Engine
	cfg     *Config
	ring    *ring.Ring[*event.Event]
	cmds    mailbox[command]
	index   *filterindex.Index
	history *ring.History[*outFrame]

	sessions   sessionTable // by id (sessiontable.go)
	slots      []*session   // by session slot (filter index owner); nil: free
	freeSlots  []uint32
	replaying  []*session // sessions whose replay pump has work
	replayTurn int        // which of them goes first this round (pumpReplays)

	lastID uint64 // message_id of the last event dispatched

	// In a fleet: events the broker tailer could not deliver (replay.go's
	// gap markers, in ring order, and the ranges a replay must report).
	gapMu    sync.Mutex
	gapMarks []gapMark
	gaps     []gapRange

	// In a fleet: the link to the session store, and the connections whose
	// resume waits for its answer (fleetsessions.go). nil on one instance.
	sync     *sessionSync
	claiming map[*conn]struct{}

	pending []command // taken from cmds, not applied yet (commandBudget)

	// subIDs interns subscription ids (internSubID).
	subIDs map[string]*string

	// Scratch reused for every event: the hot path allocates only the frame
	// it shares between connections.
	owners   []uint32
	payload  []byte
	compress []byte
	deflated []byte
	spare    []command
	touched  []*loop
	onEvent  func(seq uint64, ev *event.Event)
}

func newDispatcher(eng *Engine) *dispatcher {
	d := &dispatcher{
		eng:     eng,
		cfg:     &eng.cfg,
		ring:    ring.New[*event.Event](eng.cfg.BroadcastCapacity, 1),
		index:   filterindex.New(),
		history: ring.NewHistory[*outFrame](eng.cfg.HistorySize, eng.cfg.HistoryMaxBytes),
	}
	d.cmds.signal = make(chan struct{}, 1)
	d.onEvent = d.ringEvent
	return d
}

// run dispatches until the ring is closed and drained.
func (d *dispatcher) run() {
	var lastEvents time.Time
	for {
		worked := d.runCommands()
		if !lastEvents.IsZero() && time.Since(lastEvents) < coalesceWhile && d.ring.Len() < dispatchBatch {
			// Events are arriving back to back: let a few more gather, so
			// each connection gets them in one writev and each loop wakes
			// once for them, instead of a syscall per event per client.
			// nanosleep, not time.Sleep: the runtime's timers round 250µs
			// up to about a millisecond here.
			ts := unix.NsecToTimespec(int64(coalesceWait))
			_ = unix.Nanosleep(&ts, nil)
		}
		if d.ring.Consume(dispatchBatch, d.onEvent) > 0 {
			worked = true
			lastEvents = time.Now()
		}
		if d.pumpReplays() {
			worked = true
		}
		d.history.Trim() // compressed copies made meanwhile count (deliver)
		d.handOff()
		d.publishGauges()
		if worked || len(d.pending) > 0 {
			continue
		}
		if err := d.ring.WaitOr(context.Background(), d.cmds.signal); errors.Is(err, ring.ErrClosed) {
			for d.runCommands() {
			}
			d.pumpReplays()
			d.handOff()
			return
		}
	}
}

// runCommands applies queued commands up to commandBudget and reports
// whether it applied any. What is left waits for the next round, after
// the next batch of events.
func (d *dispatcher) runCommands() bool {
	if len(d.pending) == 0 {
		d.pending = d.cmds.take(d.spare)
	}
	budget, n := commandBudget, 0
	for n < len(d.pending) && budget > 0 {
		cmd := &d.pending[n]
		budget -= cmd.cost()
		d.apply(cmd)
		*cmd = command{}
		n++
	}
	if n == len(d.pending) {
		d.spare = d.pending[:0]
		d.pending = nil
	} else {
		d.pending = d.pending[n:]
	}
	return n > 0
}

func (d *dispatcher) apply(cmd *command) {
	switch cmd.kind {
	case cmdAttach:
		d.attach(cmd.c, cmd.resumeID, cmd.claims, cmd.now)
	case cmdDetach:
		d.detach(cmd.c, cmd.now)
	case cmdSubscribe:
		d.subscribe(cmd.c, cmd.msg)
		cmd.c.inflight.Add(-1)
	case cmdUnsubscribe:
		d.unsubscribe(cmd.c, cmd.msg)
		cmd.c.inflight.Add(-1)
	case cmdSweep:
		d.sweep(cmd.now)
	case cmdWake:
		// The loop drained a replaying connection: run pumps again.
	case cmdRestore:
		d.restore(cmd.claim)
	case cmdReleased:
		d.released(cmd.resumeID)
	case cmdSyncAcks:
		d.syncAcks(cmd.now)
	}
}

func (d *dispatcher) publishGauges() {
	m := d.eng.metrics
	m.activeSubscriptions.Store(int64(d.index.Len()))
	m.historyLen.Store(int64(d.history.Len()))
	m.lastDispatched.Store(d.lastID)
	if first, ok := d.history.First(); ok {
		m.historyFirst.Store(int64(first))
	}
}
