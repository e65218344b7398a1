package bench

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
)

// The subscription mix. Broad subscriptions (dashboards, on-call screens)
// come in fixed numbers, as there are only so many people watching
// everything; narrow ones (a service's owners, an incident's page, a team)
// grow with the deployment, and so do their vocabularies, so that each
// event matches about 100 subscriptions at every size.
const (
	mixMatchAll     = 3   // no filter
	mixSeverityOnly = 25  // one or two severities
	mixTypeSeverity = 140 // a few types at given severities
	mixProdUrgent   = 20  // label env=prod, severity P0
	mixBroad        = mixMatchAll + mixSeverityOnly + mixTypeSeverity + mixProdUrgent

	// Shares of the narrow rest, in percent.
	pctResource         = 35 // 1-3 resources
	pctResourceSeverity = 10 // 1-2 resources at P0/P1 ("page me for my service")
	pctIncident         = 35 // one incident, a third of them only some event types
	// the remaining 20%: team label, half of them with a service label too

	subsPerResource = 30 // how many resource subscriptions list one resource
	subsPerIncident = 20 // viewers of one incident page
	subsPerTeam     = 10
	subsPerOwner    = 5 // owners are drawn uniformly, so some have many more

	eventsPerWorkload = 4096
)

var sources = []string{"pagerduty", "datadog", "grafana", "prometheus", "sentry"}

// workload is a set of subscriptions and a stream of events to match.
type workload struct {
	filters []filterindex.Filter
	owners  []uint32
	events  []*event.Event
	nOwners int
}

// id makes a fresh string, as a decoded message would: no two filters share
// the bytes of their values.
func id(prefix string, n int) string { return prefix + strconv.Itoa(n) }

// newWorkload builds n subscriptions of the mix above and the events to
// match against them. With broadLabel, the label subscriptions that have a
// second label ask for env=prod, which half the events carry, instead of a
// service: the case plain counting handles worst (see
// BenchmarkFilterIndexBroadLabel).
func newWorkload(n int, seed uint64, broadLabel bool) *workload {
	r := rand.New(rand.NewPCG(seed, 0xf1a7ec))
	narrow := max(n-mixBroad, 0)
	nRes := narrow * pctResource / 100
	nResSev := narrow * pctResourceSeverity / 100
	nInc := narrow * pctIncident / 100
	nLab := narrow - nRes - nResSev - nInc
	resources := max((nRes*2+nResSev*3/2)/subsPerResource, 1)
	incidents := max(nInc/subsPerIncident, 1)
	teams := max(nLab/subsPerTeam, 1)
	services := max(nLab/4, 1)

	w := &workload{nOwners: max(n/subsPerOwner, 1)}
	typ := func() string { return string(event.Types[r.IntN(len(event.Types))]) }
	sev := func() string { return event.Severities[r.IntN(len(event.Severities))] }
	add := func(f filterindex.Filter) {
		f.Normalize()
		w.filters = append(w.filters, f)
		w.owners = append(w.owners, uint32(r.IntN(w.nOwners)))
	}
	some := func(k int, gen func() string) []string {
		out := make([]string, k)
		for i := range out {
			out[i] = gen()
		}
		return out
	}
	res := func() string { return id("svc-", r.IntN(resources)) }

	for i := 0; i < mixBroad && len(w.filters) < n; i++ {
		switch {
		case i < mixMatchAll:
			add(filterindex.Filter{})
		case i < mixMatchAll+mixSeverityOnly:
			add(filterindex.Filter{Severities: some(1+r.IntN(2), sev)})
		case i < mixMatchAll+mixSeverityOnly+mixTypeSeverity:
			add(filterindex.Filter{EventTypes: some(1+r.IntN(3), typ), Severities: some(1+r.IntN(2), sev)})
		default:
			add(filterindex.Filter{Severities: []string{"P0"}, Labels: []event.Label{{Key: "env", Value: "prod"}}})
		}
	}
	for range nRes {
		add(filterindex.Filter{Resources: some(1+r.IntN(3), res)})
	}
	for range nResSev {
		add(filterindex.Filter{Resources: some(1+r.IntN(2), res), Severities: []string{"P0", "P1"}})
	}
	for range nInc {
		f := filterindex.Filter{IncidentIDs: []string{id("INC-", r.IntN(incidents))}}
		if r.IntN(3) == 0 {
			f.EventTypes = []string{"incident_updated", "escalated", "comment_added", "incident_resolved"}
		}
		add(f)
	}
	for range nLab {
		f := filterindex.Filter{Labels: []event.Label{{Key: "team", Value: id("team-", r.IntN(teams))}}}
		switch {
		case r.IntN(2) == 0:
		case broadLabel:
			f.Labels = append(f.Labels, event.Label{Key: "env", Value: "prod"})
		default:
			f.Labels = append(f.Labels, event.Label{Key: "service", Value: id("service-", r.IntN(services))})
		}
		add(f)
	}

	states := event.States
	for range eventsPerWorkload {
		ev := &event.Event{
			Type:       event.Types[r.IntN(len(event.Types))],
			Severity:   sev(),
			State:      states[r.IntN(len(states))],
			Source:     sources[r.IntN(len(sources))],
			IncidentID: id("INC-", r.IntN(incidents)),
			Resources:  some(1+r.IntN(3), res),
			Labels: []event.Label{ // sorted by key
				{Key: "env", Value: []string{"prod", "staging"}[r.IntN(2)]},
				{Key: "service", Value: id("service-", r.IntN(services))},
				{Key: "team", Value: id("team-", r.IntN(teams))},
			},
		}
		w.events = append(w.events, ev)
	}
	return w
}

// index builds an Index holding w's subscriptions.
func (w *workload) index() *filterindex.Index {
	ix := filterindex.New()
	for i := range w.filters {
		ix.Add(w.owners[i], &w.filters[i])
	}
	return ix
}

var benchSizes = []int{1_000, 10_000, 100_000, 1_000_000}

// Workloads and their indexes are costly at 1M; build each size once.
var (
	workloadsMu sync.Mutex
	workloads   = map[int]*builtWorkload{}
)

type builtWorkload struct {
	*workload
	ix *filterindex.Index
}

func getWorkload(n int) *builtWorkload {
	workloadsMu.Lock()
	defer workloadsMu.Unlock()
	if bw, ok := workloads[n]; ok {
		return bw
	}
	w := newWorkload(n, 1, false)
	bw := &builtWorkload{workload: w, ix: w.index()}
	workloads[n] = bw
	return bw
}

// TestFilterIndexWorkload checks that on the benchmark's own workloads the
// index reports exactly what a linear scan does, so that the benchmarks
// compare equals.
func TestFilterIndexWorkload(t *testing.T) {
	for _, broad := range []bool{false, true} {
		w := newWorkload(20_000, 7, broad)
		ix := w.index()
		seen := make([]bool, w.nOwners)
		for _, ev := range w.events[:512] {
			got := ix.Match(ev, nil)
			want := 0
			clear(seen)
			for j := range w.filters {
				if o := w.owners[j]; w.filters[j].Matches(ev) && !seen[o] {
					seen[o] = true
					want++
				}
			}
			if len(got) != want {
				t.Fatalf("broad=%v: index found %d owners, linear scan %d", broad, len(got), want)
			}
			for _, o := range got {
				if !seen[o] {
					t.Fatalf("broad=%v: index reported owner %d, which matches nothing", broad, o)
				}
			}
		}
	}
}

func sizeName(n int) string {
	switch {
	case n >= 1_000_000:
		return fmt.Sprintf("subs=%dM", n/1_000_000)
	case n >= 1_000:
		return fmt.Sprintf("subs=%dK", n/1_000)
	}
	return fmt.Sprintf("subs=%d", n)
}

// BenchmarkFilterIndexMatch measures the cost of finding the owners of the
// subscriptions one event matches, with the index and with a linear scan of
// Filter.Matches over the same subscriptions (deduplicated by owner the same
// way). One op is one event.
func BenchmarkFilterIndexMatch(b *testing.B) {
	for _, n := range benchSizes {
		w := getWorkload(n)
		b.Run("index/"+sizeName(n), func(b *testing.B) {
			dst := make([]uint32, 0, 4096)
			matched := 0
			i := 0
			for b.Loop() {
				dst = w.ix.Match(w.events[i%len(w.events)], dst[:0])
				matched += len(dst)
				i++
			}
			b.ReportMetric(float64(matched)/float64(i), "owners/event")
		})
		b.Run("linear/"+sizeName(n), func(b *testing.B) {
			seen := make([]uint32, w.nOwners)
			epoch := uint32(0)
			dst := make([]uint32, 0, 4096)
			matched, subs := 0, 0
			i := 0
			for b.Loop() {
				ev := w.events[i%len(w.events)]
				epoch++
				dst = dst[:0]
				for j := range w.filters {
					if w.filters[j].Matches(ev) {
						subs++
						if o := w.owners[j]; seen[o] != epoch {
							seen[o] = epoch
							dst = append(dst, o)
						}
					}
				}
				matched += len(dst)
				i++
			}
			b.ReportMetric(float64(matched)/float64(i), "owners/event")
			b.ReportMetric(float64(subs)/float64(i), "subs/event")
		})
	}
}

// BenchmarkFilterIndexBroadLabel is the mix with a tenth of all
// subscriptions asking for {team: X, env: prod} instead of {team: X,
// service: Y}. Plain counting posts them under env=prod too, so that every
// prod event touches all of them and the cost grows with the index (123
// µs/event at 1M when measured so). The index checks env=prod instead once
// its list is broad (see the package doc), so this should stay close to
// BenchmarkFilterIndexMatch.
func BenchmarkFilterIndexBroadLabel(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		w := newWorkload(n, 1, true)
		ix := w.index()
		b.Run(sizeName(n), func(b *testing.B) {
			dst := make([]uint32, 0, 4096)
			matched, i := 0, 0
			for b.Loop() {
				dst = ix.Match(w.events[i%len(w.events)], dst[:0])
				matched += len(dst)
				i++
			}
			b.ReportMetric(float64(matched)/float64(i), "owners/event")
		})
	}
}

// BenchmarkFilterIndexChurn measures one unsubscribe plus one subscribe, as
// the dispatcher applies them between events, in a full index.
func BenchmarkFilterIndexChurn(b *testing.B) {
	for _, n := range []int{10_000, 1_000_000} {
		b.Run(sizeName(n), func(b *testing.B) {
			w := newWorkload(n, 2, false)
			ix := filterindex.New()
			ids := make([]filterindex.SubID, len(w.filters))
			for i := range w.filters {
				ids[i] = ix.Add(w.owners[i], &w.filters[i])
			}
			r := rand.New(rand.NewPCG(3, 4))
			for b.Loop() {
				j := r.IntN(len(ids))
				ix.Remove(ids[j])
				ids[j] = ix.Add(w.owners[j], &w.filters[j])
			}
		})
	}
}

// BenchmarkFilterIndexMemory builds an index of 1M subscriptions and reports
// the live heap it takes per subscription (HeapAlloc after a GC, before and
// after), apart from what the filters themselves take (their slices and
// strings, which the engine holds anyway and the index shares). The reported
// ns/op is the time to build the index.
func BenchmarkFilterIndexMemory(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		b.StopTimer()
		base := heapAlloc()
		w := newWorkload(n, 1, false)
		w.events = nil
		withFilters := heapAlloc()
		b.StartTimer()
		ix := w.index()
		b.StopTimer()
		withIndex := heapAlloc()
		b.ReportMetric(float64(withFilters-base)/n, "filter-B/sub")
		b.ReportMetric(float64(withIndex-withFilters)/n, "index-B/sub")
		runtime.KeepAlive(ix)
		runtime.KeepAlive(w)
		b.StartTimer()
	}
}

func heapAlloc() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
