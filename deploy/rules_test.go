package deploy

import (
	"io"
	"maps"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/flarecast/flarecast/adapter"
	"github.com/flarecast/flarecast/engine"
)

// rulesFile is the Prometheus rules file shipped for operators.
var rulesFile = deployPath("prometheus", "flarecast-rules.yml")

// ruleGroups is the rules file format (Prometheus's rulefmt), decoded
// strictly so that a misspelt key fails here as it would in Prometheus.
type ruleGroups struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T, file string) ruleGroups {
	t.Helper()
	docs := documents(t, file)
	if len(docs) != 1 {
		t.Fatalf("%s holds %d documents, want 1", rel(file), len(docs))
	}
	var g ruleGroups
	strict(t, rel(file), docs[0], &g)
	return g
}

// findBinary returns the path of a tool the test runs: skipped loudly
// without it, except in CI (CI=true), whose .ci/run installs it.
func findBinary(t *testing.T, pkg string, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed: .ci/run must install it (apt-get install -y %s)", names[0], pkg)
	}
	t.Skipf("SKIPPED: %s not found, so this Prometheus/Alertmanager test did NOT run "+
		"(apt-get install -y %s to run it; CI fails without it)", names[0], pkg)
	return ""
}

// TestPrometheusRulesPromtool has Prometheus's own tool check the rules
// file and run its unit tests (flarecast-rules_test.yml).
func TestPrometheusRulesPromtool(t *testing.T) {
	promtool := findBinary(t, "prometheus", "promtool")
	if out, err := exec.Command(promtool, "check", "rules", rulesFile).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", rel(rulesFile), err, out)
	}
	// Relative: the test file names the rules file relative to itself.
	cmd := exec.Command(promtool, "test", "rules", "flarecast-rules_test.yml")
	cmd.Dir = deployPath("prometheus")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules deploy/prometheus/flarecast-rules_test.yml: %v\n%s", err, out)
	}
}

// exportedSeries returns every series line (name and labels, no value)
// that an engine with all its optional parts serves on /metrics: the
// fleet's series need --broker, HTTP ingest's --ingest-listen, and New
// neither dials Redis nor listens.
func exportedSeries(t *testing.T) []string {
	t.Helper()
	cfg := engine.DefaultConfig()
	cfg.IngestSocket, cfg.AdminListen = "", ""
	cfg.Broker = "redis://127.0.0.1:1/0"
	cfg.IngestListen, cfg.IngestInsecure = "127.0.0.1:0", true
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatalf("engine.New: %v", err)
	}
	rec := httptest.NewRecorder()
	eng.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	var series []string
	for line := range strings.Lines(string(body)) {
		if line = strings.TrimSpace(line); line != "" && line[0] != '#' {
			s, _, _ := strings.Cut(line, " ")
			series = append(series, s)
		}
	}
	return series
}

// A series name of flarecast's (or of the process, Go runtime, scrape),
// then optionally its label matchers. Other identifiers in an expression
// are functions, keywords or label names, which need no checking here.
var seriesRef = regexp.MustCompile(`\b((?:websocket|flarecast|process|go)_[a-zA-Z0-9_]*|up)\b(\{[^}]*\})?`)
var eqMatcher = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"`)

// TestPrometheusRulesMatchServer checks the rules against the server: each
// series an alert queries is one flarecast exports, with the label values
// it matches on; each alert's severity is one the Alertmanager adapter
// maps, so alerts routed back into flarecast keep their severity; and
// docs/operations.md names the file and every alert.
func TestPrometheusRulesMatchServer(t *testing.T) {
	g := loadRules(t, rulesFile)
	series := exportedSeries(t)
	docs, err := os.ReadFile(deployPath("..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(docs), "deploy/prometheus/flarecast-rules.yml") {
		t.Error("docs/operations.md does not point at deploy/prometheus/flarecast-rules.yml")
	}
	sev := adapter.Default().Alertmanager.Severities
	var alerts []string
	for _, grp := range g.Groups {
		for _, r := range grp.Rules {
			if r.Alert == "" {
				continue
			}
			if slices.Contains(alerts, r.Alert) {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			alerts = append(alerts, r.Alert)
			if _, ok := sev[strings.ToLower(r.Labels["severity"])]; !ok {
				t.Errorf("alert %s: severity %q is not one the Alertmanager adapter maps (%v)", r.Alert, r.Labels["severity"], slices.Sorted(maps.Keys(sev)))
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a summary (the event's title) and a description", r.Alert)
			}
			if !regexp.MustCompile(`\b` + r.Alert + `\b`).Match(docs) {
				t.Errorf("docs/operations.md does not mention alert %s", r.Alert)
			}
			refs := seriesRef.FindAllStringSubmatch(r.Expr, -1)
			if len(refs) == 0 {
				t.Errorf("alert %s: expression %q names no series", r.Alert, r.Expr)
			}
			for _, ref := range refs {
				name, matchers := ref[1], ref[2]
				if name == "up" { // written by Prometheus, not the server
					continue
				}
				var want []string
				for _, m := range eqMatcher.FindAllStringSubmatch(matchers, -1) {
					if m[1] != "job" && m[1] != "instance" { // target labels
						want = append(want, m[1]+`="`+m[2]+`"`)
					}
				}
				if !slices.ContainsFunc(series, func(s string) bool { return exportsSeries(s, name, want) }) {
					t.Errorf("alert %s queries %s%s, which flarecast does not export", r.Alert, name, matchers)
				}
			}
		}
	}
	if len(alerts) < 8 {
		t.Errorf("the rules file has %d alerts (%v): did a group go missing?", len(alerts), alerts)
	}
}

// exportsSeries reports whether the /metrics series line s is name
// carrying every label pair of want.
func exportsSeries(s, name string, want []string) bool {
	got, labels, _ := strings.Cut(s, "{")
	if got != name {
		return false
	}
	for _, w := range want {
		if !strings.Contains(labels, w) {
			return false
		}
	}
	return true
}
