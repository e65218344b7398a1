package broker_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flarecast/flarecast/broker"
	"github.com/flarecast/flarecast/internal/redistest"
)

func TestNewRedisSentinelURL(t *testing.T) {
	cases := []struct {
		url          string
		opts         []broker.Option
		sentinel     bool
		minReplicas  int
		wantParseErr bool
	}{
		{url: "redis://127.0.0.1:6379?stream=s", minReplicas: 0},
		{url: "redis://127.0.0.1:6379", opts: []broker.Option{broker.MinReplicas(2)}, minReplicas: 2},
		{url: "redis://s1:26379?master_name=m&addr=s2:26379&addr=s3:26379&stream=s", sentinel: true, minReplicas: 1},
		{url: "redis://s1:26379?master_name=m", opts: []broker.Option{broker.MinReplicas(0)}, sentinel: true, minReplicas: 0},
		{url: "redis://s1:26379?master_name=m", opts: []broker.Option{broker.MinReplicas(-1)}, sentinel: true, minReplicas: 1},
		{url: "redis://s1:26379?master_name=m&addr=nonsense", wantParseErr: true},
		{url: "redis://s1:26379?master_name=m&bogus=1", wantParseErr: true},
	}
	for _, c := range cases {
		r, err := broker.NewRedis(c.url, 100, c.opts...)
		if c.wantParseErr {
			if err == nil {
				r.Close()
				t.Errorf("%s: want an error", c.url)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		if r.Sentinel() != c.sentinel || r.MinReplicasWaited() != c.minReplicas {
			t.Errorf("%s: sentinel %v, min replicas %d; want %v, %d", c.url, r.Sentinel(), r.MinReplicasWaited(), c.sentinel, c.minReplicas)
		}
		r.Close()
	}
}

// tailer runs Tail in the background and collects what it hands over.
type tailer struct {
	mu      sync.Mutex
	entries []broker.Entry
	hold    chan struct{} // while non-nil, fn blocks on the first entry
	held    chan struct{}
	done    chan error
	cancel  context.CancelFunc
}

func startTail(t *testing.T, r *broker.Redis, hold bool) *tailer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tl := &tailer{done: make(chan error, 1), cancel: cancel}
	if hold {
		tl.hold, tl.held = make(chan struct{}), make(chan struct{})
	}
	first := true
	go func() {
		tl.done <- r.Tail(ctx, 0, func(e broker.Entry) error {
			tl.mu.Lock()
			tl.entries = append(tl.entries, e)
			tl.mu.Unlock()
			if first && tl.hold != nil {
				first = false
				close(tl.held)
				<-tl.hold
			}
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-tl.done; err != nil {
			t.Errorf("Tail: %v", err)
		}
	})
	return tl
}

func (tl *tailer) snapshot() []broker.Entry {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return append([]broker.Entry(nil), tl.entries...)
}

// waitFor polls until the tail handed over an entry with message_id id.
func (tl *tailer) waitFor(t *testing.T, id uint64) []broker.Entry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		got := tl.snapshot()
		for _, e := range got {
			if e.ID == id && e.Err == nil && e.GapFrom == 0 {
				return got
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the tail never handed over message_id %d; got %s", id, describe(tl.snapshot()))
	return nil
}

func describe(es []broker.Entry) string {
	s := ""
	for _, e := range es {
		switch {
		case e.GapFrom != 0:
			s += " gap[" + strconv.FormatUint(e.GapFrom, 10) + ".." + strconv.FormatUint(e.ID, 10) + ")"
		case e.Err != nil:
			s += " bad(" + strconv.FormatUint(e.ID, 10) + ")"
		default:
			s += " " + strconv.FormatUint(e.ID, 10)
		}
	}
	return s
}

func mustAppend(t *testing.T, r *broker.Redis, n int) []uint64 {
	t.Helper()
	var ids []uint64
	for range n {
		id, err := r.Append(context.Background(), []byte(`{"event_type":"incident_updated"}`), time.Now())
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		ids = append(ids, id)
	}
	return ids
}

func newBroker(t *testing.T, url string, maxLen int, opts ...broker.Option) *broker.Redis {
	t.Helper()
	r, err := broker.NewRedis(url, maxLen, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestTailSkipsUndecodableEntries(t *testing.T) {
	rs := redistest.Start(t)
	r := newBroker(t, rs.URL()+"?stream=s", 1000)
	rc := rs.Client()
	ctx := context.Background()
	before := mustAppend(t, r, 2)
	tl := startTail(t, r, false)
	tl.waitFor(t, before[1])

	// Someone else writes to the stream: an entry without an event, one
	// with a timestamp that is no number, one not under "<id>-0". Each
	// takes its id from the counter, as an append would.
	for _, fields := range [][]any{{"junk", "x"}, {"e", `{"a":1}`, "t", "yesterday"}} {
		id := rc.Incr(ctx, "s:id").Val()
		if err := rc.XAdd(ctx, &redis.XAddArgs{Stream: "s", ID: strconv.FormatInt(id, 10) + "-0", Values: fields}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	id := rc.Incr(ctx, "s:id").Val()
	if err := rc.XAdd(ctx, &redis.XAddArgs{Stream: "s", ID: strconv.FormatInt(id, 10) + "-7", Values: []any{"e", "{}", "t", "1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	after := mustAppend(t, r, 2)
	got := tl.waitFor(t, after[1])
	var ok, bad []uint64
	for _, e := range got {
		if e.Err != nil {
			bad = append(bad, e.ID)
		} else {
			ok = append(ok, e.ID)
		}
	}
	want := append(append([]uint64(nil), before...), after...)
	if len(ok) != len(want) || len(bad) != 3 {
		t.Fatalf("handed over %s; want %v and three undecodable entries", describe(got), want)
	}
	for i := range want {
		if ok[i] != want[i] {
			t.Fatalf("handed over %s; want %v and three undecodable entries", describe(got), want)
		}
	}
}

func TestTailReportsTrimmedEntries(t *testing.T) {
	rs := redistest.Start(t)
	// MAXLEN ~ 10: Redis drops whole stream nodes (100 entries each).
	r := newBroker(t, rs.URL()+"?stream=s", 10)
	first := mustAppend(t, r, 1)[0]
	tl := startTail(t, r, true)
	<-tl.held // the tailer is stalled on its first entry
	ids := mustAppend(t, r, 400)
	info, err := rs.Client().XInfoStream(context.Background(), "s").Result()
	if err != nil {
		t.Fatal(err)
	}
	if info.FirstEntry.ID == strconv.FormatUint(first+1, 10)+"-0" {
		t.Fatalf("the stream was not trimmed (first entry %s): the test proves nothing", info.FirstEntry.ID)
	}
	close(tl.hold)
	got := tl.waitFor(t, ids[len(ids)-1])
	if len(got) < 2 || got[1].GapFrom != first+1 || got[1].ID != got[2].ID {
		t.Fatalf("want the first entry, a gap from %d to the first entry kept, then the rest; got %s", first+1, describe(got))
	}
	for i := 3; i < len(got); i++ {
		if got[i].ID != got[i-1].ID+1 || got[i].GapFrom != 0 {
			t.Fatalf("entries after the gap are not contiguous: %s", describe(got))
		}
	}
}

func TestTailSeesNoGapWhereIDsWereSkipped(t *testing.T) {
	rs := redistest.Start(t)
	r := newBroker(t, rs.URL()+"?stream=s", 1000)
	tl := startTail(t, r, false)
	a := mustAppend(t, r, 1)[0]
	tl.waitFor(t, a)
	// The counter jumps (an append floor after data loss does this): the
	// ids between were never assigned, nothing was trimmed.
	if err := rs.Client().Set(context.Background(), "s:id", a+50, 0).Err(); err != nil {
		t.Fatal(err)
	}
	b := mustAppend(t, r, 1)[0]
	got := tl.waitFor(t, b)
	if len(got) != 2 || got[1].ID != a+51 || got[1].GapFrom != 0 {
		t.Fatalf("want %d then %d and no gap; got %s", a, a+51, describe(got))
	}
}

// loseNewest rewrites the stream as a replica lacking its newest n entries
// would have it after a failover: those entries gone, the counter back.
func loseNewest(t *testing.T, rc *redis.Client, n int) {
	t.Helper()
	ctx := context.Background()
	all, err := rc.XRange(ctx, "s", "-", "+").Result()
	if err != nil || len(all) < n {
		t.Fatalf("read the stream: %v (%d entries)", err, len(all))
	}
	keep := all[:len(all)-n]
	p := rc.TxPipeline()
	p.Del(ctx, "s")
	for _, m := range keep {
		p.XAdd(ctx, &redis.XAddArgs{Stream: "s", ID: m.ID, Values: m.Values})
	}
	last := "0"
	if len(keep) > 0 {
		last = keep[len(keep)-1].ID[:len(keep[len(keep)-1].ID)-2]
	}
	p.Set(ctx, "s:id", last, 0)
	if _, err := p.Exec(ctx); err != nil {
		t.Fatalf("rewrite the stream: %v", err)
	}
}

// dropClients makes every client of the server reconnect, as a failover does.
func dropClients(t *testing.T, rc *redis.Client) {
	t.Helper()
	if err := rc.Do(context.Background(), "CLIENT", "KILL", "TYPE", "normal").Err(); err != nil {
		t.Fatal(err)
	}
}

// loseTwo is where the failover tests start: five events appended through
// r on stream s and read by r's tailer tl, then the newest two lost, as when
// the promoted replica lacks ids 4 and 5.
func loseTwo(t *testing.T) (rs *redistest.Server, rc *redis.Client, r *broker.Redis, tl *tailer, ids []uint64) {
	rs = redistest.Start(t)
	rc = rs.Client()
	r = newBroker(t, rs.URL()+"?stream=s", 1000)
	tl = startTail(t, r, false)
	ids = mustAppend(t, r, 5)
	tl.waitFor(t, ids[4])
	loseNewest(t, rc, 2)
	return rs, rc, r, tl, ids
}

func TestTailRaisesTheCounterAfterLosingAppends(t *testing.T) {
	rs, rc, r, tl, ids := loseTwo(t)
	dropClients(t, rc)
	// The tailer comes back and raises the counter to what it read: an
	// instance that never saw 4 and 5 appends above them.
	deadline := time.Now().Add(10 * time.Second)
	for rc.Get(context.Background(), "s:id").Val() != strconv.FormatUint(ids[4], 10) {
		if time.Now().After(deadline) {
			t.Fatalf("the counter stayed at %s, want it raised to %d", rc.Get(context.Background(), "s:id").Val(), ids[4])
		}
		time.Sleep(10 * time.Millisecond)
	}
	other := newBroker(t, rs.URL()+"?stream=s", 1000)
	next := mustAppend(t, other, 1)[0]
	if next != ids[4]+1 {
		t.Fatalf("an append after the raise got message_id %d, want %d", next, ids[4]+1)
	}
	got := tl.waitFor(t, next)
	for _, e := range got {
		if e.GapFrom != 0 || e.Err != nil {
			t.Fatalf("nothing was missed, yet the tail reported %s", describe(got))
		}
	}
	if r.Reconnects() == 0 {
		t.Error("the tailer's reconnect was not counted")
	}
}

func TestTailReportsAppendsUnderIDsItPassed(t *testing.T) {
	rs, rc, r, tl, ids := loseTwo(t)
	// Before the tailer notices, an instance that had not read 4 and 5
	// appends: its events take ids 4 and 5, which the tailer has passed.
	other := newBroker(t, rs.URL()+"?stream=s", 1000)
	reused := mustAppend(t, other, 2)
	if reused[0] != ids[3] {
		t.Fatalf("the lagging instance got message_id %d, want the reused %d", reused[0], ids[3])
	}
	dropClients(t, rc)
	next := mustAppend(t, r, 1)[0] // the tailer's own floor keeps it above
	got := tl.waitFor(t, next)
	var gaps []broker.Entry
	for _, e := range got {
		if e.GapFrom != 0 {
			gaps = append(gaps, e)
		}
	}
	if len(gaps) != 1 || gaps[0].GapFrom != ids[3] || gaps[0].ID != ids[4]+1 {
		t.Fatalf("want one gap from %d to %d; got %s", ids[3], ids[4], describe(got))
	}
}

func TestAppendRefusedWithoutReplicas(t *testing.T) {
	rs := redistest.Start(t)
	r := newBroker(t, rs.URL()+"?stream=s", 1000, broker.MinReplicas(1))
	start := time.Now()
	id, err := r.Append(context.Background(), []byte(`{"event_type":"incident_updated"}`), time.Now())
	took := time.Since(start)
	if !errors.Is(err, broker.ErrNotReplicated) || id != 0 {
		t.Fatalf("Append with no replica: id %d, err %v; want ErrNotReplicated", id, err)
	}
	if took < broker.WaitTimeout || took > broker.AppendTimeout {
		t.Errorf("Append took %s, want between WAIT's %s and %s", took, broker.WaitTimeout, broker.AppendTimeout)
	}
	if !r.Up() {
		t.Error("Redis answered, yet the broker reports itself down")
	}
	// Stored all the same: it is delivered (the documented caveat).
	n, err := rs.Client().XLen(context.Background(), "s").Result()
	if err != nil || n != 1 {
		t.Fatalf("stream length %d (%v), want 1", n, err)
	}
	entries := []broker.Entry{{Data: []byte(`{}`), Accepted: time.Now()}, {}, {Data: []byte(`{}`), Accepted: time.Now()}}
	errs := make([]error, 3)
	r.AppendBatch(context.Background(), entries, errs)
	if !errors.Is(errs[0], broker.ErrNotReplicated) || errs[1] != nil || !errors.Is(errs[2], broker.ErrNotReplicated) {
		t.Fatalf("AppendBatch with no replica: %v", errs)
	}
}

func TestAppendFailsFastWhenRedisIsGone(t *testing.T) {
	rs := redistest.Start(t)
	r := newBroker(t, rs.URL()+"?stream=s", 1000)
	mustAppend(t, r, 1)
	rs.Kill()
	start := time.Now()
	if _, err := r.Append(context.Background(), []byte(`{}`), time.Now()); err == nil {
		t.Fatal("an append succeeded with Redis gone")
	}
	if took := time.Since(start); took > broker.AppendTimeout {
		t.Errorf("a failed append took %s, more than %s", took, broker.AppendTimeout)
	}
	if r.Up() {
		t.Error("the broker reports itself up with Redis gone")
	}
}

// TestBoundedWhenRedisHangs: a Redis that accepts connections and never
// answers (a partition, a frozen primary) refuses appends within
// AppendTimeout and reports the broker down within a few seconds.
func TestBoundedWhenRedisHangs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // held open, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	r := newBroker(t, "redis://"+ln.Addr().String()+"?stream=s", 1000)
	start := time.Now()
	if _, err := r.Append(context.Background(), []byte(`{}`), time.Now()); err == nil {
		t.Fatal("an append succeeded on a Redis that never answers")
	}
	if took := time.Since(start); took > broker.AppendTimeout+200*time.Millisecond {
		t.Errorf("the append took %s, more than its bound %s", took, broker.AppendTimeout)
	}
	if r.Up() {
		t.Error("the broker reports itself up after a timed-out append")
	}
}

// TestFrozenRedis: a primary that stops answering with its connections
// open. Appends are refused within their bound, the tailer reports the
// broker down within seconds, and both recover when it answers again.
func TestFrozenRedis(t *testing.T) {
	rs := redistest.Start(t)
	r := newBroker(t, rs.URL()+"?stream=s", 1000)
	tl := startTail(t, r, false)
	first := mustAppend(t, r, 1)[0]
	tl.waitFor(t, first)
	rs.Freeze()
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			rs.Thaw()
		}
	})
	start := time.Now()
	for r.Up() {
		if time.Since(start) > 5*time.Second {
			t.Fatal("the broker still reports itself up 5 s after Redis froze")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the tailer noticed the frozen Redis after %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if _, err := r.Append(context.Background(), []byte(`{}`), time.Now()); err == nil {
		t.Fatal("an append succeeded on a frozen Redis")
	}
	if took := time.Since(start); took > broker.AppendTimeout+200*time.Millisecond {
		t.Errorf("an append on a frozen Redis took %s, more than its bound %s", took, broker.AppendTimeout)
	}
	rs.Thaw()
	thawed = true
	var next uint64
	deadline := time.Now().Add(10 * time.Second)
	for {
		id, err := r.Append(context.Background(), []byte(`{"event_type":"incident_updated"}`), time.Now())
		if err == nil {
			next = id
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("appends did not recover after Redis thawed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tl.waitFor(t, next)
}
