package loadtest

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestAbusePresetTiny runs the abuse preset small against a spawned server:
// 50 healthy connections, 2 s of events, once without and once with one
// abuser of each kind. Both runs must be reported, the healthy clients must
// lose nothing in either, and every abuser must have done something.
func TestAbusePresetTiny(t *testing.T) {
	cfg, err := Preset("abuse")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Spawn, cfg.ServerBin, cfg.Out = true, serverBinary(t), t.TempDir()
	cfg.Conns, cfg.Match, cfg.Duration = 50, 5, 2*time.Second
	cfg.Settle, cfg.ProgressInterval = 300*time.Millisecond, 500*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
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

	ab := res.Abuse
	if ab == nil || ab.Without == nil || ab.With == nil || ab.Baseline == nil {
		t.Fatalf("the report lacks a run: %+v", ab)
	}
	for name, h := range map[string]*HealthySummary{"without": ab.Without, "with": ab.With} {
		if h.Conns != 50 || h.Expected == 0 || h.Received != h.Expected || h.Lost != 0 || h.Duplicates != 0 || h.Dropped != 0 {
			t.Errorf("healthy clients %s abusers: %+v; want 50 held, everything received once, none dropped", name, h)
		}
		if h.P99 <= 0 || h.Max < h.P99 {
			t.Errorf("healthy latency %s abusers: p99 %v, max %v", name, h.P99, h.Max)
		}
	}
	if ab.Ratio["p99"] <= 0 {
		t.Errorf("no p99 ratio: %v", ab.Ratio)
	}
	if ab.Baseline.Abuse != nil || ab.Baseline.Settings.Abusers != "off" || res.Settings.Abusers != "on" {
		t.Errorf("runs: baseline abusers %q (report %v), second run abusers %q", ab.Baseline.Settings.Abusers, ab.Baseline.Abuse, res.Settings.Abusers)
	}
	if len(ab.Abusers) != len(abuserKinds) {
		t.Fatalf("%d abusers reported, want %d", len(ab.Abusers), len(abuserKinds))
	}
	for _, a := range ab.Abusers {
		if a.Connections == 0 || a.Frames == 0 {
			t.Errorf("abuser %s did nothing: %+v", a.Kind, a)
		}
		switch a.Kind {
		case "subscribe-64k", "subscribe-999":
			if a.Replies["subscribed"]+a.Replies["error LIMIT_EXCEEDED"] == 0 {
				t.Errorf("%s: no reply to its subscribes: %v", a.Kind, a.Replies)
			}
		case "garbage":
			if len(a.Ends) == 0 || a.Replies["error INVALID_MESSAGE"] == 0 {
				t.Errorf("garbage: ends %v, replies %v", a.Ends, a.Replies)
			}
		case "ack-ahead":
			if a.Events == 0 {
				t.Errorf("ack-ahead received no event: %+v", a)
			}
		}
	}
	for _, want := range []string{"without abusers", "with abusers", "latency p99", "server RSS peak", "never-reads", "ping-flood", "subscribe-64k", "subscribe-999", "garbage", "ack-ahead"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if !strings.Contains(progress.String(), "run 1 of 2") || !strings.Contains(progress.String(), "run 2 of 2") {
		t.Errorf("progress does not show both runs:\n%s", progress.String())
	}
	// The abusers ran in their own process (this test binary, started again).
	if !strings.Contains(progress.String(), abusersReady+"6 (never-reads, ping-flood, subscribe-64k, subscribe-999, garbage, ack-ahead)") {
		t.Errorf("progress lacks the abusers' process's readiness line:\n%s", progress.String())
	}
	for _, w := range res.Warnings {
		if strings.Contains(w, "abusers") {
			t.Errorf("warning: %s", w)
		}
	}
	b, err := os.ReadFile(filepath.Join(cfg.Out, "abuse.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil || back.Abuse == nil || back.Abuse.Without == nil || back.Abuse.Baseline == nil {
		t.Errorf("abuse.json does not hold both runs (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.Out, "abuse-baseline-latency.png")); err != nil {
		t.Errorf("baseline chart: %v", err)
	}
}

func TestBigSubscribeMessages(t *testing.T) {
	for _, c := range []struct {
		values        int
		minN, maxN    int
		minLen, maxLn int
	}{
		{0, 8000, 10000, 60000, bigSubscribeBytes},
		{underLimitValues, underLimitValues, underLimitValues, 55000, bigSubscribeBytes},
	} {
		msg := bigSubscribe(c.values)
		var m struct {
			Type    string
			Filters struct {
				IncidentIDs []string `json:"incident_ids"`
			}
		}
		if err := json.Unmarshal(msg, &m); err != nil {
			t.Fatalf("values %d: not JSON: %v", c.values, err)
		}
		if n := len(m.Filters.IncidentIDs); m.Type != "subscribe" || n < c.minN || n > c.maxN || len(msg) < c.minLen || len(msg) > c.maxLn {
			t.Errorf("values %d: %s with %d ids in %d bytes", c.values, m.Type, n, len(msg))
		}
	}
}

func TestParseArgsAbuse(t *testing.T) {
	cfg, err := ParseArgs([]string{"--scenario", "abuse"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Conns != 5000 || cfg.Rate != 200 || cfg.Match != 100 || cfg.Abusers != "both" {
		t.Errorf("abuse: %d conns, rate %v, match %d, abusers %q", cfg.Conns, cfg.Rate, cfg.Match, cfg.Abusers)
	}
	if cfg, err = ParseArgs([]string{"--scenario", "abuse", "--abusers", "on"}, io.Discard); err != nil || cfg.Abusers != "on" {
		t.Errorf("--abusers on: %q, %v", cfg.Abusers, err)
	}
	if cfg, err = ParseArgs([]string{"--scenario", "abuse", "--abusers=false"}, io.Discard); err != nil || cfg.Abusers != "off" {
		t.Errorf("--abusers=false: %q, %v", cfg.Abusers, err)
	}
	if _, err = ParseArgs([]string{"--scenario", "smoke", "--abusers=maybe"}, io.Discard); err == nil {
		t.Error("--abusers=maybe accepted")
	}
	if _, err = ParseArgs([]string{"--scenario", "abuse", "--publish-only"}, io.Discard); err == nil {
		t.Error("--abusers with --publish-only accepted")
	}
}

// TestAbusersProcessPinned runs two abusers in their process, and, where
// taskset exists, pins it and the spawned server to CPU 0: the ack-ahead
// client must get every event it is owed (it learns which from the stop
// line the load tester sends) and the garbage client must be answered.
func TestAbusersProcessPinned(t *testing.T) {
	cfg, err := Preset("abuse")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Spawn, cfg.ServerBin, cfg.Out = true, serverBinary(t), ""
	cfg.Conns, cfg.Match, cfg.Duration, cfg.Abusers, cfg.AbuserKinds = 20, 5, time.Second, "on", "ack-ahead,garbage"
	cfg.Settle, cfg.ProgressInterval = 200*time.Millisecond, 500*time.Millisecond
	if _, err := exec.LookPath("taskset"); err == nil {
		cfg.AbuserCPUs, cfg.ServerCPUs = "0", "0"
	} else {
		t.Log("no taskset: the abusers' process and the server are not pinned")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress strings.Builder
	res, err := Run(ctx, cfg, &progress)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !res.OK || res.Abuse == nil || len(res.Abuse.Abusers) != 2 {
		t.Fatalf("OK %v, warnings %v, abuse %+v\n%s", res.OK, res.Warnings, res.Abuse, progress.String())
	}
	ack, garb := res.Abuse.Abusers[1], res.Abuse.Abusers[0]
	if ack.Kind != "ack-ahead" || ack.Events == 0 || ack.Events != res.Events.Accepted || ack.Missing != 0 {
		t.Errorf("ack-ahead: %+v; want all %d accepted events, none missing", ack, res.Events.Accepted)
	}
	if garb.Kind != "garbage" || garb.Replies["error INVALID_MESSAGE"] == 0 {
		t.Errorf("garbage: %+v", garb)
	}
	if res.Settings.AbuserCPUs != cfg.AbuserCPUs || res.Settings.ServerCPUs != cfg.ServerCPUs {
		t.Errorf("settings: abuser CPUs %q, server CPUs %q", res.Settings.AbuserCPUs, res.Settings.ServerCPUs)
	}
	if !strings.Contains(progress.String(), abusersReady+"2 (garbage, ack-ahead)") {
		t.Errorf("progress lacks the readiness line:\n%s", progress.String())
	}
}

// TestAbusersProcessFailureIsReported: when the abusers' process cannot
// run them, the run says so and is not OK.
func TestAbusersProcessFailureIsReported(t *testing.T) {
	saved := abusersProgram
	t.Cleanup(func() { abusersProgram = saved })
	abusersProgram = func() (string, []string, error) { return "/bin/false", nil, nil }
	cfg, err := Preset("abuse")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Spawn, cfg.ServerBin, cfg.Out = true, serverBinary(t), ""
	cfg.Conns, cfg.Match, cfg.Duration, cfg.Abusers = 10, 5, 500*time.Millisecond, "on"
	cfg.Settle, cfg.ProgressInterval = 100*time.Millisecond, 500*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg, io.Discard)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.OK || !slices.ContainsFunc(res.Warnings, func(w string) bool {
		return strings.Contains(w, "abusers' process exited before its abusers were running")
	}) {
		t.Errorf("OK %v, warnings %q", res.OK, res.Warnings)
	}
}

func TestParseArgsAbusersProcess(t *testing.T) {
	cfg, err := ParseArgs([]string{"--scenario", "abuse", "--abusers", "on", "--abuser-kinds", "garbage", "--duration", "7s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.URL = "ws://127.0.0.1:1234/ws,ws://127.0.0.1:1235/ws"
	child, err := ParseArgs(cfg.abusersArgs(), io.Discard)
	if err != nil {
		t.Fatalf("the abusers' process's arguments %q: %v", cfg.abusersArgs(), err)
	}
	if !child.AbusersOnly || child.URL != cfg.URL || child.Duration != 7*time.Second || child.DrainTimeout != cfg.DrainTimeout || child.AbuserKinds != "garbage" {
		t.Errorf("child config from %q: %+v", cfg.abusersArgs(), child)
	}
	for _, args := range [][]string{
		{"--scenario", "abuse", "--abuser-cpus", "one"},
		{"--scenario", "abuse", "--server-cpus", "0"}, // no --spawn
		{"--abusers-only", "--spawn"},
		{"--abusers-only", "--url", "ws://10.0.0.1:8080/ws"},
	} {
		if _, err := ParseArgs(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	if _, err := exec.LookPath("taskset"); err == nil {
		if _, err := ParseArgs([]string{"--scenario", "abuse", "--spawn", "--abuser-cpus", "1", "--server-cpus", "0,2-3"}, io.Discard); err != nil {
			t.Errorf("CPU lists refused: %v", err)
		}
	}
}
