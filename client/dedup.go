package client

// seenSet remembers which message_ids were delivered, for de-duplication
// across resumes. After an overtake (a critical event written before a
// waiting normal one) a lower id can legitimately arrive after a higher
// one, so "drop ids ≤ the highest delivered" would lose events: the set is
// a sliding bitmap of the window ids (base, base+size]; ids at or below
// base count as delivered (they are older than the window the server can
// still owe), ids above the window slide it up.
type seenSet struct {
	base uint64   // every id ≤ base counts as seen
	bits []uint64 // bit (id % size) for ids in (base, base+size]
	size uint64   // a multiple of 64
}

func newSeenSet(window int) *seenSet {
	size := (uint64(max(window, 64)) + 63) &^ 63
	return &seenSet{bits: make([]uint64, size/64), size: size}
}

// add records id and reports whether it was new.
func (s *seenSet) add(id uint64) bool {
	if id <= s.base {
		return false
	}
	if id > s.base+s.size {
		s.slide(id - s.size)
	}
	w, b := (id%s.size)/64, id%64
	if s.bits[w]&(1<<b) != 0 {
		return false
	}
	s.bits[w] |= 1 << b
	return true
}

// slide moves base up to nb, forgetting the bits of the ids it passes.
func (s *seenSet) slide(nb uint64) {
	if nb-s.base >= s.size {
		clear(s.bits)
	} else {
		for id := s.base + 1; id <= nb; id++ {
			s.bits[(id%s.size)/64] &^= 1 << (id % 64)
		}
	}
	s.base = nb
}

// reset forgets everything (the server's numbering started again).
func (s *seenSet) reset() {
	clear(s.bits)
	s.base = 0
}
