package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/internal/cutproxy"
	"github.com/flarecast/flarecast/internal/enginetest"
)

// The tests run `flarecast tail` as a real process: the test binary
// re-executes itself into main() (TestTailMainProcess), so exit codes,
// stdout and stderr are the command's own.

const mainProcessEnv = "FLARECAST_TAIL_TEST_MAIN"

// TestTailMainProcess is not a test: it is the child process that runs main
// with the arguments after "--" (startTail passes "tail" and its flags).
func TestTailMainProcess(t *testing.T) {
	if os.Getenv(mainProcessEnv) != "1" {
		t.Skip("helper process for the tail tests")
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Args = append([]string{"flarecast"}, args...)
	main()
	os.Exit(0)
}

// tailProcess is a running `flarecast tail`.
type tailProcess struct {
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startTail(t *testing.T, args ...string) *tailProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestTailMainProcess$", "--", "tail"}, args...)...)
	cmd.Env = append(os.Environ(), mainProcessEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &tailProcess{cmd: cmd, lines: make(chan string, 1000), stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

// next returns the next stdout line, failing after a deadline.
func (p *tailProcess) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatalf("tail exited early (%v); stderr:\n%s", p.err, p.stderr)
		}
		return l
	case <-time.After(15 * time.Second):
		t.Fatalf("no line from tail within 15s; stderr:\n%s", p.stderr)
	}
	return ""
}

// exit waits for the process and returns its exit code, and checks that
// stdout had nothing more.
func (p *tailProcess) exit(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("tail did not exit; stderr:\n%s", p.stderr)
	}
	for l := range p.lines {
		t.Errorf("unexpected extra output line: %q", l)
	}
	return p.cmd.ProcessState.ExitCode()
}

// runTail runs tail to completion and returns its exit code, stdout and stderr.
func runTail(t *testing.T, args ...string) (int, []string, string) {
	t.Helper()
	p := startTail(t, args...)
	var out []string
	for l := range p.lines {
		out = append(out, l)
	}
	code := p.exit(t)
	return code, out, p.stderr.String()
}

// tailServer is a real flarecast engine on loopback ports.
// tailServer is a real engine in this process (internal/enginetest).
type tailServer struct{ *enginetest.Server }

func startTailServer(t *testing.T, mutate ...func(*engine.Config)) *tailServer {
	t.Helper()
	cfg := enginetest.Config()
	cfg.EventLoops = 1
	for _, m := range mutate {
		m(&cfg)
	}
	return &tailServer{enginetest.MustStart(t, cfg)}
}

func (s *tailServer) publish(t *testing.T, lines ...string) []uint64 {
	t.Helper()
	ids := make([]uint64, len(lines))
	for i, l := range lines {
		ev, err := event.Parse([]byte(l))
		if err != nil {
			t.Fatalf("event %s: %v", l, err)
		}
		if ids[i], err = s.Eng.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func ev(typ, sev, fields string) string {
	return fmt.Sprintf(`{"event_type":%q,"severity":%q%s}`, typ, sev, fields)
}

var lineID = regexp.MustCompile(`#(\d+)\s`)

func idOf(t *testing.T, line string) uint64 {
	t.Helper()
	m := lineID.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no #message_id in %q", line)
	}
	var id uint64
	fmt.Sscan(m[1], &id)
	return id
}

func TestTailLines(t *testing.T) {
	s := startTailServer(t)
	backlog := s.publish(t,
		ev("incident_created", "P1", `,"incident_id":"INC-7","state":"Detected","source":"llm-sentinel","affected_resources":["api","db"],"labels":{"env":"prod","team":"core"},"title":"Error rate above 5%"`),
		ev("comment_added", "P3", `,"title":"evil \u001b[2J\u001b[31m title\u0007"`),
	)
	p := startTail(t, "--url", s.WS, "--since", "0", "--count", "3")
	first, second := p.next(t), p.next(t)
	s.WaitMetric(t, "websocket_active_subscriptions", 1)
	live := s.publish(t, ev("system_event", "P4", ""))
	third := p.next(t)
	if code := p.exit(t); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, p.stderr)
	}
	// Plain output (stdout is a pipe): no escape sequence at all, even from an event's own fields.
	for _, l := range []string{first, second, third} {
		if strings.ContainsAny(l, "\x1b\x07") {
			t.Fatalf("plain line has control characters: %q", l)
		}
	}
	got := []uint64{idOf(t, first), idOf(t, second), idOf(t, third)}
	if !slices.Equal(got, []uint64{backlog[0], backlog[1], live[0]}) {
		t.Fatalf("ids %v, want %v then %v", got, backlog, live)
	}
	want := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z #\d+ +P1 high +incident_created +INC-7 +Detected +llm-sentinel +\[api,db\] env=prod team=core Error rate above 5%$`)
	if !want.MatchString(first) {
		t.Fatalf("line %q does not match %s", first, want)
	}
	if !strings.Contains(second, "evil \uFFFD[2J\uFFFD[31m title\uFFFD") {
		t.Fatalf("control characters not neutralised: %q", second)
	}
	if !strings.Contains(p.stderr.String(), "connected to "+s.WS) {
		t.Fatalf("stderr lacks the connection note:\n%s", p.stderr)
	}
}

func TestTailColour(t *testing.T) {
	s := startTailServer(t)
	s.publish(t, ev("escalated", "P0", `,"incident_id":"INC-9","title":"db down"`))
	code, out, stderr := runTail(t, "--url", s.WS, "--since", "0", "--count", "1", "--color", "always")
	if code != 0 || len(out) != 1 {
		t.Fatalf("exit %d, out %q, stderr %s", code, out, stderr)
	}
	for _, want := range []string{"\x1b[1;97;41m P0 \x1b[0m", "\x1b[1;91mcritical\x1b[0m", "\x1b[1mescalated\x1b[0m", "\x1b[36mINC-9\x1b[0m"} {
		if !strings.Contains(out[0], want) {
			t.Fatalf("coloured line %q lacks %q", out[0], want)
		}
	}
}

func TestTailJSON(t *testing.T) {
	s := startTailServer(t)
	ids := s.publish(t, ev("alert_received", "P2", `,"source":"prometheus","custom":{"k":[1,2]}`), ev("incident_resolved", "P2", ""))
	code, out, stderr := runTail(t, "--url", s.WS, "--since", "0", "--count", "2", "--json")
	if code != 0 || len(out) != 2 {
		t.Fatalf("exit %d, out %q, stderr %s", code, out, stderr)
	}
	for i, l := range out {
		var m struct {
			Type      string `json:"type"`
			MessageID uint64 `json:"message_id"`
			Timestamp string `json:"timestamp"`
			Event     map[string]any
		}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", l, err)
		}
		if m.Type != "event" || m.MessageID != ids[i] || m.Timestamp == "" || m.Event["severity"] != "P2" || m.Event["priority"] != "normal" {
			t.Fatalf("line %d: %+v", i, m)
		}
	}
	if !strings.Contains(out[0], `"custom":{"k":[1,2]}`) {
		t.Fatalf("unknown fields must pass through: %s", out[0])
	}
}

func TestTailFilters(t *testing.T) {
	s := startTailServer(t)
	match := func(sev, src, env string) string {
		return ev("incident_created", sev, fmt.Sprintf(`,"source":%q,"labels":{"env":%q}`, src, env))
	}
	ids := s.publish(t,
		match("P0", "sentinel", "prod"),                                           // yes
		match("P2", "sentinel", "prod"),                                           // severity
		match("P1", "other", "prod"),                                              // source
		match("P1", "sentinel", "staging"),                                        // label
		ev("comment_added", "P1", `,"source":"sentinel","labels":{"env":"prod"}`), // type
		match("P1", "sentinel", "prod"),                                           // yes
	)
	code, out, stderr := runTail(t, "--url", s.WS, "--since", "0", "--count", "2", "--json",
		"--severity", "P0,P1", "--type", "incident_created", "--source", "sentinel", "--label", "env=prod")
	if code != 0 || len(out) != 2 {
		t.Fatalf("exit %d, out %q, stderr %s", code, out, stderr)
	}
	var got []uint64
	for _, l := range out {
		var m struct {
			MessageID uint64 `json:"message_id"`
		}
		_ = json.Unmarshal([]byte(l), &m)
		got = append(got, m.MessageID)
	}
	slices.Sort(got)
	if !slices.Equal(got, []uint64{ids[0], ids[5]}) {
		t.Fatalf("filtered ids %v, want %v", got, []uint64{ids[0], ids[5]})
	}

	// The same filters from the environment (FLARECAST_<FLAG>).
	cmd := exec.Command(os.Args[0], "-test.run=^TestTailMainProcess$", "--", "tail", "--url", s.WS, "--since", "0", "--count", "1", "--json")
	cmd.Env = append(os.Environ(), mainProcessEnv+"=1", "FLARECAST_SEVERITY=P2")
	envOut, err := cmd.Output()
	if err != nil {
		t.Fatalf("tail with FLARECAST_SEVERITY: %v", err)
	}
	if !strings.Contains(string(envOut), fmt.Sprintf(`"message_id":%d,`, ids[1])) {
		t.Fatalf("FLARECAST_SEVERITY=P2 printed %s, want message %d", envOut, ids[1])
	}
}

func TestTailBadFlags(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--severity", "P9"}, `"P9" is not a valid severity`},
		{[]string{"--type", "incident_exploded"}, `"incident_exploded" is not an event type`},
		{[]string{"--state", "Panicking"}, `"Panicking" is not a valid state`},
		{[]string{"--label", "env"}, `want key=value, got "env"`},
		{[]string{"--since", "-1"}, `--since: want a message_id`},
		{[]string{"--color", "purple"}, `--color: want auto, always or never`},
		{[]string{"--url", "http://127.0.0.1:8080/ws"}, `--url: want ws://`},
		{[]string{"--count", "-3"}, `--count must not be negative`},
		{[]string{"--nope"}, `flag provided but not defined: -nope`},
		{[]string{"extra"}, `tail takes no arguments`},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, out, stderr := runTail(t, c.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
			}
			if len(out) != 0 {
				t.Fatalf("stdout %q", out)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "flarecast: ") || !strings.Contains(lines[0], c.want) {
				t.Fatalf("stderr %q: want one line with %q", stderr, c.want)
			}
		})
	}
}

func TestTailRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "ws://" + ln.Addr().String() + "/ws"
	ln.Close() // nothing listens there now
	s := startTailServer(t)
	for _, c := range []struct{ url, want string }{
		{closed, "connection refused"},
		{strings.TrimSuffix(s.WS, "/ws") + "/elsewhere", "404 Not Found"},
	} {
		code, out, stderr := runTail(t, "--url", c.url)
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		if code != 1 || len(out) != 0 || len(lines) != 1 || !strings.Contains(lines[0], c.want) || !strings.HasPrefix(lines[0], "flarecast: ") {
			t.Fatalf("tail --url %s: exit %d, stdout %q, stderr %q; want exit 1 and one line with %q", c.url, code, out, stderr, c.want)
		}
	}
}

// TestTailResume cuts the connection in the network while events are
// published: tail reconnects, resumes its session, and prints every event
// exactly once, in order.
func TestTailResume(t *testing.T) {
	s := startTailServer(t)
	p := cutproxy.Start(t, strings.TrimSuffix(strings.TrimPrefix(s.WS, "ws://"), "/ws"))
	proxied := "ws://" + p.Addr() + "/ws"
	tp := startTail(t, "--url", proxied, "--count", "6", "--severity", "P1,P2")
	s.WaitMetric(t, "websocket_active_subscriptions", 1)

	before := s.publish(t, ev("incident_updated", "P1", ""), ev("incident_updated", "P3", ""), ev("incident_updated", "P2", ""))
	var got []uint64
	for range 2 {
		got = append(got, idOf(t, tp.next(t)))
	}
	s.WaitMetric(t, "websocket_acks_received_total", 1)

	p.HoldNew()
	p.Cut()
	s.WaitMetric(t, `websocket_connections_closed_total{reason="connection_lost"}`, 1)
	during := s.publish(t,
		ev("incident_updated", "P2", ""), ev("incident_updated", "P4", ""), ev("incident_updated", "P1", ""),
		ev("incident_updated", "P1", ""), ev("incident_updated", "P2", ""))
	p.Release()
	for range 4 {
		got = append(got, idOf(t, tp.next(t)))
	}
	if code := tp.exit(t); code != 0 { // exit also checks nothing more was printed
		t.Fatalf("exit %d; stderr:\n%s", code, tp.stderr)
	}
	want := []uint64{before[0], before[2], during[0], during[2], during[3], during[4]}
	if !slices.Equal(got, want) {
		t.Fatalf("printed %v, want %v (each once, in order)", got, want)
	}
	if r := s.Metric(t, `flarecast_session_resumes_total{result="resumed"}`); r != 1 {
		t.Fatalf("resumes = %v, want 1; stderr:\n%s", r, tp.stderr)
	}
	if !strings.Contains(tp.stderr.String(), "reconnecting") || !strings.Contains(tp.stderr.String(), "resumed session") {
		t.Fatalf("stderr does not tell of the drop and the resume:\n%s", tp.stderr)
	}
}

// TestTailNewSessionAfterExpiry lets the session expire while tail is cut
// off: the server answers the reconnect with a new session, and tail
// subscribes again with since = what it processed, so nothing is missed
// (the path a client takes when it lands on another instance of a fleet).
func TestTailNewSessionAfterExpiry(t *testing.T) {
	s := startTailServer(t, func(c *engine.Config) {
		c.SessionTimeout = 2 * time.Second // detached sessions go after this…
		c.CleanupInterval = 100 * time.Millisecond
		c.HeartbeatInterval = 200 * time.Millisecond // …while live clients answer pings in time
	})
	p := cutproxy.Start(t, strings.TrimSuffix(strings.TrimPrefix(s.WS, "ws://"), "/ws"))
	tp := startTail(t, "--url", "ws://"+p.Addr()+"/ws", "--count", "5", "--type", "incident_updated")
	s.WaitMetric(t, "websocket_active_subscriptions", 1)
	before := s.publish(t, ev("incident_updated", "P1", ""), ev("incident_updated", "P2", ""))
	got := []uint64{idOf(t, tp.next(t)), idOf(t, tp.next(t))}

	p.HoldNew()
	p.Cut()
	s.WaitMetric(t, `websocket_connections_closed_total{reason="connection_lost"}`, 1)
	during := s.publish(t, ev("incident_updated", "P3", ""), ev("comment_added", "P1", ""), ev("incident_updated", "P0", ""))
	// The session's subscription goes with it when the sweep drops it.
	deadline := time.Now().Add(15 * time.Second)
	for s.Metric(t, "websocket_active_subscriptions") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the detached session was not dropped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Release()
	after := s.publishAfterSubscribe(t, ev("incident_updated", "P4", ""))
	for range 3 {
		got = append(got, idOf(t, tp.next(t)))
	}
	if code := tp.exit(t); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, tp.stderr)
	}
	want := []uint64{before[0], before[1], during[0], during[2], after[0]}
	if !slices.Equal(got, want) {
		t.Fatalf("printed %v, want %v; stderr:\n%s", got, want, tp.stderr)
	}
	if r := s.Metric(t, `flarecast_session_resumes_total{result="fresh"}`); r != 2 {
		t.Fatalf("fresh sessions = %v, want 2 (the first and the one after expiry)", r)
	}
	if !strings.Contains(tp.stderr.String(), "new session") {
		t.Fatalf("stderr does not tell of the new session:\n%s", tp.stderr)
	}
}

// publishAfterSubscribe waits until a subscription exists again, then publishes.
func (s *tailServer) publishAfterSubscribe(t *testing.T, lines ...string) []uint64 {
	t.Helper()
	s.WaitMetric(t, "websocket_active_subscriptions", 1)
	return s.publish(t, lines...)
}
