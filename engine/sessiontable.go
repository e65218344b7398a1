package engine

import "hash/maphash"

// sessionTable finds a session by its id. Every session has a slot
// (dispatcher.slots, its owner number in the filter index); the table is
// an open-addressing hash table of those slots, linear probing, 4 bytes a
// bucket and at most 3/4 full: about 7 bytes a session at 19,000 sessions,
// where a map[sessionID]*session took 46. It is the dispatcher's, like the
// sessions; lookups happen on attach and resume, never per event.
type sessionTable struct {
	seed    maphash.Seed
	buckets []uint32 // slot+1 of the session hashed here; 0: empty
	n       int      // sessions held
}

const sessionTableMin = 64 // buckets; a power of two

func (t *sessionTable) home(id sessionID) int {
	return int(maphash.Comparable(t.seed, id) & uint64(len(t.buckets)-1))
}

// get returns the session named id, or nil.
func (t *sessionTable) get(slots []*session, id sessionID) *session {
	if t.n == 0 {
		return nil
	}
	mask := len(t.buckets) - 1
	for i := t.home(id); ; i = (i + 1) & mask {
		b := t.buckets[i]
		if b == 0 {
			return nil
		}
		if s := slots[b-1]; s.id == id {
			return s
		}
	}
}

// put adds s, whose id the table does not hold, and which slots[s.slot] holds.
func (t *sessionTable) put(slots []*session, s *session) {
	if t.buckets == nil {
		t.seed = maphash.MakeSeed()
		t.buckets = make([]uint32, sessionTableMin)
	} else if (t.n+1)*4 > len(t.buckets)*3 {
		t.resize(slots, 2*len(t.buckets))
	}
	t.insert(s)
	t.n++
}

func (t *sessionTable) insert(s *session) {
	mask := len(t.buckets) - 1
	i := t.home(s.id)
	for t.buckets[i] != 0 {
		i = (i + 1) & mask
	}
	t.buckets[i] = s.slot + 1
}

// remove takes s out; slots[s.slot] must still hold it.
func (t *sessionTable) remove(slots []*session, s *session) {
	mask := len(t.buckets) - 1
	i := t.home(s.id)
	for t.buckets[i] != s.slot+1 {
		if t.buckets[i] == 0 {
			return // not held
		}
		i = (i + 1) & mask
	}
	// Backward-shift deletion: move up every following entry of the run
	// that may sit at i, so that no lookup meets a hole before its entry.
	for j := (i + 1) & mask; t.buckets[j] != 0; j = (j + 1) & mask {
		h := t.home(slots[t.buckets[j]-1].id)
		// The entry at j may move to i unless its home lies in (i, j].
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			t.buckets[i] = t.buckets[j]
			i = j
		}
	}
	t.buckets[i] = 0
	t.n--
	if len(t.buckets) > sessionTableMin && t.n*8 < len(t.buckets) {
		t.resize(slots, len(t.buckets)/2)
	}
}

func (t *sessionTable) resize(slots []*session, size int) {
	old := t.buckets
	t.buckets = make([]uint32, size)
	for _, b := range old {
		if b != 0 {
			t.insert(slots[b-1])
		}
	}
}
