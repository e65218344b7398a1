package ring

import (
	"context"
	"errors"
	"math/bits"
	"runtime"
	"sync/atomic"
)

// ErrClosed is returned by Publish once the ring is closed, and by Wait once
// the ring is closed and every accepted entry has been consumed.
var ErrClosed = errors.New("ring: closed")

const (
	// cacheLine is the padding unit that keeps the producer cursor, the
	// consumer cursor and the two parking flags on separate cache lines, so a
	// producer claiming a sequence does not invalidate the line the consumer
	// is reading, and vice versa.
	cacheLine = 64

	// closedBit is kept in the producer cursor so that Close and a claim are
	// ordered by the same compare-and-swap: once Close has set it no sequence
	// can be claimed, and every sequence claimed before it is published and
	// handed to the consumer before Wait reports ErrClosed.
	closedBit = 1 << 63

	// spinTries is how many times a blocked Publish or Wait re-checks before
	// yielding: the other side normally makes progress within nanoseconds.
	// With GOMAXPROCS=1 it cannot make progress while we spin, so New sets
	// the ring's spin count to 0 then.
	spinTries = 64
	// yieldTries is how many runtime.Gosched rounds follow before parking on
	// a channel. On a small machine the goroutine we wait for may need our
	// processor, so yielding comes early and parking soon after.
	yieldTries = 8
)

type pad [cacheLine]byte

// slot is one cell of the ring. stamp is the sequence number most recently
// published into the cell: the consumer expecting sequence s reads the cell
// only once stamp == s. Sequences start at 1 and a cell only ever holds s,
// s+cap, s+2cap... so the zero stamp of a fresh cell and the stale stamp of a
// consumed one never match the sequence the consumer waits for.
type slot[T any] struct {
	stamp atomic.Uint64
	val   T
}

// Ring is a bounded, lock-free, multi-producer single-consumer queue of
// sequence-numbered entries in the style of the LMAX Disruptor.
//
// # Design
//
// The ring is an array of 2^k slots and two monotonically increasing
// cursors: tail, the next sequence a producer will claim, and head, the next
// sequence the consumer will read. Sequence s lives in slot s & (cap-1).
//
// A producer first checks there is room (tail-head < cap) and only then
// claims sequence tail with a compare-and-swap of tail to tail+1. Because the
// claim happens after the space check, a producer that is blocked or whose
// context is cancelled has claimed nothing and leaves no hole: every claimed
// sequence is written and published. It then stores the value into the slot
// and publishes it by storing s into the slot's stamp. Producers finish in
// any order; the consumer reads slot head only when its stamp equals head, so
// it never skips a sequence and sees entries in exactly claim order.
// Sequences are never reused, so they double as message ids.
//
// The consumer copies the value out, zeroes the slot (so the GC can reclaim
// what it pointed to), and after a batch advances head with a single store,
// which is what frees those slots for producers.
//
// A bounded ring applies back-pressure instead of losing data: a full ring
// makes Publish wait. Compared with a buffered channel there is no lock on
// the hot path, the consumer drains many entries per wake-up, and the
// sequence number comes for free with the claim.
//
// # Memory ordering
//
// Go's sync/atomic operations are sequentially consistent and create
// happens-before edges between a store and the load that observes it.
//
//   - Publishing: a producer's plain write of slot.val precedes its
//     stamp.Store(s); the consumer's stamp.Load() that returns s therefore
//     happens after the write, and its plain read of val is race-free.
//   - Reuse: the consumer zeroes slot.val before head.Store(h+n); a producer
//     writes a slot for sequence t only after a head.Load() of at least
//     t-cap+1, which observed that store, so its write happens after the
//     zeroing. Producers load head before tail, so tail-head never
//     underflows and a stale head can only make the ring look fuller than it
//     is, never emptier.
//   - Exclusivity: the compare-and-swap on tail hands each sequence to
//     exactly one producer.
//
// # Waiting
//
// A full ring makes Publish spin briefly, then call runtime.Gosched, then
// park on a channel. Parked producers announce themselves in a counter; the
// consumer, after advancing head, sends a token on a one-element channel if
// the counter is non-zero, and a producer that was woken passes the token on
// after its claim while room and parked producers remain, so one token
// wakes every waiter in turn.
//
// An empty ring makes Wait do the same, then set a "consumer parked" flag,
// re-check, and block on a one-element channel. A producer loads the flag
// after publishing and, if set, clears it and sends the token. Both sides
// store first and load second (producer: stamp then flag; consumer: flag
// then stamp), so under sequential consistency at least one sees the other:
// either the consumer's re-check finds the entry or the producer finds the
// flag. No wake-up is lost, and an idle dispatcher costs no CPU. The cost on
// the hot path is one load of a flag that is rarely written.
//
// Publish and Consume do not allocate.
//
// # Concurrency
//
// Publish, Len, Cap and Close are safe for concurrent use. Consume and Wait
// must only be called from one goroutine (the dispatcher).
type Ring[T any] struct {
	// Read-only after New.
	spin     int // spinTries, or 0 on a single processor
	mask     uint64
	slots    []slot[T]
	notEmpty chan struct{} // token for the parked consumer
	notFull  chan struct{} // token for parked producers, passed along
	done     chan struct{} // closed by Close

	_               pad
	tail            atomic.Uint64 // next sequence to claim; closedBit once closed
	_               pad
	head            atomic.Uint64 // next sequence to consume; slots before it are free
	_               pad
	consumerParked  atomic.Uint32 // 1 while Wait is (about to be) blocked
	_               pad
	producersParked atomic.Int32 // number of Publish calls (about to be) blocked
	_               pad
}

// New returns an empty ring holding capacity entries, rounded up to a power
// of two, whose first published entry gets sequence number first.
//
// first must be at least 1: a fresh slot's stamp is 0, so 0 cannot be told
// apart from "not yet published". New panics if capacity < 1 or first == 0.
func New[T any](capacity int, first uint64) *Ring[T] {
	if capacity < 1 {
		panic("ring: New capacity must be at least 1")
	}
	if first == 0 {
		panic("ring: New first sequence must be at least 1")
	}
	if first >= closedBit/2 {
		panic("ring: New first sequence out of range")
	}
	n := uint64(1) << bits.Len64(uint64(capacity-1))
	r := &Ring[T]{
		spin:     spinTries,
		mask:     n - 1,
		slots:    make([]slot[T], n),
		notEmpty: make(chan struct{}, 1),
		notFull:  make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	if runtime.GOMAXPROCS(0) == 1 {
		r.spin = 0
	}
	r.tail.Store(first)
	r.head.Store(first)
	return r
}

// Cap returns the number of entries the ring holds when full.
func (r *Ring[T]) Cap() int { return len(r.slots) }

// Len returns the number of entries claimed by producers and not yet
// consumed, including any a producer is still writing.
func (r *Ring[T]) Len() int {
	h := r.head.Load() // before tail, so t >= h
	t := r.tail.Load() &^ closedBit
	return int(t - h)
}

// Publish stores v in the ring and returns its sequence number. Sequence
// numbers are handed out in claim order, contiguously, starting at New's
// first.
//
// While the ring is full, Publish waits for the consumer to free a slot. It
// returns an error only if it claimed no slot: ctx.Err() if ctx is done while
// waiting, or ErrClosed if the ring is closed. As with semaphores, ctx only
// bounds the wait: if there is room, v is published even if ctx is already
// done. Once Publish returns a sequence, the consumer will receive v.
func (r *Ring[T]) Publish(ctx context.Context, v T) (uint64, error) {
	tries := 0
	parked := false
	for {
		h := r.head.Load() // before tail: see the memory-ordering notes on Ring
		t := r.tail.Load()
		if t&closedBit != 0 {
			return 0, ErrClosed
		}
		if t-h > r.mask {
			p, err := r.awaitRoom(ctx, &tries)
			if err != nil {
				return 0, err
			}
			parked = parked || p
			continue
		}
		if !r.tail.CompareAndSwap(t, t+1) {
			continue // another producer claimed t; retry with the new tail
		}
		s := &r.slots[t&r.mask]
		s.val = v
		s.stamp.Store(t)
		if r.consumerParked.Load() != 0 {
			r.wakeConsumer()
		}
		if parked && r.producersParked.Load() > 0 && r.hasRoom() {
			wake(r.notFull) // pass the token on to the next parked producer
		}
		return t, nil
	}
}

// awaitRoom is Publish's slow path once the ring looked full. *tries counts
// the calls for this Publish and selects the strategy: spin, yield, park.
// It returns whether it parked, and an error only if Publish must give up.
func (r *Ring[T]) awaitRoom(ctx context.Context, tries *int) (parked bool, err error) {
	*tries++
	switch {
	case *tries <= r.spin:
		return false, nil
	case *tries <= r.spin+yieldTries:
		runtime.Gosched()
		return false, nil
	}
	r.producersParked.Add(1)
	// Re-check after announcing: the consumer advances head and then loads
	// producersParked, so either we see the room or it sees us.
	if r.hasRoom() || r.tail.Load()&closedBit != 0 {
		r.producersParked.Add(-1)
		return false, nil
	}
	select {
	case <-r.notFull:
	case <-r.done:
	case <-ctx.Done():
		r.producersParked.Add(-1)
		return true, ctx.Err()
	}
	r.producersParked.Add(-1)
	// The consumer is draining: spin and yield again before parking again.
	*tries = 0
	return true, nil
}

// hasRoom reports whether a producer could claim a slot now.
func (r *Ring[T]) hasRoom() bool {
	h := r.head.Load()
	t := r.tail.Load() &^ closedBit
	return t-h <= r.mask
}

// wakeConsumer hands the parked consumer its token. Only the producer whose
// compare-and-swap clears the flag sends, so a burst of publishes costs the
// others nothing but a load.
func (r *Ring[T]) wakeConsumer() {
	if r.consumerParked.CompareAndSwap(1, 0) {
		wake(r.notEmpty)
	}
}

// wake puts a token in a one-element channel unless one is already there.
func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Consume hands fn up to max consecutive published entries, in sequence
// order, and returns how many it handed over. It does not block: it stops at
// the first sequence not yet published (or when the ring is empty).
//
// Each slot is zeroed before fn sees its value, so the ring keeps no
// reference to it; the slots are released to producers when Consume returns,
// so max also bounds how long a full ring keeps producers waiting for a slow
// fn. fn must not call Publish on the same ring (it could wait for a slot
// only its own return frees) and should not panic.
//
// Consume must only be called by the consumer goroutine.
func (r *Ring[T]) Consume(max int, fn func(seq uint64, v T)) int {
	var zero T
	h := r.head.Load()
	n := 0
	for ; n < max; n++ {
		seq := h + uint64(n)
		s := &r.slots[seq&r.mask]
		if s.stamp.Load() != seq {
			break
		}
		v := s.val
		s.val = zero
		fn(seq, v)
	}
	if n > 0 {
		r.head.Store(h + uint64(n))
		if r.producersParked.Load() > 0 {
			wake(r.notFull)
		}
	}
	return n
}

// ready reports whether Consume would hand over at least one entry.
func (r *Ring[T]) ready() bool {
	h := r.head.Load()
	return r.slots[h&r.mask].stamp.Load() == h
}

// Wait blocks until Consume has at least one entry to hand over, and then
// returns nil. It returns ctx.Err() if ctx is done first, and ErrClosed if
// the ring is closed and every accepted entry has been consumed. An idle
// Wait parks on a channel and uses no CPU.
//
// Wait must only be called by the consumer goroutine.
func (r *Ring[T]) Wait(ctx context.Context) error { return r.WaitOr(ctx, nil) }

// WaitOr is Wait that also returns nil as soon as wake yields a value, for
// a consumer that has other work to wait for (the dispatcher's commands).
// A nil wake never fires.
func (r *Ring[T]) WaitOr(ctx context.Context, wake <-chan struct{}) error {
	for i := 1; ; i++ {
		if r.ready() {
			return nil
		}
		if i <= r.spin {
			continue
		}
		if i <= r.spin+yieldTries {
			runtime.Gosched()
			continue
		}
		if r.tail.Load()&closedBit != 0 {
			if r.Len() == 0 {
				return ErrClosed
			}
			// A producer claimed a sequence before Close and is still
			// writing it; it is only a few instructions away.
			runtime.Gosched()
			continue
		}
		r.consumerParked.Store(1)
		// Re-check after announcing: a producer stores the stamp and then
		// loads consumerParked, so either we see the entry or it sees us.
		if r.ready() {
			r.consumerParked.Store(0)
			return nil
		}
		select {
		case <-r.notEmpty:
		case <-r.done:
		case <-wake:
			r.consumerParked.Store(0)
			return nil
		case <-ctx.Done():
			r.consumerParked.Store(0)
			return ctx.Err()
		}
		r.consumerParked.Store(0)
		i = 0
	}
}

// Close stops the ring accepting entries: Publish calls that have not
// claimed a slot, including those waiting for room, return ErrClosed.
// Entries already accepted stay consumable; Wait returns ErrClosed after the
// last of them has been consumed. Close may be called more than once and
// from any goroutine.
func (r *Ring[T]) Close() {
	if r.tail.Or(closedBit)&closedBit == 0 {
		close(r.done)
	}
}
