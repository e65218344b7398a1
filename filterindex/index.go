package filterindex

import (
	"cmp"
	"math"
	mbits "math/bits"
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

// entry is one subscription on one posting list, in one of three kinds:
//
//   - direct (aux 0): the subscription is decided by this entry alone (k ≤
//     1, nothing checked); it matches when reject lets the event through;
//   - paired (aux ≠ 0, owner < counted): the same, and the event must also
//     have the value of posting aux (one label pair or one value of an open
//     field), which Match knows from the postings it looked up;
//   - counted (owner counted, aux the slot + 1): the slot holds the rest.
//
// Only a counted entry costs Match a random access (its slot). Remove finds
// an entry's slot in Index.backs.
type entry struct {
	aux    uint32
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

// back says, for one posting entry, which ref points at it: ix.refs[slot][ref].
type back struct {
	slot uint32
	ref  uint32
}

// posting is the list of subscriptions that list one value. key is what the
// posting is filed under in the dict, so that the dict entry can be deleted
// when the list empties (incident ids come and go; their postings must not
// pile up).
// Its entries are in Index.lists.
type posting struct {
	key    event.Label // Key is set for label postings only
	field  field
	checks uint32 // checked refs to this posting; it lives while > 0
}

// Index is an inverted index from event values to subscriptions. The zero
// value is not usable; call New. See the package doc for who may call it.
type Index struct {
	slots     []slot
	refs      [][]ref // per slot: its entries in posting lists; empty iff free
	freeSlots []SubID
	live      int

	postings []posting
	// lists[pid] is the entries of posting pid: all Match reads of a
	// posting but its id, 24 bytes apart from the keys, so that the lists'
	// headers take a third of the cache lines they would in postings.
	lists [][]entry
	// backs parallels postings, for Remove only (Match never reads it):
	// backs[pid][i] names entry i's slot and the index, in ix.refs of that
	// slot, of the ref that points at entry i of posting pid. With it,
	// moving an entry to fill a hole fixes the entry's ref in O(1), however
	// many refs its slot has; searching them made Remove quadratic in a
	// filter's size.
	backs        [][]back
	freePostings []uint32
	dict         dict // (field, value) and (label key, value) -> posting id
	// enumPids[i] is the posting of the enumerated value whose bit is
	// 1<<i (see enums), or 0; Match finds those without hashing. They are
	// in the dict too.
	enumPids [32]uint32

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

	probes []probe  // Match's scratch
	hits   []hit    // Match's scratch
	hitIDs []uint32 // the postings of hits, sorted when many; see hasHit
	later  []later  // the entries walk leaves to settle
	touch  uint32   // keeps Match's prefetching loads alive
}

// New returns an empty Index.
func New() *Index {
	ix := &Index{
		postings:  []posting{matchAllPosting: {field: fieldMatchAll}},
		lists:     make([][]entry, 1),
		backs:     make([][]back, 1),
		dict:      newDict(),
		broad:     defaultBroad,
		maxPosted: maxPredicates,
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
	// A filter of two open predicates one of which is a single posting (a
	// label pair, or one value) need not be counted: post it under the
	// other one only and have Match check that the event's own values
	// selected that posting (a paired entry). If both were to be posted,
	// check the single one (the heavier, if both are); if one is checked
	// already, it must be the single one.
	var pairWith uint32
	if len(open) == 2 {
		if need == 2 {
			q := -1
			for i := range open {
				if open[i].single() && (q < 0 || open[i].weight > open[q].weight) {
					q = i
				}
			}
			if q >= 0 {
				open[q].checked = true
				need, checks = 1, true
			}
		}
		if need == 1 && checks {
			c := &open[0]
			if !c.checked {
				c = &open[1]
			}
			if c.single() {
				pairWith = ix.predPosting(c)
			}
		}
	}
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
	e := entry{aux: pairWith, owner: owner, reject: reject}
	if checks {
		sl.need |= needChecks
	}
	if pairWith == 0 && (need > 1 || checks) {
		e = entry{aux: uint32(id) + 1, owner: counted}
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
				refs = ix.attach(ix.labelPosting(p.label), id, e, checked, refs)
				continue
			}
			for _, v := range p.values {
				refs = ix.attach(ix.valuePosting(p.field, v), id, e, checked, refs)
			}
		}
	}
	if need == 0 {
		refs = ix.attach(matchAllPosting, id, e, false, refs)
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

// single reports whether p is satisfied by exactly one posting.
func (p *pred) single() bool { return p.field == fieldLabel || len(p.values) == 1 }

// predPosting returns the posting of a single predicate, creating it.
func (ix *Index) predPosting(p *pred) uint32 {
	if p.field == fieldLabel {
		return ix.labelPosting(p.label)
	}
	return ix.valuePosting(p.field, p.values[0])
}

func (ix *Index) fieldWeight(fld field, values []string) int {
	w := 0
	for _, v := range values {
		if pid := ix.dict.get(fld, "", v, ix.postings); pid != 0 {
			w += len(ix.lists[pid])
		}
	}
	return w
}

func (ix *Index) labelWeight(l event.Label) int {
	if pid := ix.dict.get(fieldLabel, l.Key, l.Value, ix.postings); pid != 0 {
		return len(ix.lists[pid])
	}
	return 0
}

// attach records that subscription id posts e under posting pid or, if
// checked, checks its value.
func (ix *Index) attach(pid uint32, id SubID, e entry, checked bool, refs []ref) []ref {
	p := &ix.postings[pid]
	if checked {
		p.checks++
		return append(refs, ref{posting: pid, pos: checkedPos})
	}
	ix.backs[pid] = append(ix.backs[pid], back{slot: uint32(id), ref: uint32(len(refs))})
	refs = append(refs, ref{posting: pid, pos: uint32(len(ix.lists[pid]))})
	ix.lists[pid] = append(ix.lists[pid], e)
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
	if pid := ix.dict.get(fld, "", v, ix.postings); pid != 0 {
		return pid
	}
	pid := ix.newPosting(fld, event.Label{Value: v})
	ix.dict.put(fld, "", v, pid)
	if b, ok := enumBit(fld, v); ok {
		ix.enumPids[mbits.TrailingZeros32(b)] = pid
	}
	return pid
}

// enumBit returns the bit of value v of field fld, if fld is enumerated and
// v in its vocabulary.
func enumBit(fld field, v string) (uint32, bool) {
	if int(fld) >= len(enums) {
		return 0, false
	}
	b, ok := enums[fld].bits[v]
	return b, ok
}

// labelPosting returns the posting id of label pair l, creating it.
func (ix *Index) labelPosting(l event.Label) uint32 {
	if pid := ix.dict.get(fieldLabel, l.Key, l.Value, ix.postings); pid != 0 {
		return pid
	}
	pid := ix.newPosting(fieldLabel, l)
	ix.dict.put(fieldLabel, l.Key, l.Value, pid)
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
	ix.lists = append(ix.lists, nil)
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
	es, backs := ix.lists[r.posting], ix.backs[r.posting]
	last := uint32(len(es) - 1)
	if r.pos != last {
		es[r.pos] = es[last]
		b := backs[last]
		backs[r.pos] = b
		ix.refs[b.slot][b.ref].pos = r.pos
	}
	es = es[:last]
	ix.lists[r.posting], ix.backs[r.posting] = es, backs[:last]

	if last == 0 {
		if ix.postings[r.posting].checks == 0 && r.posting != matchAllPosting {
			ix.dropPosting(r.posting)
		}
		return
	}
	// Give memory back after a mass unsubscribe from a popular value.
	if cap(es) > 64 && len(es) < cap(es)/4 {
		ix.lists[r.posting] = append(make([]entry, 0, 2*len(es)), es...)
	}
	if b := ix.backs[r.posting]; cap(b) > 64 && len(b) < cap(b)/4 {
		ix.backs[r.posting] = append(make([]back, 0, 2*len(b)), b...)
	}
}

// uncheck drops one checked ref to posting pid.
func (ix *Index) uncheck(pid uint32) {
	p := &ix.postings[pid]
	p.checks--
	if p.checks == 0 && len(ix.lists[pid]) == 0 {
		ix.dropPosting(pid)
	}
}

// dropPosting deletes an empty posting from the dict and recycles its id.
func (ix *Index) dropPosting(pid uint32) {
	p := &ix.postings[pid]
	ix.dict.remove(p.field, p.key.Key, p.key.Value, pid)
	if b, ok := enumBit(p.field, p.key.Value); ok {
		ix.enumPids[mbits.TrailingZeros32(b)] = 0
	}
	if cap(ix.lists[pid]) > 8 {
		ix.lists[pid] = nil
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
	hits, bits := ix.lookup(ev)
	ids := ix.hitIDs[:0]
	for _, h := range hits {
		ids = append(ids, h.posting)
	}
	if len(ids) > hitScan {
		slices.Sort(ids)
	}
	ix.hitIDs = ids

	// Load the first cache lines of every list before walking any, so
	// that their misses overlap.
	var touch uint32
	for _, h := range hits {
		es := ix.lists[h.posting]
		for i := 0; i < len(es) && i < touchEntries; i += entriesPerLine {
			touch += es[i].owner
		}
	}
	ix.touch += touch

	dst = ix.walk(matchAllPosting, 0, bits, dst)
	for _, h := range hits {
		dst = ix.walk(h.posting, h.once, bits, dst)
	}
	dst = ix.settle(ev, bits, dst)

	// Leave the owner set all zero for the next call.
	for _, o := range dst[start:] {
		ix.ownerSet[o>>6] = 0
	}
	return dst
}

// hit is a posting list that one of the event's values selects.
type hit struct {
	posting uint32
	once    uint16 // see count
}

// probe is one of an event's values to look up.
type probe struct {
	k, v string // label key (labels only) and value
	tag  uint32 // its hash
	fld  field
}

// lookup sets ix.hits to the postings of ev's values and returns it, with
// ev's enumerated values as bits (see eventBits). Values in the enumerated
// vocabularies are found in ix.enumPids; the others it hashes and touches
// their home slots first, then looks each up, then touches their postings:
// the lookups are independent, so their cache misses overlap instead of
// queueing behind one another.
func (ix *Index) lookup(ev *event.Event) ([]hit, uint32) {
	d := &ix.dict
	hits := ix.hits[:0]
	ps := ix.probes[:0]
	var bits uint32
	for fld, v := range [...]string{fieldType: string(ev.Type), fieldSeverity: ev.Severity, fieldState: ev.State} {
		e := &enums[fld]
		b := e.bit(v)
		bits |= b
		if b != e.unknown {
			if pid := ix.enumPids[mbits.TrailingZeros32(b)]; pid != 0 {
				hits = append(hits, hit{pid, 0})
			}
		} else {
			ps = d.probe(ps, field(fld), v)
		}
	}
	ps = d.probe(ps, fieldSource, ev.Source)
	ps = d.probe(ps, fieldIncident, ev.IncidentID)
	if d.perField[fieldResource] > 0 {
		for _, r := range ev.Resources {
			ps = d.probe(ps, fieldResource, r)
		}
	}
	if d.perField[fieldLabel] > 0 {
		for i, l := range ev.Labels {
			// Keys are unique by contract; skipping an exact repeat
			// keeps a malformed event from counting a pair twice.
			if i > 0 && l == ev.Labels[i-1] {
				continue
			}
			ps = append(ps, probe{k: l.Key, v: l.Value, fld: fieldLabel})
		}
	}
	ix.probes = ps

	var touch uint32
	slots := d.slots
	for i := range ps {
		p := &ps[i]
		p.tag = d.hash(p.fld, p.k, p.v)
		touch += slots[d.home(p.tag)].pid
	}
	for i := range ps {
		p := &ps[i]
		if pid := d.find(p.tag, p.fld, p.k, p.v, ix.postings); pid != 0 {
			once := uint16(0)
			if p.fld == fieldResource {
				once = resourceSeen
			}
			hits = append(hits, hit{pid, once})
		}
	}
	lists := ix.lists
	for _, h := range hits {
		touch += uint32(len(lists[h.posting]))
	}
	ix.hits, ix.touch = hits, touch
	return hits, bits
}

// probe appends value v of single-valued field fld, unless it is empty or no
// filter restricts fld.
func (d *dict) probe(ps []probe, fld field, v string) []probe {
	if v == "" || d.perField[fld] == 0 {
		return ps
	}
	return append(ps, probe{v: v, fld: fld})
}

// Match loads one entry in entriesPerLine of the first touchEntries of
// each list (three or four cache lines) before it walks any: enough for the
// short lists of narrow values, whose misses the hardware prefetcher does
// not hide. More cost more than they saved when measured.
const (
	entriesPerLine = 64 / 12
	touchEntries   = 16
)

// hitScan is the most postings hasHit scans; beyond it, it searches them
// sorted.
const hitScan = 16

// hasHit reports whether posting pid is among ids, the postings of the
// event's values (sorted if there are more than hitScan).
func hasHit(ids []uint32, pid uint32) bool {
	if len(ids) > hitScan {
		return hasHitSorted(ids, pid)
	}
	for i := range ids {
		if ids[i] == pid {
			return true
		}
	}
	return false
}

// hasHitSorted is apart from hasHit so that hasHit is inlined.
//
//go:noinline
func hasHitSorted(ids []uint32, pid uint32) bool {
	_, ok := slices.BinarySearch(ids, pid)
	return ok
}

// walk visits every entry of posting pid. A direct entry matches when its
// reject mask lets the event's enumerated values (bits) through; the others
// it leaves to settle, with once, so that its own loop stays tight.
func (ix *Index) walk(pid uint32, once uint16, bits uint32, dst []uint32) []uint32 {
	set := ix.ownerSet
	for _, e := range ix.lists[pid] {
		if e.aux != 0 {
			ix.later = append(ix.later, later{e, once})
			continue
		}
		if e.reject&bits != 0 {
			continue
		}
		if o, w := e.owner, &set[e.owner>>6]; *w&(1<<(o&63)) == 0 {
			*w |= 1 << (o & 63)
			dst = append(dst, o)
		}
	}
	return dst
}

// later is an entry walk left to settle, and the once of its posting.
type later struct {
	e    entry
	once uint16
}

// settle decides the entries walk left: a paired one matches when its mask
// lets the event through and its other posting is among ix.hitIDs (the
// postings of the event's values); a counted one as count says. It loads
// the counted ones' slots first, so that their cache misses overlap.
func (ix *Index) settle(ev *event.Event, bits uint32, dst []uint32) []uint32 {
	ls := ix.later
	if len(ls) == 0 {
		return dst
	}
	var touch uint32
	for i := range ls {
		if ls[i].e.owner == counted {
			touch += ix.slots[ls[i].e.aux-1].epoch
		}
	}
	ix.touch += touch
	set := ix.ownerSet
	for i := range ls {
		e := ls[i].e
		o := e.owner
		if o == counted {
			var ok bool
			if o, ok = ix.count(ev, e.aux-1, ls[i].once, bits); !ok {
				continue
			}
		} else if e.reject&bits != 0 || !hasHit(ix.hitIDs, e.aux) {
			continue
		}
		if w, b := &set[o>>6], uint64(1)<<(o&63); *w&b == 0 {
			*w |= b
			dst = append(dst, o)
		}
	}
	ix.later = ls[:0]
	return dst
}

// count adds a hit to slot id's counter and returns its owner if that
// makes the subscription match: the count reaches k, the slot's mask lets
// the event through and its checked predicates hold. once (resourceSeen or
// 0) makes a slot count at most once per event for this kind of posting.
func (ix *Index) count(ev *event.Event, id uint32, once uint16, bits uint32) (uint32, bool) {
	sl := &ix.slots[id]
	if sl.epoch != ix.epoch {
		sl.epoch, sl.hits = ix.epoch, 0
	}
	if sl.hits&once != 0 {
		return 0, false
	}
	sl.hits = (sl.hits | once) + 1
	if sl.hits&^resourceSeen != sl.need&^needChecks || sl.reject&bits != 0 {
		return 0, false
	}
	o := sl.owner
	if ix.ownerSet[o>>6]&(1<<(o&63)) != 0 {
		return 0, false // already reported: spare the check
	}
	if sl.need&needChecks != 0 && !ix.verify(id, ev) {
		return 0, false
	}
	return o, true
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
