package loadtest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flarecast/flarecast/event"
)

// TestBaselineFilterMatchesGroup: every filter kind the load tester
// subscribes with matches exactly its group's events in the baseline, as
// in flarecast.
func TestBaselineFilterMatchesGroup(t *testing.T) {
	for k := range filterKinds {
		for g := range 3 {
			var f baselineFilter
			if err := json.Unmarshal(filterKinds[k].filter(nil, g), &f); err != nil {
				t.Fatal(err)
			}
			if len(f.keys()) == 0 {
				t.Errorf("%s: filter not indexed", FilterKind(k))
			}
			for eg := range 3 {
				parsed, err := event.Parse(appendEvent(nil, uint64(eg), eg, 1, 300))
				if err != nil {
					t.Fatal(err)
				}
				ev := baselineEventOf(parsed)
				if got := f.matches(&ev); got != (eg == g) {
					t.Errorf("%s filter of group %d on an event of group %d: match %v", FilterKind(k), g, eg, got)
				}
			}
		}
	}
}

// TestCompareBaseline runs a tiny --compare-baseline: 50 compressed
// connections, 1 s of events matching 10 each, against a spawned flarecast
// and the baseline server; both must deliver everything exactly once.
func TestCompareBaseline(t *testing.T) {
	cfg, err := Preset("smoke")
	if err != nil {
		t.Fatal(err)
	}
	cfg.CompareBaseline, cfg.Spawn = true, true
	cfg.ServerBin = serverBinary(t)
	cfg.Out = t.TempDir()
	cfg.Conns, cfg.Rate, cfg.Match, cfg.Duration = 50, 100, 10, time.Second
	cfg.Settle, cfg.ProgressInterval = 200*time.Millisecond, 500*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var progress strings.Builder
	res, err := Run(ctx, cfg, &progress)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, progress.String())
	}
	var table strings.Builder
	res.WriteTable(&table)
	t.Logf("\n%s", table.String())
	br := res.Baseline
	if br == nil || br.Run == nil {
		t.Fatal("no baseline comparison in the result")
	}
	for name, s := range map[string]*BaselineSide{"flarecast": br.Flarecast, "baseline": br.Baseline} {
		if !s.OK || s.Expected == 0 || s.Received != s.Expected || s.Lost != 0 || s.Duplicates != 0 {
			t.Errorf("%s: %+v", name, *s)
		}
	}
	if br.Run.Connections.Deflate != br.Run.Connections.Held {
		t.Errorf("baseline negotiated permessage-deflate on %d of %d connections", br.Run.Connections.Deflate, br.Run.Connections.Held)
	}
	if br.Run.Server.PID == 0 || br.Run.Server.PID == res.Server.PID {
		t.Errorf("baseline server pid %d, flarecast's %d: the baseline's CPU is not its own", br.Run.Server.PID, res.Server.PID)
	}
	if !strings.Contains(table.String(), "flarecast/baseline") {
		t.Error("the table has no comparison")
	}
}
