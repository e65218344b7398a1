package filterindex

import (
	"cmp"
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
	resourceSeen = 1 << 15
	// needChecks is the bit of slot.need that says the subscription has
	// checked predicates; the low bits are k.
	needChecks = 1 << 15
	// maxPredicates is the most posted predicates a slot can count; a
	// filter with more has the rest checked (see capPosted).
	maxPredicates = needChecks - 1

	// counted is entry.owner for a subscription that Match must handle
	// through its slot (k ≥ 2, or checked predicates). Owners are below it.
	counted = math.MaxUint32

	// checkedPos is ref.pos for a checked predicate: the value's posting
	// holds the key to compare, but not the subscription.
	checkedPos = math.MaxUint32

	// defaultBroad is the posting length from which a value counts as
	// broad; see the package doc.
	defaultBroad = 256
)

// entry is one subscription on one posting list. For a subscription that
// is decided by this entry alone (k ≤ 1, nothing checked) it carries all
// Match needs (owner and reject mask); otherwise owner is counted and the
// slot holds the rest.
type entry struct {
	slot   uint32
	owner  uint32
	reject uint32 // enumerated values the filter excludes; see enums
}

// slot is the per-subscription state Match reads and writes for the
// subscriptions its entries cannot decide alone (k ≥ 2, or checked
// predicates). It is 16 bytes, so that it never straddles a cache line, and
// lives apart from the cold removal bookkeeping (Index.refs).
type slot struct {
	epoch  uint32 // Match call that last wrote hits
	owner  uint32
	reject uint32
	need   uint16 // k: posted predicates the event must satisfy, plus needChecks
	hits   uint16 // predicates satisfied in epoch, plus resourceSeen
}

// ref locates one entry of a slot in a posting list, so that Remove can
// unlink it in O(1); or, with pos checkedPos, the posting whose key is one of
// the slot's checked values.
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
	checks  uint32 // checked refs to this posting; it lives while > 0
}

// Index is an inverted index from event values to subscriptions. The zero
// value is not usable; call New. See the package doc for who may call it.
type Index struct {
	slots     []slot
	refs      [][]ref // per slot: its entries in posting lists; empty iff free
	freeSlots []SubID
	live      int

	postings []posting
	// backs parallels postings, for Remove only (Match never reads it):
	// backs[pid][i] is the index, in ix.refs of entry i's slot, of the ref
	// that points at entry i of posting pid. With it, moving an entry to
	// fill a hole fixes the entry's ref in O(1), however many refs its
	// slot has; searching them made Remove quadratic in a filter's size.
	backs        [][]uint32
	freePostings []uint32
	values       [numFields]map[string]uint32 // value -> posting id
	labels       map[string]map[string]uint32 // label key -> value -> posting id

	// broad is the posting length from which a value is checked rather
	// than posted; see the package doc.
	broad int
	// maxPosted is the most predicates a subscription is posted under
	// (maxPredicates; tests lower it); see capPosted.
	maxPosted int

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
		postings:  []posting{matchAllPosting: {field: fieldMatchAll}},
		backs:     make([][]uint32, 1),
		labels:    make(map[string]map[string]uint32),
		broad:     defaultBroad,
		maxPosted: maxPredicates,
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
// if owner is math.MaxUint32. A filter may list any number of values and
// label pairs: beyond the maxPredicates lightest, predicates are checked
// instead of posted (see capPosted).
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

	// Enumerated fields become a reject mask; the other predicates are
	// open. See the package doc.
	var reject uint32
	var buf [8]pred
	open := buf[:0]
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
		open = append(open, pred{field: field(fld), values: l, weight: ix.fieldWeight(field(fld), l)})
	}
	for _, l := range f.Labels {
		open = append(open, pred{field: fieldLabel, label: l, weight: ix.labelWeight(l)})
	}

	// Post the open predicates that are not broad, or else the lightest
	// one; check the rest.
	need, lightest := 0, 0
	for i := range open {
		if open[i].weight < ix.broad {
			need++
		} else {
			open[i].checked = true
		}
		if open[i].weight < open[lightest].weight {
			lightest = i
		}
	}
	if len(open) > 0 && need == 0 {
		open[lightest].checked = false
		need = 1
	}
	if need > ix.maxPosted {
		need = ix.capPosted(open, need)
	}
	checks := len(open) > need
	if need == 0 && masked {
		open = append(open, pred{field: anchor, values: lists[anchor]})
		reject &^= enums[anchor].all
		need = 1
	}
	entries := 0
	for _, p := range open {
		entries += max(len(p.values), 1)
	}

	id := ix.allocSlot()
	sl := slot{owner: owner, reject: reject, need: uint16(need)}
	e := entry{slot: uint32(id), owner: owner, reject: reject}
	if checks {
		sl.need |= needChecks
	}
	if need > 1 || checks {
		e.owner, e.reject = counted, 0
	}
	ix.slots[id] = sl
	refs := ix.refs[id][:0]
	if cap(refs) < max(entries, 1) {
		refs = make([]ref, 0, max(entries, 1))
	}
	// Posted refs first, then checked ones, grouped by field as verify
	// expects.
	for _, checked := range [2]bool{false, true} {
		for _, p := range open {
			if p.checked != checked {
				continue
			}
			if p.field == fieldLabel {
				refs = ix.attach(ix.labelPosting(p.label), e, checked, refs)
				continue
			}
			for _, v := range p.values {
				refs = ix.attach(ix.valuePosting(p.field, v), e, checked, refs)
			}
		}
	}
	if need == 0 {
		refs = ix.attach(matchAllPosting, e, false, refs)
	}
	ix.refs[id] = refs

	if n := int(owner>>6) + 1; n > len(ix.ownerSet) {
		ix.ownerSet = append(ix.ownerSet, make([]uint64, n-len(ix.ownerSet))...)
	}
	ix.live++
	return id
}

// capPosted keeps a slot's counter in range for a filter with more posted
// predicates (need) than it can count (maxPredicates; it takes over 32,000
// label pairs): it leaves the lightest posted and checks the others, as it
// does broad ones, and returns the new need. Matching stays exact; a
// candidate pays for verifying the checked ones. The codec's limit on filter
// values keeps subscriptions from clients far below this.
func (ix *Index) capPosted(open []pred, need int) int {
	posted := make([]int, 0, need)
	for i := range open {
		if !open[i].checked {
			posted = append(posted, i)
		}
	}
	slices.SortStableFunc(posted, func(a, b int) int { return cmp.Compare(open[a].weight, open[b].weight) })
	for _, i := range posted[ix.maxPosted:] {
		open[i].checked = true
	}
	return ix.maxPosted
}

// pred is one open predicate of a filter being added: a field's list of
// values (any of which satisfies it) or one label pair.
type pred struct {
	field   field
	values  []string
	label   event.Label
	weight  int // entries on the postings it would join
	checked bool
}

func (ix *Index) fieldWeight(fld field, values []string) int {
	w, m := 0, ix.values[fld]
	for _, v := range values {
		if pid, ok := m[v]; ok {
			w += len(ix.postings[pid].entries)
		}
	}
	return w
}

func (ix *Index) labelWeight(l event.Label) int {
	if pid, ok := ix.labels[l.Key][l.Value]; ok {
		return len(ix.postings[pid].entries)
	}
	return 0
}

// attach records that the subscription e names posts under posting pid or,
// if checked, checks its value.
func (ix *Index) attach(pid uint32, e entry, checked bool, refs []ref) []ref {
	p := &ix.postings[pid]
	if checked {
		p.checks++
		return append(refs, ref{posting: pid, pos: checkedPos})
	}
	ix.backs[pid] = append(ix.backs[pid], uint32(len(refs)))
	refs = append(refs, ref{posting: pid, pos: uint32(len(p.entries))})
	p.entries = append(p.entries, e)
	return refs
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
	ix.backs = append(ix.backs, nil)
	return uint32(len(ix.postings) - 1)
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
		if r := refs[i]; r.pos == checkedPos {
			ix.uncheck(r.posting)
		} else {
			ix.unlink(r)
		}
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
// its place and fixing the moved entry's ref, in O(1).
func (ix *Index) unlink(r ref) {
	p := &ix.postings[r.posting]
	back := ix.backs[r.posting]
	last := uint32(len(p.entries) - 1)
	if r.pos != last {
		moved := p.entries[last]
		p.entries[r.pos] = moved
		back[r.pos] = back[last]
		ix.refs[moved.slot][back[last]].pos = r.pos
	}
	p.entries = p.entries[:last]
	ix.backs[r.posting] = back[:last]

	if last == 0 {
		if p.checks == 0 && r.posting != matchAllPosting {
			ix.dropPosting(r.posting)
		}
		return
	}
	// Give memory back after a mass unsubscribe from a popular value.
	if cap(p.entries) > 64 && len(p.entries) < cap(p.entries)/4 {
		p.entries = append(make([]entry, 0, 2*len(p.entries)), p.entries...)
	}
	if b := ix.backs[r.posting]; cap(b) > 64 && len(b) < cap(b)/4 {
		ix.backs[r.posting] = append(make([]uint32, 0, 2*len(b)), b...)
	}
}

// uncheck drops one checked ref to posting pid.
func (ix *Index) uncheck(pid uint32) {
	p := &ix.postings[pid]
	p.checks--
	if p.checks == 0 && len(p.entries) == 0 {
		ix.dropPosting(pid)
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
	if cap(ix.backs[pid]) > 8 {
		ix.backs[pid] = nil
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

	dst = ix.walk(ev, matchAllPosting, 0, bits, dst)
	for _, h := range hits {
		dst = ix.walk(ev, h.posting, h.once, bits, dst)
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

// walk visits every entry of posting pid. A direct entry matches when its
// reject mask lets the event's enumerated values (bits) through. Any other
// adds a hit to its slot's counter and matches when the count reaches k, the
// slot's mask lets the event through and its checked predicates hold; once
// (resourceSeen or 0) makes a slot count at most once per event for this
// kind of posting.
func (ix *Index) walk(ev *event.Event, pid uint32, once uint16, bits uint32, dst []uint32) []uint32 {
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
			if sl.hits&^resourceSeen != sl.need&^needChecks || sl.reject&bits != 0 {
				continue
			}
			o = sl.owner
			if set[o>>6]&(1<<(o&63)) != 0 {
				continue // already reported: spare the check
			}
			if sl.need&needChecks != 0 && !ix.verify(e.slot, ev) {
				continue
			}
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

// verify reports whether ev satisfies the checked predicates of slot id:
// its trailing checked refs, one group of consecutive refs per field (any
// value will do) and one ref per label pair.
func (ix *Index) verify(id uint32, ev *event.Event) bool {
	refs := ix.refs[id]
	i := len(refs)
	for i > 0 && refs[i-1].pos == checkedPos {
		i--
	}
	for i < len(refs) {
		p := &ix.postings[refs[i].posting]
		i++
		if p.field == fieldLabel {
			if v, ok := ev.Label(p.key.Key); !ok || v != p.key.Value {
				return false
			}
			continue
		}
		ok := hasValue(ev, p.field, p.key.Value)
		for ; i < len(refs); i++ {
			q := &ix.postings[refs[i].posting]
			if q.field != p.field {
				break
			}
			ok = ok || hasValue(ev, q.field, q.key.Value)
		}
		if !ok {
			return false
		}
	}
	return true
}

// hasValue reports whether ev's field fld has value v.
func hasValue(ev *event.Event, fld field, v string) bool {
	if v == "" {
		return false
	}
	switch fld {
	case fieldType:
		return string(ev.Type) == v
	case fieldSeverity:
		return ev.Severity == v
	case fieldState:
		return ev.State == v
	case fieldSource:
		return ev.Source == v
	case fieldIncident:
		return ev.IncidentID == v
	case fieldResource:
		return slices.Contains(ev.Resources, v)
	}
	return false
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

// MatchesOne reports whether subscription id alone matches ev, from what the
// index keeps of it (the reject mask and the values of its postings), without
// counting. Replays test one session's subscriptions against past events
// with it, so a session does not keep a copy of every filter.
func (ix *Index) MatchesOne(id SubID, ev *event.Event) bool {
	if ix.slots[id].reject&eventBits(ev) != 0 {
		return false
	}
	refs := ix.refs[id]
	for i := 0; i < len(refs); {
		p := &ix.postings[refs[i].posting]
		switch p.field {
		case fieldMatchAll:
			i++
			continue
		case fieldLabel:
			if v, ok := ev.Label(p.key.Key); !ok || v != p.key.Value {
				return false
			}
			i++
			continue
		}
		// The refs of one field's values are adjacent: any of them will do.
		fld, ok := p.field, false
		for ; i < len(refs) && ix.postings[refs[i].posting].field == fld; i++ {
			ok = ok || hasValue(ev, fld, ix.postings[refs[i].posting].key.Value)
		}
		if !ok {
			return false
		}
	}
	return true
}
