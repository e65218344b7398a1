package filterindex

import (
	"hash/maphash"
	"math/bits"
)

// dict maps every value that has a posting, (field, value) or (label key,
// value), to its posting id. It replaces a Go map per field for the sake of
// Match at scale: a map lookup there costs a miss on the group's control
// word, often one on the slot, and one on the key's bytes, which live with
// the filter that first listed the value, far from the map. A dict slot is
// 32 bytes, two to a cache line, and holds a short key's bytes itself, so a
// lookup usually costs one miss; and Match computes every hash and touches
// every slot first, so that the misses of one event's lookups overlap.
//
// It is open addressing with linear probing, at most half full, deleting by
// shifting back (no tombstones). Posting id 0 (the match-all list, never
// filed under a value) marks an empty slot.
type dict struct {
	slots []dslot
	shift uint8 // 32 - log2(len(slots)): a tag's top bits are its home
	n     int
	// perField counts the entries of each field (fieldLabel included), so
	// that Match does not hash the values of fields no filter restricts.
	perField [numFields + 1]int
	seed     maphash.Seed
}

// dinline is how many bytes of key a slot holds: a label's key and value
// together, or a field's value. Longer keys are compared against the
// posting's.
const dinline = 21

// dlong is dslot.n for a key longer than dinline.
const dlong = 0xff

type dslot struct {
	tag  uint32 // the hash's top 32 bits; its top bits are the home slot
	pid  uint32 // 0: empty
	fld  field
	klen uint8 // length of the label key at the start of in
	n    uint8 // bytes of in used, or dlong
	in   [dinline]byte
}

const dminSlots = 16

func newDict() dict {
	return dict{slots: make([]dslot, dminSlots), shift: 32 - 4, seed: maphash.MakeSeed()}
}

// hash returns the hash of value v of field fld, or of label pair (k, v).
func (d *dict) hash(fld field, k, v string) uint32 {
	h := maphash.String(d.seed, v)
	if fld == fieldLabel {
		h ^= bits.RotateLeft64(maphash.String(d.seed, k), 29) * 0xff51afd7ed558ccd
	}
	h = (h ^ uint64(fld)) * 0x9e3779b97f4a7c15
	return uint32(h >> 32)
}

// home returns the first slot a tag probes.
func (d *dict) home(tag uint32) uint32 { return uint32(uint64(tag) >> d.shift) }

// find returns the posting id of (fld, k, v), whose hash is tag, or 0.
// postings resolves keys too long to be held in a slot.
func (d *dict) find(tag uint32, fld field, k, v string, postings []posting) uint32 {
	mask := uint32(len(d.slots) - 1)
	for i := d.home(tag); ; i = (i + 1) & mask {
		s := &d.slots[i]
		if s.pid == 0 {
			return 0
		}
		if s.tag == tag && s.fld == fld && s.matches(k, v, postings) {
			return s.pid
		}
	}
}

func (s *dslot) matches(k, v string, postings []posting) bool {
	if s.n == dlong {
		key := &postings[s.pid].key
		return key.Key == k && key.Value == v
	}
	return int(s.klen) == len(k) && int(s.n) == len(k)+len(v) &&
		string(s.in[:s.klen]) == k && string(s.in[s.klen:s.n]) == v
}

// get returns the posting id of (fld, k, v), or 0.
func (d *dict) get(fld field, k, v string, postings []posting) uint32 {
	if d.perField[fld] == 0 {
		return 0
	}
	return d.find(d.hash(fld, k, v), fld, k, v, postings)
}

// put files posting pid under (fld, k, v), which must not be filed yet.
func (d *dict) put(fld field, k, v string, pid uint32) {
	if 2*(d.n+1) > len(d.slots) {
		d.grow()
	}
	s := dslot{tag: d.hash(fld, k, v), pid: pid, fld: fld, n: dlong}
	if n := len(k) + len(v); n <= dinline {
		s.klen, s.n = uint8(len(k)), uint8(n)
		copy(s.in[copy(s.in[:], k):], v)
	}
	d.insert(s)
	d.n++
	d.perField[fld]++
}

func (d *dict) insert(s dslot) {
	mask := uint32(len(d.slots) - 1)
	i := d.home(s.tag)
	for d.slots[i].pid != 0 {
		i = (i + 1) & mask
	}
	d.slots[i] = s
}

func (d *dict) grow() {
	old := d.slots
	d.slots = make([]dslot, 2*len(old))
	d.shift--
	for _, s := range old {
		if s.pid != 0 {
			d.insert(s)
		}
	}
}

// remove unfiles posting pid, filed under (fld, k, v).
func (d *dict) remove(fld field, k, v string, pid uint32) {
	mask := uint32(len(d.slots) - 1)
	i := d.home(d.hash(fld, k, v))
	for d.slots[i].pid != pid {
		if d.slots[i].pid == 0 {
			panic("filterindex: dict entry missing")
		}
		i = (i + 1) & mask
	}
	// Shift back the entries after the hole that may move into it: each
	// whose home is not cyclically in (hole, j].
	for j := (i + 1) & mask; d.slots[j].pid != 0; j = (j + 1) & mask {
		h := d.home(d.slots[j].tag)
		if (j-h)&mask >= (j-i)&mask {
			d.slots[i] = d.slots[j]
			i = j
		}
	}
	d.slots[i] = dslot{}
	d.n--
	d.perField[fld]--
}
