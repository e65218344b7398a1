package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// End-to-end tests of the real binary: built once with `go build` (with
// -race when the tests run under it, so that the build reuses the test
// build's cache) and run as child processes.

// TestE2E builds the binary once and runs every end-to-end case with it.
func TestE2E(t *testing.T) {
	bin := e2eBuildBinary(t)
	t.Run("ServePublishSignal", func(t *testing.T) { testServePublishSignal(t, bin) })
	t.Run("ServeCompressionOffAndSizeUnits", func(t *testing.T) { testServeCompressionOffAndSizeUnits(t, bin) })
	t.Run("UsageErrors", func(t *testing.T) { testUsageErrors(t, bin) })
	t.Run("PublishNoServer", func(t *testing.T) { testPublishNoServer(t, bin) })
	t.Run("PublishHTTP", func(t *testing.T) { testPublishHTTP(t, bin) })
	t.Run("FleetInstanceKilled", func(t *testing.T) { testFleetInstanceKilled(t, bin) })
}

// e2eBuildBinary builds ./cmd/flarecast (this package's directory) into
// the test's temporary directory.
func e2eBuildBinary(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "flarecast")
	args := []string{"build", "-o", bin}
	if e2eRace {
		args = append(args, "-race")
	}
	cmd := exec.Command(goBin, append(args, ".")...)
	cmd.Env = e2eEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/flarecast: %v\n%s", err, out)
	}
	return bin
}

// e2eEnv is the environment without any FLARECAST_* variable, plus extra.
func e2eEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLARECAST_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// e2eBuffer is a bytes.Buffer safe for a child's output and the test.
type e2eBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *e2eBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *e2eBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func e2eFreePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// e2eServer is a running `flarecast serve`.
type e2eServer struct {
	cmd    *exec.Cmd
	listen string
	admin  string
	socket string
	stderr *e2eBuffer
	done   chan struct{}
	err    error // Wait's result, once done is closed
}

func startE2EServer(t *testing.T, bin string, extra ...string) *e2eServer {
	t.Helper()
	s := &e2eServer{
		listen: e2eFreePort(t),
		admin:  e2eFreePort(t),
		socket: filepath.Join(t.TempDir(), "s.sock"),
		stderr: &e2eBuffer{},
		done:   make(chan struct{}),
	}
	args := append([]string{"serve", "--listen", s.listen, "--admin-listen", s.admin,
		"--ingest-socket", s.socket, "--event-loops", "2"}, extra...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Env = e2eEnv()
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = s.cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("server stderr:\n%s", s.stderr.String())
		}
	})
	// Ready once /readyz answers 200.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + s.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-s.done:
			t.Fatalf("flarecast serve exited early (%v):\n%s", s.err, s.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("flarecast serve not ready after 30s (last: %v):\n%s", err, s.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// stop sends SIGTERM and returns the exit code; the server must exit
// within 10s.
func (s *e2eServer) stop(t *testing.T) int {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("flarecast serve still running 10s after SIGTERM:\n%s", s.stderr.String())
	}
	return e2eExitCode(t, s.err)
}

func e2eExitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("process did not run: %v", err)
	}
	return ee.ExitCode()
}

// e2eRun runs the binary to completion (at most 30s) and returns its exit
// code, stdout and stderr.
func e2eRun(t *testing.T, bin string, env []string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("flarecast %v did not finish within 30s\nstdout: %s\nstderr: %s", args, stdout.String(), stderr.String())
	}
	return e2eExitCode(t, err), stdout.String(), stderr.String()
}

type e2eClient struct {
	t       *testing.T
	ws      *websocket.Conn
	session string // the welcome's session_id
}

func dialE2E(t *testing.T, s *e2eServer, d *websocket.Dialer) (*e2eClient, *http.Response) {
	t.Helper()
	if d == nil {
		d = websocket.DefaultDialer
	}
	ws, resp, err := d.Dial("ws://"+s.listen+"/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	c := &e2eClient{t: t, ws: ws}
	m := c.read()
	if m["type"] != "welcome" {
		t.Fatalf("first message %v, want welcome", m)
	}
	c.session, _ = m["session_id"].(string)
	return c, resp
}

func (c *e2eClient) read() map[string]any {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var m map[string]any
	if err := c.ws.ReadJSON(&m); err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

func (c *e2eClient) subscribe(filters map[string]any) {
	c.t.Helper()
	if err := c.ws.WriteJSON(map[string]any{"type": "subscribe", "subscription_id": "s", "filters": filters}); err != nil {
		c.t.Fatal(err)
	}
	if m := c.read(); m["type"] != "subscribed" {
		c.t.Fatalf("want subscribed, got %v", m)
	}
}

// e2eIngest sends one event line over a raw connection to the ingest
// socket and returns its message_id, failing the test if it is refused.
func e2eIngest(t *testing.T, socket string, line []byte) uint64 {
	t.Helper()
	id, err := e2eTryIngest(socket, line)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// e2eTryIngest is e2eIngest for a goroutine other than the test's.
func e2eTryIngest(socket string, line []byte) (uint64, error) {
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(append(line, '\n')); err != nil {
		return 0, err
	}
	reply, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return 0, fmt.Errorf("ingest reply: %w", err)
	}
	var r struct {
		OK        bool   `json:"ok"`
		MessageID uint64 `json:"message_id"`
	}
	if err := json.Unmarshal(reply, &r); err != nil || !r.OK || r.MessageID == 0 {
		return 0, fmt.Errorf("event of %d bytes refused: %s", len(line), reply)
	}
	return r.MessageID, nil
}

var (
	e2eAcceptedLine = regexp.MustCompile(`^line (\d+): accepted message_id=(\d+)$`)
	e2eRejectedLine = regexp.MustCompile(`^line (\d+): rejected: (.+)$`)
)

// testServePublishSignal runs the server and the publish command as real
// processes: publish reports each line and exits 1 when one was
// rejected, the client gets the accepted events, SIGTERM stops the server
// cleanly after saying goodbye to the client.
func testServePublishSignal(t *testing.T, bin string) {
	s := startE2EServer(t, bin)
	c, _ := dialE2E(t, s, nil)
	c.subscribe(map[string]any{})
	deflate, resp := dialE2E(t, s, &websocket.Dialer{EnableCompression: true})
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.Contains(ext, "permessage-deflate") {
		t.Errorf("compression on by default, but the server answered Sec-WebSocket-Extensions %q", ext)
	}
	deflate.subscribe(map[string]any{"severities": []string{"P1"}})

	title := strings.Repeat("long enough to be compressed ", 20)
	file := filepath.Join(t.TempDir(), "events.ndjson")
	content := `{"event_type":"incident_created","severity":"P1","source":"e2e","title":"` + title + `"}` + "\n" +
		"\n" + // blank lines are skipped but counted
		`{"event_type":"incident_exploded","severity":"P1"}` + "\n" +
		`{"event_type":"incident_updated","severity":"P3","n":4}` + "\n"
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := e2eRun(t, bin, e2eEnv(), "", "publish", "--ingest-socket", s.socket, file)
	if code != 1 {
		t.Errorf("publish with a rejected line exited %d, want 1 (stderr %q)", code, stderr)
	}
	out := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	if len(out) != 3 {
		t.Fatalf("publish printed %q, want 3 lines", stdout)
	}
	var ids []string
	for i, want := range []struct {
		line     string
		accepted bool
	}{{"1", true}, {"3", false}, {"4", true}} {
		if want.accepted {
			m := e2eAcceptedLine.FindStringSubmatch(out[i])
			if m == nil || m[1] != want.line {
				t.Fatalf("output line %q, want `line %s: accepted message_id=N`", out[i], want.line)
			}
			ids = append(ids, m[2])
		} else {
			m := e2eRejectedLine.FindStringSubmatch(out[i])
			if m == nil || m[1] != want.line || !strings.Contains(m[2], "INVALID_EVENT") || !strings.Contains(m[2], "incident_exploded") {
				t.Fatalf("output line %q, want `line %s: rejected: INVALID_EVENT …incident_exploded…`", out[i], want.line)
			}
		}
	}
	if !strings.Contains(stderr, "reject") {
		t.Errorf("publish stderr %q does not say events were rejected", stderr)
	}

	// Both accepted events reach the match-all client, with the printed ids.
	for i := range 2 {
		m := c.read()
		if m["type"] != "event" || fmt.Sprint(m["message_id"]) != ids[i] {
			t.Fatalf("event %d: got %v, want message_id %s", i, m, ids[i])
		}
	}
	// The P1 event reaches the deflate client (compressed: it is large).
	if m := deflate.read(); m["type"] != "event" || fmt.Sprint(m["message_id"]) != ids[0] {
		t.Fatalf("deflate client: got %v, want message_id %s", m, ids[0])
	} else if ev, _ := m["event"].(map[string]any); ev["title"] != title || ev["priority"] != "high" {
		t.Fatalf("deflate client: event %v", ev)
	}

	// Publishing from stdin with only good lines exits 0.
	code, stdout, stderr = e2eRun(t, bin, e2eEnv(), `{"event_type":"system_event"}`+"\n", "publish", "--ingest-socket", s.socket, "-")
	if code != 0 || !e2eAcceptedLine.MatchString(strings.TrimSpace(stdout)) {
		t.Errorf("publish from stdin: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if m := c.read(); m["type"] != "event" {
		t.Fatalf("want the stdin event, got %v", m)
	}

	// SIGTERM: goodbye to the clients, exit 0, socket removed.
	if code := s.stop(t); code != 0 {
		t.Errorf("serve exited %d after SIGTERM, want 0:\n%s", code, s.stderr.String())
	}
	for _, cl := range []*e2eClient{c, deflate} {
		m := cl.read()
		if m["type"] != "closing" || m["reason"] != "server_shutdown" {
			t.Errorf("after SIGTERM the client got %v, want closing/server_shutdown", m)
		}
		_ = cl.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := cl.ws.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Errorf("after closing: %v, want a 1001 close frame", err)
		}
	}
	if _, err := os.Lstat(s.socket); !os.IsNotExist(err) {
		t.Errorf("ingest socket %s left behind after exit (%v)", s.socket, err)
	}
}

// testServeCompressionOffAndSizeUnits: `--compression false` (value as
// the next argument) and `--max-message-size 1MiB` are accepted and take
// effect.
func testServeCompressionOffAndSizeUnits(t *testing.T, bin string) {
	s := startE2EServer(t, bin, "--compression", "false", "--max-message-size", "1MiB")
	c, resp := dialE2E(t, s, &websocket.Dialer{EnableCompression: true})
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Errorf("--compression false, but the server negotiated %q", ext)
	}
	c.subscribe(map[string]any{})
	// 200KB is over the 64KiB default and under 1MiB.
	big, _ := json.Marshal(map[string]any{"event_type": "comment_added", "body": strings.Repeat("b", 200<<10)})
	id := e2eIngest(t, s.socket, big)
	m := c.read()
	if m["type"] != "event" || fmt.Sprint(m["message_id"]) != fmt.Sprint(id) {
		t.Fatalf("got %v, want event %d", m["type"], id)
	}
	if code := s.stop(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// testUsageErrors: a bad command line or environment exits 2 with a
// one-line message naming what is wrong, and starts nothing.
func testUsageErrors(t *testing.T, bin string) {
	tmp := t.TempDir()
	safe := []string{"--listen", "127.0.0.1:0", "--admin-listen", "", "--ingest-socket", filepath.Join(tmp, "u.sock")}
	serve := func(extra ...string) []string { return append(append([]string{"serve"}, safe...), extra...) }
	badAdapters := filepath.Join(tmp, "adapters.yaml")
	if err := os.WriteFile(badAdapters, []byte("alertmanager:\n  severty_label: level\n  default_severity: high\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		env     []string
		args    []string
		mention string
	}{
		{"unknown flag", nil, serve("--bogus"), "bogus"},
		{"unknown flag before the others", nil, []string{"serve", "--no-such-flag", "x"}, "no-such-flag"},
		{"bad integer", nil, serve("--max-subscriptions", "abc"), "max-subscriptions"},
		{"bad boolean", nil, serve("--compression", "maybe"), "compression"},
		{"bad size", nil, serve("--max-message-size", "12XB"), "max-message-size"},
		{"bad duration", nil, serve("--heartbeat-interval", "soon"), "heartbeat-interval"},
		{"value out of range", nil, serve("--max-subscriptions", "0"), "max-subscriptions"},
		{"stray argument", nil, serve("extra"), "extra"},
		{"missing value", nil, serve("--max-subscriptions"), "max-subscriptions"},
		{"bad environment variable", []string{"FLARECAST_MAX_SUBSCRIPTIONS=abc"}, serve(), "FLARECAST_MAX_SUBSCRIPTIONS"},
		{"bad environment size", []string{"FLARECAST_MAX_MESSAGE_SIZE=lots"}, serve(), "FLARECAST_MAX_MESSAGE_SIZE"},
		{"size overflowing with its unit", nil, serve("--max-message-size", "99999999999GiB"), "max-message-size"},
		{"size over 1TiB", nil, serve("--history-max-bytes", "2048GiB"), "history-max-bytes"},
		{"size beyond int64", nil, serve("--max-header-size", "99999999999999999999999"), "max-header-size"},
		{"environment size overflowing", []string{"FLARECAST_COMPRESSION_MIN_SIZE=99999999999GiB"}, serve(), "FLARECAST_COMPRESSION_MIN_SIZE"},
		{"negative rate", nil, serve("--rate-limit", "-1"), "rate-limit"},
		{"NaN rate", nil, serve("--rate-limit", "NaN"), "rate-limit"},
		{"infinite rate", nil, serve("--rate-limit", "Inf"), "rate-limit"},
		{"rate rounding to zero", nil, serve("--rate-limit", "1e-400"), "rate-limit"},
		{"rate overflowing its interval", nil, serve("--rate-limit", "1e-300"), "rate-limit"},
		{"rate over one per nanosecond", nil, serve("--rate-limit", "2e9"), "rate-limit"},
		{"burst overflowing the bucket", nil, serve("--rate-limit", "1", "--rate-burst", "9000000000000000000"), "rate-burst"},
		{"tiny rate from the environment", []string{"FLARECAST_RATE_LIMIT=1e-300"}, serve(), "rate-limit"},
		{"zero filter values", nil, serve("--max-filter-values", "0"), "max-filter-values"},
		{"bad filter values", []string{"FLARECAST_MAX_FILTER_VALUES=many"}, serve(), "FLARECAST_MAX_FILTER_VALUES"},
		{"publish unknown flag", nil, []string{"publish", "--bogus"}, "bogus"},
		{"ingest-listen without a token file", nil, serve("--ingest-listen", "127.0.0.1:0"), "ingest-token-file"},
		{"ingest-insecure off loopback", nil, serve("--ingest-listen", ":0", "--ingest-insecure"), "loopback"},
		{"ingest token file missing", nil, serve("--ingest-listen", "127.0.0.1:0", "--ingest-token-file", filepath.Join(tmp, "none")), "ingest token file"},
		{"bad ingest-max-body", []string{"FLARECAST_INGEST_MAX_BODY=huge"}, serve(), "FLARECAST_INGEST_MAX_BODY"},
		{"adapters config missing", nil, serve("--ingest-listen", "127.0.0.1:0", "--ingest-insecure", "--adapters-config", filepath.Join(tmp, "none.yaml")), "adapters config"},
		{"adapters config with two mistakes", nil, serve("--ingest-listen", "127.0.0.1:0", "--ingest-insecure", "--adapters-config", badAdapters), "severty_label"},
		{"adapters config without ingest-listen", []string{"FLARECAST_ADAPTERS_CONFIG=" + badAdapters}, serve(), "adapters-config needs ingest-listen"},
		{"publish token without url", nil, []string{"publish", "--token", "t"}, "--url"},
		{"publish bad url", nil, []string{"publish", "--url", "ftp://x"}, "--url"},
		{"publish two files", nil, []string{"publish", "--ingest-socket", filepath.Join(tmp, "u.sock"), "a", "b"}, "file"},
		{"unknown command", nil, []string{"frobnicate"}, "frobnicate"},
	}
	t.Run("cases", func(t *testing.T) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				code, stdout, stderr := e2eRun(t, bin, e2eEnv(tc.env...), "", tc.args...)
				if code != 2 {
					t.Errorf("%v (env %v): exit %d, want 2\nstdout %q\nstderr %q", tc.args, tc.env, code, stdout, stderr)
				}
				msg := strings.TrimRight(stderr, "\n")
				if msg == "" || strings.Contains(msg, "\n") {
					t.Errorf("stderr %q: want exactly one line", stderr)
				}
				if !strings.Contains(msg, tc.mention) {
					t.Errorf("stderr %q does not name %q", msg, tc.mention)
				}
			})
		}
	})
	if _, err := os.Lstat(filepath.Join(tmp, "u.sock")); !os.IsNotExist(err) {
		t.Errorf("a refused command line created the ingest socket (%v)", err)
	}
}

// testPublishNoServer: publish with nothing listening fails (exit 1) with
// a message naming the socket.
func testPublishNoServer(t *testing.T, bin string) {
	sock := filepath.Join(t.TempDir(), "nobody.sock")
	code, _, stderr := e2eRun(t, bin, e2eEnv(), `{"event_type":"system_event"}`+"\n", "publish", "--ingest-socket", sock)
	if code != 1 || !strings.Contains(stderr, sock) {
		t.Errorf("publish to a missing socket: exit %d, stderr %q; want 1 and the socket named", code, stderr)
	}
}

// testPublishHTTP: `flarecast publish --url` sends over a real server's
// HTTP ingest (--ingest-listen, --ingest-token-file), with the same output
// and exit codes as over the socket; a wrong token exits 1 naming 401.
func testPublishHTTP(t *testing.T, bin string) {
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("# e2e\ne2e-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ingestAddr := e2eFreePort(t)
	s := startE2EServer(t, bin, "--ingest-listen", ingestAddr, "--ingest-token-file", tokens)
	c, _ := dialE2E(t, s, nil)
	c.subscribe(map[string]any{})
	url := "http://" + ingestAddr

	content := `{"event_type":"incident_created","severity":"P1"}` + "\n\n" +
		`{"event_type":"incident_created","severity":"P9"}` + "\n" +
		`{"event_type":"incident_updated","n":4}` + "\n"
	code, stdout, stderr := e2eRun(t, bin, e2eEnv(), content, "publish", "--url", url, "--token-file", tokens)
	if code != 1 {
		t.Errorf("publish --url with a rejected line exited %d, want 1 (stderr %q)", code, stderr)
	}
	out := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	if len(out) != 3 || !e2eAcceptedLine.MatchString(out[0]) || !e2eAcceptedLine.MatchString(out[2]) {
		t.Fatalf("publish --url printed %q", stdout)
	}
	if m := e2eRejectedLine.FindStringSubmatch(out[1]); m == nil || m[1] != "3" || !strings.Contains(m[2], "INVALID_EVENT") {
		t.Fatalf("output line %q, want `line 3: rejected: INVALID_EVENT …`", out[1])
	}
	for i, line := range []string{out[0], out[2]} {
		id := e2eAcceptedLine.FindStringSubmatch(line)[2]
		if m := c.read(); m["type"] != "event" || fmt.Sprint(m["message_id"]) != id {
			t.Fatalf("event %d: got %v, want message_id %s", i, m, id)
		}
	}

	// The token from the environment, only good lines: exit 0.
	code, stdout, stderr = e2eRun(t, bin, e2eEnv("FLARECAST_TOKEN=e2e-token", "FLARECAST_URL="+url),
		`{"event_type":"system_event"}`+"\n", "publish")
	if code != 0 || !e2eAcceptedLine.MatchString(strings.TrimSpace(stdout)) {
		t.Errorf("publish with FLARECAST_URL/FLARECAST_TOKEN: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if m := c.read(); m["type"] != "event" {
		t.Fatalf("want the event, got %v", m)
	}

	// A wrong token: every line rejected, 401 named, exit 1.
	code, stdout, _ = e2eRun(t, bin, e2eEnv(), `{"event_type":"system_event"}`+"\n", "publish", "--url", url, "--token", "nope")
	if code != 1 || !strings.Contains(stdout, "401") || !strings.Contains(stdout, "line 1: rejected") {
		t.Errorf("wrong token: exit %d, stdout %q", code, stdout)
	}
	if code := s.stop(t); code != 0 {
		t.Errorf("serve exited %d after SIGTERM:\n%s", code, s.stderr.String())
	}
}
