package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// serverBinary builds cmd/flarecast once for the package's tests.
// FLARECAST_LOADTEST_SERVER_BIN names a prebuilt binary to use instead.
func serverBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("FLARECAST_LOADTEST_SERVER_BIN"); bin != "" {
		return bin
	}
	build.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, "flarecast"), "./cmd/flarecast")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/flarecast: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return filepath.Join(buildDir, "flarecast")
}

var (
	buildDir string
	build    struct {
		sync.Once
		err error
	}
)

// abusersChildEnv makes the test binary the abusers' process: a run with
// abusers starts this binary again with it set, and TestMain then does
// what cmd/flarecast-loadtest does with --abusers-only.
const abusersChildEnv = "FLARECAST_LOADTEST_TEST_ABUSERS_CHILD"

// baselineChildEnv makes the test binary the raw-write baseline server
// (what cmd/flarecast-loadtest does with --baseline-server).
const baselineChildEnv = "FLARECAST_LOADTEST_TEST_BASELINE_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(abusersChildEnv) == "1" {
		os.Exit(abusersChildMain(os.Args[1:]))
	}
	if os.Getenv(baselineChildEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		err := RunBaselineServer(ctx, os.Args[1:], os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "baseline server: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	baselineProgram = func() (string, []string, []string, error) {
		exe, err := os.Executable()
		return exe, []string{}, []string{baselineChildEnv + "=1"}, err
	}
	abusersProgram = func() (string, []string, error) {
		exe, err := os.Executable()
		return exe, []string{abusersChildEnv + "=1"}, err
	}
	dir, err := os.MkdirTemp("", "flarecast-loadtest-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// abusersChildMain is cmd/flarecast-loadtest's main for --abusers-only.
func abusersChildMain(args []string) int {
	cfg, err := ParseArgs(args, os.Stderr)
	if err == nil && !cfg.AbusersOnly {
		err = errors.New("the test binary as a child only runs --abusers-only")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "flarecast-loadtest: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := RunAbusersOnly(ctx, cfg, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "flarecast-loadtest: %v\n", err)
		return 1
	}
	return 0
}

// TestSmokeAgainstRealServer runs a small bounded scenario against a real
// flarecast server that the load tester spawns: 200 compressed connections,
// 2 s of events each matching 10 of them. Every expected delivery must
// arrive exactly once, and the report files must be written.
func TestSmokeAgainstRealServer(t *testing.T) {
	cfg, err := Preset("smoke")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Spawn = true
	cfg.ServerBin = serverBinary(t)
	cfg.Out = t.TempDir()
	cfg.Conns, cfg.Rate, cfg.Match, cfg.Duration = 200, 250, 10, 2*time.Second
	cfg.ProgressInterval = 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var progress strings.Builder
	res, err := Run(ctx, cfg, &progress)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := res.WriteFiles(cfg.Out); err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	var table strings.Builder
	res.WriteTable(&table)
	t.Logf("\n%s", table.String())

	c, d := res.Connections, res.Deliveries
	if c.Held != 200 || c.Failed != 0 || c.Dropped != 0 {
		t.Errorf("connections: held %d, failed %d (%v), dropped %d (%v); want 200 held", c.Held, c.Failed, c.Failures, c.Dropped, c.DroppedReasons)
	}
	if c.Deflate != 200 {
		t.Errorf("permessage-deflate negotiated on %d of 200 connections", c.Deflate)
	}
	if res.Events.Accepted == 0 || res.Events.Rejected != 0 {
		t.Errorf("events: %d accepted, %d rejected (%s)", res.Events.Accepted, res.Events.Rejected, res.Events.FirstError)
	}
	// 200 connections in 20 groups: every event reaches exactly 10.
	if want := res.Events.Accepted * 10; d.Expected != want {
		t.Errorf("expected deliveries %d, want %d (10 per accepted event)", d.Expected, want)
	}
	if d.Lost != 0 || d.Duplicates != 0 || d.Unexpected != 0 || d.Malformed != 0 {
		t.Errorf("lost %d, duplicates %d, unexpected %d, malformed %d; want none", d.Lost, d.Duplicates, d.Unexpected, d.Malformed)
	}
	if d.Received != d.Expected {
		t.Errorf("received %d of %d expected deliveries", d.Received, d.Expected)
	}
	if res.Latency.Count != d.Received || res.Latency.P50 <= 0 || res.Latency.Max < res.Latency.P99 {
		t.Errorf("latency histogram: %+v for %d deliveries", res.Latency, d.Received)
	}
	if !res.OK {
		t.Errorf("result not OK; warnings: %v", res.Warnings)
	}
	if res.Server.PID == 0 || res.Server.RSSBefore == 0 || res.Server.RSSAfter == 0 || res.Server.HeapAfter == 0 {
		t.Errorf("server memory not read: %+v", res.Server)
	}
	if !strings.Contains(progress.String(), "conns 200/200") {
		t.Errorf("progress lines never showed every connection open:\n%s", progress.String())
	}

	want := map[string]bool{"smoke.json": false, "smoke-latency.png": false, "smoke-rss.png": false}
	for _, f := range res.Files {
		st, err := os.Stat(f)
		if err != nil || st.Size() == 0 {
			t.Errorf("output %s: missing or empty (%v)", f, err)
		}
		want[filepath.Base(f)] = true
	}
	for f, ok := range want {
		if !ok {
			t.Errorf("output %s not written (files: %v)", f, res.Files)
		}
	}
	b, err := os.ReadFile(filepath.Join(cfg.Out, "smoke.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("result JSON: %v", err)
	}
	if back.Deliveries != res.Deliveries || len(back.Timeline) == 0 {
		t.Errorf("JSON round trip: deliveries %+v, %d timeline samples", back.Deliveries, len(back.Timeline))
	}
	png, err := os.ReadFile(filepath.Join(cfg.Out, "smoke-latency.png"))
	if err != nil || !strings.HasPrefix(string(png), "\x89PNG") {
		t.Errorf("latency chart is not a PNG (%v)", err)
	}
}

func TestParseArgsPresetAndOverrides(t *testing.T) {
	cfg, err := ParseArgs([]string{"--scenario", "seed", "--conns", "300", "--mix", "label:2,combo"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Conns != 300 || cfg.Rate != 10000 || cfg.Match != 10 {
		t.Errorf("seed with --conns 300: conns %d rate %v match %d; want 300, 10000, 10", cfg.Conns, cfg.Rate, cfg.Match)
	}
	if got := cfg.Mix.String(); got != "label:2,combo:1" {
		t.Errorf("mix %q", got)
	}
	cfg, err = ParseArgs([]string{"--scenario=broadcast", "--rate", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rate != 0 || cfg.Conns != 10000 || cfg.groups(cfg.Conns) != 1 {
		t.Errorf("broadcast --rate 0: rate %v conns %d groups %d", cfg.Rate, cfg.Conns, cfg.groups(cfg.Conns))
	}
	for _, bad := range [][]string{
		{"--scenario", "nope"},
		{"--url", "ws://10.0.0.1:8080/ws"},
		{"--url", "ws://example.com/ws"},
		{"--admin-url", "http://192.168.1.1:9090"},
		{"--mix", "incident:x"},
		{"--conns", "0"},
	} {
		if _, err := ParseArgs(bad, io.Discard); err == nil {
			t.Errorf("ParseArgs(%q) accepted", bad)
		}
	}
	if _, err := ParseArgs([]string{"--url", "ws://[::1]:8080/ws", "--admin-url", "http://localhost:9090"}, io.Discard); err != nil {
		t.Errorf("loopback URLs refused: %v", err)
	}
}

func TestNonLoopbackRefusedWithClearError(t *testing.T) {
	_, err := ParseArgs([]string{"--url", "ws://8.8.8.8:8080/ws"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "non-loopback") {
		t.Fatalf("got %v, want a non-loopback refusal", err)
	}
}

func TestEventRoundTrip(t *testing.T) {
	for _, size := range []int{0, 300, 1024} {
		ev := appendEvent(nil, 123456, 42, 987654321, size)
		var decoded map[string]any
		if err := json.Unmarshal(ev, &decoded); err != nil {
			t.Fatalf("size %d: event is not JSON: %v\n%s", size, err, ev)
		}
		if size > 250 && len(ev) != size {
			t.Errorf("event is %d bytes, want %d", len(ev), size)
		}
		if decoded["incident_id"] != "INC-42" || decoded["source"] != "lt-src-42" {
			t.Errorf("event fields: %v", decoded)
		}
		msg := append(append([]byte(`{"type":"event","message_id":7,"timestamp":"x","event":{"priority":"normal",`), ev[1:]...), '}')
		seq, sent, ok := parseEvent(msg)
		if !ok || seq != 123456 || sent != 987654321 {
			t.Errorf("parseEvent: %d %d %v", seq, sent, ok)
		}
	}
	for k := range filterKinds {
		var v map[string]any
		if err := json.Unmarshal(subscribeMessage(FilterKind(k), 5), &v); err != nil {
			t.Errorf("subscribe %s: %v", FilterKind(k), err)
		}
	}
}

func TestMixAndBitset(t *testing.T) {
	m, err := ParseMix("incident:3,label:1")
	if err != nil {
		t.Fatal(err)
	}
	counts := map[FilterKind]int{}
	for i := range 400 {
		counts[m.kindOf(i)]++
	}
	inc, _ := kindByName("incident")
	lab, _ := kindByName("label")
	if counts[inc] != 300 || counts[lab] != 100 {
		t.Errorf("mix counts %v", counts)
	}
	var b bitset
	for _, i := range []uint64{0, 63, 64, 1000} {
		if b.set(i) {
			t.Errorf("bit %d set twice", i)
		}
	}
	if !b.set(1000) || !b.has(63) || b.has(62) || b.has(5000) {
		t.Error("bitset lost a bit")
	}
}

func TestFDLimitCapsAndSays(t *testing.T) {
	l, err := raiseNoFile(1 << 30)
	if err != nil {
		t.Fatal(err)
	}
	if !l.Capped || l.Allowed >= 1<<30 || !strings.Contains(l.Message, "open-file limit binds") {
		t.Errorf("a billion connections not capped: %+v", l)
	}
	if l.Soft != l.Hard {
		t.Errorf("soft limit %d not raised to hard %d", l.Soft, l.Hard)
	}
	if l, _ := raiseNoFile(10); l.Capped {
		t.Errorf("10 connections capped: %+v", l)
	}
}

func TestFindListenerPID(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pid, err := findListenerPID(ln.Addr().(*net.TCPAddr).Port)
	if err != nil || pid != os.Getpid() {
		t.Errorf("findListenerPID = %d, %v; want %d", pid, err, os.Getpid())
	}
}

// TestPlainFramesAndHeartbeats runs without permessage-deflate against a
// server that pings every 100 ms: events arrive as plain frames, and the
// client answers the pings between them without losing a delivery.
func TestPlainFramesAndHeartbeats(t *testing.T) {
	cfg, err := Preset("smoke")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Spawn, cfg.ServerBin, cfg.Out = true, serverBinary(t), ""
	cfg.Conns, cfg.Rate, cfg.Match, cfg.Duration, cfg.Settle = 100, 100, 0, time.Second, 300*time.Millisecond
	cfg.Compression = false
	cfg.ServerArgs = []string{"--heartbeat-interval", "100ms"}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Run(ctx, cfg, io.Discard)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	c, d := res.Connections, res.Deliveries
	if c.Held != 100 || c.Deflate != 0 || c.Dropped != 0 {
		t.Errorf("connections: held %d, deflate %d, dropped %d (%v)", c.Held, c.Deflate, c.Dropped, c.DroppedReasons)
	}
	// Match 0: every event reaches all 100 connections.
	if want := res.Events.Accepted * 100; d.Expected != want || d.Received != want || d.Lost != 0 || d.Duplicates != 0 {
		t.Errorf("deliveries %+v; want %d received", d, want)
	}
	if !res.OK {
		t.Errorf("result not OK: %v", res.Warnings)
	}
}
