package engine_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flarecast/flarecast/adapter"
	"github.com/flarecast/flarecast/engine"
)

// The alert-source adapters (POST /v1/adapters/…), over loopback HTTP
// against a real engine, with the events checked at a real WebSocket
// subscriber. Payloads are adapter/testdata's.

type adapterReply struct {
	Accepted   []adapterResult `json:"accepted"`
	Duplicates []adapterResult `json:"duplicates"`
	Skipped    []adapterResult `json:"skipped"`
	Error      string          `json:"error"`
}

type adapterResult struct {
	Alert     int    `json:"alert"`
	ID        string `json:"id"`
	MessageID uint64 `json:"message_id"`
	Reason    string `json:"reason"`
}

func fixture(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "adapter", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (h *httpIngest) adapterURL(name string) string {
	return strings.TrimSuffix(h.url, "/v1/events") + "/v1/adapters/" + name
}

// postAdapter posts body to an adapter with the headers given and returns
// the status and the decoded reply (when the status is 200 or 503).
func (h *httpIngest) postAdapter(t testing.TB, name, body string, header map[string]string) (int, adapterReply, string) {
	t.Helper()
	req, err := http.NewRequest("POST", h.adapterURL(name), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", name, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	var r adapterReply
	if resp.StatusCode == 200 || resp.StatusCode == 503 {
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatalf("reply %q: %v", raw, err)
		}
	}
	return resp.StatusCode, r, string(raw)
}

var bearer = map[string]string{"Authorization": "Bearer " + ingestToken}

// nextEvent reads the next message, which must be an event, and returns
// its message_id and event object.
func nextEvent(t testing.TB, c *client) (uint64, map[string]any) {
	t.Helper()
	m := c.expect("event")
	return uint64(m["message_id"].(float64)), m["event"].(map[string]any)
}

func wantFields(t testing.TB, ev map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		got, _ := json.Marshal(ev[k])
		exp, _ := json.Marshal(v)
		if string(got) != string(exp) {
			t.Errorf("event %s = %s, want %s (event %v)", k, got, exp, ev)
		}
	}
}

// TestAdapterAlertmanager: a webhook's firing and resolved alerts become
// alert_received and incident_resolved at a subscriber of the source, with
// the mapping of the README; an unmappable alert is skipped and reported;
// the same delivery again publishes nothing and answers the original ids.
func TestAdapterAlertmanager(t *testing.T) {
	h := startHTTPIngest(t, nil, nil)
	sub := h.dial(t, "")
	sub.subscribe("am", map[string]any{"sources": []string{"alertmanager"}})
	body := fixture(t, "alertmanager.json")

	code, r, text := h.postAdapter(t, "alertmanager", body, bearer)
	if code != 200 || len(r.Accepted) != 2 || len(r.Duplicates) != 0 || len(r.Skipped) != 1 {
		t.Fatalf("HTTP %d: %s", code, text)
	}
	if r.Accepted[0].Alert != 0 || r.Accepted[1].Alert != 1 || r.Accepted[0].ID != "c0ffee0000000001" ||
		r.Skipped[0].Alert != 2 || !strings.Contains(r.Skipped[0].Reason, `"pending"`) {
		t.Fatalf("reply %s", text)
	}
	id, fired := nextEvent(t, sub)
	if id != r.Accepted[0].MessageID {
		t.Fatalf("subscriber got message_id %d, reply said %d", id, r.Accepted[0].MessageID)
	}
	wantFields(t, fired, map[string]any{
		"event_type": "alert_received", "severity": "P1", "state": "Detected", "source": "alertmanager",
		"incident_id": "c0ffee0000000001", "fingerprint": "c0ffee0000000001", "alert_status": "firing",
		"priority": "high", "affected_resources": []string{"api", "10.0.0.7:9100"},
		"labels": map[string]string{"alertname": "HighErrorRate", "env": "production", "severity": "critical",
			"service": "api", "job": "api", "instance": "10.0.0.7:9100"},
		"title": "5xx rate above 5%", "description": "api 5xx ratio is 7.2% over 5m",
		"starts_at": "2026-12-04T21:00:00.000Z", "receiver": "flarecast",
	})
	id, resolved := nextEvent(t, sub)
	if id != r.Accepted[1].MessageID {
		t.Fatalf("subscriber got message_id %d, reply said %d", id, r.Accepted[1].MessageID)
	}
	wantFields(t, resolved, map[string]any{
		"event_type": "incident_resolved", "severity": "P3", "state": "Resolved", "incident_id": "c0ffee0000000002",
		"alert_status": "resolved", "ends_at": "2026-12-04T20:30:00.000Z", "affected_resources": []string{"search", "10.0.0.8:9100"},
	})

	// Alertmanager's retry of the same notification: nothing new.
	code, again, text := h.postAdapter(t, "alertmanager", body, bearer)
	if code != 200 || len(again.Accepted) != 0 || len(again.Duplicates) != 2 || len(again.Skipped) != 1 ||
		again.Duplicates[0].MessageID != r.Accepted[0].MessageID || again.Duplicates[1].MessageID != r.Accepted[1].MessageID {
		t.Fatalf("retry: HTTP %d: %s", code, text)
	}
	// The same alert firing anew (another startsAt) is a new event; the
	// subscriber's next event is that one, so the retry published nothing.
	refire := strings.Replace(body, "2026-12-04T21:00:00.000Z", "2026-12-04T22:00:00.000Z", 1)
	code, r3, text := h.postAdapter(t, "alertmanager", refire, bearer)
	if code != 200 || len(r3.Accepted) != 1 || r3.Accepted[0].Alert != 0 || len(r3.Duplicates) != 1 {
		t.Fatalf("refire: HTTP %d: %s", code, text)
	}
	if id, ev := nextEvent(t, sub); id != r3.Accepted[0].MessageID || ev["starts_at"] != "2026-12-04T22:00:00.000Z" {
		t.Fatalf("after the retry the subscriber got %d %v, want the refired alert %d", id, ev, r3.Accepted[0].MessageID)
	}
	for result, n := range map[string]float64{"received": 9, "accepted": 3, "duplicate": 3, "rejected": 3, "unavailable": 0} {
		h.waitMetric(t, `flarecast_adapter_alerts_total{adapter="alertmanager",result="`+result+`"}`, n)
	}
	h.waitMetric(t, "flarecast_ingest_events_accepted_total", 3)
}

// TestAdapterRefusals: no token, a bad payload, a wrong Content-Type, an
// unknown adapter and an oversized body publish nothing; an alert whose
// event fails the engine's own validation is skipped, the rest accepted.
func TestAdapterRefusals(t *testing.T) {
	h := startHTTPIngest(t, func(c *engine.Config) { c.IngestMaxBody = 128 << 10 }, nil)
	body := fixture(t, "alertmanager.json")
	for _, tc := range []struct {
		name, adapter, body string
		header              map[string]string
		code                int
		want                string
	}{
		{"no token", "alertmanager", body, nil, 401, "unauthorized"},
		{"wrong token", "alertmanager", body, map[string]string{"Authorization": "Bearer nope"}, 401, "unauthorized"},
		{"not JSON", "alertmanager", "{alerts", bearer, 400, "bad alertmanager payload"},
		{"no alerts", "alertmanager", `{"version":"4"}`, bearer, 400, `no "alerts" array`},
		{"alerts not an array", "grafana", `{"alerts":{}}`, bearer, 400, "bad grafana payload"},
		{"other version", "alertmanager", `{"version":"5","alerts":[]}`, bearer, 400, `version "5"`},
		{"pagerduty without event", "pagerduty", `{"messages":[]}`, bearer, 400, `no "event"`},
		{"content type", "alertmanager", body, map[string]string{"Authorization": "Bearer " + ingestToken, "Content-Type": "text/plain"}, 415, "Content-Type"},
		{"unknown adapter", "nagios", body, bearer, 404, "/v1/adapters/alertmanager"},
		{"too large", "alertmanager", `{"alerts":[],"pad":"` + strings.Repeat("x", 130<<10) + `"}`, bearer, 413, "ingest-max-body"},
	} {
		code, _, text := h.postAdapter(t, tc.adapter, tc.body, tc.header)
		if code != tc.code || !strings.Contains(text, tc.want) || strings.Count(strings.TrimSpace(text), "\n") != 0 {
			t.Errorf("%s: HTTP %d %q, want %d with %q on one line", tc.name, code, text, tc.code, tc.want)
		}
	}
	h.waitMetric(t, "flarecast_ingest_events_accepted_total", 0)
	h.waitMetric(t, `flarecast_http_ingest_requests_total{code="400"}`, 5)

	// One alert too big for max-message-size once mapped: the engine's
	// validation refuses it, the other is published.
	big := `{"version":"4","alerts":[` +
		`{"status":"firing","labels":{"alertname":"Big"},"annotations":{"description":"` + strings.Repeat("d", 65<<10/2) + `","summary":"` + strings.Repeat("s", 65<<10/2) + `"},"startsAt":"2026-12-04T21:00:00Z"},` +
		`{"status":"firing","labels":{"alertname":"Small","flarecast_severity":"P0"},"startsAt":"2026-12-04T21:00:00Z"},` +
		`{"status":"firing","labels":{"alertname":"Odd","flarecast_severity":"urgent"},"startsAt":"2026-12-04T21:00:00Z"}]}`
	sub := h.dial(t, "")
	sub.subscribe("all", map[string]any{})
	code, r, text := h.postAdapter(t, "alertmanager", big, bearer)
	if code != 200 || len(r.Accepted) != 1 || r.Accepted[0].Alert != 1 || len(r.Skipped) != 2 ||
		!strings.Contains(r.Skipped[0].Reason, "max-message-size") || !strings.Contains(r.Skipped[1].Reason, "flarecast_severity") {
		t.Fatalf("HTTP %d: %s", code, text)
	}
	// Without a fingerprint field it is computed as Alertmanager would.
	_, ev := nextEvent(t, sub)
	wantFields(t, ev, map[string]any{"title": "Small", "severity": "P0",
		"fingerprint": adapter.Fingerprint(map[string]string{"alertname": "Small", "flarecast_severity": "P0"})})
	h.waitMetric(t, "flarecast_ingest_events_rejected_total", 1)
}

// TestAdapterGrafana: Grafana's contact point payload maps the same way,
// with Grafana's links kept.
func TestAdapterGrafana(t *testing.T) {
	h := startHTTPIngest(t, nil, nil)
	sub := h.dial(t, "")
	sub.subscribe("g", map[string]any{"sources": []string{"grafana"}, "severities": []string{"P3"}})
	code, r, text := h.postAdapter(t, "grafana", fixture(t, "grafana.json"), bearer)
	if code != 200 || len(r.Accepted) != 1 {
		t.Fatalf("HTTP %d: %s", code, text)
	}
	id, ev := nextEvent(t, sub)
	if id != r.Accepted[0].MessageID {
		t.Fatalf("message_id %d, reply said %d", id, r.Accepted[0].MessageID)
	}
	wantFields(t, ev, map[string]any{
		"event_type": "alert_received", "severity": "P3", "state": "Detected", "source": "grafana",
		"incident_id": "57c6d9296de2ad39", "affected_resources": []string{"db-1"},
		"title": "Disk on db-1 above 90%", "dashboard_url": "https://grafana.example/d/abcdef",
		"panel_url": "https://grafana.example/d/abcdef?viewPanel=2", "values": map[string]float64{"B": 93.1, "C": 1},
	})
	h.waitMetric(t, `flarecast_adapter_alerts_total{adapter="grafana",result="accepted"}`, 1)
}

// TestAdapterPagerDuty: with a secret in --adapters-config, only a body
// signed with it is taken (the bearer token is not needed); the incident's
// life maps to incident_created, incident_updated, escalated and
// incident_resolved with the PagerDuty incident's id.
func TestAdapterPagerDuty(t *testing.T) {
	const secret = "pd-signing-secret"
	cfgFile := filepath.Join(t.TempDir(), "adapters.yaml")
	if err := os.WriteFile(cfgFile, []byte("pagerduty:\n  secret: "+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHTTPIngest(t, func(c *engine.Config) { c.AdaptersConfig = cfgFile }, nil)
	sub := h.dial(t, "")
	sub.subscribe("pd", map[string]any{"incident_ids": []string{"PGR0VU2"}})
	triggered := fixture(t, "pagerduty_triggered.json")

	for _, tc := range []struct {
		name string
		sig  map[string]string
	}{
		{"unsigned", nil},
		{"unsigned with a valid bearer token", bearer},
		{"signed with another secret", map[string]string{"X-PagerDuty-Signature": adapter.Sign("other", []byte(triggered))}},
		{"signature of another body", map[string]string{"X-PagerDuty-Signature": adapter.Sign(secret, []byte(triggered+" "))}},
		{"not v1", map[string]string{"X-PagerDuty-Signature": strings.Replace(adapter.Sign(secret, []byte(triggered)), "v1=", "v0=", 1)}},
	} {
		if code, _, text := h.postAdapter(t, "pagerduty", triggered, tc.sig); code != 401 {
			t.Errorf("%s: HTTP %d %s, want 401", tc.name, code, text)
		}
	}

	signed := func(body string) map[string]string {
		// During a secret rotation PagerDuty sends several signatures.
		return map[string]string{"X-PagerDuty-Signature": adapter.Sign("old-secret", []byte(body)) + ", " + adapter.Sign(secret, []byte(body))}
	}
	for _, tc := range []struct {
		fixture string
		want    map[string]any
	}{
		{"pagerduty_triggered.json", map[string]any{"event_type": "incident_created", "state": "Detected", "severity": "P1",
			"source": "pagerduty", "incident_id": "PGR0VU2", "title": "A little bump in the road", "affected_resources": []string{"API Service"},
			"labels": map[string]string{"priority": "P1", "urgency": "high", "service": "API Service"}, "incident_number": 2,
			"url": "https://acme.pagerduty.com/incidents/PGR0VU2", "pagerduty_event_type": "incident.triggered"}},
		{"pagerduty_acknowledged.json", map[string]any{"event_type": "incident_updated", "state": "Triaged"}},
		{"pagerduty_escalated.json", map[string]any{"event_type": "escalated", "state": "Detected", "priority": "critical"}},
		{"pagerduty_resolved.json", map[string]any{"event_type": "incident_resolved", "state": "Resolved"}},
	} {
		body := fixture(t, tc.fixture)
		code, r, text := h.postAdapter(t, "pagerduty", body, signed(body))
		if code != 200 || len(r.Accepted) != 1 {
			t.Fatalf("%s: HTTP %d %s", tc.fixture, code, text)
		}
		id, ev := nextEvent(t, sub)
		if id != r.Accepted[0].MessageID {
			t.Fatalf("%s: message_id %d, reply said %d", tc.fixture, id, r.Accepted[0].MessageID)
		}
		wantFields(t, ev, tc.want)
	}
	// An event type flarecast does not map is answered, not published; a
	// redelivered event (same event id) is a duplicate.
	for _, f := range []string{"pagerduty_annotated.json", "pagerduty_triggered.json"} {
		body := fixture(t, f)
		code, r, text := h.postAdapter(t, "pagerduty", body, signed(body))
		if code != 200 || len(r.Accepted) != 0 || len(r.Skipped)+len(r.Duplicates) != 1 {
			t.Fatalf("%s: HTTP %d %s", f, code, text)
		}
	}
	h.waitMetric(t, `flarecast_adapter_alerts_total{adapter="pagerduty",result="accepted"}`, 4)
	h.waitMetric(t, `flarecast_adapter_alerts_total{adapter="pagerduty",result="duplicate"}`, 1)
	h.waitMetric(t, `flarecast_adapter_alerts_total{adapter="pagerduty",result="rejected"}`, 1)
	h.waitMetric(t, `flarecast_http_ingest_requests_total{code="401"}`, 5)
}

// TestAdapterPagerDutyBearer: without a secret the PagerDuty route takes
// the bearer token like the others (PagerDuty's custom header).
func TestAdapterPagerDutyBearer(t *testing.T) {
	h := startHTTPIngest(t, nil, nil)
	body := fixture(t, "pagerduty_triggered.json")
	if code, _, text := h.postAdapter(t, "pagerduty", body, map[string]string{"X-PagerDuty-Signature": adapter.Sign("x", []byte(body))}); code != 401 {
		t.Fatalf("without a token: HTTP %d %s", code, text)
	}
	if code, r, text := h.postAdapter(t, "pagerduty", body, bearer); code != 200 || len(r.Accepted) != 1 {
		t.Fatalf("with the token: HTTP %d %s", code, text)
	}
}

// TestAdaptersConfigRefused: a config file that cannot work stops New.
func TestAdaptersConfigRefused(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"typo.yaml":     "alertmanager:\n  severty_label: level\n",
		"severity.json": `{"grafana":{"severities":{"critical":"P9"}}}`,
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := engine.DefaultConfig()
		cfg.IngestSocket, cfg.AdminListen = "", ""
		cfg.IngestListen, cfg.IngestInsecure, cfg.AdaptersConfig = "127.0.0.1:0", true, path
		if _, err := engine.New(cfg); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: New returned %v", name, err)
		}
	}
	cfg := engine.DefaultConfig()
	cfg.IngestSocket, cfg.AdminListen, cfg.AdaptersConfig = "", "", filepath.Join(dir, "typo.yaml")
	if _, err := engine.New(cfg); err == nil || !strings.Contains(err.Error(), "adapters-config needs ingest-listen") {
		t.Errorf("adapters-config without ingest-listen: New returned %v", err)
	}
}
