package engine_test

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
)

// processRSS returns the process's resident set size (VmRSS), in bytes.
func processRSS(t testing.TB) int64 {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("cannot read VmRSS: %v", err)
	}
	for _, line := range bytes.Split(status, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			kb, err := strconv.ParseInt(string(bytes.TrimSuffix(bytes.TrimSpace(rest), []byte(" kB"))), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Skip("no VmRSS in /proc/self/status")
	return 0
}

// churnUsage is what the process holds at rest.
type churnUsage struct {
	goroutines int
	heapInuse  int64 // after a GC
	rss        int64 // after returning free memory to the OS
	fds        int
}

func measureUsage(t testing.TB) churnUsage {
	t.Helper()
	closeIdleHTTP()
	runtime.GC()
	debug.FreeOSMemory() // a GC, then every free span back to the OS
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return churnUsage{
		goroutines: runtime.NumGoroutine(),
		heapInuse:  int64(ms.HeapInuse),
		rss:        processRSS(t),
		fds:        openFDs(t),
	}
}

func (u churnUsage) String() string {
	return fmt.Sprintf("%d goroutines, heap in use %s, RSS %s, %d fds", u.goroutines, mib(u.heapInuse), mib(u.rss), u.fds)
}

// churnFilter is the subscribe frame of cycle i: a mix of the filters
// dashboards use, some of them with values no other cycle uses, so that
// the index creates and must drop a posting list per cycle.
func churnFilter(i int) []byte {
	var f string
	switch n := strconv.Itoa(i); i % 4 {
	case 0:
		f = `{"incident_ids":["INC-churn-` + n + `"]}`
	case 1:
		f = `{"event_types":["incident_created","escalated"],"severities":["P0","P1"]}`
	case 2:
		f = `{"affected_resources":["svc-` + strconv.Itoa(i%100) + `","api-` + n + `"]}`
	default:
		f = `{"labels":{"team":"t` + strconv.Itoa(i%50) + `","env":"prod"},"sources":["churn"]}`
	}
	return maskedText(`{"type":"subscribe","subscription_id":"c","filters":` + f + `}`)
}

// TestChurn: 100,000 connect / subscribe / disconnect cycles from 64
// concurrent clients. Afterwards every connection is accounted for, the
// sessions expire and leave no subscription in the index, and goroutines,
// heap, RSS and file descriptors return near their level before the churn.
//
// Each cycle writes the upgrade request and a subscribe frame in one write,
// reads until `subscribed`, and resets the connection (a FIN from 100,000
// client sockets would leave more in TIME_WAIT than there are ephemeral
// ports; the server counts each as connection_lost).
//
// Under the race detector, which slows the engine tenfold, it runs 20,000
// cycles, so that `make test` stays within its budget; `go test -run
// TestChurn ./engine/` without -race runs the full 100,000, and
// FLARECAST_CHURN_CYCLES sets another count for a longer run by hand.
func TestChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("100,000 connections")
	}
	cycles := 100_000
	if raceEnabled {
		cycles = 20_000
	}
	if v, err := strconv.Atoi(os.Getenv("FLARECAST_CHURN_CYCLES")); err == nil && v > 0 {
		cycles = v // for a longer (or shorter) run by hand
	}
	const (
		workers = 64
		warmup  = 2_000
		// Long enough that a connection whose welcome a loaded machine
		// delays is not reaped as silent before it could say anything.
		timeout = 5 * time.Second
	)
	// Sessions outlive their connections for the session timeout (they can
	// be resumed): a short one, swept often, lets the test see the index
	// empty again within seconds.
	s := startServer(t, func(c *engine.Config) {
		c.SessionTimeout = timeout
		c.CleanupInterval = 100 * time.Millisecond
	})
	rest := map[string]float64{fmActive: 0, fmSubs: 0}

	// The warm-up grows what is meant to stay (the loops' buffers, pools,
	// the dispatcher's tables) before the baseline is taken.
	wireCycles(t, s, warmup, workers, churnFilter)
	faultExpect(t, s, 30*time.Second, rest)
	base := measureUsage(t)

	start := time.Now()
	wireCycles(t, s, cycles, workers, churnFilter)
	elapsed := time.Since(start)
	n := float64(warmup + cycles)
	faultExpect(t, s, 30*time.Second, map[string]float64{
		fmActive:                    0,
		fmTotal:                     n,
		fmClosed("connection_lost"): n,
		fmClosed("protocol_error"):  0,
		fmRejected:                  0,
	})
	peak := measureUsage(t) // before the sessions expire
	faultExpect(t, s, 30*time.Second, rest)

	// Goroutines: the engine has none per connection or session, so the
	// count returns exactly, give or take the admin server's connection of
	// the last /metrics poll as it winds down.
	var after churnUsage
	pollUntil(10*time.Second, func() bool {
		after = measureUsage(t)
		return after.goroutines <= base.goroutines+2 && after.fds <= base.fds+2
	})
	t.Logf("%d cycles in %v (%.0f/s) with %d workers", cycles, elapsed.Round(time.Millisecond),
		float64(cycles)/elapsed.Seconds(), workers)
	t.Logf("before:               %v", base)
	t.Logf("after, sessions held: %v", peak)
	t.Logf("after, sessions gone: %v", after)
	if after.goroutines > base.goroutines+2 {
		t.Errorf("%d goroutines after the churn, %d before", after.goroutines, base.goroutines)
	}
	if after.fds > base.fds+2 {
		t.Errorf("%d file descriptors open after the churn, %d before", after.fds, base.fds)
	}
	// Heap: what legitimately stays is capacity sized by the peak number of
	// sessions alive at once (a session timeout's worth of cycles): the
	// session map's buckets, the slot tables of the dispatcher and the
	// index. A leak of even 100 bytes per cycle would add 10 MB over
	// 100,000 cycles (2 MB under -race).
	const heapSlack = 8 << 20
	if grew := after.heapInuse - base.heapInuse; grew > heapSlack {
		t.Errorf("heap in use grew by %s over the churn (allowed %s)", mib(grew), mib(heapSlack))
	}
	// RSS: the heap's slack, plus the runtime's own (stacks of the 64
	// workers' goroutines come and go, span metadata) and, under -race,
	// the detector's shadow memory, which it does not give back.
	rssSlack := int64(32 << 20)
	if raceEnabled {
		rssSlack = 128 << 20
	}
	if grew := after.rss - base.rss; grew > rssSlack {
		t.Errorf("RSS grew by %s over the churn (allowed %s)", mib(grew), mib(rssSlack))
	}
	faultProbe(t, s)
}
