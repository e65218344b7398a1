package filterindex

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/flarecast/flarecast/event"
)

// owners returns the sorted owners ix reports for ev, failing on duplicates.
func owners(t *testing.T, ix *Index, ev *event.Event) []uint32 {
	t.Helper()
	got := ix.Match(ev, nil)
	slices.Sort(got)
	if len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Fatalf("Match reported an owner twice: %v", got)
	}
	return got
}

func TestIndexSingleFilter(t *testing.T) {
	for _, c := range matchCases() {
		ev := c.ev
		if ev == nil {
			ev = sampleEvent()
		}
		f := c.f.Clone()
		f.Normalize()
		ix := New()
		ix.Add(7, &f)
		got := owners(t, ix, ev)
		if c.want != (len(got) == 1 && got[0] == 7) || len(got) > 1 {
			t.Errorf("%s: Match = %v, want match=%v", c.name, got, c.want)
		}
	}
}

// TestIndexAllCasesTogether puts every case's filter in one index, each under
// its own owner, so that postings are shared between subscriptions.
func TestIndexAllCasesTogether(t *testing.T) {
	cases := matchCases()
	ix := New()
	for i, c := range cases {
		f := c.f.Clone()
		f.Normalize()
		ix.Add(uint32(i), &f)
	}
	for _, probe := range cases {
		ev := probe.ev
		if ev == nil {
			ev = sampleEvent()
		}
		var want []uint32
		for i, c := range cases {
			if c.f.Matches(ev) {
				want = append(want, uint32(i))
			}
		}
		if got := owners(t, ix, ev); !slices.Equal(got, want) {
			t.Errorf("event of %q: Match = %v, want %v", probe.name, got, want)
		}
	}
}

func TestResourcesCountOnce(t *testing.T) {
	// With two fields, a double-counted resource would reach k = 2 on its
	// own and match although the severity does not.
	ix := New()
	ix.Add(1, &Filter{Resources: []string{"a", "b"}, Severities: []string{"P0"}})
	ev := &event.Event{Severity: "P3", Resources: []string{"a", "b", "a"}}
	if got := owners(t, ix, ev); len(got) != 0 {
		t.Fatalf("Match = %v, want none", got)
	}
	ev.Severity = "P0"
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{1}) {
		t.Fatalf("Match = %v, want [1]", got)
	}
}

func TestUnnormalizedDuplicatesCountOnce(t *testing.T) {
	ix := New()
	ix.Add(1, &Filter{Severities: []string{"P1", "P1"}, States: []string{"Closed"}})
	ev := &event.Event{Severity: "P1", State: "Detected"}
	if got := owners(t, ix, ev); len(got) != 0 {
		t.Fatalf("Match = %v, want none", got)
	}
}

func TestEnumeratedFieldsMasked(t *testing.T) {
	ix := New()
	ix.Add(1, &Filter{Resources: []string{"db-1"}, Severities: []string{"P0", "P1"}})
	ix.Add(2, &Filter{EventTypes: []string{"escalated"}, Severities: []string{"P1"}, States: []string{"Triaged", "Investigating"}})
	ix.Add(3, &Filter{Severities: []string{"P1"}})
	ix.Add(4, &Filter{IncidentIDs: []string{"INC-1"}, EventTypes: []string{"incident_updated"}})
	ix.Add(5, &Filter{IncidentIDs: []string{"INC-1"}, EventTypes: []string{"escalated"}})
	ev := sampleEvent() // incident_updated, P1, Investigating, db-1, INC-1
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{1, 3, 4}) {
		t.Fatalf("Match = %v, want [1 3 4]", got)
	}
	ev.Type = event.Escalated
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{1, 2, 3, 5}) {
		t.Fatalf("escalated: Match = %v, want [1 2 3 5]", got)
	}
	ev.Severity = "P3"
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{5}) {
		t.Fatalf("P3: Match = %v, want [5]", got)
	}
	ev.Severity = "" // missing: no restricted subscription may match
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{5}) {
		t.Fatalf("no severity: Match = %v, want [5]", got)
	}
	ev.Type = "not_a_type"
	if got := owners(t, ix, ev); len(got) != 0 {
		t.Fatalf("unknown type: Match = %v, want none", got)
	}

	// The enumerated-only subscription is posted under its narrowest field
	// (one of 14 types), not its severity or state.
	if _, ok := ix.valuesOf(fieldType)["escalated"]; !ok || len(ix.valuesOf(fieldSeverity)) != 1 || len(ix.valuesOf(fieldState)) != 0 {
		t.Fatalf("postings: types %v, severities %v, states %v",
			ix.valuesOf(fieldType), ix.valuesOf(fieldSeverity), ix.valuesOf(fieldState))
	}
}

func TestEnumeratedValuesOutsideVocabulary(t *testing.T) {
	ix := New()
	ix.Add(1, &Filter{EventTypes: []string{"custom_type", "escalated"}, Severities: []string{"P1"}})
	ix.Add(2, &Filter{Severities: []string{"P9"}})
	ix.Add(3, &Filter{States: []string{""}}) // can never match
	ev := &event.Event{Type: "custom_type", Severity: "P1"}
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{1}) {
		t.Fatalf("Match = %v, want [1]", got)
	}
	ev.Type, ev.Severity = event.Escalated, "P9"
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{2}) {
		t.Fatalf("Match = %v, want [2]", got)
	}
}

func TestBroadValuesAreChecked(t *testing.T) {
	ix := New()
	ix.broad = 3
	prod := event.Label{Key: "env", Value: "prod"}
	var ids []SubID
	for team := range uint32(10) {
		ids = append(ids, ix.Add(team, &Filter{Labels: []event.Label{prod, {Key: "team", Value: fmt.Sprint("t", team)}}}))
		ids = append(ids, ix.Add(100+team, &Filter{Sources: []string{"datadog"}, Resources: []string{fmt.Sprint("r", team)}}))
	}
	ix.Add(200, &Filter{Labels: []event.Label{prod}}) // nothing else to post under
	if n := len(ix.lists[ix.labelsOf()["env"]["prod"]]); n > 3+1 {
		t.Fatalf("env=prod posting has %d entries, want at most broad+1", n)
	}
	if n := len(ix.lists[ix.valuesOf(fieldSource)["datadog"]]); n > 3 {
		t.Fatalf("datadog posting has %d entries, want at most broad", n)
	}
	checkInvariants(t, ix)

	ev := &event.Event{
		Source: "datadog", Resources: []string{"r7"},
		Labels: []event.Label{prod, {Key: "team", Value: "t7"}},
	}
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{7, 107, 200}) {
		t.Fatalf("Match = %v, want [7 107 200]", got)
	}
	ev.Source, ev.Labels[0].Value = "grafana", "staging"
	if got := owners(t, ix, ev); len(got) != 0 {
		t.Fatalf("checked predicates ignored: Match = %v", got)
	}
	for _, id := range ids {
		ix.Remove(id)
	}
	checkInvariants(t, ix)
	if len(ix.valuesOf(fieldSource)) != 0 || len(ix.labelsOf()["team"]) != 0 || len(ix.labelsOf()["env"]) != 1 {
		t.Fatalf("postings left behind: sources %v, labels %v", ix.valuesOf(fieldSource), ix.labelsOf())
	}
}

func TestDedupePerOwner(t *testing.T) {
	ix := New()
	ix.Add(3, &Filter{})
	ix.Add(3, &Filter{Severities: []string{"P1"}})
	ix.Add(3, &Filter{Resources: []string{"db-1", "api-2"}})
	ix.Add(3, &Filter{Labels: []event.Label{{Key: "team", Value: "core"}}})
	ix.Add(4, &Filter{Severities: []string{"P2"}})
	ix.Add(5, &Filter{IncidentIDs: []string{"INC-1"}})
	if got := owners(t, ix, sampleEvent()); !slices.Equal(got, []uint32{3, 5}) {
		t.Fatalf("Match = %v, want [3 5]", got)
	}
	// Owners are reported again by the next event.
	if got := owners(t, ix, sampleEvent()); !slices.Equal(got, []uint32{3, 5}) {
		t.Fatalf("second Match = %v, want [3 5]", got)
	}
}

func TestMatchAppendsToDst(t *testing.T) {
	ix := New()
	ix.Add(9, &Filter{})
	got := ix.Match(sampleEvent(), []uint32{42})
	if !slices.Equal(got, []uint32{42, 9}) {
		t.Fatalf("Match = %v, want [42 9]", got)
	}
}

func TestRemove(t *testing.T) {
	ix := New()
	a := ix.Add(1, &Filter{Severities: []string{"P1"}})
	b := ix.Add(2, &Filter{Severities: []string{"P1"}, Resources: []string{"db-1"}})
	c := ix.Add(3, &Filter{})
	d := ix.Add(4, &Filter{Labels: []event.Label{{Key: "env", Value: "prod"}}})
	ev := sampleEvent()
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{1, 2, 3, 4}) {
		t.Fatalf("Match = %v", got)
	}
	ix.Remove(a)
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{2, 3, 4}) {
		t.Fatalf("after Remove(a): %v", got)
	}
	ix.Remove(c)
	ix.Remove(d)
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{2}) {
		t.Fatalf("after Remove(c, d): %v", got)
	}
	ix.Remove(b)
	if got := owners(t, ix, ev); len(got) != 0 || ix.Len() != 0 {
		t.Fatalf("after removing all: %v, Len %d", got, ix.Len())
	}
	// Empty postings are gone from the dict, so churn does not leak.
	for fld := range numFields {
		if m := ix.valuesOf(fld); len(m) != 0 {
			t.Errorf("field %d still has %d values", fld, len(m))
		}
	}
	if len(ix.labelsOf()) != 0 {
		t.Errorf("%d label postings left", len(ix.labelsOf()))
	}
}

func TestSlotReuseAndReadd(t *testing.T) {
	ix := New()
	f := Filter{IncidentIDs: []string{"INC-1"}}
	a := ix.Add(1, &f)
	ix.Add(2, &Filter{Severities: []string{"P1"}})
	ix.Remove(a)
	b := ix.Add(5, &Filter{Severities: []string{"P4"}})
	if b != a {
		t.Fatalf("freed slot %d not reused, got %d", a, b)
	}
	ev := sampleEvent()
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{2}) {
		t.Fatalf("reused slot kept old filter: %v", got)
	}
	// Re-adding the same filter for the same owner works, and a second
	// subscription with an identical filter is independent of the first.
	c := ix.Add(1, &f)
	d := ix.Add(1, &f)
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{1, 2}) {
		t.Fatalf("after re-add: %v", got)
	}
	ix.Remove(c)
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{1, 2}) {
		t.Fatalf("after removing one of two identical subscriptions: %v", got)
	}
	ix.Remove(d)
	if got := owners(t, ix, ev); !slices.Equal(got, []uint32{2}) {
		t.Fatalf("after removing both: %v", got)
	}
	if ix.Len() != 2 {
		t.Fatalf("Len = %d, want 2", ix.Len())
	}
}

func TestRemoveNotLivePanics(t *testing.T) {
	ix := New()
	id := ix.Add(1, &Filter{})
	ix.Remove(id)
	for _, bad := range []SubID{id, 99} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Remove(%d) did not panic", bad)
				}
			}()
			ix.Remove(bad)
		}()
	}
}

func TestEpochWrap(t *testing.T) {
	ix := New()
	ix.Add(1, &Filter{Severities: []string{"P1"}, States: []string{"Investigating"}})
	ix.Add(2, &Filter{})
	ev := sampleEvent()
	miss := &event.Event{Severity: "P1"} // one hit of two
	ix.epoch = math.MaxUint32 - 2
	for range 5 {
		if got := owners(t, ix, miss); !slices.Equal(got, []uint32{2}) {
			t.Fatalf("epoch %d: partial match reported: %v", ix.epoch, got)
		}
		if got := owners(t, ix, ev); !slices.Equal(got, []uint32{1, 2}) {
			t.Fatalf("epoch %d: Match = %v", ix.epoch, got)
		}
	}
	if ix.epoch == 0 || ix.epoch > 10 {
		t.Fatalf("epoch did not wrap cleanly: %d", ix.epoch)
	}
}

func TestMatchDoesNotAllocate(t *testing.T) {
	ix := New()
	for o := range uint32(200) {
		ix.Add(o, &Filter{Severities: []string{"P1"}})
		ix.Add(o, &Filter{Resources: []string{"db-1", "x"}, Labels: []event.Label{{Key: "env", Value: "prod"}}})
	}
	ix.Add(1000, &Filter{})
	ev := sampleEvent()
	dst := make([]uint32, 0, 1024)
	allocs := testing.AllocsPerRun(100, func() { dst = ix.Match(ev, dst[:0]) })
	if allocs != 0 {
		t.Fatalf("Match allocates %.1f times per call", allocs)
	}
	if len(dst) != 201 {
		t.Fatalf("matched %d owners, want 201", len(dst))
	}
}
