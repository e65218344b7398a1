package filterindex

import (
	"math/rand/v2"
	"testing"
)

// TestMatchesOneAgreesWithFilter: evaluating one subscription from the
// index's own records gives Filter.Matches' answer, whichever way the index
// chose to hold it (masked, posted or checked; broad values included).
func TestMatchesOneAgreesWithFilter(t *testing.T) {
	for _, broad := range []int{defaultBroad, 2} {
		r := rand.New(rand.NewPCG(7, uint64(broad)))
		ix := New()
		ix.broad = broad
		filters := make([]Filter, 3000)
		ids := make([]SubID, len(filters))
		for i := range filters {
			filters[i] = randFilter(r)
			filters[i].Normalize()
			ids[i] = ix.Add(uint32(i), &filters[i])
		}
		for range 300 {
			ev := randEvent(r)
			for i := range filters {
				if got, want := ix.MatchesOne(ids[i], ev), filters[i].Matches(ev); got != want {
					t.Fatalf("broad=%d: filter %+v on event %+v: MatchesOne=%v, Matches=%v", broad, filters[i], ev, got, want)
				}
			}
		}
	}
}
