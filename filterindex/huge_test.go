package filterindex

import (
	"fmt"
	"slices"
	"testing"

	"github.com/flarecast/flarecast/event"
)

// TestHugeFilters: filters listing tens of thousands of values, and more
// label pairs than a slot can count (maxPredicates), are added without a
// panic, match exactly the events they should, agree with MatchesOne, and
// leave nothing behind when removed. (Over 32,767 label pairs used to panic
// Add, and so the dispatcher.)
func TestHugeFilters(t *testing.T) {
	const nValues = 40_000
	const nLabels = maxPredicates + 100 // past the counter's range
	ids := make([]string, nValues)
	res := make([]string, nValues)
	for i := range nValues {
		ids[i] = fmt.Sprintf("INC-%05d", i)
		res[i] = fmt.Sprintf("res-%05d", i)
	}
	labels := make([]event.Label, nLabels) // sorted by key
	for i := range labels {
		labels[i] = event.Label{Key: fmt.Sprintf("k%05d", i), Value: "v"}
	}
	filters := []Filter{
		1: {IncidentIDs: ids},
		2: {Labels: labels},
		3: {Severities: []string{"P1"}, IncidentIDs: ids[:nValues/2], Resources: res, Labels: labels[:nLabels/2]},
		4: {Labels: labels[nLabels-3:]}, // shares the postings 2 is checked on
		5: {IncidentIDs: ids[nValues-1:]},
		6: {Labels: slices.Concat(labels, []event.Label{{Key: "zz", Value: "v"}})}, // never fully satisfied
	}
	ix := New()
	subs := make([]SubID, len(filters))
	for o := 1; o < len(filters); o++ {
		f := filters[o].Clone()
		f.Normalize()
		subs[o] = ix.Add(uint32(o), &f)
	}
	checkInvariants(t, ix)
	for _, o := range []int{2, 6} {
		if sl := ix.slots[subs[o]]; sl.need != maxPredicates|needChecks {
			t.Fatalf("filter %d: need %#x, want the cap with checks", o, sl.need)
		}
	}

	allLabels := func(ls []event.Label) *event.Event {
		return &event.Event{Type: event.IncidentUpdated, Severity: "P1", IncidentID: ids[7], Resources: []string{res[nValues-1]}, Labels: ls}
	}
	noSev := allLabels(labels)
	noSev.Severity = "P2"
	noInc := allLabels(labels)
	noInc.IncidentID = ""
	cases := []struct {
		name string
		ev   *event.Event
		want []uint32
	}{
		{"first id", &event.Event{Type: event.IncidentUpdated, IncidentID: ids[0]}, []uint32{1}},
		{"last id", &event.Event{Type: event.IncidentUpdated, IncidentID: ids[nValues-1]}, []uint32{1, 5}},
		{"unlisted id", &event.Event{Type: event.IncidentUpdated, IncidentID: "INC-x"}, nil},
		{"every label", allLabels(labels), []uint32{1, 2, 3, 4}},
		{"all but a checked label", allLabels(labels[:nLabels-1]), []uint32{1, 3}},
		{"all but a posted label", allLabels(labels[1:]), []uint32{1, 4}},
		{"other severity", noSev, []uint32{1, 2, 4}},
		{"no incident", noInc, []uint32{2, 4}},
	}
	for _, c := range cases {
		got := owners(t, ix, c.ev)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: Match = %v, want %v", c.name, got, c.want)
		}
		// The reference, with the event's labels in a map: Filter.Matches
		// would take n² on these.
		evLabels := map[string]string{}
		for _, l := range c.ev.Labels {
			evLabels[l.Key] = l.Value
		}
		for o := 1; o < len(filters); o++ {
			want := refMatches(&filters[o], c.ev, evLabels)
			if want != slices.Contains(c.want, uint32(o)) {
				t.Fatalf("%s: the reference says filter %d matches = %v, the case disagrees", c.name, o, want)
			}
			if len(c.ev.Labels) < 10 || len(filters[o].Labels) < 10 {
				if got := ix.MatchesOne(subs[o], c.ev); got != want {
					t.Errorf("%s: MatchesOne(filter %d) = %v, want %v", c.name, o, got, want)
				}
			}
		}
	}

	// Remove each, with the others' entries moved into the holes it
	// leaves, then add them back and remove them in another order.
	for o := 1; o < len(filters); o++ {
		ix.Remove(subs[o])
		checkInvariants(t, ix)
	}
	for o := 1; o < len(filters); o++ {
		f := filters[o].Clone()
		f.Normalize()
		subs[o] = ix.Add(uint32(o), &f)
	}
	for o := len(filters) - 1; o > 0; o-- {
		ix.Remove(subs[o])
	}
	checkInvariants(t, ix)
	if ix.Len() != 0 || len(ix.labelsOf()) != 0 || len(ix.valuesOf(fieldIncident)) != 0 || len(ix.valuesOf(fieldResource)) != 0 {
		t.Fatalf("index not empty after removing everything")
	}
}

// refMatches is Filter.Matches with the event's labels looked up in a map.
func refMatches(f *Filter, ev *event.Event, evLabels map[string]string) bool {
	g := *f
	g.Labels = nil
	if !g.Matches(ev) {
		return false
	}
	for _, l := range f.Labels {
		if v, ok := evLabels[l.Key]; !ok || v != l.Value {
			return false
		}
	}
	return true
}

// BenchmarkRemoveHugeFilter removes, and adds back, a subscription listing
// n incident ids that another subscription lists after it, so that every
// hole it leaves is filled by the other's entry. Fixing each moved entry's ref used
// to search the other's n refs: quadratic, 1.2 s at n = 40,000.
func BenchmarkRemoveHugeFilter(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 40_000} {
		b.Run(fmt.Sprintf("values=%d", n), func(b *testing.B) {
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("INC-%06d", i)
			}
			f := Filter{IncidentIDs: ids}
			ix := New()
			// Remove the older of the two, whose entries are never
			// the last of their lists, and add it back.
			older, newer := ix.Add(1, &f), ix.Add(2, &f)
			for b.Loop() {
				ix.Remove(older)
				older, newer = newer, ix.Add(1, &f)
			}
		})
	}
}
