package engine_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/internal/redistest"
)

const (
	ingestToken  = "s3cret-token-for-tests"
	ingestToken2 = "another-token"
)

// httpIngest is a server with HTTP ingest on a loopback port and a token
// file holding ingestToken and ingestToken2.
type httpIngest struct {
	*testServer
	url string // http://127.0.0.1:PORT/v1/events
}

func startHTTPIngest(t testing.TB, mutate func(*engine.Config), prepare func(*engine.Engine)) *httpIngest {
	t.Helper()
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("# producers\n\n"+ingestToken+"\n  "+ingestToken2+"  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServerWith(t, func(c *engine.Config) {
		c.IngestListen = "127.0.0.1:0"
		c.IngestTokenFile = tokens
		if mutate != nil {
			mutate(c)
		}
	}, prepare)
	return &httpIngest{testServer: s, url: "http://" + s.eng.IngestHTTPAddr().String() + "/v1/events"}
}

// post sends body to path (relative to the ingest URL's host) and returns
// the status, the response and its body.
func (h *httpIngest) do(t testing.TB, method, url, token, contentType string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return resp, string(b)
}

func (h *httpIngest) post(t testing.TB, body string) []ingestReply {
	t.Helper()
	resp, text := h.do(t, "POST", h.url, ingestToken, "application/x-ndjson", strings.NewReader(body))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST: HTTP %d: %s", resp.StatusCode, text)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("Content-Type %q", ct)
	}
	return parseReplies(t, text)
}

func parseReplies(t testing.TB, text string) []ingestReply {
	t.Helper()
	var out []ingestReply
	for line := range strings.Lines(text) {
		var r ingestReply
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("reply line %q: %v", line, err)
		}
		r.raw = line // with its newline, as rawIngest.reply keeps it
		out = append(out, r)
	}
	return out
}

// TestHTTPIngestAccepts: lines posted over HTTP get increasing ids, in
// order, and reach a real WebSocket subscriber; a single JSON object
// without a newline is one line.
func TestHTTPIngestAccepts(t *testing.T) {
	h := startHTTPIngest(t, nil, nil)
	sub := h.dial(t, "")
	sub.subscribe("all", map[string]any{})

	replies := h.post(t, ev(`"severity":"P1","n":1`)+"\n"+ev(`"n":2`)+"\r\n"+ev(`"n":3`)+"\n")
	replies = append(replies, h.post(t, ev(`"n":4`))...) // no trailing newline
	if len(replies) != 4 {
		t.Fatalf("%d replies, want 4: %+v", len(replies), replies)
	}
	var ids []uint64
	for i, r := range replies {
		if !r.OK || r.MessageID == 0 {
			t.Fatalf("reply %d: %s", i, r.raw)
		}
		if i > 0 && r.MessageID <= ids[i-1] {
			t.Fatalf("message_id %d after %d", r.MessageID, ids[i-1])
		}
		if want := `{"ok":true,"message_id":` + itoa(int(r.MessageID)) + "}\n"; r.raw != want {
			t.Errorf("reply %q, want %q", r.raw, want)
		}
		ids = append(ids, r.MessageID)
	}
	got := sub.events(4)
	for i := range ids {
		if got[i] != ids[i] {
			t.Fatalf("subscriber got %v, producer was told %v", got, ids)
		}
	}
	h.waitMetric(t, "flarecast_ingest_events_accepted_total", 4)
	h.waitMetric(t, `flarecast_http_ingest_requests_total{code="200"}`, 2)
}

// TestHTTPIngestAuth: no token, a wrong one, one differing only in its
// last byte, a prefix of a real one and another scheme all get 401 with
// WWW-Authenticate and publish nothing; both tokens of the file work.
func TestHTTPIngestAuth(t *testing.T) {
	h := startHTTPIngest(t, nil, nil)
	line := ev(`"n":1`) + "\n"
	for _, auth := range []string{"", "Bearer nope", "Bearer " + ingestToken[:len(ingestToken)-1] + "X",
		"Bearer " + ingestToken[:5], "Basic " + ingestToken, ingestToken, "Bearer " + ingestToken + "x"} {
		req, _ := http.NewRequest("POST", h.url, strings.NewReader(line))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: HTTP %d, want 401", auth, resp.StatusCode)
		}
		if wa := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(wa, "Bearer") {
			t.Errorf("Authorization %q: WWW-Authenticate %q", auth, wa)
		}
	}
	h.metricEquals(t, "flarecast_ingest_events_accepted_total", 0)
	h.metricEquals(t, `flarecast_http_ingest_requests_total{code="401"}`, 7)
	for _, tok := range []string{ingestToken, ingestToken2} {
		resp, text := h.do(t, "POST", h.url, tok, "", strings.NewReader(line))
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(text, `{"ok":true`) {
			t.Errorf("token %q: HTTP %d %s", tok, resp.StatusCode, text)
		}
	}
	// The scheme is case-insensitive (RFC 7235).
	req, _ := http.NewRequest("POST", h.url, strings.NewReader(line))
	req.Header.Set("Authorization", "bearer "+ingestToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("lower-case scheme: HTTP %d", resp.StatusCode)
	}
}

// TestHTTPIngestBodyLimit: a body over --ingest-max-body gets 413, with or
// without a Content-Length, and none of its lines is published, not even
// those before the limit.
func TestHTTPIngestBodyLimit(t *testing.T) {
	h := startHTTPIngest(t, func(c *engine.Config) { c.IngestMaxBody = 1 << 10 }, nil)
	var body strings.Builder
	for i := 0; body.Len() <= 1<<10; i++ {
		body.WriteString(ev(`"n":`+itoa(i)) + "\n")
	}
	resp, text := h.do(t, "POST", h.url, ingestToken, "", strings.NewReader(body.String()))
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("with Content-Length: HTTP %d %s, want 413", resp.StatusCode, text)
	}
	// Chunked: the server finds out while reading.
	resp, text = h.do(t, "POST", h.url, ingestToken, "", io.MultiReader(strings.NewReader(body.String())))
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked: HTTP %d %s, want 413", resp.StatusCode, text)
	}
	h.metricEquals(t, "flarecast_ingest_events_accepted_total", 0)
	h.metricEquals(t, `flarecast_http_ingest_requests_total{code="413"}`, 2)
	// Exactly at the limit is fine, and the first id proves nothing was published before.
	exact := ev(`"n":0`) + "\n"
	exact = exact[:len(exact)-2] + `,"pad":"` + strings.Repeat("x", 1<<10-len(exact)-9) + `"}` + "\n"
	if len(exact) != 1<<10 {
		t.Fatalf("test body of %d bytes", len(exact))
	}
	if r := h.post(t, exact); len(r) != 1 || !r[0].OK || r[0].MessageID != 1 {
		t.Fatalf("body at the limit: %+v", r)
	}
}

// TestHTTPIngestPerLineResults: invalid lines among good ones get their
// INVALID_EVENT in place; the reply is byte for byte what the Unix socket
// answers to the same lines (ids aside), rejections are counted alike.
func TestHTTPIngestPerLineResults(t *testing.T) {
	h := startHTTPIngest(t, func(c *engine.Config) { c.MaxMessageSize = 512 }, nil)
	lines := []string{
		ev(`"n":1`),
		`{"event_type":"incident_created","severity":"P7"}`,
		`not json`,
		``,
		ev(`"pad":"` + strings.Repeat("y", 600) + `"`),
		`{"severity":"P1"}`,
		ev(`"n":2`),
	}
	body := strings.Join(lines, "\n") + "\n"
	httpReplies := h.post(t, body)

	p := h.dialIngest(t)
	p.write(body)
	var sockReplies []ingestReply
	for range lines {
		sockReplies = append(sockReplies, p.reply())
	}
	if len(httpReplies) != len(lines) {
		t.Fatalf("%d replies for %d lines: %+v", len(httpReplies), len(lines), httpReplies)
	}
	wantOK := []bool{true, false, false, false, false, false, true}
	for i, r := range httpReplies {
		if r.OK != wantOK[i] {
			t.Errorf("line %d (%.40q): %s", i, lines[i], r.raw)
		}
		if !r.OK && (r.Code != "INVALID_EVENT" || r.raw != sockReplies[i].raw) {
			t.Errorf("line %d: HTTP replied %s, the socket %s", i, r.raw, sockReplies[i].raw)
		}
	}
	if httpReplies[6].MessageID <= httpReplies[0].MessageID {
		t.Errorf("ids %d then %d", httpReplies[0].MessageID, httpReplies[6].MessageID)
	}
	h.waitMetric(t, "flarecast_ingest_events_rejected_total", 10)
	h.waitMetric(t, "flarecast_ingest_events_accepted_total", 4)
}

// TestHTTPIngestRefusals: other paths, methods and content types.
func TestHTTPIngestRefusals(t *testing.T) {
	h := startHTTPIngest(t, nil, nil)
	base := strings.TrimSuffix(h.url, "/v1/events")
	line := ev(`"n":1`) + "\n"
	cases := []struct {
		method, url, ct string
		want            int
	}{
		{"POST", base + "/v1/event", "", 404},
		{"POST", base + "/", "", 404},
		{"GET", h.url, "", 405},
		{"PUT", h.url, "", 405},
		{"POST", h.url, "application/x-www-form-urlencoded", 415},
		{"POST", h.url, "application/xml", 415},
		{"POST", h.url, "application/json; charset=utf-8", 200},
		{"POST", h.url, "text/plain", 200},
	}
	for _, c := range cases {
		resp, text := h.do(t, c.method, c.url, ingestToken, c.ct, strings.NewReader(line))
		if resp.StatusCode != c.want {
			t.Errorf("%s %s (%s): HTTP %d %s, want %d", c.method, c.url, c.ct, resp.StatusCode, text, c.want)
		}
		if c.want == 405 && resp.Header.Get("Allow") != "POST" {
			t.Errorf("405 without Allow: POST")
		}
	}
	h.metricEquals(t, "flarecast_ingest_events_accepted_total", 2)
	h.metricEquals(t, `flarecast_http_ingest_requests_total{code="415"}`, 2)
}

// TestHTTPIngestBackpressure: with the dispatcher held and a ring of 4,
// a request of 100 events fills the ring and its reply waits: it cannot
// complete while the ring is full, whatever the machine's speed. Opened,
// the request completes with 100 oks and the subscriber gets all 100.
func TestHTTPIngestBackpressure(t *testing.T) {
	var gate *engine.DispatchGate
	h := startHTTPIngest(t, func(c *engine.Config) { c.BroadcastCapacity = 4 },
		func(e *engine.Engine) { gate = engine.GateDispatcher(e) })
	defer gate.Open()
	sub := h.dial(t, "")
	sub.subscribe("all", map[string]any{})

	gate.Shut()
	const n = 100
	var body strings.Builder
	for i := range n {
		body.WriteString(ev(`"n":`+itoa(i)) + "\n")
	}
	type result struct {
		replies []ingestReply
		status  int
		err     error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("POST", h.url, strings.NewReader(body.String()))
		req.Header.Set("Authorization", "Bearer "+ingestToken)
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		var rs []ingestReply
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var r ingestReply
			_ = json.Unmarshal(sc.Bytes(), &r)
			r.raw = sc.Text()
			rs = append(rs, r)
		}
		done <- result{replies: rs, status: resp.StatusCode, err: sc.Err()}
	}()
	// The ring fills: 4 events accepted, the rest waiting in the request.
	if !pollUntil(10*time.Second, func() bool { return h.metric(t, "flarecast_ingest_events_accepted_total") >= 4 }) {
		t.Fatal("the ring never filled")
	}
	select {
	case r := <-done:
		t.Fatalf("the request completed with the dispatcher held: HTTP %d, %d replies, %v", r.status, len(r.replies), r.err)
	default:
	}
	if got := h.metric(t, "flarecast_ingest_events_accepted_total"); got >= n {
		t.Fatalf("%v events accepted into a ring of 4 with the dispatcher held", got)
	}
	gate.Open()
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the request did not complete once the dispatcher went on")
	}
	if r.err != nil || r.status != 200 || len(r.replies) != n {
		t.Fatalf("HTTP %d, %d replies, %v", r.status, len(r.replies), r.err)
	}
	for i, rep := range r.replies {
		if !rep.OK || rep.MessageID != uint64(i+1) {
			t.Fatalf("reply %d: %s", i, rep.raw)
		}
	}
	got := sub.events(n)
	for i, id := range got {
		if id != uint64(i+1) {
			t.Fatalf("subscriber got %d at %d", id, i)
		}
	}
}

// TestHTTPIngestRefusedStart: --ingest-listen without a token file (and
// without --ingest-insecure), --ingest-insecure off loopback, an empty or
// missing token file all stop New.
func TestHTTPIngestRefusedStart(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("# nothing yet\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(*engine.Config)
		want   string
	}{
		{"no token file", func(c *engine.Config) { c.IngestListen = "127.0.0.1:0" }, "ingest-token-file"},
		{"insecure on every interface", func(c *engine.Config) { c.IngestListen, c.IngestInsecure = ":8081", true }, "loopback"},
		{"insecure on a public address", func(c *engine.Config) { c.IngestListen, c.IngestInsecure = "10.1.2.3:8081", true }, "loopback"},
		{"empty token file", func(c *engine.Config) { c.IngestListen, c.IngestTokenFile = "127.0.0.1:0", empty }, "holds no token"},
		{"missing token file", func(c *engine.Config) {
			c.IngestListen, c.IngestTokenFile = "127.0.0.1:0", filepath.Join(t.TempDir(), "nope")
		}, "no such file"},
		{"zero body", func(c *engine.Config) {
			c.IngestListen, c.IngestInsecure, c.IngestMaxBody = "127.0.0.1:0", true, 0
		}, "ingest-max-body"},
	}
	for _, c := range cases {
		cfg := engine.DefaultConfig()
		c.mutate(&cfg)
		_, err := engine.New(cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: New returned %v, want an error about %q", c.name, err, c.want)
		}
	}
	cfg := engine.DefaultConfig()
	cfg.IngestListen, cfg.IngestInsecure = "127.0.0.1:0", true
	if _, err := engine.New(cfg); err != nil {
		t.Errorf("insecure on loopback: %v", err)
	}
}

// TestHTTPIngestInsecure: with --ingest-insecure no token is needed.
func TestHTTPIngestInsecure(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.IngestListen, c.IngestInsecure = "127.0.0.1:0", true })
	resp, err := http.Post("http://"+s.eng.IngestHTTPAddr().String()+"/v1/events", "", strings.NewReader(ev(`"n":1`)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != `{"ok":true,"message_id":1}`+"\n" {
		t.Fatalf("HTTP %d %q", resp.StatusCode, b)
	}
}

// TestHTTPIngestShutdownFinishesInFlight: a request held by backpressure
// when the server is told to stop is finished, not cut: once the ring
// drains every one of its events is accepted, and Run returns cleanly.
func TestHTTPIngestShutdownFinishesInFlight(t *testing.T) {
	var gate *engine.DispatchGate
	h := startHTTPIngest(t, func(c *engine.Config) { c.BroadcastCapacity = 4 },
		func(e *engine.Engine) { gate = engine.GateDispatcher(e) })
	defer gate.Open()
	gate.Shut()
	const n = 50
	var body strings.Builder
	for i := range n {
		body.WriteString(ev(`"n":`+itoa(i)) + "\n")
	}
	done := make(chan []ingestReply, 1)
	go func() {
		req, _ := http.NewRequest("POST", h.url, strings.NewReader(body.String()))
		req.Header.Set("Authorization", "Bearer "+ingestToken)
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			done <- nil
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var rs []ingestReply
		for line := range strings.Lines(string(b)) {
			var r ingestReply
			_ = json.Unmarshal([]byte(line), &r)
			rs = append(rs, r)
		}
		done <- rs
	}()
	if !pollUntil(10*time.Second, func() bool { return h.metric(t, "flarecast_ingest_events_accepted_total") >= 4 }) {
		t.Fatal("the ring never filled")
	}
	stopped := make(chan struct{})
	go func() { h.stop(t); close(stopped) }()
	if !pollUntil(10*time.Second, func() bool { return h.status(t, "/readyz") == http.StatusServiceUnavailable }) {
		t.Fatal("the server did not start stopping")
	}
	gate.Open()
	rs := <-done
	if len(rs) != n {
		t.Fatalf("%d replies, want %d", len(rs), n)
	}
	for i, r := range rs {
		if !r.OK || r.MessageID != uint64(i+1) {
			t.Fatalf("reply %d: %+v", i, r)
		}
	}
	<-stopped
}

// TestHTTPIngestFleet: in a fleet, HTTP ingest on one instance appends
// through the shared Redis (in batches, as the socket does): the replies
// are in order with global ids, and a subscriber on another instance gets
// every accepted event. With Redis down the lines are answered UNAVAILABLE
// in a 200 reply.
func TestHTTPIngestFleet(t *testing.T) {
	rs := redistest.Start(t)
	a := startHTTPIngest(t, func(c *engine.Config) { c.Broker = rs.URL() }, nil)
	b := startServer(t, func(c *engine.Config) { c.Broker = rs.URL() })
	waitReady(t, a.testServer)
	waitReady(t, b)
	sub := b.dial(t, "")
	sub.subscribe("all", map[string]any{})

	var body strings.Builder
	const n = 300
	for i := range n {
		if i == 150 {
			body.WriteString(`{"event_type":"incident_created","severity":"P9"}` + "\n")
			continue
		}
		body.WriteString(ev(`"n":`+itoa(i)) + "\n")
	}
	replies := a.post(t, body.String())
	if len(replies) != n {
		t.Fatalf("%d replies for %d lines", len(replies), n)
	}
	var ids []uint64
	for i, r := range replies {
		if i == 150 {
			if r.OK || r.Code != "INVALID_EVENT" {
				t.Fatalf("line 150: %s", r.raw)
			}
			continue
		}
		if !r.OK || (len(ids) > 0 && r.MessageID <= ids[len(ids)-1]) {
			t.Fatalf("line %d: %s after ids %v", i, r.raw, ids[max(0, len(ids)-3):])
		}
		ids = append(ids, r.MessageID)
	}
	assertIDs(t, "B", sub.events(len(ids)), ids)

	rs.Stop()
	replies = a.post(t, ev(`"n":1`)+"\n"+ev(`"n":2`)+"\n")
	if len(replies) != 2 || replies[0].OK || replies[0].Code != "UNAVAILABLE" || replies[1].Code != "UNAVAILABLE" {
		t.Fatalf("with Redis down: %+v", replies)
	}
}
