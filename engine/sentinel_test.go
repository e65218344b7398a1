package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/internal/redistest"
	"github.com/flarecast/flarecast/producer"
)

// recorder reads one client's messages in the background.
type recorder struct {
	name string
	c    *client
	p1   bool // subscribed to severity P1 only

	mu   sync.Mutex
	ids  []uint64
	gaps []map[string]any
	err  error
	done chan struct{}
}

func record(name string, c *client, p1 bool) *recorder {
	r := &recorder{name: name, c: c, p1: p1, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			m, err := c.tryRead(30 * time.Second)
			r.mu.Lock()
			switch {
			case err != nil:
				r.err = err
			case m["type"] == "event":
				r.ids = append(r.ids, uint64(m["message_id"].(float64)))
			case m["type"] == "error" && m["code"] == "HISTORY_GAP":
				r.gaps = append(r.gaps, m)
			}
			r.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return r
}

func (r *recorder) snapshot() ([]uint64, []map[string]any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint64(nil), r.ids...), append([]map[string]any(nil), r.gaps...)
}

// publication is one event a producer sent and what became of it.
type publication struct {
	p1   bool
	id   uint64 // 0: refused
	took time.Duration
	at   time.Time
	err  error
}

// TestFleetSurvivesSentinelFailover runs the reference topology (a
// primary, two replicas, three Sentinels), two instances with clients on
// both and a steady publish through both, and SIGKILLs the primary midway.
// Every event a producer got ok for must reach every matching client on
// both instances, in strictly increasing message_id order; events refused
// meanwhile were answered UNAVAILABLE within the append bound.
func TestFleetSurvivesSentinelFailover(t *testing.T) {
	tp := redistest.StartTopology(t)
	url := tp.URL("stream=ha")
	fleet := make([]*testServer, 2)
	for i := range fleet {
		fleet[i] = startServer(t, func(c *engine.Config) { c.Broker = url })
	}
	for _, s := range fleet {
		waitReady(t, s)
	}
	var recs []*recorder
	for i, s := range fleet {
		all := s.dial(t, "")
		all.subscribe("all", map[string]any{})
		p1 := s.dial(t, "")
		p1.subscribe("p1", map[string]any{"severities": []string{"P1"}})
		recs = append(recs, record(fmt.Sprintf("instance %d, all", i), all, false), record(fmt.Sprintf("instance %d, P1", i), p1, true))
	}

	// About 300 events/s: each instance's producer publishes every 6.6 ms.
	var mu sync.Mutex
	var pubs []publication
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, s := range fleet {
		pc, err := producer.Dial(context.Background(), s.socket)
		if err != nil {
			t.Fatalf("dial ingest: %v", err)
		}
		t.Cleanup(func() { pc.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(6600 * time.Microsecond)
			defer tick.Stop()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				sev := []string{"P1", "P2", "P3"}[(n+i)%3]
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				id, err := pc.PublishJSON(ctx, []byte(normalEv(`"severity":"`+sev+`"`)))
				cancel()
				p := publication{p1: sev == "P1", id: id, took: time.Since(start), at: start, err: err}
				if err != nil {
					p.id = 0
				}
				mu.Lock()
				pubs = append(pubs, p)
				mu.Unlock()
			}
		}()
	}
	stopPublishing := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopPublishing)
	accepted := func(since time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, p := range pubs {
			if p.id != 0 && !p.at.Before(since) {
				n++
			}
		}
		return n
	}
	if !pollUntil(10*time.Second, func() bool { return accepted(time.Time{}) >= 300 }) {
		t.Fatalf("the steady publish did not get going: %d accepted", accepted(time.Time{}))
	}

	// Watch /readyz on both instances through the failover.
	notReady := make([]bool, len(fleet))
	watchDone := make(chan struct{})
	watchStop := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			for i, s := range fleet {
				if code := s.status(t, "/readyz"); code == 503 {
					notReady[i] = true
				}
			}
			select {
			case <-watchStop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	old := tp.Primary()
	killedAt := time.Now()
	old.Kill()
	t.Logf("SIGKILLed the primary %s", old.Addr())

	var firstOK time.Time
	if !pollUntil(30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range pubs {
			if p.id != 0 && p.at.After(killedAt) && (firstOK.IsZero() || p.at.Add(p.took).Before(firstOK)) {
				firstOK = p.at.Add(p.took)
			}
		}
		return !firstOK.IsZero()
	}) {
		t.Fatal("no append was accepted within 30 s of killing the primary")
	}
	if newPrimary := tp.Primary(); newPrimary == old {
		t.Fatal("an append was accepted, yet Sentinel still names the dead primary")
	}
	// A steady stretch on the new primary, then stop and let it drain.
	recovered := time.Now()
	pollUntil(10*time.Second, func() bool { return accepted(recovered) >= 300 })
	stopPublishing()
	close(watchStop)
	<-watchDone
	for _, s := range fleet {
		waitReady(t, s)
	}

	var okAll, okP1 []uint64
	refused, refusedDuring := 0, 0
	var slowest time.Duration
	for _, p := range pubs {
		slowest = max(slowest, p.took)
		if p.id == 0 {
			refused++
			var perr *producer.Error
			if !errors.As(p.err, &perr) || perr.Code != "UNAVAILABLE" {
				t.Errorf("a publish failed with %v, want UNAVAILABLE", p.err)
			}
			if p.at.After(killedAt) && p.at.Before(firstOK) {
				refusedDuring++
			}
			continue
		}
		okAll = append(okAll, p.id)
		if p.p1 {
			okP1 = append(okP1, p.id)
		}
	}
	// An append answers within the broker's bound (plus the ingest path).
	if slowest > 3*time.Second {
		t.Errorf("the slowest publish took %s: appends must fail fast during a failover", slowest)
	}
	lost := 0
	for _, r := range recs {
		want := okAll
		if r.p1 {
			want = okP1
		}
		last := want[0]
		for _, id := range want {
			last = max(last, id)
		}
		// Wait until the client has the newest event it is owed.
		pollUntil(10*time.Second, func() bool {
			ids, _ := r.snapshot()
			return len(ids) > 0 && ids[len(ids)-1] >= last
		})
		ids, gaps := r.snapshot()
		got := make(map[uint64]bool, len(ids))
		for i, id := range ids {
			if i > 0 && id <= ids[i-1] {
				t.Errorf("%s: message_id %d after %d: not strictly increasing", r.name, id, ids[i-1])
			}
			got[id] = true
		}
		missing := 0
		for _, id := range want {
			if !got[id] {
				missing++
			}
		}
		lost += missing
		if missing > 0 || len(gaps) > 0 {
			t.Errorf("%s: %d of %d acknowledged events missing, HISTORY_GAPs %v", r.name, missing, len(want), gaps)
		}
		t.Logf("%s: %d events received, %d acknowledged ones owed, %d refused ones delivered anyway",
			r.name, len(ids), len(want), len(ids)-len(want)+missing)
	}
	for i := range fleet {
		if !notReady[i] {
			t.Errorf("instance %d: /readyz never answered 503 while the primary was away", i)
		}
	}
	t.Logf("failover: %s from SIGKILL to the first accepted append; %d events refused meanwhile (%d over the whole run), %d accepted, %d lost; slowest publish %s",
		firstOK.Sub(killedAt).Round(time.Millisecond), refusedDuring, refused, len(okAll), lost, slowest.Round(time.Millisecond))
}
