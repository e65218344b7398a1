package filterindex

import (
	"math"
	"slices"

	"github.com/flarecast/flarecast/event"
)

// SubID names one subscription in an Index: a dense slot number. Remove frees
// it and a later Add may hand the same number out again, so the engine must
// forget an id once it has removed it.
type SubID uint32

// field numbers the event fields a Filter restricts.
type field uint8

const (
	fieldType field = iota
	fieldSeverity
	fieldState
	fieldSource
	fieldResource
	fieldIncident
	numFields

	fieldLabel    = numFields     // postings keyed by a label pair
	fieldMatchAll = numFields + 1 // the one posting of the k = 0 subscriptions
)

// matchAllPosting is the posting id of the match-all list. It is never in a
// value map and never freed.
const matchAllPosting = 0

const (
	// resourceSeen is the bit of slot.hits that records that a resource
	// was already counted in this epoch; the low bits count predicates.
	resourceSeen  = 1 << 15
	maxPredicates = resourceSeen - 1

	// counted is entry.owner for a subscription that must be counted in
	// its slot (k ≥ 2). Owners are below it.
	counted = math.MaxUint32
)

// entry is one subscription on one posting list. For k ≤ 1 it carries all
// Match needs (owner and reject mask); for k ≥ 2 owner is counted and the
// slot holds the counter.
type entry struct {
	slot   uint32
	owner  uint32
	reject uint32 // enumerated values the filter excludes; see enums
}

// slot is the per-subscription counter state Match reads and writes for
// k ≥ 2. It is 16 bytes, so that it never straddles a cache line, and lives
// apart from the cold removal bookkeeping (Index.refs).
type slot struct {
	epoch  uint32 // Match call that last wrote hits
	owner  uint32
	reject uint32
	need   uint16 // k: posted predicates the event must satisfy
	hits   uint16 // predicates satisfied in epoch, plus resourceSeen
}

// ref locates one entry of a slot in a posting list, so that Remove can
// unlink it in O(1).
type ref struct {
	posting uint32
	pos     uint32
}

// posting is the list of subscriptions that list one value. key is what the
// posting is filed under in its field's map, so that the map entry can be
// deleted when the list empties (incident ids come and go; their postings
// must not pile up).
type posting struct {
	entries []entry
	key     event.Label // Key is set for label postings only
	field   field
}

// Index is an inverted index from event values to subscriptions. The zero
// value is not usable; call New. See the package doc for who may call it.
type Index struct {
	slots     []slot
	refs      [][]ref // per slot: its entries in posting lists; empty iff free
	freeSlots []SubID
	live      int

	postings     []posting
	freePostings []uint32
	values       [numFields]map[string]uint32 // value -> posting id
	labels       map[string]map[string]uint32 // label key -> value -> posting id

	epoch uint32 // current Match call, for slot counters; never 0
	// ownerSet has the bit of every owner the current Match has appended;
	// all zero between calls. Grows to cover the highest owner added.
	ownerSet []uint64

	hits  []hit  // Match's scratch
	touch uint32 // keeps Match's prefetching loads alive
}

// New returns an empty Index.
func New() *Index {
	ix := &Index{
		postings: []posting{matchAllPosting: {field: fieldMatchAll}},
		labels:   make(map[string]map[string]uint32),
	}
	for i := range ix.values {
		ix.values[i] = make(map[string]uint32)
	}
	return ix
}

// Len returns the number of live subscriptions.
func (ix *Index) Len() int { return ix.live }

// Add registers a subscription of owner with filter f and returns its id.
// f should be normalized (see Filter.Normalize); Add copes with one that is
// not, at the cost of an allocation. Add keeps no reference to f. It panics
// if owner is math.MaxUint32 or f has more than 32,000-odd predicates.
func (ix *Index) Add(owner uint32, f *Filter) SubID {
	if owner == counted {
		panic("filterindex: owner out of range")
	}
	lists := [numFields][]string{
		fieldType:     canon(f.EventTypes),
		fieldSeverity: canon(f.Severities),
		fieldState:    canon(f.States),
		fieldSource:   canon(f.Sources),
		fieldResource: canon(f.Resources),
		fieldIncident: canon(f.IncidentIDs),
	}

	// Decide which fields are posted (counted) and which are checked by
	// mask; see the package doc.
	var posted [numFields]bool
	var reject uint32
	need, entries := len(f.Labels), len(f.Labels)
	anchor, masked := field(0), false
	for fld, l := range lists {
		if len(l) == 0 {
			continue
		}
		if fld < len(enums) {
			e := &enums[fld]
			if acc, ok := e.accept(l); ok {
				reject |= e.all &^ acc
				// Remember the narrowest enumerated field, relative
				// to its vocabulary, in case one must be posted.
				if !masked || len(l)*enums[anchor].size < len(lists[anchor])*e.size {
					anchor, masked = field(fld), true
				}
				continue
			}
		}
		posted[fld] = true
		need++
		entries += len(l)
	}
	if need == 0 && masked {
		posted[anchor] = true
		reject &^= enums[anchor].all
		need, entries = 1, len(lists[anchor])
	}
	if need > maxPredicates {
		panic("filterindex: filter has too many predicates")
	}
	if need == 0 {
		entries = 1
	}

	id := ix.allocSlot()
	ix.slots[id] = slot{owner: owner, reject: reject, need: uint16(need)}
	e := entry{slot: uint32(id), owner: owner, reject: reject}
	if need > 1 {
		e.owner, e.reject = counted, 0
	}
	refs := ix.refs[id][:0]
	if cap(refs) < entries {
		refs = make([]ref, 0, entries)
	}
	for fld, l := range lists {
		if posted[fld] {
			for _, v := range l {
				refs = ix.link(ix.valuePosting(field(fld), v), e, refs)
			}
		}
	}
	for _, l := range f.Labels {
		refs = ix.link(ix.labelPosting(l), e, refs)
	}
	if need == 0 {
		refs = ix.link(matchAllPosting, e, refs)
	}
	ix.refs[id] = refs

	if n := int(owner>>6) + 1; n > len(ix.ownerSet) {
		ix.ownerSet = append(ix.ownerSet, make([]uint64, n-len(ix.ownerSet))...)
	}
	ix.live++
	return id
}

// canon returns list sorted without duplicates: list itself when it already
// is (a normalized filter), else a sorted copy. A single-valued field must
// put a subscription on a posting list at most once, or it would count twice.
func canon(list []string) []string {
	for i := 1; i < len(list); i++ {
		if list[i-1] >= list[i] {
			return slices.Compact(slices.Sorted(slices.Values(list)))
		}
	}
	return list
}

// allocSlot returns a free slot, reusing the most recently freed one.
func (ix *Index) allocSlot() SubID {
	if n := len(ix.freeSlots); n > 0 {
		id := ix.freeSlots[n-1]
		ix.freeSlots = ix.freeSlots[:n-1]
		return id
	}
	if len(ix.slots) == math.MaxUint32 {
		panic("filterindex: too many subscriptions")
	}
	ix.slots = append(ix.slots, slot{})
	ix.refs = append(ix.refs, nil)
	return SubID(len(ix.slots) - 1)
}

// valuePosting returns the posting id of value v of field fld, creating it.
func (ix *Index) valuePosting(fld field, v string) uint32 {
	m := ix.values[fld]
	if pid, ok := m[v]; ok {
		return pid
	}
	pid := ix.newPosting(fld, event.Label{Value: v})
	m[v] = pid
	return pid
}

// labelPosting returns the posting id of label pair l, creating it.
func (ix *Index) labelPosting(l event.Label) uint32 {
	m := ix.labels[l.Key]
	if pid, ok := m[l.Value]; ok {
		return pid
	}
	if m == nil {
		m = make(map[string]uint32)
		ix.labels[l.Key] = m
	}
	pid := ix.newPosting(fieldLabel, l)
	m[l.Value] = pid
	return pid
}

func (ix *Index) newPosting(fld field, key event.Label) uint32 {
	if n := len(ix.freePostings); n > 0 {
		pid := ix.freePostings[n-1]
		ix.freePostings = ix.freePostings[:n-1]
		p := &ix.postings[pid]
		p.key, p.field = key, fld
		return pid
	}
	ix.postings = append(ix.postings, posting{key: key, field: fld})
	return uint32(len(ix.postings) - 1)
}

// link appends e to posting pid and records where it went.
func (ix *Index) link(pid uint32, e entry, refs []ref) []ref {
	p := &ix.postings[pid]
	refs = append(refs, ref{posting: pid, pos: uint32(len(p.entries))})
	p.entries = append(p.entries, e)
	return refs
}

// Remove unregisters subscription id and frees its slot for reuse. It panics
// if id is not live (never added, or already removed): with ids reused, a
// double Remove would otherwise silently drop someone else's subscription.
func (ix *Index) Remove(id SubID) {
	if int(id) >= len(ix.refs) || len(ix.refs[id]) == 0 {
		panic("filterindex: Remove of a SubID that is not live")
	}
	refs := ix.refs[id]
	// Read refs[i] afresh each time: unlinking one entry may move another
	// entry of this same slot (a label pair listed twice) and update its
	// position.
	for i := range refs {
		ix.unlink(refs[i])
	}
	ix.slots[id] = slot{}
	if cap(refs) > 8 {
		refs = nil // don't let one huge filter pin its refs forever
	}
	ix.refs[id] = refs[:0]
	ix.freeSlots = append(ix.freeSlots, id)
	ix.live--
}

// unlink removes the entry r points at by moving the list's last entry into
// its place and fixing the moved entry's ref.
func (ix *Index) unlink(r ref) {
	p := &ix.postings[r.posting]
	last := uint32(len(p.entries) - 1)
	if r.pos != last {
		moved := p.entries[last]
		p.entries[r.pos] = moved
		mrefs := ix.refs[moved.slot]
		for j := range mrefs {
			if mrefs[j].posting == r.posting && mrefs[j].pos == last {
				mrefs[j].pos = r.pos
				break
			}
		}
	}
	p.entries = p.entries[:last]

	switch {
	case last == 0 && r.posting != matchAllPosting:
		ix.dropPosting(r.posting)
	case cap(p.entries) > 64 && len(p.entries) < cap(p.entries)/4:
		// Give memory back after a mass unsubscribe from a popular value.
		p.entries = append(make([]entry, 0, 2*len(p.entries)), p.entries...)
	}
}

// dropPosting deletes an empty posting from its map and recycles its id.
func (ix *Index) dropPosting(pid uint32) {
	p := &ix.postings[pid]
	if p.field == fieldLabel {
		m := ix.labels[p.key.Key]
		delete(m, p.key.Value)
		if len(m) == 0 {
			delete(ix.labels, p.key.Key)
		}
	} else {
		delete(ix.values[p.field], p.key.Value)
	}
	if cap(p.entries) > 8 {
		p.entries = nil
	}
	p.key = event.Label{}
	ix.freePostings = append(ix.freePostings, pid)
}

// Match appends to dst the owner of every subscription whose filter matches
// ev, each owner once, in no particular order, and returns the extended
// slice. It allocates only when dst must grow.
func (ix *Index) Match(ev *event.Event, dst []uint32) []uint32 {
	ix.nextEpoch()
	start := len(dst)
	bits := eventBits(ev)

	// Look every value up first, then walk: the lookups are independent,
	// so their cache misses overlap instead of queueing behind the walks.
	hits := ix.hits[:0]
	hits = ix.lookup(hits, fieldType, string(ev.Type))
	hits = ix.lookup(hits, fieldSeverity, ev.Severity)
	hits = ix.lookup(hits, fieldState, ev.State)
	hits = ix.lookup(hits, fieldSource, ev.Source)
	hits = ix.lookup(hits, fieldIncident, ev.IncidentID)
	if m := ix.values[fieldResource]; len(m) > 0 {
		for _, r := range ev.Resources {
			if pid, ok := m[r]; ok && r != "" {
				hits = append(hits, hit{pid, resourceSeen})
			}
		}
	}
	if len(ix.labels) > 0 {
		for i, l := range ev.Labels {
			// Keys are unique by contract; skipping an exact repeat
			// keeps a malformed event from counting a pair twice.
			if i > 0 && l == ev.Labels[i-1] {
				continue
			}
			if pid, ok := ix.labels[l.Key][l.Value]; ok {
				hits = append(hits, hit{pid, 0})
			}
		}
	}
	ix.hits = hits

	// Likewise, load the head of every list before walking any.
	var touch uint32
	for _, h := range hits {
		if es := ix.postings[h.posting].entries; len(es) > 0 {
			touch += es[0].owner
		}
	}
	ix.touch = touch

	dst = ix.walk(matchAllPosting, 0, bits, dst)
	for _, h := range hits {
		dst = ix.walk(h.posting, h.once, bits, dst)
	}

	// Leave the owner set all zero for the next call.
	for _, o := range dst[start:] {
		ix.ownerSet[o>>6] = 0
	}
	return dst
}

// hit is a posting list that one of the event's values selects.
type hit struct {
	posting uint32
	once    uint16 // see walk
}

// lookup appends the posting of value v of single-valued field fld, if any.
func (ix *Index) lookup(hits []hit, fld field, v string) []hit {
	m := ix.values[fld]
	if v == "" || len(m) == 0 {
		return hits
	}
	if pid, ok := m[v]; ok {
		hits = append(hits, hit{pid, 0})
	}
	return hits
}

// walk visits every entry of posting pid. A k ≤ 1 entry matches when its
// reject mask lets the event's enumerated values (bits) through. A k ≥ 2
// entry adds a hit to its slot's counter and matches when the count reaches
// k and the slot's mask lets the event through; once (resourceSeen or 0)
// makes a slot count at most once per event for this kind of posting.
func (ix *Index) walk(pid uint32, once uint16, bits uint32, dst []uint32) []uint32 {
	ep := ix.epoch
	slots, set := ix.slots, ix.ownerSet
	for _, e := range ix.postings[pid].entries {
		o := e.owner
		if o == counted {
			sl := &slots[e.slot]
			if sl.epoch != ep {
				sl.epoch, sl.hits = ep, 0
			}
			if sl.hits&once != 0 {
				continue
			}
			sl.hits = (sl.hits | once) + 1
			if sl.hits&^resourceSeen != sl.need || sl.reject&bits != 0 {
				continue
			}
			o = sl.owner
		} else if e.reject&bits != 0 {
			continue
		}
		if w, b := &set[o>>6], uint64(1)<<(o&63); *w&b == 0 {
			*w |= b
			dst = append(dst, o)
		}
	}
	return dst
}

// nextEpoch starts a new Match. Epoch 0 is never current, so zeroed counters
// (new slots) always read as stale; when the counter wraps, every slot's
// stamp is cleared once, which costs O(size) every 2^32 events.
func (ix *Index) nextEpoch() {
	ix.epoch++
	if ix.epoch != 0 {
		return
	}
	for i := range ix.slots {
		ix.slots[i].epoch = 0
	}
	ix.epoch = 1
}
