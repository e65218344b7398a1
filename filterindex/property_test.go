package filterindex

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/flarecast/flarecast/event"
)

// Small vocabularies, so that random filters and events often meet. The
// enumerated fields include values outside event's vocabularies, which the
// index counts instead of masking; an incident id and a label value are too
// long for a dict slot to hold.
var (
	vocTypes     = []string{"incident_created", "incident_updated", "escalated", "alert_received", "system_event", "custom"}
	vocSeverity  = []string{"P0", "P1", "P2", "P3", "P4", "P9"}
	vocStates    = []string{"Detected", "Triaged", "Investigating", "Resolved", ""}
	vocSources   = []string{"pagerduty", "datadog", "grafana"}
	vocResources = []string{"db-1", "db-2", "api-1", "api-2", "cache", "queue", "lb", ""}
	vocIncidents = []string{"INC-1", "INC-2", "INC-3", "INC-4", "INC-5", "INC-long-enough-not-to-fit-a-dict-slot"}
	vocLabelKeys = []string{"env", "team", "region"}
	vocLabelVals = []string{"a", "b", "c", "", "a-value-too-long-for-a-dict-slot"}
)

// pickSome returns 1..max distinct-or-not values of voc (duplicates are left
// for Normalize to remove).
func pickSome(r *rand.Rand, voc []string, max int) []string {
	out := make([]string, 1+r.IntN(max))
	for i := range out {
		out[i] = voc[r.IntN(len(voc))]
	}
	return out
}

func randFilter(r *rand.Rand) Filter {
	var f Filter
	if r.IntN(20) == 0 {
		return f // match-all
	}
	p := func() bool { return r.IntN(3) == 0 }
	if p() {
		f.EventTypes = pickSome(r, vocTypes, 3)
	}
	if p() {
		f.Severities = pickSome(r, vocSeverity, 3)
	}
	if p() {
		f.States = pickSome(r, vocStates, 2)
	}
	if r.IntN(5) == 0 {
		f.Sources = pickSome(r, vocSources, 2)
	}
	if p() {
		f.Resources = pickSome(r, vocResources, 4)
	}
	if r.IntN(5) == 0 {
		f.IncidentIDs = pickSome(r, vocIncidents, 2)
	}
	for range r.IntN(3) {
		f.Labels = append(f.Labels, event.Label{
			Key:   vocLabelKeys[r.IntN(len(vocLabelKeys))],
			Value: vocLabelVals[r.IntN(len(vocLabelVals))],
		})
	}
	f.Normalize()
	return f
}

func randEvent(r *rand.Rand) *event.Event {
	maybe := func(voc []string) string {
		if r.IntN(8) == 0 {
			return ""
		}
		return voc[r.IntN(len(voc))]
	}
	ev := &event.Event{
		Type:       event.Type(maybe(vocTypes)),
		Severity:   maybe(vocSeverity),
		State:      maybe(vocStates),
		Source:     maybe(vocSources),
		IncidentID: maybe(vocIncidents),
	}
	for range r.IntN(4) {
		ev.Resources = append(ev.Resources, vocResources[r.IntN(len(vocResources))])
	}
	for _, k := range vocLabelKeys {
		if r.IntN(3) > 0 {
			ev.Labels = append(ev.Labels, event.Label{Key: k, Value: vocLabelVals[r.IntN(len(vocLabelVals))]})
		}
	}
	// vocLabelKeys is sorted, so ev.Labels is sorted by key as required.
	return ev
}

// liveSub is the test's own record of a subscription, for the linear scan.
type liveSub struct {
	id    SubID
	owner uint32
	f     Filter
}

func linearOwners(subs []liveSub, ev *event.Event) []uint32 {
	var out []uint32
	for i := range subs {
		if subs[i].f.Matches(ev) {
			out = append(out, subs[i].owner)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// checkInvariants verifies the bookkeeping: every posted ref of every live
// slot points at an entry of that slot carrying what Match needs, checked
// refs come last and are counted by their postings, every posting entry is
// accounted for by a ref and points back at it, the maps index exactly the postings in use, and
// the owner set is clear between calls.
func checkInvariants(t *testing.T, ix *Index) {
	t.Helper()
	posted, live := 0, 0
	checks := map[uint32]uint32{}
	for id := range ix.slots {
		if len(ix.refs[id]) == 0 {
			continue // free
		}
		live++
		sl := ix.slots[id]
		var checkedRefs []ref
		for _, r := range ix.refs[id] {
			if r.pos == checkedPos {
				checkedRefs = append(checkedRefs, r)
			}
		}
		want := entry{owner: sl.owner, reject: sl.reject}
		switch {
		case sl.need == 0 || sl.need == 1: // direct
		case sl.need == 1|needChecks && len(checkedRefs) == 1: // paired
			want.aux = checkedRefs[0].posting
		default:
			want = entry{aux: uint32(id) + 1, owner: counted}
		}
		hasChecked := false
		for _, r := range ix.refs[id] {
			if r.pos == checkedPos {
				hasChecked = true
				checks[r.posting]++
				continue
			}
			if hasChecked {
				t.Fatalf("slot %d: posted ref after a checked one: %v", id, ix.refs[id])
			}
			posted++
			if e := ix.lists[r.posting][r.pos]; e != want {
				t.Fatalf("slot %d %+v: ref %+v points at %+v", id, sl, r, e)
			}
		}
		if hasChecked != (sl.need&needChecks != 0) {
			t.Fatalf("slot %d: need %#x but checked refs %v", id, sl.need, hasChecked)
		}
	}
	if live != ix.Len() || live+len(ix.freeSlots) != len(ix.slots) {
		t.Fatalf("live %d, Len %d, free %d, slots %d", live, ix.Len(), len(ix.freeSlots), len(ix.slots))
	}
	entries, inUse := 0, 0
	if len(ix.backs) != len(ix.postings) || len(ix.lists) != len(ix.postings) {
		t.Fatalf("%d backs for %d postings", len(ix.backs), len(ix.postings))
	}
	for pid, p := range ix.postings {
		es := ix.lists[pid]
		entries += len(es)
		if len(ix.backs[pid]) != len(es) {
			t.Fatalf("posting %d: %d entries, %d backs", pid, len(es), len(ix.backs[pid]))
		}
		for i := range es {
			if b := ix.backs[pid][i]; int(b.slot) >= len(ix.refs) || int(b.ref) >= len(ix.refs[b.slot]) ||
				ix.refs[b.slot][b.ref] != (ref{posting: uint32(pid), pos: uint32(i)}) {
				t.Fatalf("posting %d entry %d: back %+v does not point at its ref", pid, i, b)
			}
		}
		if p.checks != checks[uint32(pid)] {
			t.Fatalf("posting %d (%+v) counts %d checks, refs say %d", pid, p.key, p.checks, checks[uint32(pid)])
		}
		if pid != matchAllPosting && (len(es) > 0 || p.checks > 0) {
			inUse++
		}
	}
	mapped := 0
	for _, s := range ix.dict.slots {
		if s.pid == 0 {
			continue
		}
		mapped++
		p := &ix.postings[s.pid]
		if s.fld != p.field || ix.dict.get(p.field, p.key.Key, p.key.Value, ix.postings) != s.pid {
			t.Fatalf("dict slot %+v does not find posting %d (%+v, field %d)", s, s.pid, p.key, p.field)
		}
	}
	for i, pid := range ix.enumPids {
		if pid == 0 {
			continue
		}
		p := &ix.postings[pid]
		if b, ok := enumBit(p.field, p.key.Value); !ok || b != 1<<i || ix.dict.get(p.field, "", p.key.Value, ix.postings) != pid {
			t.Fatalf("enumPids[%d] = %d: posting %+v (field %d)", i, pid, p.key, p.field)
		}
	}
	for _, s := range ix.dict.slots {
		if b, ok := enumBit(s.fld, ix.postings[s.pid].key.Value); s.pid != 0 && ok && ix.enumPids[bits.TrailingZeros32(b)] != s.pid {
			t.Fatalf("posting %d (%+v) not in enumPids", s.pid, ix.postings[s.pid].key)
		}
	}
	if mapped != ix.dict.n {
		t.Fatalf("dict holds %d, counts %d", mapped, ix.dict.n)
	}
	if posted != entries || mapped != inUse {
		t.Fatalf("posted refs %d vs posting entries %d; mapped %d vs postings in use %d",
			posted, entries, mapped, inUse)
	}
	for i, w := range ix.ownerSet {
		if w != 0 {
			t.Fatalf("owner set word %d left at %#x", i, w)
		}
	}
}

func TestPropertyMatchesLinearScan(t *testing.T) {
	// broad 4 checks most predicates; the default checks only those on
	// the small vocabularies' most popular values.
	// maxPosted 1 and 2 stand for the cap on a slot's counter
	// (maxPredicates): past it, the heaviest predicates are checked.
	runs := []struct {
		broad, maxPosted int
		seed             uint64
	}{
		{defaultBroad, maxPredicates, 1}, {defaultBroad, maxPredicates, 2}, {defaultBroad, maxPredicates, 0xf1a7eca5},
		{4, maxPredicates, 1}, {4, maxPredicates, 3},
		{defaultBroad, 1, 4}, {defaultBroad, 2, 5}, {4, 1, 6},
	}
	for _, run := range runs {
		name := fmt.Sprintf("broad=%d/maxPosted=%d/seed=%d", run.broad, run.maxPosted, run.seed)
		t.Run(name, func(t *testing.T) { propertyRun(t, run.seed, run.broad, run.maxPosted) })
	}
}

// propertyRun interleaves random adds and removes with random events and
// checks after each event that the index reports exactly the owners a linear
// scan with Filter.Matches finds.
func propertyRun(t *testing.T, seed uint64, broad, maxPosted int) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ix := New()
	ix.broad, ix.maxPosted = broad, maxPosted
	var subs []liveSub
	var dst []uint32
	events, matched := 0, 0
	check := func() {
		t.Helper()
		ev := randEvent(r)
		dst = ix.Match(ev, dst[:0])
		got := slices.Clone(dst)
		slices.Sort(got)
		want := linearOwners(subs, ev)
		if !slices.Equal(got, want) {
			t.Fatalf("event %+v:\nindex  %v\nlinear %v", ev, got, want)
		}
		events++
		matched += len(want)
	}
	remove := func(i int) {
		ix.Remove(subs[i].id)
		subs[i] = subs[len(subs)-1]
		subs = subs[:len(subs)-1]
	}

	for range 60 {
		for range 150 {
			if len(subs) > 0 && r.IntN(10) < 3 {
				remove(r.IntN(len(subs)))
				continue
			}
			f := randFilter(r)
			owner := uint32(r.IntN(400))
			subs = append(subs, liveSub{id: ix.Add(owner, &f), owner: owner, f: f})
		}
		checkInvariants(t, ix)
		for range 20 {
			check()
		}
	}
	// Guard against vocabularies drifting apart so far that nothing
	// matches and the comparison proves nothing.
	if len(subs) < 2000 || matched < 20*events {
		t.Fatalf("%d live subscriptions, %d owners matched over %d events: the test is too weak",
			len(subs), matched, events)
	}
	checked := 0
	for _, sl := range ix.slots {
		if sl.need&needChecks != 0 {
			checked++
		}
	}
	t.Logf("%d live subscriptions (%d with checked predicates), %.1f owners matched per event",
		len(subs), checked, float64(matched)/float64(events))

	// Mass unsubscribe, as when many sessions drop at once: postings
	// shrink and empty ones are dropped from the maps.
	for len(subs) > 100 {
		remove(r.IntN(len(subs)))
	}
	checkInvariants(t, ix)
	for range 100 {
		check()
	}
	for len(subs) > 0 {
		remove(len(subs) - 1)
	}
	checkInvariants(t, ix)
	if ix.Len() != 0 || ix.dict.n != 0 {
		t.Fatalf("index not empty after removing everything: Len %d", ix.Len())
	}
	check()
}
