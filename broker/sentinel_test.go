package broker_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flarecast/flarecast/broker"
	"github.com/flarecast/flarecast/internal/redistest"
)

// TestBrokerWaitCost measures what waiting for replicas costs: the same
// appends through the same Sentinel-discovered primary, with WAIT 0
// (none), WAIT 1 and WAIT 2, one after the other in the same run, against
// a primary and two replicas on loopback. It logs the figures; it fails
// only when an append fails. A measurement, not a check, of some 20 s: it
// runs with FLARECAST_MEASURE=1 (without -race, for figures that mean
// something):
//
//	FLARECAST_MEASURE=1 go test -count=1 -run TestBrokerWaitCost -v ./broker/
func TestBrokerWaitCost(t *testing.T) {
	if os.Getenv("FLARECAST_MEASURE") != "1" {
		t.Skip("a measurement: set FLARECAST_MEASURE=1 to run it")
	}
	tp := redistest.StartTopology(t)
	const (
		workers = 8
		batch   = 50
		rounds  = 3
		dur     = 700 * time.Millisecond
	)
	data := []byte(`{"event_type":"incident_updated","severity":"P2","source":"bench","incident_id":"INC-1","title":"measured"}`)
	waits := []int{0, 1, 2}
	brokers := make([]*broker.Redis, len(waits))
	for i, n := range waits {
		brokers[i] = newBroker(t, tp.URL("stream=cost"), 100000, broker.MinReplicas(n))
		mustAppend(t, brokers[i], workers) // dial before measuring
	}
	type result struct {
		lat    []time.Duration
		events int
		took   time.Duration
	}
	run := func(r *broker.Redis, n int, mode string, res *result) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				count := 0
				entries := make([]broker.Entry, batch)
				errs := make([]error, batch)
				for time.Since(start) < dur {
					t0 := time.Now()
					if mode == "single" {
						if _, err := r.Append(context.Background(), data, t0); err != nil {
							t.Errorf("Append (WAIT %d): %v", n, err)
							return
						}
						count++
					} else {
						for i := range entries {
							entries[i] = broker.Entry{Data: data, Accepted: t0}
							errs[i] = nil
						}
						r.AppendBatch(context.Background(), entries, errs)
						if err := errors.Join(errs...); err != nil {
							t.Errorf("AppendBatch (WAIT %d): %v", n, err)
							return
						}
						count += batch
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				res.lat = append(res.lat, mine...)
				res.events += count
				mu.Unlock()
			}()
		}
		wg.Wait()
		res.took += time.Since(start)
	}
	for _, mode := range []string{"single", "batch"} {
		results := make([]result, len(waits))
		// Interleaved rounds, so that the machine's other load weighs on
		// each setting alike.
		for range rounds {
			for i, n := range waits {
				run(brokers[i], n, mode, &results[i])
			}
		}
		for i, n := range waits {
			res := results[i]
			if len(res.lat) == 0 {
				t.Fatalf("WAIT %d %s: no append measured", n, mode)
			}
			slices.Sort(res.lat)
			p := func(q float64) time.Duration { return res.lat[min(len(res.lat)-1, int(q*float64(len(res.lat))))] }
			what := "one event an append"
			if mode == "batch" {
				what = "50 events a pipelined append"
			}
			t.Logf("WAIT %d, %d workers, %s: %7.0f events/s, append p50 %v, p99 %v",
				n, workers, what, float64(res.events)/res.took.Seconds(), p(0.50).Round(time.Microsecond), p(0.99).Round(time.Microsecond))
		}
	}
}
