package filterindex

import (
	"math/rand/v2"
	"testing"
)

// TestMatchesOneAgreesWithFilter: evaluating one subscription from the
// index's own records gives Filter.Matches' answer, whichever way the index
// chose to hold it (masked, posted or checked; broad values and predicates
// past the counter's cap included).
func TestMatchesOneAgreesWithFilter(t *testing.T) {
	for _, run := range []struct{ broad, maxPosted int }{{defaultBroad, maxPredicates}, {2, maxPredicates}, {defaultBroad, 1}} {
		broad := run.broad
		r := rand.New(rand.NewPCG(7, uint64(broad*run.maxPosted)))
		ix := New()
		ix.broad, ix.maxPosted = broad, run.maxPosted
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
					t.Fatalf("broad=%d maxPosted=%d: filter %+v on event %+v: MatchesOne=%v, Matches=%v", broad, run.maxPosted, filters[i], ev, got, want)
				}
			}
		}
	}
}
