package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flarecast/flarecast/adapter"
)

// flakyPublisher accepts every line, except that it fails the first
// `failures` lines with an error that is not a validation error (a fleet's
// broker down, a shutdown).
type flakyPublisher struct {
	mu       sync.Mutex
	failures int
	next     uint64
	lines    []string
}

func (p *flakyPublisher) PublishJSONBatch(_ context.Context, lines [][]byte, ids []uint64, errs []error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, l := range lines {
		if p.failures > 0 {
			p.failures--
			errs[i] = errors.New("broker unavailable")
			continue
		}
		p.next++
		ids[i] = p.next
		p.lines = append(p.lines, string(l))
	}
}

func (p *flakyPublisher) Rejected() {}

// TestAdapterUnavailableThenRetry: an alert the publisher cannot take for
// now gets 503 (Alertmanager retries on 5xx); the retry publishes it and
// answers the one accepted the first time as a duplicate, so each alert
// is published once.
func TestAdapterUnavailableThenRetry(t *testing.T) {
	body, err := os.ReadFile("../adapter/testdata/alertmanager.json")
	if err != nil {
		t.Fatal(err)
	}
	pub := &flakyPublisher{}
	counts := map[string]int{}
	var mu sync.Mutex
	cfg := adapter.Default()
	s := &HTTPServer{
		Publisher: pub, MaxLineSize: 64 << 10, MaxBody: 1 << 20, Insecure: true,
		Adapters: &Adapters{Config: cfg, Dedupe: adapter.NewDedupe(100, time.Hour), Observe: func(a, r string, n int) {
			mu.Lock()
			counts[a+" "+r] += n
			mu.Unlock()
		}},
	}
	post := func() (int, adapterReply) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", AdaptersPrefix+AdapterAlertmanager, strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		s.ServeHTTP(rec, req)
		var r adapterReply
		if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil {
			t.Fatalf("HTTP %d %q: %v", rec.Code, rec.Body, err)
		}
		return rec.Code, r
	}
	pub.failures = 1 // the firing alert (index 0) fails
	code, r := post()
	if code != http.StatusServiceUnavailable || len(r.Accepted) != 1 || r.Accepted[0].Alert != 1 || r.Error == "" ||
		len(r.Skipped) != 2 || r.Skipped[0].Alert != 0 || !strings.Contains(r.Skipped[0].Reason, "broker unavailable") {
		t.Fatalf("first delivery: HTTP %d %+v", code, r)
	}
	code, r = post()
	if code != http.StatusOK || len(r.Accepted) != 1 || r.Accepted[0].Alert != 0 || r.Accepted[0].MessageID != 2 ||
		len(r.Duplicates) != 1 || r.Duplicates[0].Alert != 1 || r.Duplicates[0].MessageID != 1 {
		t.Fatalf("retry: HTTP %d %+v", code, r)
	}
	if len(pub.lines) != 2 {
		t.Fatalf("published %d lines, want 2", len(pub.lines))
	}
	want := map[string]int{"alertmanager received": 6, "alertmanager accepted": 2, "alertmanager duplicate": 1,
		"alertmanager rejected": 2, "alertmanager unavailable": 1}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("%s = %d, want %d (%v)", k, counts[k], v, counts)
		}
	}
	// Without Adapters the routes do not exist.
	s.Adapters = nil
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("POST", AdaptersPrefix+AdapterAlertmanager, strings.NewReader(string(body))))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("without adapters: HTTP %d", rec.Code)
	}
}
