package ring

import "fmt"

// minHistoryBuf is the backing array a History starts with on first Append.
const minHistoryBuf = 64

// History is the replay window: the most recent entries, in increasing id
// order, bounded both by count and by the sum of their sizes.
//
// It is a circular buffer whose backing array starts small and doubles up to
// maxEntries, so a mostly idle server with a large configured window does not
// pay for it upfront. Evicted slots are zeroed so the GC can reclaim what
// they referenced. Lookups by id are O(1) while the ids held are contiguous
// (the normal case: the dispatcher appends every ring sequence) and a binary
// search otherwise.
//
// History is not safe for concurrent use: it belongs to the dispatcher
// goroutine, which appends to it and serves replays from it.
type History[T any] struct {
	buf        []histEntry[T]
	head       int // index in buf of the oldest entry
	n          int // entries held
	bytes      int64
	maxEntries int
	maxBytes   int64
}

type histEntry[T any] struct {
	id   uint64
	size int64
	v    T
}

// NewHistory returns an empty History that keeps at most maxEntries entries
// whose sizes add up to at most maxBytes. maxBytes <= 0 means no byte bound;
// maxEntries <= 0 means the history keeps nothing (Append discards).
func NewHistory[T any](maxEntries int, maxBytes int64) *History[T] {
	if maxEntries < 0 {
		maxEntries = 0
	}
	return &History[T]{maxEntries: maxEntries, maxBytes: maxBytes}
}

// Append adds v with the given id and size (in bytes, as the caller counts
// them), then evicts the oldest entries until both bounds hold again. An
// entry larger than maxBytes on its own is still kept, as the only entry, so
// the latest event is always replayable.
//
// ids must be strictly increasing; they need not be contiguous. Append
// panics if id is not greater than Last, or if size is negative.
func (h *History[T]) Append(id uint64, v T, size int) {
	if size < 0 {
		panic(fmt.Sprintf("ring: History.Append negative size %d", size))
	}
	if h.n > 0 {
		if last := h.at(h.n - 1).id; id <= last {
			panic(fmt.Sprintf("ring: History.Append id %d not after last id %d", id, last))
		}
	}
	if h.maxEntries == 0 {
		return
	}
	if h.n == h.maxEntries {
		h.evict()
	} else if h.n == len(h.buf) {
		h.grow()
	}
	*h.at(h.n) = histEntry[T]{id: id, size: int64(size), v: v}
	h.n++
	h.bytes += int64(size)
	h.Trim()
}

// Grow adds delta bytes to the size of the entry with the given id, if it
// is held: for a value that grows after it was appended (a compressed copy
// made on first use). It does not evict, so it may be called from an After
// callback; the byte bound holds again after the next Trim or Append.
func (h *History[T]) Grow(id uint64, delta int) {
	if i := h.search(id); i < h.n {
		if e := h.at(i); e.id == id {
			e.size += int64(delta)
			h.bytes += int64(delta)
		}
	}
}

// Trim evicts the oldest entries until the byte bound holds, keeping at
// least the newest entry.
func (h *History[T]) Trim() {
	for h.maxBytes > 0 && h.bytes > h.maxBytes && h.n > 1 {
		h.evict()
	}
}

// at returns the i-th oldest entry, 0 <= i < len(h.buf).
func (h *History[T]) at(i int) *histEntry[T] {
	j := h.head + i
	if j >= len(h.buf) {
		j -= len(h.buf)
	}
	return &h.buf[j]
}

// evict drops the oldest entry.
func (h *History[T]) evict() {
	e := &h.buf[h.head]
	h.bytes -= e.size
	*e = histEntry[T]{}
	h.head++
	if h.head == len(h.buf) {
		h.head = 0
	}
	h.n--
}

// grow doubles the backing array, up to maxEntries, unrolling the circle.
func (h *History[T]) grow() {
	size := min(max(2*len(h.buf), minHistoryBuf), h.maxEntries)
	buf := make([]histEntry[T], size)
	k := copy(buf, h.buf[h.head:])
	copy(buf[k:], h.buf[:h.head])
	h.buf = buf
	h.head = 0
}

// Len returns the number of entries held.
func (h *History[T]) Len() int { return h.n }

// Bytes returns the sum of the sizes of the entries held.
func (h *History[T]) Bytes() int64 { return h.bytes }

// First returns the oldest id held, and false if the history is empty.
func (h *History[T]) First() (uint64, bool) {
	if h.n == 0 {
		return 0, false
	}
	return h.buf[h.head].id, true
}

// Last returns the newest id held, and false if the history is empty.
func (h *History[T]) Last() (uint64, bool) {
	if h.n == 0 {
		return 0, false
	}
	return h.at(h.n - 1).id, true
}

// search returns the position (0 = oldest) of the first entry whose id is
// at least id, or h.n if there is none.
func (h *History[T]) search(id uint64) int {
	if h.n == 0 {
		return 0
	}
	first, last := h.buf[h.head].id, h.at(h.n-1).id
	switch {
	case id <= first:
		return 0
	case id > last:
		return h.n
	case last-first == uint64(h.n-1): // strictly increasing and contiguous
		return int(id - first)
	}
	lo, hi := 1, h.n-1 // at(0).id < id <= at(n-1).id
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if h.at(mid).id < id {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// Get returns the entry with the given id, and false if it is not held
// (evicted, never appended, or not yet appended).
func (h *History[T]) Get(id uint64) (T, bool) {
	if i := h.search(id); i < h.n {
		if e := h.at(i); e.id == id {
			return e.v, true
		}
	}
	var zero T
	return zero, false
}

// After calls fn for every entry whose id is greater than id, oldest first,
// until fn returns false. fn must not modify the History.
//
// To resume a client whose last seen id is id, check First first: if
// First() > id+1 the entries in between were evicted and the gap is lost.
func (h *History[T]) After(id uint64, fn func(id uint64, v T) bool) {
	if id == ^uint64(0) {
		return
	}
	for i := h.search(id + 1); i < h.n; i++ {
		e := h.at(i)
		if !fn(e.id, e.v) {
			return
		}
	}
}
