// Package grafana holds the Grafana dashboard of flarecast's metrics
// (flarecast.json); its test keeps the dashboard and the server in step.
package grafana_test

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/flarecast/flarecast/engine"
)

type dashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		GridPos struct {
			H, W, X, Y int
		} `json:"gridPos"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// exported returns the series names an engine built from cfg serves on
// /metrics (labels stripped).
func exported(t *testing.T, cfg engine.Config) map[string]bool {
	t.Helper()
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatalf("engine.New: %v", err)
	}
	rec := httptest.NewRecorder()
	eng.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	names := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, _, _ := strings.Cut(line, " ")
		name, _, _ = strings.Cut(name, "{")
		names[name] = true
	}
	return names
}

// TestDashboardMatchesMetrics checks that flarecast.json is a well-formed
// dashboard and that every series it queries is one flarecast exports.
func TestDashboardMatchesMetrics(t *testing.T) {
	raw, err := os.ReadFile("flarecast.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("flarecast.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels")
	}

	cfg := engine.DefaultConfig()
	cfg.IngestSocket, cfg.AdminListen = "", ""
	have := exported(t, cfg)
	// The fleet's series exist only with --broker; New does not dial Redis.
	cfg.Broker = "redis://127.0.0.1:1/0"
	for name := range exported(t, cfg) {
		have[name] = true
	}
	// HTTP ingest's only with --ingest-listen; New does not listen.
	cfg.Broker, cfg.IngestListen, cfg.IngestInsecure = "", "127.0.0.1:0", true
	for name := range exported(t, cfg) {
		have[name] = true
	}

	series := regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\{`)
	ids := map[int]bool{}
	used := map[string]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q has gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${DS_PROMETHEUS}" || len(p.Targets) == 0 {
			t.Errorf("panel %q lacks the Prometheus data source or a query", p.Title)
		}
		for _, tg := range p.Targets {
			names := series.FindAllStringSubmatch(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q names no series", p.Title, tg.Expr)
			}
			for _, m := range names {
				used[m[1]] = true
				if !have[m[1]] {
					t.Errorf("panel %q queries %s, which flarecast does not export", p.Title, m[1])
				}
			}
		}
	}
	// Every flarecast series has a panel (Go and process series need not).
	for name := range have {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if !strings.HasPrefix(name, "websocket_") && !strings.HasPrefix(name, "flarecast_") {
			continue
		}
		if !used[name] && !used[base+"_bucket"] {
			t.Errorf("flarecast exports %s but no panel shows it", name)
		}
	}
}
