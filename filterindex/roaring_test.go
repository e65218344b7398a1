package filterindex

// This file keeps the measurement behind the choice of posting list (see
// the package doc): the same index, its postings also held as roaring
// bitmaps of slot numbers, matched both ways. Run it with
//
//	go test -run '^$' -bench Postings -benchmem ./filterindex/

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/flarecast/flarecast/event"
)

// roaringPostings is ix's posting lists as bitmaps, indexed by posting id.
type roaringPostings struct {
	bitmaps []*roaring.Bitmap
	iter    roaring.ManyIntIterator
	buf     [256]uint32
}

func newRoaringPostings(ix *Index) *roaringPostings {
	rp := &roaringPostings{bitmaps: make([]*roaring.Bitmap, len(ix.postings))}
	var slots []uint32
	for pid := range ix.postings {
		slots = slots[:0]
		for _, b := range ix.backs[pid][:len(ix.lists[pid])] {
			slots = append(slots, b.slot)
		}
		bm := roaring.BitmapOf(slots...)
		bm.RunOptimize()
		rp.bitmaps[pid] = bm
	}
	return rp
}

// match is Index.Match walking bitmaps instead of entry slices. A bitmap
// holds slot numbers only, so every hit goes through the slot.
func (rp *roaringPostings) match(ix *Index, ev *event.Event, dst []uint32) []uint32 {
	ix.nextEpoch()
	start := len(dst)
	hits, bits := ix.lookup(ev)
	dst = rp.walk(ix, ev, matchAllPosting, 0, bits, dst)
	for _, h := range hits {
		dst = rp.walk(ix, ev, h.posting, h.once, bits, dst)
	}
	for _, o := range dst[start:] {
		ix.ownerSet[o>>6] = 0
	}
	return dst
}

func (rp *roaringPostings) walk(ix *Index, ev *event.Event, pid uint32, once uint16, bits uint32, dst []uint32) []uint32 {
	ep := ix.epoch
	rp.iter.Initialize(rp.bitmaps[pid])
	for {
		n := rp.iter.NextMany(rp.buf[:])
		if n == 0 {
			return dst
		}
		for _, s := range rp.buf[:n] {
			sl := &ix.slots[s]
			if sl.need > 1 { // counted, or checked
				if sl.epoch != ep {
					sl.epoch, sl.hits = ep, 0
				}
				if sl.hits&once != 0 {
					continue
				}
				sl.hits = (sl.hits | once) + 1
				if sl.hits&^resourceSeen != sl.need&^needChecks {
					continue
				}
			}
			if sl.reject&bits != 0 || sl.need&needChecks != 0 && !ix.verify(s, ev) {
				continue
			}
			o := sl.owner
			if w, b := &ix.ownerSet[o>>6], uint64(1)<<(o&63); *w&b == 0 {
				*w |= b
				dst = append(dst, o)
			}
		}
	}
}

// compareWorkload builds an index with the shape of the mix in
// bench/filterindex_test.go: a few broad subscriptions, then per-resource,
// resource-at-severity, per-incident and team-label ones whose vocabularies
// grow with n, so that an event matches about a hundred.
func compareWorkload(n int) (*Index, []*event.Event) {
	r := rand.New(rand.NewPCG(1, 2))
	resources, incidents, teams := max(n/40, 1), max(n/60, 1), max(n/100, 1)
	str := func(p string, k int) string { return p + strconv.Itoa(r.IntN(k)) }
	ix := New()
	owners := max(n/5, 1)
	for i := range n {
		var f Filter
		switch {
		case i < 3:
		case i < 30:
			f.Severities = []string{event.Severities[r.IntN(5)]}
		case i < 170:
			f.EventTypes = []string{string(event.Types[r.IntN(len(event.Types))])}
			f.Severities = []string{event.Severities[r.IntN(5)]}
		case i%10 < 4:
			f.Resources = []string{str("svc-", resources), str("svc-", resources)}
		case i%10 < 5:
			f.Resources = []string{str("svc-", resources)}
			f.Severities = []string{"P0", "P1"}
		case i%10 < 8:
			f.IncidentIDs = []string{str("INC-", incidents)}
		default:
			f.Labels = []event.Label{{Key: "team", Value: str("team-", teams)}}
			if r.IntN(2) == 0 {
				f.Labels = append(f.Labels, event.Label{Key: "service", Value: str("svc-", resources)})
			}
		}
		f.Normalize()
		ix.Add(uint32(r.IntN(owners)), &f)
	}
	events := make([]*event.Event, 1024)
	for i := range events {
		events[i] = &event.Event{
			Type:       event.Types[r.IntN(len(event.Types))],
			Severity:   event.Severities[r.IntN(5)],
			State:      event.States[r.IntN(len(event.States))],
			IncidentID: str("INC-", incidents),
			Resources:  []string{str("svc-", resources), str("svc-", resources)},
			Labels: []event.Label{
				{Key: "env", Value: []string{"prod", "staging"}[r.IntN(2)]},
				{Key: "service", Value: str("svc-", resources)},
				{Key: "team", Value: str("team-", teams)},
			},
		}
	}
	return ix, events
}

func TestRoaringComparisonAgrees(t *testing.T) {
	ix, events := compareWorkload(20_000)
	rp := newRoaringPostings(ix)
	for _, ev := range events {
		want := ix.Match(ev, nil)
		got := rp.match(ix, ev, nil)
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("roaring walk disagrees with Match:\n%v\n%v", got, want)
		}
	}
}

// BenchmarkPostings compares walking []entry posting lists with walking
// roaring bitmaps of the same postings, and what each takes in memory.
func BenchmarkPostings(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		ix, events := compareWorkload(n)
		var sliceBytes int
		for _, es := range ix.lists {
			sliceBytes += cap(es) * 12
		}
		before := liveHeap()
		rp := newRoaringPostings(ix)
		roaringBytes := liveHeap() - before

		name := fmt.Sprintf("subs=%dK", n/1000)
		b.Run("slice/"+name, func(b *testing.B) {
			dst := make([]uint32, 0, 1024)
			i := 0
			for b.Loop() {
				dst = ix.Match(events[i%len(events)], dst[:0])
				i++
			}
			b.ReportMetric(float64(sliceBytes)/float64(n), "postings-B/sub")
		})
		b.Run("roaring/"+name, func(b *testing.B) {
			dst := make([]uint32, 0, 1024)
			i := 0
			for b.Loop() {
				dst = rp.match(ix, events[i%len(events)], dst[:0])
				i++
			}
			b.ReportMetric(float64(roaringBytes)/float64(n), "postings-B/sub")
		})
		runtime.KeepAlive(rp)
	}
}

func liveHeap() int {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int(ms.HeapAlloc)
}
