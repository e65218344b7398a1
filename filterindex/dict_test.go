package filterindex

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/flarecast/flarecast/event"
)

// valuesOf returns the postings of field fld by value, as read from the dict.
func (ix *Index) valuesOf(fld field) map[string]uint32 {
	m := map[string]uint32{}
	for _, s := range ix.dict.slots {
		if s.pid != 0 && s.fld == fld {
			m[ix.postings[s.pid].key.Value] = s.pid
		}
	}
	return m
}

// labelsOf returns the label postings by key and value, as read from the
// dict; a key without postings is absent.
func (ix *Index) labelsOf() map[string]map[string]uint32 {
	m := map[string]map[string]uint32{}
	for _, s := range ix.dict.slots {
		if s.pid != 0 && s.fld == fieldLabel {
			k := ix.postings[s.pid].key
			if m[k.Key] == nil {
				m[k.Key] = map[string]uint32{}
			}
			m[k.Key][k.Value] = s.pid
		}
	}
	return m
}

// TestDictAgainstMap files and unfiles random keys, short and long, labels
// and values, and checks every lookup against a map.
func TestDictAgainstMap(t *testing.T) {
	type key struct {
		fld  field
		k, v string
	}
	r := rand.New(rand.NewPCG(5, 6))
	d := newDict()
	var postings []posting // only keys are read
	postings = append(postings, posting{})
	want := map[key]uint32{}
	var live []key
	randKey := func() key {
		k := key{fld: field(r.IntN(int(numFields) + 1))}
		n := r.IntN(300)
		if r.IntN(4) == 0 {
			n += 20 // around and past dinline
		}
		k.v = fmt.Sprint("v", n)
		if r.IntN(8) == 0 {
			k.v += strings.Repeat("x", r.IntN(30))
		}
		if k.fld == fieldLabel {
			k.k = fmt.Sprint("key", r.IntN(5))
			if r.IntN(8) == 0 {
				k.k += strings.Repeat("y", r.IntN(20))
			}
		}
		return k
	}
	for step := range 200_000 {
		k := randKey()
		pid, ok := want[k]
		if got := d.get(k.fld, k.k, k.v, postings); got != pid {
			t.Fatalf("step %d: get %+v = %d, want %d", step, k, got, pid)
		}
		switch {
		case !ok && r.IntN(3) != 0:
			pid = uint32(len(postings))
			postings = append(postings, posting{key: event.Label{Key: k.k, Value: k.v}, field: k.fld})
			d.put(k.fld, k.k, k.v, pid)
			want[k] = pid
			live = append(live, k)
		case len(live) > 0 && r.IntN(2) == 0:
			i := r.IntN(len(live))
			k := live[i]
			live[i] = live[len(live)-1]
			live = live[:len(live)-1]
			d.remove(k.fld, k.k, k.v, want[k])
			delete(want, k)
		}
		if d.n != len(want) {
			t.Fatalf("step %d: dict holds %d, want %d", step, d.n, len(want))
		}
	}
	for k, pid := range want {
		if got := d.get(k.fld, k.k, k.v, postings); got != pid {
			t.Fatalf("get %+v = %d, want %d", k, got, pid)
		}
	}
	perField := [numFields + 1]int{}
	for k := range want {
		perField[k.fld]++
	}
	if perField != d.perField {
		t.Fatalf("perField %v, want %v", d.perField, perField)
	}
}

// TestPairedWithManyHits matches paired subscriptions against events whose
// values select more postings than hasHit scans, so that it searches them
// sorted.
func TestPairedWithManyHits(t *testing.T) {
	ix := New()
	var subs []Filter
	for i := range 40 {
		f := Filter{Labels: []event.Label{
			{Key: fmt.Sprint("k", i), Value: "v"},
			{Key: "team", Value: fmt.Sprint("t", i%7)},
		}}
		f.Normalize()
		ix.Add(uint32(i), &f)
		subs = append(subs, f)
	}
	for j := range 7 {
		ev := &event.Event{}
		for i := range 30 {
			ev.Labels = append(ev.Labels, event.Label{Key: fmt.Sprint("k", i), Value: "v"})
		}
		ev.Labels = append(ev.Labels, event.Label{Key: "team", Value: fmt.Sprint("t", j)})
		slices.SortFunc(ev.Labels, func(a, b event.Label) int { return strings.Compare(a.Key, b.Key) })
		got := ix.Match(ev, nil)
		if len(ix.hitIDs) <= hitScan {
			t.Fatalf("only %d hits", len(ix.hitIDs))
		}
		var want []uint32
		for i := range subs {
			if subs[i].Matches(ev) {
				want = append(want, uint32(i))
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("team t%d: Match = %v, want %v", j, got, want)
		}
	}
	checkInvariants(t, ix)
}
