package adapter

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFingerprint: the value Alertmanager (prometheus/common's
// labelSetToFingerprint, shown as %016x) gives the same labels.
func TestFingerprint(t *testing.T) {
	got := Fingerprint(map[string]string{"name": "garland, briggs", "fear": "love is not enough"})
	if want := fmt.Sprintf("%016x", uint64(5799056148416392346)); got != want {
		t.Fatalf("Fingerprint = %s, want %s", got, want)
	}
	if got := Fingerprint(map[string]string{}); got != fmt.Sprintf("%016x", uint64(14695981039346656037)) {
		t.Fatalf("empty label set: %s", got)
	}
}

func TestSeverityMapping(t *testing.T) {
	cfg := Default().Alertmanager
	for _, tc := range []struct {
		labels map[string]string
		want   string
	}{
		{map[string]string{"severity": "critical"}, "P1"},
		{map[string]string{"severity": "Warning"}, "P3"},
		{map[string]string{"severity": "info"}, "P4"},
		{map[string]string{"severity": "p2"}, "P2"},
		{map[string]string{"severity": "whatever"}, ""},
		{map[string]string{}, ""},
		{map[string]string{"severity": "info", "flarecast_severity": "P0"}, "P0"},
	} {
		if got, skip := severity(tc.labels, &cfg); got != tc.want || skip != "" {
			t.Errorf("%v: %q %q, want %q", tc.labels, got, skip, tc.want)
		}
	}
	cfg.DefaultSeverity = "P3"
	if got, _ := severity(map[string]string{"severity": "whatever"}, &cfg); got != "P3" {
		t.Errorf("default severity: %q", got)
	}
}

func TestMapAlertsFixture(t *testing.T) {
	body, err := os.ReadFile("testdata/alertmanager.json")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Default().Alertmanager
	items, err := MapAlerts(body, &cfg, false)
	if err != nil || len(items) != 3 {
		t.Fatalf("%d items, %v", len(items), err)
	}
	if items[0].Key != "c0ffee0000000001|firing|2026-12-04T21:00:00.000Z" || items[2].Skip == "" || items[2].Line != nil {
		t.Fatalf("items %+v", items)
	}
	var ev map[string]any
	if err := json.Unmarshal(items[1].Line, &ev); err != nil {
		t.Fatal(err)
	}
	if ev["event_type"] != "incident_resolved" || ev["state"] != "Resolved" || ev["severity"] != "P3" {
		t.Fatalf("resolved alert: %v", ev)
	}
}

func TestDedupe(t *testing.T) {
	now := time.Unix(1000, 0)
	d := NewDedupe(3, time.Hour)
	d.now = func() time.Time { return now }
	if _, ok := d.Reserve("a"); !ok {
		t.Fatal("a is new")
	}
	if id, ok := d.Reserve("a"); ok || id != 0 {
		t.Fatal("a in flight is a duplicate")
	}
	d.Commit("a", 7)
	if id, ok := d.Reserve("a"); ok || id != 7 {
		t.Fatalf("a: %d %v", id, ok)
	}
	// A failed publish forgets the key: the retry publishes.
	d.Reserve("b")
	d.Release("b")
	if _, ok := d.Reserve("b"); !ok {
		t.Fatal("b released")
	}
	d.Commit("b", 8)
	d.Reserve("c")
	d.Commit("c", 9)
	d.Reserve("d") // over max keys: a, the oldest, is forgotten
	d.Commit("d", 10)
	if d.Len() != 3 {
		t.Fatalf("Len %d", d.Len())
	}
	if id, ok := d.Reserve("b"); ok || id != 8 {
		t.Fatal("b is remembered (its released first slot is stale)")
	}
	if _, ok := d.Reserve("a"); !ok {
		t.Fatal("a should have been forgotten (max keys)")
	}
	if id, ok := d.Reserve("d"); ok || id != 10 {
		t.Fatal("d is remembered")
	}
	now = now.Add(time.Hour)
	if _, ok := d.Reserve("c"); !ok {
		t.Fatal("c should have expired (window)")
	}
	off := NewDedupe(0, time.Hour)
	off.Reserve("x")
	if _, ok := off.Reserve("x"); !ok {
		t.Fatal("max_keys 0 disables dedupe")
	}
}

func TestSignature(t *testing.T) {
	body := []byte(`{"event":{}}`)
	good := Sign("s", body)
	for _, tc := range []struct {
		header string
		ok     bool
	}{
		{good, true},
		{"v1=00, " + good, true},
		{"v1=zz," + good, true},
		{"v1=00", false},
		{"", false},
		{strings.TrimPrefix(good, "v1="), false},
		{Sign("t", body), false},
	} {
		if got := VerifySignature("s", tc.header, body); got != tc.ok {
			t.Errorf("%q: %v", tc.header, got)
		}
	}
	if VerifySignature("", Sign("", body), body) {
		t.Error("an empty secret verifies nothing")
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "pd.secret")
	os.WriteFile(secret, []byte("  from-file\n"), 0o600)
	yamlFile := filepath.Join(dir, "a.yaml")
	os.WriteFile(yamlFile, []byte(`
alertmanager:
  source: prom-eu
  severity_label: level
  severities: {Fatal: P0}
  resource_labels: [cluster]
pagerduty:
  secret_file: `+secret+`
dedupe:
  window: 2h
`), 0o600)
	cfg, err := Load(yamlFile)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Alertmanager
	if a.Source != "prom-eu" || a.SeverityLabel != "level" || a.Severities["fatal"] != "P0" || a.Severities["critical"] != "P1" ||
		len(a.ResourceLabels) != 1 || cfg.Grafana.Source != "grafana" || cfg.PagerDuty.Secret != "from-file" ||
		cfg.Dedupe.Window != Duration(2*time.Hour) || cfg.Dedupe.MaxKeys != 100000 {
		t.Fatalf("%+v", cfg)
	}
	jsonFile := filepath.Join(dir, "a.json")
	os.WriteFile(jsonFile, []byte(`{"pagerduty":{"secret":"s","urgencies":{"high":"P1"}}}`), 0o600)
	if cfg, err = Load(jsonFile); err != nil || cfg.PagerDuty.Secret != "s" || cfg.PagerDuty.Urgencies["high"] != "P1" {
		t.Fatalf("%+v %v", cfg.PagerDuty, err)
	}
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o600)
	if cfg, err := Load(empty); err != nil || cfg.Dedupe.MaxKeys != 100000 {
		t.Fatalf("an empty file keeps the defaults: %v %v", cfg.Dedupe, err)
	}
	off := filepath.Join(dir, "off.yaml")
	os.WriteFile(off, []byte("dedupe: {max_keys: 0}\n"), 0o600)
	if cfg, err := Load(off); err != nil || cfg.Dedupe.MaxKeys != 0 {
		t.Fatalf("max_keys 0 turns dedupe off: %v %v", cfg.Dedupe, err)
	}
	for name, text := range map[string]string{
		"unknown key": "grafana:\n  sevrities: {}\n",
		"bad sev":     "alertmanager:\n  default_severity: high\n",
		"bad window":  "dedupe:\n  window: soon\n",
		"both":        "pagerduty:\n  secret: a\n  secret_file: " + secret + "\n",
	} {
		p := filepath.Join(dir, "bad.yaml")
		os.WriteFile(p, []byte(text), 0o600)
		if _, err := Load(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
