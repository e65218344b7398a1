package loadtest

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
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
