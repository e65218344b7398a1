package producer_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/ingest"
	"github.com/flarecast/flarecast/producer"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, ctx context.Context, d producer.Dialer, path string) *producer.Client {
	t.Helper()
	c, err := d.Dial(ctx, path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestPublishAcceptedAndRefused(t *testing.T) {
	s := startServer(t, "")
	ws := s.subscribeAll(t)
	ctx := testCtx(t, 30*time.Second)
	c := dial(t, ctx, producer.Dialer{}, s.socket)

	id1, err := c.PublishJSON(ctx, []byte(`{"event_type":"incident_created","incident_id":"INC-1","severity":"P1"}`))
	if err != nil || id1 == 0 {
		t.Fatalf("valid event: id %d, err %v", id1, err)
	}
	refused := map[string]string{
		"malformed":          `{"event_type":`,
		"unknown type":       `{"event_type":"incident_exploded"}`,
		"bad severity":       `{"event_type":"incident_created","severity":"P9"}`,
		"not an object":      `[1,2]`,
		"too long for 64KiB": `{"event_type":"system_event","message":"` + strings.Repeat("x", 70<<10) + `"}`,
	}
	for name, line := range refused {
		id, err := c.PublishJSON(ctx, []byte(line))
		var perr *producer.Error
		if !errors.Is(err, producer.ErrInvalidEvent) || !errors.As(err, &perr) || perr.Code != producer.CodeInvalidEvent || perr.Message == "" {
			t.Errorf("%s: got id %d, err %v; want an INVALID_EVENT *Error", name, id, err)
		}
		if errors.Is(err, producer.ErrUnavailable) || errors.Is(err, producer.ErrNoReply) {
			t.Errorf("%s: %v is in more than one error class", name, err)
		}
	}
	// A pretty-printed event is compacted onto one line, not split in two.
	id2, err := c.PublishJSON(ctx, []byte("{\n  \"event_type\": \"incident_resolved\",\n  \"incident_id\": \"INC-1\"\n}\n"))
	if err != nil {
		t.Fatalf("pretty-printed event: %v", err)
	}
	got := ws.events(2)
	if got[0].id != id1 || got[1].id != id2 || got[1].event["event_type"] != "incident_resolved" {
		t.Fatalf("delivered %+v, want ids %d and %d", got, id1, id2)
	}
	if m, err := ws.tryNext(200 * time.Millisecond); err == nil {
		t.Fatalf("a refused event was delivered: %v", m)
	}
}

// stubPublisher lets the real ingest server answer UNAVAILABLE, which a
// real engine does only in the instant it is shutting down.
type stubPublisher struct{ err error }

func (p stubPublisher) PublishJSONBatch(_ context.Context, lines [][]byte, _ []uint64, errs []error) {
	for i := range lines {
		errs[i] = p.err
	}
}
func (p stubPublisher) Rejected() {}

func TestUnavailableReply(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ingest.sock")
	ln, err := ingest.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&ingest.Server{Publisher: stubPublisher{errors.New("stopping")}, MaxLineSize: 1 << 16}).Serve(srvCtx, ln)
	}()
	defer func() { stop(); <-done }()

	ctx := testCtx(t, 10*time.Second)
	c := dial(t, ctx, producer.Dialer{}, path)
	_, err = c.PublishJSON(ctx, []byte(`{"event_type":"system_event"}`))
	var perr *producer.Error
	if !errors.Is(err, producer.ErrUnavailable) || !errors.As(err, &perr) || perr.Code != producer.CodeUnavailable {
		t.Fatalf("got %v, want UNAVAILABLE", err)
	}
	if errors.Is(err, producer.ErrInvalidEvent) {
		t.Fatalf("%v is also INVALID_EVENT", err)
	}
}

func TestDialNoServer(t *testing.T) {
	_, err := producer.Dial(testCtx(t, 5*time.Second), filepath.Join(t.TempDir(), "none.sock"))
	if !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("got %v, want ENOENT", err)
	}
}

// TestPipelining publishes from many goroutines at once, valid and invalid
// events mixed, single and batched, and checks every reply went to its own
// event: the event a client receives under a message_id is the one whose
// publish returned that id.
func TestPipelining(t *testing.T) {
	s := startServer(t, "")
	ws := s.subscribeAll(t)
	ctx := testCtx(t, 60*time.Second)
	c := dial(t, ctx, producer.Dialer{}, s.socket)

	const goroutines, perG, batchers, batches, batchSize = 16, 150, 2, 4, 50
	var mu sync.Mutex
	byID := map[uint64]string{}
	record := func(id uint64, tag string) {
		mu.Lock()
		defer mu.Unlock()
		if prev, dup := byID[id]; dup {
			t.Errorf("message_id %d returned for %s and %s", id, prev, tag)
		}
		byID[id] = tag
	}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			var last uint64
			for n := range perG {
				tag := fmt.Sprintf("g%d-%d", g, n)
				if n%7 == 3 {
					_, err := c.PublishJSON(ctx, []byte(`{"event_type":"system_event","severity":"P7","tag":"`+tag+`"}`))
					if !errors.Is(err, producer.ErrInvalidEvent) {
						t.Errorf("%s: got %v, want INVALID_EVENT", tag, err)
					}
					continue
				}
				id, err := c.PublishJSON(ctx, []byte(`{"event_type":"system_event","tag":"`+tag+`"}`))
				if err != nil {
					t.Errorf("%s: %v", tag, err)
					return
				}
				if id <= last {
					t.Errorf("%s: id %d after %d from the same goroutine", tag, id, last)
				}
				last = id
				record(id, tag)
			}
		})
	}
	for b := range batchers {
		wg.Go(func() {
			for k := range batches {
				evs := make([][]byte, batchSize)
				for i := range evs {
					evs[i] = []byte(fmt.Sprintf(`{"event_type":"system_event","tag":"b%d-%d-%d"}`, b, k, i))
				}
				for i, r := range c.PublishBatch(ctx, evs) {
					if r.Err != nil {
						t.Errorf("batch %d/%d event %d: %v", b, k, i, r.Err)
						continue
					}
					record(r.MessageID, fmt.Sprintf("b%d-%d-%d", b, k, i))
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, d := range ws.events(len(byID)) {
		if d.event["tag"] != byID[d.id] {
			t.Fatalf("message_id %d delivered %v, but was returned for %s", d.id, d.event["tag"], byID[d.id])
		}
	}
}

// TestSmallInFlightWindow: with room for only three unanswered events, a
// batch of a hundred and many concurrent publishers still all get through.
func TestSmallInFlightWindow(t *testing.T) {
	s := startServer(t, "")
	ctx := testCtx(t, 60*time.Second)
	c := dial(t, ctx, producer.Dialer{MaxInFlight: 3}, s.socket)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for n := range 50 {
				if _, err := c.PublishJSON(ctx, []byte(`{"event_type":"system_event"}`)); err != nil {
					t.Errorf("goroutine %d event %d: %v", g, n, err)
					return
				}
			}
		})
	}
	evs := make([][]byte, 100)
	for i := range evs {
		evs[i] = []byte(`{"event_type":"comment_added"}`)
	}
	for i, r := range c.PublishBatch(ctx, evs) {
		if r.Err != nil || r.MessageID == 0 {
			t.Errorf("batch event %d: %+v", i, r)
		}
	}
	wg.Wait()
}

type outcome struct {
	id  uint64
	err error
}

// TestReconnectAcrossRestart publishes from several goroutines while the
// server is stopped and started again on the same socket path. Every
// publish must end; every event that got an id must have been delivered by
// the server that issued it, under that id; no event reported
// ErrUnavailable may have been delivered; and the client must be publishing
// to the new server without being redialled by hand.
func TestReconnectAcrossRestart(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ingest.sock")
	s1 := startServer(t, sock)
	ws1 := s1.subscribeAll(t)
	ctx := testCtx(t, 60*time.Second)
	c := dial(t, ctx, producer.Dialer{MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, sock)

	var (
		mu       sync.Mutex
		outcomes = map[string]outcome{}
		okCount  atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for g := range 4 {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				tag := fmt.Sprintf("g%d-%d", g, n)
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				id, err := c.PublishJSON(pctx, []byte(`{"event_type":"system_event","tag":"`+tag+`"}`))
				cancel()
				mu.Lock()
				outcomes[tag] = outcome{id, err}
				mu.Unlock()
				if err == nil {
					okCount.Add(1)
				}
			}
		})
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("events accepted by the first server", func() bool { return okCount.Load() >= 100 })
	s1.Stop(t)
	got1 := ws1.eventsUntilClosing()

	// While no server listens, a publish whose context ends first reports
	// ErrUnavailable: it was never sent. (The first attempts may still find
	// the old connection and report ErrNoReply.)
	waitFor("ErrUnavailable while the server is down", func() bool {
		pctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		_, err := c.PublishJSON(pctx, []byte(`{"event_type":"system_event","tag":"down"}`))
		if err == nil {
			t.Fatal("an event was accepted while no server was running")
		}
		if !errors.Is(err, producer.ErrNoReply) && !errors.Is(err, producer.ErrUnavailable) {
			t.Fatalf("while down: %v", err)
		}
		return errors.Is(err, producer.ErrUnavailable) && errors.Is(err, context.DeadlineExceeded)
	})

	before := okCount.Load()
	s2 := startServer(t, sock)
	ws2 := s2.subscribeAll(t)
	waitFor("events accepted by the restarted server", func() bool { return okCount.Load() >= before+100 })
	close(stop)
	wg.Wait()
	s2.Stop(t)
	got2 := ws2.eventsUntilClosing()

	seen := map[string]outcome{} // tag → id, from either server
	for i, got := range [][]delivered{got1, got2} {
		for _, d := range got {
			tag, _ := d.event["tag"].(string)
			if _, dup := seen[tag]; dup {
				t.Errorf("%s delivered twice", tag)
			}
			seen[tag] = outcome{id: d.id, err: fmt.Errorf("server %d", i+1)}
		}
	}
	if len(got2) == 0 {
		t.Fatal("nothing delivered after the restart")
	}
	var ok, unavailable, noReply int
	for tag, o := range outcomes {
		d, wasDelivered := seen[tag]
		switch {
		case o.err == nil:
			ok++
			if !wasDelivered || d.id != o.id {
				t.Errorf("%s got message_id %d but was delivered as %+v (%v)", tag, o.id, d, wasDelivered)
			}
		case errors.Is(o.err, producer.ErrUnavailable):
			unavailable++
			if wasDelivered {
				t.Errorf("%s reported %v but was delivered by %v", tag, o.err, d.err)
			}
		case errors.Is(o.err, producer.ErrNoReply):
			noReply++
		default:
			t.Errorf("%s: unexpected error %v", tag, o.err)
		}
	}
	for tag := range seen {
		if _, ok := outcomes[tag]; !ok && tag != "down" {
			t.Errorf("delivered %s, which no publish reported", tag)
		}
	}
	t.Logf("%d publishes: %d accepted (%d before the restart), %d unavailable, %d without reply",
		len(outcomes), ok, len(got1), unavailable, noReply)
}

// fakeIngest is a Unix socket server that reads lines and answers only
// when the test tells it to, for what a real server does not do on cue.
type fakeIngest struct {
	path    string
	ln      net.Listener
	conns   chan net.Conn
	accepts atomic.Int64
}

func newFakeIngest(t *testing.T) *fakeIngest {
	f := &fakeIngest{path: filepath.Join(t.TempDir(), "fake.sock"), conns: make(chan net.Conn, 16)}
	var err error
	if f.ln, err = net.Listen("unix", f.path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.ln.Close() })
	go func() {
		for {
			c, err := f.ln.Accept()
			if err != nil {
				return
			}
			f.accepts.Add(1)
			t.Cleanup(func() { c.Close() })
			select {
			case f.conns <- c:
			default:
				c.Close()
			}
		}
	}()
	return f
}

func (f *fakeIngest) conn(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	select {
	case c := <-f.conns:
		return c, bufio.NewReader(c)
	case <-time.After(10 * time.Second):
		t.Fatal("no connection")
		return nil, nil
	}
}

func TestContextEndsBeforeReply(t *testing.T) {
	f := newFakeIngest(t)
	ctx := testCtx(t, 30*time.Second)
	c := dial(t, ctx, producer.Dialer{}, f.path)
	sc, r := f.conn(t)

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := c.PublishJSON(short, []byte(`{"event_type":"system_event","n":1}`))
	if !errors.Is(err, producer.ErrNoReply) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrNoReply wrapping DeadlineExceeded", err)
	}
	if line, _ := r.ReadString('\n'); line != `{"event_type":"system_event","n":1}`+"\n" {
		t.Fatalf("server read %q", line)
	}
	// The late reply goes to the abandoned event, not to the next one.
	res := make(chan outcome, 1)
	go func() {
		id, err := c.PublishJSON(ctx, []byte(`{"event_type":"system_event","n":2}`))
		res <- outcome{id, err}
	}()
	if line, _ := r.ReadString('\n'); !strings.Contains(line, `"n":2`) {
		t.Fatalf("server read %q", line)
	}
	fmt.Fprint(sc, "{\"ok\":true,\"message_id\":7}\n{\"ok\":true,\"message_id\":8}\n")
	if o := <-res; o.err != nil || o.id != 8 {
		t.Fatalf("second publish got %+v, want id 8", o)
	}
}

func TestCloseFailsEventsInFlight(t *testing.T) {
	f := newFakeIngest(t)
	ctx := testCtx(t, 30*time.Second)
	c, err := producer.Dial(ctx, f.path)
	if err != nil {
		t.Fatal(err)
	}
	_, r := f.conn(t)
	res := make(chan error, 1)
	go func() {
		_, err := c.PublishJSON(ctx, []byte(`{"event_type":"system_event"}`))
		res <- err
	}()
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-res; !errors.Is(err, producer.ErrNoReply) {
		t.Fatalf("in flight at Close: got %v, want ErrNoReply", err)
	}
	if _, err := c.PublishJSON(ctx, []byte(`{"event_type":"system_event"}`)); !errors.Is(err, producer.ErrClosed) {
		t.Fatalf("after Close: got %v, want ErrClosed", err)
	}
	if rs := c.PublishBatch(ctx, [][]byte{[]byte(`{}`), []byte(`{}`)}); !errors.Is(rs[0].Err, producer.ErrClosed) || !errors.Is(rs[1].Err, producer.ErrClosed) {
		t.Fatalf("batch after Close: %+v", rs)
	}
}

// TestBrokenServerIsNotHammered: a server that accepts and hangs up at once
// must be redialled with growing waits, not in a tight loop. Connections
// 2…6 follow waits of at least 5+10+20+40+50ms with these settings; a
// client without backoff makes them in a few milliseconds.
func TestBrokenServerIsNotHammered(t *testing.T) {
	f := newFakeIngest(t)
	go func() {
		for c := range f.conns {
			c.Close()
		}
	}()
	start := time.Now()
	c := dial(t, testCtx(t, 10*time.Second), producer.Dialer{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}, f.path)
	deadline := time.Now().Add(10 * time.Second)
	for f.accepts.Load() < 6 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d connections in 10s: the client does not redial", f.accepts.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if d := time.Since(start); d < 125*time.Millisecond {
		t.Fatalf("6 connections in %v: the client redials without backing off", d)
	}
	c.Close()
}

// TestEngineErrorsClassify: in-process, the engine's own errors map onto
// the same classes as the socket's replies.
func TestEngineErrorsClassify(t *testing.T) {
	s := startServer(t, "")
	h := producer.NewHandlers(s.Eng)
	ctx := testCtx(t, 10*time.Second)
	if _, err := s.Eng.PublishJSON(ctx, []byte(`{"event_type":"nope"}`)); !errors.As(err, new(*event.Error)) {
		t.Fatalf("engine.PublishJSON of an invalid event: %v", err)
	}
	inc := producer.Incident{ID: "INC-9", Severity: producer.P2, State: producer.StateTriaged}
	if _, err := h.Incidents.OnIncidentCreated(ctx, inc); err != nil {
		t.Fatal(err)
	}
	s.Stop(t)
	_, err := h.Incidents.OnIncidentUpdated(ctx, inc)
	if !errors.Is(err, producer.ErrUnavailable) {
		t.Fatalf("publishing to a stopped engine: %v, want ErrUnavailable", err)
	}
}
