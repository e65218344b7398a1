package producer_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/flarecast/flarecast/internal/enginetest"
	"github.com/flarecast/flarecast/producer"
)

const httpToken = "producer-test-token"

// startHTTPServer is a real engine with HTTP ingest on loopback (token
// httpToken, bodies up to maxBody); it returns the server and its base URL.
func startHTTPServer(t testing.TB, maxBody int) (*server, string) {
	t.Helper()
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte(httpToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := enginetest.Config()
	cfg.AdminListen = ""
	cfg.IngestListen, cfg.IngestTokenFile, cfg.IngestMaxBody = "127.0.0.1:0", tokens, maxBody
	cfg.EventLoops = 2
	s := &server{Server: enginetest.MustStart(t, cfg)}
	return s, "http://" + s.Eng.IngestHTTPAddr().String()
}

// countingTransport counts the requests that reach the real transport.
type countingTransport struct{ n atomic.Int64 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

func TestHTTPClientHandlers(t *testing.T) {
	s, url := startHTTPServer(t, 8<<20)
	sub := s.subscribeAll(t)
	hc, err := producer.DialHTTP(url, httpToken)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	var p producer.Publisher = hc
	h := producer.NewHandlers(p)
	id, err := h.Incidents.OnIncidentCreated(context.Background(), producer.Incident{
		ID: "INC-1", Severity: producer.P1, State: producer.StateDetected, Title: "over HTTP",
	})
	if err != nil || id != 1 {
		t.Fatalf("OnIncidentCreated: %d, %v", id, err)
	}
	got := sub.events(1)
	if got[0].id != 1 || got[0].event["incident_id"] != "INC-1" {
		t.Fatalf("subscriber got %+v", got)
	}
}

// TestHTTPClientBatch: a batch goes in one request per MaxBatch events,
// in order; an invalid event gets ErrInvalidEvent in its place.
func TestHTTPClientBatch(t *testing.T) {
	s, url := startHTTPServer(t, 8<<20)
	sub := s.subscribeAll(t)
	ct := &countingTransport{}
	d := producer.HTTPDialer{Token: httpToken, MaxBatch: 4, Client: &http.Client{Transport: ct}}
	hc, err := d.Dial(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	events := make([][]byte, 10)
	for i := range events {
		events[i] = []byte(`{"event_type":"comment_added","n":` + string(rune('0'+i)) + `}`)
	}
	events[5] = []byte(`{"event_type":"comment_added","severity":"P9"}`)
	events[7] = []byte("{\n  \"event_type\": \"comment_added\"\n}") // pretty-printed: one line on the wire
	rs := hc.PublishBatch(context.Background(), events)
	if n := ct.n.Load(); n != 3 {
		t.Errorf("%d requests for 10 events in batches of 4, want 3", n)
	}
	var last uint64
	for i, r := range rs {
		if i == 5 {
			if !errors.Is(r.Err, producer.ErrInvalidEvent) || !strings.Contains(r.Err.Error(), "P9") {
				t.Errorf("event 5: %v, want ErrInvalidEvent", r.Err)
			}
			continue
		}
		if r.Err != nil || r.MessageID <= last {
			t.Fatalf("event %d: %+v after id %d", i, r, last)
		}
		last = r.MessageID
	}
	if got := sub.events(9); got[8].id != last {
		t.Fatalf("subscriber's last id %d, want %d", got[8].id, last)
	}

	// MaxBatchBytes: 37-byte lines, two to a 100-byte request.
	ct.n.Store(0)
	d = producer.HTTPDialer{Token: httpToken, MaxBatchBytes: 100, Client: &http.Client{Transport: ct}}
	small, _ := d.Dial(url)
	for i := range events {
		events[i] = []byte(`{"event_type":"comment_added","n":` + string(rune('0'+i)) + `}`)
	}
	for i, r := range small.PublishBatch(context.Background(), events) {
		if r.Err != nil || r.MessageID != last+uint64(i+1) {
			t.Fatalf("event %d: %+v", i, r)
		}
	}
	if n := ct.n.Load(); n != 5 {
		t.Errorf("%d requests for 10 lines of 37 bytes at most 100 bytes each, want 5", n)
	}
}

// TestHTTPClientRefusals: a wrong token, a server that is not there and a
// closed client are told apart; an event over the server's body limit is
// invalid, and a batch over it is split until it fits.
func TestHTTPClientRefusals(t *testing.T) {
	_, url := startHTTPServer(t, 1<<10)
	ctx := context.Background()
	ev := []byte(`{"event_type":"comment_added","title":"` + strings.Repeat("x", 200) + `"}`)

	bad, _ := producer.DialHTTP(url, "wrong")
	_, err := bad.PublishJSON(ctx, ev)
	if !errors.Is(err, producer.ErrUnavailable) || !errors.Is(err, producer.ErrUnauthorized) {
		t.Errorf("wrong token: %v, want ErrUnavailable and ErrUnauthorized", err)
	}

	hc, _ := producer.DialHTTP(url, httpToken)
	batch := make([][]byte, 20) // 4.6 KB: over the 1 KiB limit, split in requests that fit
	for i := range batch {
		batch[i] = ev
	}
	for i, r := range hc.PublishBatch(ctx, batch) {
		if r.Err != nil || r.MessageID != uint64(i+1) {
			t.Fatalf("event %d of a split batch: %+v", i, r)
		}
	}
	big := []byte(`{"event_type":"comment_added","title":"` + strings.Repeat("x", 2000) + `"}`)
	if _, err := hc.PublishJSON(ctx, big); !errors.Is(err, producer.ErrInvalidEvent) {
		t.Errorf("event over ingest-max-body: %v, want ErrInvalidEvent", err)
	}
	hc.Close()
	if _, err := hc.PublishJSON(ctx, ev); !errors.Is(err, producer.ErrClosed) {
		t.Errorf("closed client: %v, want ErrClosed", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0") // a port nothing answers on once closed
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	gone, _ := producer.DialHTTP("http://"+addr, httpToken)
	if _, err := gone.PublishJSON(ctx, ev); !errors.Is(err, producer.ErrUnavailable) {
		t.Errorf("no server: %v, want ErrUnavailable", err)
	}
	if _, err := producer.DialHTTP("ftp://x", ""); err == nil {
		t.Error("DialHTTP accepted an ftp URL")
	}
}

// TestHTTPClientCoalesces: 64 goroutines publishing one event at a time
// share requests (at most MaxConcurrent in flight, the events published
// meanwhile go in the next); every event gets its own id and arrives.
func TestHTTPClientCoalesces(t *testing.T) {
	s, url := startHTTPServer(t, 8<<20)
	sub := s.subscribeAll(t)
	ct := &countingTransport{}
	d := producer.HTTPDialer{Token: httpToken, MaxConcurrent: 2, Client: &http.Client{Transport: ct}}
	hc, err := d.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	const goroutines, each = 64, 20
	ids := make(chan uint64, goroutines*each)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := producer.NewHandlers(hc)
			for i := range each {
				id, err := h.Comments.OnCommentAdded(context.Background(), producer.Incident{ID: "INC-" + strconv.Itoa(g)},
					producer.Comment{Author: "g" + strconv.Itoa(g), Text: strconv.Itoa(i)})
				if err != nil {
					t.Error(err)
					return
				}
				ids <- id
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[uint64]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("message_id %d twice", id)
		}
		seen[id] = true
	}
	if len(seen) != goroutines*each {
		t.Fatalf("%d ids for %d events", len(seen), goroutines*each)
	}
	if n := ct.n.Load(); n >= goroutines*each {
		t.Errorf("%d requests for %d events: nothing coalesced", n, goroutines*each)
	} else {
		t.Logf("%d events in %d requests", goroutines*each, n)
	}
	got := sub.events(goroutines * each)
	for _, d := range got {
		if !seen[d.id] {
			t.Fatalf("subscriber got id %d, never returned to a publisher", d.id)
		}
	}
}

// heldTransport holds every request until release is closed, telling
// entered when one arrives; then it sends it for real.
type heldTransport struct {
	entered chan struct{}
	release chan struct{}
}

func (h *heldTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h.entered <- struct{}{}
	<-h.release
	return http.DefaultTransport.RoundTrip(r)
}

// TestHTTPClientAbandoned: a caller that leaves while its event waits in
// the queue gets ErrUnavailable and the event is never sent; one that
// leaves while its request is in flight gets ErrNoReply, and the event
// is accepted all the same.
func TestHTTPClientAbandoned(t *testing.T) {
	_, url := startHTTPServer(t, 8<<20)
	ht := &heldTransport{entered: make(chan struct{}, 4), release: make(chan struct{})}
	d := producer.HTTPDialer{Token: httpToken, MaxConcurrent: 1, Client: &http.Client{Transport: ht}}
	hc, err := d.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	ev := []byte(`{"event_type":"comment_added"}`)

	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() { _, err := hc.PublishJSON(ctxA, ev); errA <- err }()
	<-ht.entered // A's request is in flight, and the only sender is busy with it

	ctxB, cancelB := context.WithCancel(context.Background())
	errB := make(chan error, 1)
	go func() { _, err := hc.PublishJSON(ctxB, ev); errB <- err }()
	cancelB() // B waits in the queue (or has not queued yet): never sent
	if err := <-errB; !errors.Is(err, producer.ErrUnavailable) {
		t.Errorf("left while queued: %v, want ErrUnavailable", err)
	}
	cancelA()
	if err := <-errA; !errors.Is(err, producer.ErrNoReply) {
		t.Errorf("left while in flight: %v, want ErrNoReply", err)
	}
	close(ht.release)
	id, err := hc.PublishJSON(context.Background(), ev)
	if err != nil || id != 2 {
		t.Fatalf("next event: id %d, %v; want id 2 (A accepted, B never sent)", id, err)
	}
}
