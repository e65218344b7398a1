package board_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"image/png"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flarecast/flarecast/board"
	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/internal/cutproxy"
)

// server is a real flarecast engine on loopback ports; events are published
// through Engine.Publish, the call the ingest socket makes.
type server struct {
	eng    *engine.Engine
	ws     string // ws://127.0.0.1:PORT/ws
	admin  string // http://127.0.0.1:PORT
	cancel context.CancelFunc
	done   chan error
}

func startServer(t *testing.T, mutate func(*engine.Config)) *server {
	t.Helper()
	cfg := engine.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	cfg.IngestSocket = ""
	cfg.EventLoops = 1
	if mutate != nil {
		mutate(&cfg)
	}
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatalf("engine.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{eng: eng, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- eng.Run(ctx) }()
	select {
	case <-eng.Ready():
	case err := <-s.done:
		t.Fatalf("engine.Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("engine did not start")
	}
	s.ws = "ws://" + eng.Addr().String() + cfg.Path
	s.admin = "http://" + eng.AdminAddr().String()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("engine.Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("engine did not stop")
		}
	})
	return s
}

// publish sends events and returns their message_ids.
func (s *server) publish(t *testing.T, lines ...string) []uint64 {
	t.Helper()
	ids := make([]uint64, len(lines))
	for i, l := range lines {
		ev, err := event.Parse([]byte(l))
		if err != nil {
			t.Fatalf("event %s: %v", l, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ids[i], err = s.eng.Publish(ctx, ev)
		cancel()
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	return ids
}

// chromium returns the browser's path, or skips (fails in CI) without one.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed: .ci/run must `apt-get install -y chromium`")
	}
	t.Skip("SKIPPING the browser test: chromium is not installed (apt-get install -y chromium)")
	return ""
}

// browser starts a headless Chromium with a fresh profile and returns a tab.
// JavaScript exceptions and console errors of the page fail the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTime := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelTime(); cancelTab(); cancelAlloc() })
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1440, 900)); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	consoleCtx, stopConsole := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for m, err := range chromedp.Console(consoleCtx) {
			if err != nil {
				return
			}
			switch {
			case m.IsException():
				t.Errorf("page exception: %s", m)
			case m.Type == chromedp.ConsoleError && !strings.Contains(m.Text, "WebSocket") && !strings.Contains(m.Text, "favicon"):
				// A refused or cut WebSocket logs an error by design; nothing else may.
				t.Errorf("page console error: %s", m)
			default:
				t.Logf("page console: %s", m)
			}
		}
	}()
	t.Cleanup(func() { stopConsole(); wg.Wait() })
	return ctx
}

type boardState struct {
	Status     string   `json:"status"`
	Detail     string   `json:"statusDetail"`
	SessionID  string   `json:"sessionId"`
	Resumed    bool     `json:"resumed"`
	Welcomes   int      `json:"welcomes"`
	Resumes    int      `json:"resumes"`
	Subscribed bool     `json:"subscribed"`
	Received   int      `json:"received"`
	Duplicates int      `json:"duplicates"`
	Acked      uint64   `json:"acked"`
	MaxSeen    uint64   `json:"maxSeen"`
	Closings   []string `json:"closings"`
	Errors     []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
	Filters struct {
		Severities []string `json:"severities"`
	} `json:"filters"`
}

type row struct {
	ID       uint64 `json:"id"`
	Severity string `json:"severity"`
	Type     string `json:"type"`
	Source   string `json:"source"`
}

func state(t *testing.T, ctx context.Context) boardState {
	t.Helper()
	st, err := chromedp.Run(ctx, chromedp.Evaluate[boardState](`window.__board.state()`))
	if err != nil {
		t.Fatalf("read board state: %v", err)
	}
	return st
}

func rows(t *testing.T, ctx context.Context) []row {
	t.Helper()
	rs, err := chromedp.Run(ctx, chromedp.Evaluate[[]row](`window.__board.rows()`))
	if err != nil {
		t.Fatalf("read board rows: %v", err)
	}
	return rs
}

// waitUntil polls the page until ok holds, or fails after a deadline with
// what it saw last.
func waitUntil(t *testing.T, ctx context.Context, what string, ok func(boardState, []row) bool) (boardState, []row) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, rs := state(t, ctx), rows(t, ctx)
		if ok(st, rs) {
			return st, rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; board state %+v, rows %v", what, st, rs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ids(rs []row) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// newestFirst returns the ids of the published events that pass keep, in
// the order the board shows them.
func newestFirst(published []published, keep func(published) bool) []uint64 {
	var out []uint64
	for i := len(published) - 1; i >= 0; i-- {
		if keep == nil || keep(published[i]) {
			out = append(out, published[i].id)
		}
	}
	return out
}

type published struct {
	id       uint64
	severity string
}

// incidents is a realistic stream: incidents opening, escalating, being
// worked and resolved, from several sources. Each call returns n events
// starting at the k-th template.
func incidents(k, n int) []string {
	type tpl struct{ typ, sev, state, src, inc, res, labels, title string }
	all := []tpl{
		{"alert_received", "P1", "Detected", "llm-sentinel", "INC-2041", `"api-gateway"`, `"env":"production","region":"eu-west-1"`, "5xx rate above 5% for 3 minutes"},
		{"incident_created", "P1", "Detected", "llm-sentinel", "INC-2041", `"api-gateway","checkout"`, `"env":"production","team":"payments"`, "Checkout errors spike after deploy 7f3c2"},
		{"notification_sent", "P1", "Triaged", "pager", "INC-2041", `"checkout"`, `"env":"production","channel":"oncall-payments"`, "Paged primary on-call (m.okafor)"},
		{"alert_received", "P3", "Detected", "prometheus", "INC-2042", `"search-indexer"`, `"env":"staging"`, "Indexer lag above 2 minutes"},
		{"escalated", "P0", "Investigating", "llm-sentinel", "INC-2041", `"checkout","payments-db"`, `"env":"production","team":"payments"`, "Escalated to P0: card payments failing in EU"},
		{"playbook_started", "P0", "Remediating", "runbook-bot", "INC-2041", `"checkout"`, `"env":"production","playbook":"rollback"`, "Playbook rollback-deploy started"},
		{"assignment_changed", "P2", "Investigating", "incident-ui", "INC-2039", `"mobile-push"`, `"env":"production","team":"mobile"`, "Assigned to j.lindqvist"},
		{"comment_added", "P2", "Investigating", "incident-ui", "INC-2039", `"mobile-push"`, `"env":"production"`, "APNs certificate renewal pending"},
		{"playbook_action_executed", "P0", "Remediating", "runbook-bot", "INC-2041", `"checkout"`, `"env":"production","step":"3/5"`, "Rolled back checkout to 7f3b9"},
		{"alert_received", "P4", "Detected", "cloudwatch", "INC-2043", `"batch-reports"`, `"env":"production"`, "Nightly report job took 41 min"},
		{"incident_updated", "P1", "Investigating", "llm-sentinel", "INC-2044", `"auth-service"`, `"env":"production","team":"identity"`, "Login latency p99 at 2.3s"},
		{"playbook_completed", "P0", "Remediating", "runbook-bot", "INC-2041", `"checkout"`, `"env":"production","playbook":"rollback"`, "Rollback finished: error rate back to 0.2%"},
		{"system_event", "P4", "Detected", "flarecast", "", `"flarecast"`, `"env":"production"`, "Ingest producer reconnected"},
		{"incident_created", "P2", "Detected", "datadog", "INC-2045", `"image-resizer"`, `"env":"production","team":"media"`, "Thumbnail queue depth growing"},
		{"incident_resolved", "P0", "Resolved", "incident-ui", "INC-2041", `"checkout","payments-db"`, `"env":"production","team":"payments"`, "Resolved: card payments healthy for 15 min"},
		{"alert_converted", "P3", "Triaged", "prometheus", "INC-2042", `"search-indexer"`, `"env":"staging"`, "Alert converted to incident"},
		{"escalated", "P2", "Investigating", "datadog", "INC-2045", `"image-resizer","cdn"`, `"env":"production","team":"media"`, "Escalated to media on-call"},
		{"incident_updated", "P1", "Remediating", "llm-sentinel", "INC-2044", `"auth-service","redis-sessions"`, `"env":"production","team":"identity"`, "Session cache evictions identified"},
		{"notification_sent", "P3", "Triaged", "slack", "INC-2042", `"search-indexer"`, `"channel":"search-alerts"`, "Posted to #search-alerts"},
		{"incident_closed", "P2", "Closed", "incident-ui", "INC-2039", `"mobile-push"`, `"env":"production","team":"mobile"`, "Closed after certificate renewal"},
	}
	out := make([]string, n)
	for i := range out {
		e := all[(k+i)%len(all)]
		inc := ""
		if e.inc != "" {
			inc = `,"incident_id":"` + e.inc + `"`
		}
		out[i] = fmt.Sprintf(`{"event_type":%q,"severity":%q,"state":%q,"source":%q%s,"affected_resources":[%s],"labels":{%s},"title":%q}`,
			e.typ, e.sev, e.state, e.src, inc, e.res, e.labels, e.title)
	}
	return out
}

func severityOf(line string) string {
	var v struct{ Severity string }
	_ = json.Unmarshal([]byte(line), &v)
	return v.Severity
}

func (s *server) publishAll(t *testing.T, all *[]published, lines ...string) {
	t.Helper()
	for i, id := range s.publish(t, lines...) {
		*all = append(*all, published{id: id, severity: severityOf(lines[i])})
	}
}

// normalP1 is a P1 event in the normal lane, published last in a batch of
// critical and high ones: the board acks the highest message_id it received.
const normalP1 = `{"event_type":"incident_updated","severity":"P1","state":"Investigating","source":"llm-sentinel","incident_id":"INC-2044","affected_resources":["auth-service"],"labels":{"env":"production"},"title":"Error budget burn slowing"}`

// TestBoardInChromium drives the board in a real headless Chromium against a
// running flarecast: rows appear, the severity filter re-subscribes, and a
// connection cut in the network is resumed with nothing missed.
func TestBoardInChromium(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.HeartbeatInterval = 2 * time.Second })
	ctx := browser(t)
	var all []published

	// 1. Served at / on the admin port, the page finds the WebSocket on its own.
	if err := chromedp.Do(ctx, chromedp.Navigate(s.admin+"/")); err != nil {
		t.Fatalf("open board: %v", err)
	}
	waitUntil(t, ctx, "the board to go live on its own WebSocket URL", func(st boardState, _ []row) bool {
		return st.Status == "live" && st.Subscribed
	})
	url, err := chromedp.Run(ctx, chromedp.Evaluate[string](`window.__board.url()`))
	if err != nil || url != s.ws {
		t.Fatalf("board chose WebSocket %q (%v), want %q", url, err, s.ws)
	}
	s.publishAll(t, &all, incidents(3, 1)...)
	waitUntil(t, ctx, "the first event", func(_ boardState, rs []row) bool { return len(rs) == 1 && rs[0].ID == all[0].id })

	// 2. Through a proxy the test can cut (?ws= overrides the URL).
	p := cutproxy.Start(t, strings.TrimPrefix(strings.TrimSuffix(s.ws, "/ws"), "ws://"))
	proxied := "ws://" + p.Addr() + "/ws"
	if err := chromedp.Do(ctx, chromedp.Navigate(s.admin+"/?ws="+proxied)); err != nil {
		t.Fatalf("open board: %v", err)
	}
	waitUntil(t, ctx, "the proxied board to go live", func(st boardState, _ []row) bool {
		return st.Status == "live" && st.Subscribed
	})
	before := len(all)
	s.publishAll(t, &all, incidents(0, 20)...)
	want := newestFirst(all[before:], nil)
	_, rs := waitUntil(t, ctx, "20 rows, newest first", func(_ boardState, rs []row) bool { return slices.Equal(ids(rs), want) })
	if rs[0].Source == "" || rs[0].Type == "" {
		t.Fatalf("row without source or type: %+v", rs[0])
	}

	// 3. Severity filter: untick P2, P3, P4. The board replaces its
	// subscription (refilled from history) and shows P0 and P1 only.
	for _, sev := range []string{"P2", "P3", "P4"} {
		if err := chromedp.Do(ctx, chromedp.Click(`input[name=severity][value=`+sev+`]`, chromedp.NodeVisible)); err != nil {
			t.Fatalf("click %s: %v", sev, err)
		}
	}
	urgent := func(e published) bool { return e.severity == "P0" || e.severity == "P1" }
	want = newestFirst(all, urgent)
	waitUntil(t, ctx, "only P0 and P1 rows", func(st boardState, rs []row) bool {
		return st.Subscribed && slices.Equal(st.Filters.Severities, []string{"P0", "P1"}) && slices.Equal(ids(rs), want)
	})
	s.publishAll(t, &all, append(incidents(5, 9), normalP1)...)
	want = newestFirst(all, urgent)
	_, rs = waitUntil(t, ctx, "new P0 and P1 rows only", func(_ boardState, rs []row) bool { return slices.Equal(ids(rs), want) })
	for _, r := range rs {
		if r.Severity != "P0" && r.Severity != "P1" {
			t.Fatalf("row %+v does not match the severity filter", r)
		}
	}

	// 4. Cut the connection in the network, publish while the board is
	// away, and see it resume its session with every missed event, once.
	last := all[len(all)-1].id
	st, _ := waitUntil(t, ctx, "the board to acknowledge what it has", func(st boardState, _ []row) bool { return st.Acked == last })
	session := st.SessionID
	p.HoldNew()
	p.Cut()
	waitUntil(t, ctx, "the board to notice the cut", func(st boardState, _ []row) bool { return st.Status != "live" })
	s.publishAll(t, &all, append(incidents(10, 7), normalP1)...)
	p.Release()
	want = newestFirst(all, urgent)
	st, rs = waitUntil(t, ctx, "the resumed board to show the missed events", func(st boardState, rs []row) bool {
		return st.Status == "live" && st.Resumes == 1 && slices.Equal(ids(rs), want)
	})
	if !st.Resumed || st.SessionID != session {
		t.Fatalf("board did not resume its session %s: %+v", session, st)
	}
	if len(st.Errors) > 0 {
		t.Fatalf("board got protocol errors: %+v", st.Errors)
	}

	// 5. Widen the filter again: every severity, refilled from history.
	for _, sev := range []string{"P2", "P3", "P4"} {
		if err := chromedp.Do(ctx, chromedp.Click(`input[name=severity][value=`+sev+`]`, chromedp.NodeVisible)); err != nil {
			t.Fatalf("click %s: %v", sev, err)
		}
	}
	want = newestFirst(all, nil)
	waitUntil(t, ctx, "every event back", func(st boardState, rs []row) bool {
		return st.Subscribed && len(st.Filters.Severities) == 0 && slices.Equal(ids(rs), want)
	})

	// 6. A board opened with ?since= starts from history: a fresh page
	// showing a realistic stream, for the screenshot.
	since := all[len(all)-1].id
	s.publishAll(t, &all, incidents(0, 20)...)
	if err := chromedp.Do(ctx, chromedp.Navigate(fmt.Sprintf("%s/?since=%d", s.admin, since))); err != nil {
		t.Fatalf("open board: %v", err)
	}
	want = newestFirst(all, func(e published) bool { return e.id > since })
	waitUntil(t, ctx, "the backfilled board", func(st boardState, rs []row) bool {
		return st.Status == "live" && slices.Equal(ids(rs), want)
	})

	// 7. The screenshot: saved as a test artifact, and checked not to be blank.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`new Promise((ok) => { const f = () => document.querySelector('#feed li.new') ? setTimeout(f, 50) : ok(true); f(); })`, chromedp.EvalAwaitPromise)); err != nil {
		t.Fatalf("wait for the row highlight to fade: %v", err)
	}
	shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.ArtifactDir(), "board.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	checkNotBlank(t, shot)
	// 8. The DOM stays bounded: with ?rows=10 and the whole window
	// replayed (?since=0), the newest ten events are shown.
	if err := chromedp.Do(ctx, chromedp.Navigate(s.admin+"/?since=0&rows=10")); err != nil {
		t.Fatalf("open board: %v", err)
	}
	want = newestFirst(all, nil)[:10]
	waitUntil(t, ctx, "the newest ten rows only", func(st boardState, rs []row) bool {
		return st.Received == len(all) && slices.Equal(ids(rs), want)
	})

	if os.Getenv("BOARD_UPDATE_SCREENSHOT") == "1" {
		if err := os.WriteFile(filepath.Join("..", "docs", "board.png"), shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("updated docs/board.png")
	}
}

// checkNotBlank decodes the screenshot and checks that it shows a page with
// content: many colours, and a good share of pixels unlike the background.
func checkNotBlank(t *testing.T, shot []byte) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	b := img.Bounds()
	if b.Dx() < 800 || b.Dy() < 600 {
		t.Fatalf("screenshot is %dx%d", b.Dx(), b.Dy())
	}
	// The background is the commonest colour; count the pixels unlike it.
	colours := map[[3]uint32]int{}
	total := 0
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			colours[[3]uint32{r >> 8, g >> 8, bl >> 8}]++
			total++
		}
	}
	var bg [3]uint32
	for c, n := range colours {
		if n > colours[bg] {
			bg = c
		}
	}
	differ := 0
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			if !sameColour(img.At(x, y), color.RGBA{uint8(bg[0]), uint8(bg[1]), uint8(bg[2]), 255}) {
				differ++
			}
		}
	}
	share := float64(differ) / float64(total)
	t.Logf("screenshot %dx%d: %d distinct colours, %.1f%% of pixels unlike the background", b.Dx(), b.Dy(), len(colours), share*100)
	// Severity colours, badges and text render hundreds of colours; a blank
	// or unstyled page has a handful.
	if len(colours) < 200 || share < 0.10 {
		t.Fatalf("screenshot looks blank: %d colours, %.1f%% non-background", len(colours), share*100)
	}
	// The P0 red of the severity stripe and badge must be there.
	red := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Min.X+400 && x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if r>>8 > 230 && g>>8 < 110 && bl>>8 < 110 {
				red++
			}
		}
	}
	if red < 100 {
		t.Fatalf("screenshot has no P0 red (%d pixels)", red)
	}
}

func sameColour(a, b color.Color) bool {
	ar, ag, ab, _ := a.RGBA()
	br, bg, bb, _ := b.RGBA()
	d := func(x, y uint32) uint32 {
		if x > y {
			return x - y
		}
		return y - x
	}
	return d(ar, br)>>8 < 8 && d(ag, bg)>>8 < 8 && d(ab, bb)>>8 < 8
}

// TestBoardServed checks the HTTP side without a browser: the page at / on
// the admin port, its WebSocket hint, its security headers, and --board=false.
func TestBoardServed(t *testing.T) {
	s := startServer(t, nil)
	resp, err := http.Get(s.admin + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET / = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	_, port, _ := net.SplitHostPort(strings.TrimSuffix(strings.TrimPrefix(s.ws, "ws://"), "/ws"))
	hint := `<meta name="flarecast-ws" content="{&#34;port&#34;:&#34;` + port + `&#34;,&#34;path&#34;:&#34;/ws&#34;}">`
	if !bytes.Contains(body, []byte(hint)) {
		t.Fatalf("page lacks the WebSocket hint %s", hint)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'sha256-") || strings.Contains(csp, "unsafe-inline") {
		t.Fatalf("Content-Security-Policy %q does not pin the inline script", csp)
	}
	if bytes.Contains(body, []byte("http://")) || bytes.Contains(body, []byte("https://")) {
		t.Fatal("the page refers to another site; it must be self-contained")
	}
	// Through a reverse proxy the board and the WebSocket share an origin:
	// the page gets no port and uses its own.
	req, _ := http.NewRequest("GET", s.admin+"/", nil)
	req.Header.Set("X-Forwarded-Proto", "https")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if hint := `content="{&#34;path&#34;:&#34;/ws&#34;}"`; !bytes.Contains(body, []byte(hint)) {
		t.Fatalf("proxied page lacks the same-origin hint %s", hint)
	}
	if resp, err := http.Get(s.admin + "/nope"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("GET /nope: %v %v", resp, err)
	}

	off := startServer(t, func(c *engine.Config) { c.Board = false })
	resp, err = http.Get(off.admin + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET / with the board off = %d, want 404", resp.StatusCode)
	}
}

// TestClientBundle: the page carries the client package's bundle inline,
// in the one module script the Content-Security-Policy pins, and
// ScriptHandler serves the same bundle as a JavaScript module.
func TestClientBundle(t *testing.T) {
	js := board.ClientJS()
	if !bytes.Contains(js, []byte("export class FlarecastClient")) {
		t.Fatal("flarecast.js is not the @flarecast/client bundle (npm run board in clients/js)")
	}
	rec := httptest.NewRecorder()
	board.Handler(board.Config{}).ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	page := rec.Body.Bytes()
	if !bytes.Contains(page, js) || bytes.Contains(page, []byte("{{FLARECAST_CLIENT}}")) {
		t.Fatal("the page does not carry the client bundle inline")
	}
	if n := bytes.Count(page, []byte("<script")); n != 1 {
		t.Fatalf("the page has %d scripts, want the one module script", n)
	}
	csp := rec.Header().Get("Content-Security-Policy")
	if script, _, _ := strings.Cut(csp[strings.Index(csp, "script-src"):], ";"); strings.Count(script, "'sha256-") != 1 || strings.Contains(csp, "'self'") {
		t.Fatalf("Content-Security-Policy %q must pin exactly the one inline script", csp)
	}
	rec = httptest.NewRecorder()
	board.ScriptHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/board/flarecast.js", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/javascript; charset=utf-8" || !bytes.Equal(rec.Body.Bytes(), js) {
		t.Fatalf("ScriptHandler: %d %q, %d bytes", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
	}
}
