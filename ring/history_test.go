package ring

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// historyIDs returns the ids After(0) yields, checking that each value is
// ten times its id, as the tests store them.
func historyIDs(t *testing.T, h *History[uint64]) []uint64 {
	t.Helper()
	var out []uint64
	h.After(0, func(id uint64, v uint64) bool {
		if v != id*10 {
			t.Fatalf("id %d holds value %d, want %d", id, v, id*10)
		}
		out = append(out, id)
		return true
	})
	return out
}

func seqIDs(from, to uint64) []uint64 {
	var out []uint64
	for id := from; id <= to; id++ {
		out = append(out, id)
	}
	return out
}

func TestHistoryEmpty(t *testing.T) {
	h := NewHistory[uint64](10, 0)
	if _, ok := h.First(); ok {
		t.Error("First on empty history")
	}
	if _, ok := h.Last(); ok {
		t.Error("Last on empty history")
	}
	if _, ok := h.Get(1); ok {
		t.Error("Get on empty history")
	}
	h.After(0, func(uint64, uint64) bool { t.Error("After on empty history"); return true })
	if h.Len() != 0 || h.Bytes() != 0 {
		t.Error("empty history has size")
	}
}

func TestHistoryCountBound(t *testing.T) {
	h := NewHistory[uint64](100, 0)
	for id := uint64(1); id <= 1000; id++ {
		h.Append(id, id*10, 3)
		if want := min(int(id), 100); h.Len() != want {
			t.Fatalf("after %d appends Len = %d, want %d", id, h.Len(), want)
		}
	}
	if first, _ := h.First(); first != 901 {
		t.Fatalf("First = %d, want 901", first)
	}
	if last, _ := h.Last(); last != 1000 {
		t.Fatalf("Last = %d, want 1000", last)
	}
	if h.Bytes() != 300 {
		t.Fatalf("Bytes = %d, want 300", h.Bytes())
	}
	if len(h.buf) != 100 {
		t.Fatalf("backing array grew to %d, want exactly maxEntries", len(h.buf))
	}
	if got := historyIDs(t, h); !slices.Equal(got, seqIDs(901, 1000)) {
		t.Fatalf("ids %v", got)
	}
}

func TestHistoryGrowsLazily(t *testing.T) {
	h := NewHistory[uint64](100_000, 0)
	if len(h.buf) != 0 {
		t.Fatalf("new history allocated %d slots", len(h.buf))
	}
	for id := uint64(1); id <= 65; id++ {
		h.Append(id, id*10, 1)
	}
	if len(h.buf) != 2*minHistoryBuf {
		t.Fatalf("after 65 appends backing array is %d, want %d", len(h.buf), 2*minHistoryBuf)
	}
}

func TestHistoryByteBound(t *testing.T) {
	h := NewHistory[uint64](1000, 100)
	for id := uint64(1); id <= 10; id++ {
		h.Append(id, id*10, 10)
	}
	if h.Len() != 10 || h.Bytes() != 100 {
		t.Fatalf("Len %d Bytes %d, want 10 and 100", h.Len(), h.Bytes())
	}
	h.Append(11, 110, 25) // evicts 1, 2, 3 (30 bytes) to fit 25 more
	if got := historyIDs(t, h); !slices.Equal(got, seqIDs(4, 11)) {
		t.Fatalf("ids %v, want 4..11", got)
	}
	if h.Bytes() != 95 {
		t.Fatalf("Bytes = %d, want 95", h.Bytes())
	}
	// An entry larger than the whole budget is kept alone.
	h.Append(12, 120, 500)
	if got := historyIDs(t, h); !slices.Equal(got, []uint64{12}) {
		t.Fatalf("ids %v, want [12]", got)
	}
	if h.Bytes() != 500 {
		t.Fatalf("Bytes = %d, want 500", h.Bytes())
	}
	// ... and evicted by the next one.
	h.Append(13, 130, 1)
	if got := historyIDs(t, h); !slices.Equal(got, []uint64{13}) {
		t.Fatalf("ids %v, want [13]", got)
	}
}

func TestHistoryEvictionZeroes(t *testing.T) {
	h := NewHistory[*int](4, 0)
	for id := uint64(1); id <= 10; id++ {
		v := int(id)
		h.Append(id, &v, 1)
	}
	live := 0
	for i := range h.buf {
		if h.buf[i].v != nil {
			live++
		}
	}
	if live != 4 {
		t.Fatalf("%d slots reference values, want the 4 held", live)
	}
	h2 := NewHistory[*int](10, 2)
	for id := uint64(1); id <= 5; id++ {
		v := int(id)
		h2.Append(id, &v, 1)
	}
	for i := range h2.buf {
		e := h2.buf[i]
		if e.v != nil && e.id < 4 {
			t.Fatalf("evicted id %d still referenced", e.id)
		}
	}
}

func TestHistoryWraparound(t *testing.T) {
	h := NewHistory[uint64](7, 0)
	for id := uint64(1); id <= 25; id++ { // wraps the 7-slot array several times
		h.Append(id, id*10, 1)
		first := uint64(max(1, int(id)-6))
		for probe := uint64(0); probe <= id+1; probe++ {
			v, ok := h.Get(probe)
			wantOK := probe >= first && probe <= id
			if ok != wantOK || (ok && v != probe*10) {
				t.Fatalf("after %d: Get(%d) = %d, %v", id, probe, v, ok)
			}
		}
		for after := uint64(0); after <= id+1; after++ {
			var got []uint64
			h.After(after, func(id uint64, _ uint64) bool { got = append(got, id); return true })
			want := seqIDs(max(first, after+1), id)
			if !slices.Equal(got, want) {
				t.Fatalf("after %d appends, After(%d) = %v, want %v", id, after, got, want)
			}
		}
	}
}

func TestHistoryNonContiguous(t *testing.T) {
	h := NewHistory[uint64](5, 0)
	appended := []uint64{2, 3, 7, 8, 20, 21, 22, 40, 41, 1000}
	for _, id := range appended {
		h.Append(id, id*10, 1)
	}
	held := []uint64{21, 22, 40, 41, 1000}
	if got := historyIDs(t, h); !slices.Equal(got, held) {
		t.Fatalf("ids %v, want %v", got, held)
	}
	for probe := uint64(0); probe <= 1001; probe++ {
		v, ok := h.Get(probe)
		wantOK := slices.Contains(held, probe)
		if ok != wantOK || (ok && v != probe*10) {
			t.Fatalf("Get(%d) = %d, %v", probe, v, ok)
		}
		var got []uint64
		h.After(probe, func(id uint64, _ uint64) bool { got = append(got, id); return true })
		var want []uint64
		for _, id := range held {
			if id > probe {
				want = append(want, id)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("After(%d) = %v, want %v", probe, got, want)
		}
	}
}

func TestHistoryAfterStops(t *testing.T) {
	h := NewHistory[uint64](10, 0)
	for id := uint64(1); id <= 10; id++ {
		h.Append(id, id*10, 1)
	}
	var got []uint64
	h.After(3, func(id uint64, _ uint64) bool {
		got = append(got, id)
		return len(got) < 3
	})
	if !slices.Equal(got, []uint64{4, 5, 6}) {
		t.Fatalf("got %v, want [4 5 6]", got)
	}
	h.After(^uint64(0), func(uint64, uint64) bool { t.Fatal("After(max) yielded"); return true })
}

func TestHistoryDisabled(t *testing.T) {
	h := NewHistory[uint64](0, 0)
	h.Append(1, 10, 1)
	if h.Len() != 0 {
		t.Fatalf("history with maxEntries 0 holds %d", h.Len())
	}
}

func TestHistoryAppendPanics(t *testing.T) {
	h := NewHistory[uint64](10, 0)
	h.Append(5, 50, 1)
	for name, f := range map[string]func(){
		"same id":       func() { h.Append(5, 50, 1) },
		"smaller id":    func() { h.Append(4, 40, 1) },
		"negative size": func() { h.Append(6, 60, -1) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: Append did not panic", name)
				}
			}()
			f()
		}()
	}
}

// TestHistoryModel compares History with a plain slice under random ids,
// sizes and bounds, which also exercises growing the backing array while the
// circle is wrapped (byte evictions move the head before the array is full).
func TestHistoryModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	type entry struct {
		id   uint64
		size int
	}
	for round := range 50 {
		maxEntries := 1 + rng.IntN(300)
		maxBytes := int64(rng.IntN(2000)) // 0: no byte bound
		h := NewHistory[uint64](maxEntries, maxBytes)
		var model []entry
		id := uint64(rng.IntN(5))
		for range 2000 {
			id += 1 + uint64(rng.IntN(3)/2)*uint64(rng.IntN(10)) // mostly contiguous
			size := rng.IntN(100)
			h.Append(id, id*10, size)

			model = append(model, entry{id, size})
			var bytes int64
			for _, e := range model {
				bytes += int64(e.size)
			}
			for len(model) > maxEntries || (maxBytes > 0 && bytes > maxBytes && len(model) > 1) {
				bytes -= int64(model[0].size)
				model = model[1:]
			}

			if h.Len() != len(model) || h.Bytes() != bytes {
				t.Fatalf("round %d id %d: Len %d Bytes %d, want %d %d", round, id, h.Len(), h.Bytes(), len(model), bytes)
			}
			if first, _ := h.First(); first != model[0].id {
				t.Fatalf("round %d: First %d, want %d", round, first, model[0].id)
			}
			if last, _ := h.Last(); last != id {
				t.Fatalf("round %d: Last %d, want %d", round, last, id)
			}
			probe := model[0].id + uint64(rng.IntN(int(id-model[0].id)+2)) - 1
			_, ok := h.Get(probe)
			wantOK := slices.ContainsFunc(model, func(e entry) bool { return e.id == probe })
			if ok != wantOK {
				t.Fatalf("round %d: Get(%d) found=%v, want %v", round, probe, ok, wantOK)
			}
			var got, want []uint64
			h.After(probe, func(id uint64, _ uint64) bool { got = append(got, id); return true })
			for _, e := range model {
				if e.id > probe {
					want = append(want, e.id)
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("round %d: After(%d) = %v, want %v", round, probe, got, want)
			}
		}
	}
}

func TestHistoryGrowWhileWrapped(t *testing.T) {
	h := NewHistory[uint64](1000, 100)
	id := uint64(0)
	for range minHistoryBuf - 1 {
		id++
		h.Append(id, id*10, 1)
	}
	id++
	h.Append(id, id*10, 50) // 113 bytes: evicts the 13 oldest, head moves
	for h.Len() < minHistoryBuf {
		id++
		h.Append(id, id*10, 0) // fills the array with the circle wrapped
	}
	if h.head == 0 || len(h.buf) != minHistoryBuf {
		t.Fatalf("setup: head %d, array %d", h.head, len(h.buf))
	}
	id++
	h.Append(id, id*10, 0) // grows
	if len(h.buf) != 2*minHistoryBuf {
		t.Fatalf("array %d after growth", len(h.buf))
	}
	if got := historyIDs(t, h); !slices.Equal(got, seqIDs(14, id)) {
		t.Fatalf("ids %v, want 14..%d", got, id)
	}
}

// TestHistoryGrowCountsAgainstTheBound: bytes added to an entry after it
// was appended (a compressed copy) count against maxBytes once trimmed, and
// Grow itself evicts nothing, so an After callback may call it.
func TestHistoryGrowCountsAgainstTheBound(t *testing.T) {
	h := NewHistory[int](100, 1000)
	for id := uint64(1); id <= 4; id++ {
		h.Append(id, int(id), 200)
	}
	if h.Bytes() != 800 || h.Len() != 4 {
		t.Fatalf("after appends: %d bytes, %d entries; want 800, 4", h.Bytes(), h.Len())
	}
	seen := 0
	h.After(0, func(id uint64, _ int) bool {
		h.Grow(id, 150) // 4×350 = 1400 > 1000, but no eviction while iterating
		seen++
		return true
	})
	if seen != 4 || h.Len() != 4 || h.Bytes() != 1400 {
		t.Fatalf("during After: seen %d, %d entries, %d bytes; want 4, 4, 1400", seen, h.Len(), h.Bytes())
	}
	h.Grow(99, 1000) // not held: nothing changes
	h.Trim()
	if first, _ := h.First(); h.Len() != 2 || h.Bytes() != 700 || first != 3 {
		t.Fatalf("after Trim: %d entries from %d, %d bytes; want 2 from 3, 700", h.Len(), first, h.Bytes())
	}
}
