package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/client"
	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/internal/cutproxy"
)

// scenario is clients/conformance/scenario.json, the conformance scenario
// the Go client (here) and the TypeScript client
// (clients/js/test/conformance.test.mjs) both run.
type scenario struct {
	Events       int            `json:"events"`
	Batch        int            `json:"batch"`
	BatchPauseMS int            `json:"batch_pause_ms"`
	PriorityMix  map[string]int `json:"priority_mix"`
	Filters      client.Filters `json:"filters"`
	RandomCuts   int            `json:"random_cuts"`
	RestartAt    float64        `json:"restart_at"`
	SessionTO    string         `json:"session_timeout"`
	DeadlineS    int            `json:"deadline_s"`
}

func loadScenario(t *testing.T) scenario {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "clients", "conformance", "scenario.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sc scenario
	if err := json.Unmarshal(data, &sc); err != nil {
		t.Fatalf("scenario.json: %v", err)
	}
	if sc.Events <= 0 || sc.Batch <= 0 || sc.DeadlineS <= 0 {
		t.Fatalf("scenario.json: %+v", sc)
	}
	return sc
}

// eventOf is the scenario's i-th event and its priority: the priority
// follows priority_mix (critical, high, normal slots in turn); n identifies
// the event across server lifetimes (a restarted server numbers message_ids
// from 1 again). Keep in step with eventOf in the JS suite.
func (sc *scenario) eventOf(i, lifetime int) (string, client.Severity, client.Priority) {
	crit, high, normal := sc.PriorityMix["critical"], sc.PriorityMix["high"], sc.PriorityMix["normal"]
	slot := i % (crit + high + normal)
	sevs := []client.Severity{client.P0, client.P1, client.P2, client.P3, client.P4}
	var typ client.EventType
	var sev client.Severity
	var pr client.Priority
	switch {
	case slot < crit:
		typ, sev, pr = client.Escalated, sevs[(i/10)%2], client.PriorityCritical
	case slot < crit+high && slot%2 == 0:
		typ, sev, pr = client.Escalated, sevs[2+(i/10)%3], client.PriorityHigh
	case slot < crit+high:
		typ, sev, pr = client.IncidentCreated, sevs[(i/10)%2], client.PriorityHigh
	default:
		typ, sev, pr = client.CommentAdded, sevs[i%5], client.PriorityNormal
	}
	return fmt.Sprintf(`{"event_type":%q,"severity":%q,"source":"conformance","n":%d,"lifetime":%d}`, typ, sev, i, lifetime), sev, pr
}

// frameCounter counts the event frames a connection reads (compression
// off), so that duplicates suppressed = frames received - events handed over.
type frameCounter struct {
	net.Conn
	n    *atomic.Int64
	tail []byte
}

var eventFrame = []byte(`{"type":"event",`)

func (c *frameCounter) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		buf := append(c.tail, p[:n]...)
		c.n.Add(int64(bytes.Count(buf, eventFrame)))
		keep := min(len(buf), len(eventFrame)-1)
		c.tail = append([]byte(nil), buf[len(buf)-keep:]...)
	}
	return n, err
}

// restartCounter counts the client's log line for a restarted server's ids.
type restartCounter struct{ n *atomic.Int32 }

func (h restartCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h restartCounter) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "message ids started again") {
		h.n.Add(1)
	}
	return nil
}
func (h restartCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h restartCounter) WithGroup(string) slog.Handler      { return h }

// TestConformance runs the shared scenario: subscribe, publish a numbered
// stream with mixed priorities, cut the connection at random batches while
// one is being published, restart the server once within the session
// timeout; every published matching event is handed over exactly once, in
// message_id order within each priority and server lifetime.
func TestConformance(t *testing.T) {
	sc := loadScenario(t)
	sessionTimeout, err := time.ParseDuration(sc.SessionTO)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	withTimeout := func(cfg *engine.Config) { cfg.SessionTimeout = sessionTimeout }
	s := startServer(t, withTimeout)
	p := cutproxy.Start(t, s.Addr)

	var frames atomic.Int64
	var restarts atomic.Int32
	var resumes, newSessions, lost atomic.Int32
	var live atomic.Bool
	dialer := &websocket.Dialer{HandshakeTimeout: 10 * time.Second,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &frameCounter{Conn: c, n: &frames}, nil
		}}
	c := dial(t, "ws://"+p.Addr()+"/ws", &client.Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Dialer: dialer, Logger: slog.New(restartCounter{&restarts}),
		OnState: func(st client.StateChange) {
			live.Store(st.State == client.Live)
			switch {
			case st.State == client.Live && st.Resumed:
				resumes.Add(1)
			case st.State == client.Live && st.NewSession:
				newSessions.Add(1)
			case st.State == client.Reconnecting:
				lost.Add(1)
			}
		}})
	sub := subscribe(t, c, "conformance", sc.Filters)

	var mu sync.Mutex
	got := map[int]int{}        // n → times handed over
	last := map[string]uint64{} // lifetime/priority → last message_id
	var problems []string
	handed := 0
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for e := range sub.Events() {
			var f struct{ N, Lifetime int }
			if err := json.Unmarshal(e.Raw, &f); err != nil {
				panic(err)
			}
			mu.Lock()
			handed++
			got[f.N]++
			if got[f.N] > 1 {
				problems = append(problems, fmt.Sprintf("event n=%d (message %d) handed over twice", f.N, e.MessageID))
			}
			key := fmt.Sprintf("%d/%s", f.Lifetime, e.Priority)
			if e.MessageID <= last[key] {
				problems = append(problems, fmt.Sprintf("%s: message %d after %d", key, e.MessageID, last[key]))
			}
			last[key] = e.MessageID
			if _, _, pr := sc.eventOf(f.N, 0); f.N >= 0 && pr != e.Priority {
				problems = append(problems, fmt.Sprintf("event n=%d has priority %s, want %s", f.N, e.Priority, pr))
			}
			mu.Unlock()
		}
	}()
	want := map[int]bool{}
	haveAll := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for n := range want {
			if got[n] == 0 {
				return false
			}
		}
		return true
	}
	waitFor := func(what string, d time.Duration, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !ok() {
			if time.Now().After(deadline) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("timed out waiting for %s (handed over %d of %d; problems %v)", what, len(got), len(want), problems[:min(3, len(problems))])
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	batches := (sc.Events + sc.Batch - 1) / sc.Batch
	restartAt := int(sc.RestartAt * float64(batches))
	cutAt := map[int]bool{}
	for len(cutAt) < sc.RandomCuts {
		if b := 1 + rand.IntN(batches-1); b < restartAt-1 || b > restartAt+1 {
			cutAt[b] = true
		}
	}
	lifetime, cuts := 0, 0
	for b := range batches {
		if b == restartAt {
			// Everything the old server published reached the client: a
			// restarted single server cannot replay what it held.
			waitFor("the old server's events", 30*time.Second, haveAll)
			waitFor("live", 15*time.Second, live.Load)
			p.HoldNew()
			p.Cut() // reset first: a server-side close would leave the port in TIME_WAIT
			s.Stop(t)
			s = restartOn(t, s.Addr)
			lifetime++
			p.Release()
			s.WaitMetric(t, "websocket_active_subscriptions", 1)
		}
		var lines []string
		var sevs []client.Severity
		for i := b * sc.Batch; i < min((b+1)*sc.Batch, sc.Events); i++ {
			l, sev, _ := sc.eventOf(i, lifetime)
			lines, sevs = append(lines, l), append(sevs, sev)
		}
		done := make(chan struct{})
		go func() { defer close(done); s.publish(t, lines...) }()
		if cutAt[b] { // while the batch is being published
			waitFor("live", 15*time.Second, live.Load)
			p.Cut()
			cuts++
		}
		<-done
		for k, sev := range sevs {
			if len(sc.Filters.Severities) == 0 || slices.Contains(sc.Filters.Severities, sev) {
				want[b*sc.Batch+k] = true
			}
		}
		time.Sleep(time.Duration(sc.BatchPauseMS) * time.Millisecond)
	}
	waitFor("every matching event", time.Duration(sc.DeadlineS)*time.Second, haveAll)
	// Nothing more, no late duplicate, before a last live event.
	s.publish(t, fmt.Sprintf(`{"event_type":"escalated","severity":"P0","n":-1,"lifetime":%d}`, lifetime))
	waitFor("the sentinel", 15*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return got[-1] == 1 })
	elapsed := time.Since(start)

	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Fatalf("%d problems, the first: %v", len(problems), problems[:min(5, len(problems))])
	}
	for n := range want {
		if got[n] != 1 {
			t.Errorf("event n=%d handed over %d times", n, got[n])
		}
	}
	if len(got) != len(want)+1 {
		t.Fatalf("handed over %d distinct events, want %d matching and the sentinel", len(got), len(want))
	}
	if cuts != sc.RandomCuts || resumes.Load() < 1 || newSessions.Load() < 1 || restarts.Load() != 1 {
		t.Fatalf("cuts %d, resumes %d, new sessions %d, restarts seen %d: the scenario did not run as written",
			cuts, resumes.Load(), newSessions.Load(), restarts.Load())
	}
	t.Logf("Go conformance: %d published, %d matching, %d handed over once, %d cuts, 1 restart, %d resumes, %d new sessions, %d duplicates suppressed (%d event frames received), %.1f s",
		sc.Events, len(want), len(got)-1, cuts, resumes.Load(), newSessions.Load(), frames.Load()-int64(handed), frames.Load(), elapsed.Seconds())
}
