package deploy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"gopkg.in/yaml.v3"

	"github.com/flarecast/flarecast/adapter"
	"github.com/flarecast/flarecast/internal/enginetest"
)

// The intervals of the alerting path under test: the shortest each tool
// takes, so the measured delay is the path's own cost, not its defaults'
// (production: scrape 15-30s, group_wait 30s, group_interval 5m).
const (
	scrapeInterval = "1s"
	evalInterval   = "1s"
	groupWait      = "1s"
	groupInterval  = "1s"
)

// testAlert is the rule of testdata/alerting-test-rules.yml: it fires at 4
// WebSocket connections, the subscriber and extraConns more.
const (
	testAlert  = "FlarecastE2EConnections"
	extraConns = 3
)

// TestAlertmanagerEndToEnd proves the README's Alertmanager set-up and the
// shipped rules against the real programs: a real Prometheus scrapes a
// flarecast engine's /metrics and evaluates deploy/prometheus's rules and
// a test rule on websocket_active_connections; a real Alertmanager, with
// the README's webhook_configs block, delivers to the engine's
// /v1/adapters/alertmanager. Opening connections fires the alert, and a
// WebSocket subscriber to source alertmanager gets it as alert_received
// with its labels; closing them gets incident_resolved. An alert posted
// straight to Alertmanager's API arrives too, and a notification body
// Alertmanager really sent, delivered to the adapter a second time,
// publishes nothing.
func TestAlertmanagerEndToEnd(t *testing.T) {
	promBin := findBinary(t, "prometheus", "prometheus")
	amBin := findBinary(t, "prometheus-alertmanager", "prometheus-alertmanager", "alertmanager")
	dir := t.TempDir()

	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	token := hex.EncodeToString(secret)
	// One file for both sides: flarecast's --ingest-token-file and
	// Alertmanager's credentials_file, which takes the whole file as the
	// token (so no comment lines here).
	tokenFile := filepath.Join(dir, "flarecast.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := enginetest.Config()
	cfg.IngestListen, cfg.IngestTokenFile = "127.0.0.1:0", tokenFile
	fc := enginetest.MustStart(t, cfg)
	ingestURL := "http://" + fc.Eng.IngestHTTPAddr().String()
	adminAddr := strings.TrimPrefix(fc.Admin, "http://")

	// A second webhook of the same receiver records what Alertmanager
	// sends, headers included, to replay a real notification later.
	capture := &captured{}
	capSrv := httptest.NewServer(capture)
	t.Cleanup(capSrv.Close)

	amAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	amConfig := alertmanagerConfig(t, ingestURL, tokenFile, capSrv.URL)
	writeYAML(t, filepath.Join(dir, "alertmanager.yml"), amConfig)
	am := startProcess(t, dir, "alertmanager", nil, amBin,
		"--config.file="+filepath.Join(dir, "alertmanager.yml"),
		"--storage.path="+filepath.Join(dir, "alertmanager-data"),
		"--web.listen-address="+amAddr,
		"--cluster.listen-address=", // no gossip: one instance, loopback only
	)

	promAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	writeYAML(t, filepath.Join(dir, "prometheus.yml"), map[string]any{
		"global": map[string]any{
			"scrape_interval": scrapeInterval, "scrape_timeout": scrapeInterval, "evaluation_interval": evalInterval,
		},
		"rule_files": []string{rulesFile, deployPath("testdata", "alerting-test-rules.yml")},
		"alerting": map[string]any{"alertmanagers": []any{map[string]any{
			"api_version": "v2", "static_configs": []any{map[string]any{"targets": []string{amAddr}}},
		}}},
		// Job "flarecast": the name FlarecastDown expects.
		"scrape_configs": []any{map[string]any{
			"job_name": "flarecast", "static_configs": []any{map[string]any{"targets": []string{adminAddr}}},
		}},
	})
	prom := startProcess(t, dir, "prometheus", nil, promBin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "prometheus-data"),
		"--web.listen-address="+promAddr,
	)
	amURL, promURL := "http://"+amAddr, "http://"+promAddr
	waitStatus(t, am, amURL+"/-/ready", http.StatusOK)
	waitStatus(t, prom, promURL+"/-/ready", http.StatusOK)

	sub := dialAlertSubscriber(t, fc.WS)

	// Prometheus has evaluated every rule without error, sees the one
	// connection, and a healthy instance raises none of the shipped alerts.
	want := []string{testAlert}
	for _, g := range loadRules(t, rulesFile).Groups {
		for _, r := range g.Rules {
			want = append(want, r.Alert)
		}
	}
	var rules map[string]promRule
	waitFor(t, 20*time.Second, func() bool {
		rules = promRules(t, promURL)
		for _, name := range want {
			if rules[name].Health != "ok" {
				return false
			}
		}
		return promQuery(t, promURL, `websocket_active_connections{job="flarecast"}`) == "1"
	}, func() string {
		return fmt.Sprintf("Prometheus did not evaluate every rule healthily with 1 connection scraped: %+v\n%s", rules, prom.log())
	})
	for name, r := range rules {
		if r.State != "inactive" {
			t.Errorf("rule %s is %s on a healthy idle instance", name, r.State)
		}
	}

	// Fire: open connections until the test rule holds.
	var conns []*websocket.Conn
	for range extraConns {
		ws, _, err := websocket.DefaultDialer.Dial(fc.WS, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		conns = append(conns, ws)
	}
	moved := time.Now()
	fired := sub.next(t, 20*time.Second, am, prom)
	firedIn := time.Since(moved)

	alert := promAlert(t, promURL, testAlert)
	activeAt, err := time.Parse(time.RFC3339Nano, alert.ActiveAt)
	if err != nil {
		t.Fatalf("Prometheus activeAt %q: %v", alert.ActiveAt, err)
	}
	fromActive := fired.at.Sub(activeAt)
	t.Logf("alert → socket: %v after the connections opened, %v after Prometheus's activeAt "+
		"(scrape_interval %s, evaluation_interval %s, for 0s, group_wait %s, group_interval %s)",
		firedIn.Round(time.Millisecond), fromActive.Round(time.Millisecond), scrapeInterval, evalInterval, groupWait, groupInterval)

	fp := amFingerprint(t, amURL, testAlert)
	e := fired.Event
	wantLabels := map[string]string{
		"alertname": testAlert, "severity": "warning", "team": "flarecast-e2e", "job": "flarecast", "instance": adminAddr,
	}
	if e.EventType != "alert_received" || e.State != "Detected" || e.Source != "alertmanager" || e.Severity != "P3" || e.AlertStatus != "firing" {
		t.Errorf("firing alert became %+v, want alert_received, Detected, source alertmanager, P3, firing", e)
	}
	if !maps.Equal(e.Labels, wantLabels) {
		t.Errorf("event labels %v, want the alert's %v", e.Labels, wantLabels)
	}
	if e.IncidentID != fp || e.Fingerprint != fp || adapter.Fingerprint(e.Labels) != fp {
		t.Errorf("incident_id %s, fingerprint %s, adapter.Fingerprint %s: want Alertmanager's fingerprint %s",
			e.IncidentID, e.Fingerprint, adapter.Fingerprint(e.Labels), fp)
	}
	if want := fmt.Sprintf("%d WebSocket connections on %s", 1+extraConns, adminAddr); e.Title != want {
		t.Errorf("title %q, want the summary annotation %q", e.Title, want)
	}
	if !slices.Equal(e.Resources, []string{"flarecast", adminAddr}) {
		t.Errorf("affected_resources %v, want the job and instance labels", e.Resources)
	}
	// Prometheus sends Alertmanager the time in milliseconds.
	if startsAt, err := time.Parse(time.RFC3339Nano, e.StartsAt); err != nil || !startsAt.Equal(activeAt.Truncate(time.Millisecond)) {
		t.Errorf("starts_at %q (%v), want Prometheus's activeAt %s", e.StartsAt, err, alert.ActiveAt)
	}
	if e.Receiver != "flarecast" {
		t.Errorf("receiver %q, want the README's receiver flarecast", e.Receiver)
	}

	// A retry: the body Alertmanager sent, delivered again.
	note := capture.wait(t, func(n notification) bool {
		return n.Status == "firing" && len(n.Alerts) == 1 && n.Alerts[0].Labels["alertname"] == testAlert
	})
	// Alertmanager posts to both webhooks at once, so the capture's arrival
	// time splits the delay into Prometheus + Alertmanager and flarecast.
	accepted, err := time.Parse(time.RFC3339Nano, fired.Timestamp)
	if err != nil {
		t.Fatalf("event timestamp %q: %v", fired.Timestamp, err)
	}
	t.Logf("of which: connections opened → activeAt %v (scrape + evaluation), activeAt → webhook %v (Prometheus's notifier + group_wait), "+
		"webhook → accepted %v, accepted → socket %v (flarecast)",
		activeAt.Sub(moved).Round(time.Millisecond), note.at.Sub(activeAt).Round(time.Millisecond),
		accepted.Sub(note.at).Round(time.Microsecond), fired.at.Sub(accepted).Round(time.Microsecond))
	if note.auth != "Bearer "+token {
		t.Errorf("Alertmanager sent Authorization %q, want the README's Bearer from credentials_file", note.auth)
	}
	reply := postAdapter(t, ingestURL, token, note.body)
	if len(reply.Accepted) != 0 || len(reply.Duplicates) != 1 || reply.Duplicates[0].MessageID != fired.MessageID || reply.Duplicates[0].ID != fp {
		t.Fatalf("the same notification again was answered %+v, want one duplicate of message_id %d", reply, fired.MessageID)
	}

	// Straight to Alertmanager's API. It must be the next event: had the
	// retry published anything, that would have come first.
	direct := map[string]string{"alertname": "FlarecastE2EDirect", "severity": "critical", "service": "checkout"}
	posted := time.Now()
	postJSON(t, amURL+"/api/v2/alerts", "", []any{map[string]any{
		"labels":       direct,
		"annotations":  map[string]string{"summary": "posted to Alertmanager's API v2"},
		"generatorURL": "http://127.0.0.1/e2e",
	}}, http.StatusOK)
	got := sub.next(t, 20*time.Second, am, prom)
	t.Logf("Alertmanager API v2 → socket: %v", got.at.Sub(posted).Round(time.Millisecond))
	if e := got.Event; e.EventType != "alert_received" || e.Severity != "P1" || !maps.Equal(e.Labels, direct) ||
		e.IncidentID != adapter.Fingerprint(direct) || e.Title != "posted to Alertmanager's API v2" || !slices.Equal(e.Resources, []string{"checkout"}) {
		t.Fatalf("after the retry and the API alert the next event is %+v, want the API alert (P1, labels %v)", e, direct)
	}
	if n := fc.Metric(t, `flarecast_adapter_alerts_total{adapter="alertmanager",result="duplicate"}`); n != 1 {
		t.Errorf("flarecast_adapter_alerts_total duplicate = %v, want 1", n)
	}

	// Resolve: close the connections.
	for _, ws := range conns {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		ws.Close()
	}
	closed := time.Now()
	resolved := sub.next(t, 20*time.Second, am, prom)
	t.Logf("resolved → socket: %v after the connections closed", resolved.at.Sub(closed).Round(time.Millisecond))
	if e := resolved.Event; e.EventType != "incident_resolved" || e.State != "Resolved" || e.AlertStatus != "resolved" ||
		e.IncidentID != fp || !maps.Equal(e.Labels, wantLabels) || e.EndsAt == "" {
		t.Errorf("resolution became %+v, want incident_resolved, Resolved, incident_id %s, the same labels, an ends_at", e, fp)
	}
}

// alertmanagerConfig is the README's Alertmanager receiver, as printed,
// pointed at the engine and the token file, plus a capturing webhook with
// the same settings, and a route with the test's short intervals.
func alertmanagerConfig(t *testing.T, ingestURL, tokenFile, captureURL string) map[string]any {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join(repoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "**Alertmanager**")
	_, block, ok2 := strings.Cut(after, "```yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md has no ```yaml block after **Alertmanager**: update this test with it")
	}
	for _, r := range [][2]string{{"http://flarecast:8081", ingestURL}, {"/etc/alertmanager/flarecast.token", tokenFile}} {
		if strings.Count(block, r[0]) != 1 {
			t.Fatalf("README.md's Alertmanager block no longer has exactly one %q: update this test with it\n%s", r[0], block)
		}
		block = strings.Replace(block, r[0], r[1], 1)
	}
	var cfg struct {
		Receivers []struct {
			Name     string           `yaml:"name"`
			Webhooks []map[string]any `yaml:"webhook_configs"`
		} `yaml:"receivers"`
	}
	if err := yaml.Unmarshal([]byte(block), &cfg); err != nil {
		t.Fatalf("README.md's Alertmanager block: %v", err)
	}
	if len(cfg.Receivers) != 1 || len(cfg.Receivers[0].Webhooks) != 1 {
		t.Fatalf("README.md's Alertmanager block: want one receiver with one webhook, got %+v", cfg.Receivers)
	}
	r := cfg.Receivers[0]
	hook := r.Webhooks[0]
	if !strings.HasSuffix(fmt.Sprint(hook["url"]), "/v1/adapters/alertmanager") || hook["http_config"] == nil {
		t.Fatalf("README.md's Alertmanager webhook %v: want the adapter's URL and an http_config", hook)
	}
	c := maps.Clone(hook)
	c["url"] = captureURL
	return map[string]any{
		"route": map[string]any{
			"receiver": r.Name, "group_by": []string{"alertname"},
			"group_wait": groupWait, "group_interval": groupInterval, "repeat_interval": "1h",
		},
		"receivers": []any{map[string]any{"name": r.Name, "webhook_configs": []any{hook, c}}},
	}
}

func writeYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ---- the subscriber ----

// alertEvent is an event message as the socket carries it, with the
// fields the adapter sets.
type alertEvent struct {
	Type      string `json:"type"`
	MessageID uint64 `json:"message_id"`
	Timestamp string `json:"timestamp"` // when flarecast accepted it
	Event     struct {
		EventType   string            `json:"event_type"`
		Severity    string            `json:"severity"`
		State       string            `json:"state"`
		Source      string            `json:"source"`
		IncidentID  string            `json:"incident_id"`
		Resources   []string          `json:"affected_resources"`
		Labels      map[string]string `json:"labels"`
		Title       string            `json:"title"`
		Fingerprint string            `json:"fingerprint"`
		AlertStatus string            `json:"alert_status"`
		StartsAt    string            `json:"starts_at"`
		EndsAt      string            `json:"ends_at"`
		Receiver    string            `json:"receiver"`
	} `json:"event"`
	at time.Time // when the test read it
}

type alertSubscriber struct{ ws *websocket.Conn }

// dialAlertSubscriber connects and subscribes to what the alertmanager
// adapter publishes, as a dashboard of alerts would.
func dialAlertSubscriber(t *testing.T, url string) *alertSubscriber {
	t.Helper()
	c := dialRaw(t, url)
	if err := c.ws.WriteJSON(map[string]any{
		"type": "subscribe", "subscription_id": "alerts", "filters": map[string]any{"sources": []string{"alertmanager"}},
	}); err != nil {
		t.Fatal(err)
	}
	if m := c.read(t, 5*time.Second); m["type"] != "subscribed" {
		t.Fatalf("subscribe answered %v", m)
	}
	return &alertSubscriber{c.ws}
}

func dialRaw(t *testing.T, url string) *wsClient {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", url, err, resp)
	}
	t.Cleanup(func() { ws.Close() })
	c := &wsClient{ws: ws}
	if m := c.read(t, 5*time.Second); m["type"] != "welcome" {
		t.Fatalf("%s: first message %v, want welcome", url, m)
	}
	return c
}

// next returns the next message, which must be an event, within d; on a
// timeout the tools' logs say how far the alert got.
func (s *alertSubscriber) next(t *testing.T, d time.Duration, procs ...*process) alertEvent {
	t.Helper()
	_ = s.ws.SetReadDeadline(time.Now().Add(d))
	_, data, err := s.ws.ReadMessage()
	if err != nil {
		var logs strings.Builder
		for _, p := range procs {
			fmt.Fprintf(&logs, "\n--- %s ---\n%s", filepath.Base(p.logPath), p.log())
		}
		t.Fatalf("no event within %v: %v%s", d, err, logs.String())
	}
	var e alertEvent
	if err := json.Unmarshal(data, &e); err != nil || e.Type != "event" {
		t.Fatalf("want an event, got %s (%v)", data, err)
	}
	e.at = time.Now()
	return e
}

// ---- the webhook capture ----

type notification struct {
	Status string `json:"status"`
	Alerts []struct {
		Labels map[string]string `json:"labels"`
	} `json:"alerts"`
	auth string
	body []byte
	at   time.Time
}

type captured struct {
	mu    sync.Mutex
	notes []notification
}

func (c *captured) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var n notification
	_ = json.Unmarshal(body, &n)
	n.auth, n.body, n.at = r.Header.Get("Authorization"), body, time.Now()
	c.mu.Lock()
	c.notes = append(c.notes, n)
	c.mu.Unlock()
}

func (c *captured) wait(t *testing.T, match func(notification) bool) notification {
	t.Helper()
	var found notification
	waitFor(t, 10*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.IndexFunc(c.notes, match)
		if i >= 0 {
			found = c.notes[i]
		}
		return i >= 0
	}, func() string {
		c.mu.Lock()
		defer c.mu.Unlock()
		return fmt.Sprintf("Alertmanager sent the capturing webhook no such notification; it got %+v", c.notes)
	})
	return found
}

// ---- HTTP APIs ----

type adapterReply struct {
	Accepted, Duplicates, Skipped []struct {
		Alert     int    `json:"alert"`
		ID        string `json:"id"`
		MessageID uint64 `json:"message_id"`
		Reason    string `json:"reason"`
	}
}

func postAdapter(t *testing.T, ingestURL, token string, body []byte) adapterReply {
	t.Helper()
	var reply adapterReply
	if err := json.Unmarshal(postJSON(t, ingestURL+"/v1/adapters/alertmanager", token, json.RawMessage(body), http.StatusOK), &reply); err != nil {
		t.Fatal(err)
	}
	return reply
}

// postJSON posts v and returns the reply body, failing unless the status is want.
func postJSON(t *testing.T, url, token string, v any, want int) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("POST %s: %s %s, want %d", url, resp.Status, out, want)
	}
	return out
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, body)
	}
}

type promRule struct {
	Name      string `json:"name"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
	State     string `json:"state"`
}

// promRules returns Prometheus's alerting rules by name.
func promRules(t *testing.T, promURL string) map[string]promRule {
	t.Helper()
	var r struct {
		Data struct {
			Groups []struct {
				Rules []promRule `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	getJSON(t, promURL+"/api/v1/rules?type=alert", &r)
	rules := map[string]promRule{}
	for _, g := range r.Data.Groups {
		for _, rule := range g.Rules {
			rules[rule.Name] = rule
		}
	}
	return rules
}

// promQuery returns the value of an instant query with one result, or "".
func promQuery(t *testing.T, promURL, q string) string {
	t.Helper()
	var r struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	getJSON(t, promURL+"/api/v1/query?query="+url.QueryEscape(q), &r)
	if len(r.Data.Result) != 1 {
		return ""
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	return s
}

type promActiveAlert struct {
	Labels   map[string]string `json:"labels"`
	State    string            `json:"state"`
	ActiveAt string            `json:"activeAt"`
}

// promAlert returns the firing alert of that name from Prometheus.
func promAlert(t *testing.T, promURL, name string) promActiveAlert {
	t.Helper()
	var r struct {
		Data struct {
			Alerts []promActiveAlert `json:"alerts"`
		} `json:"data"`
	}
	getJSON(t, promURL+"/api/v1/alerts", &r)
	for _, a := range r.Data.Alerts {
		if a.Labels["alertname"] == name && a.State == "firing" {
			return a
		}
	}
	t.Fatalf("Prometheus has no firing %s: %+v", name, r.Data.Alerts)
	return promActiveAlert{}
}

// amFingerprint returns the fingerprint Alertmanager gave the alert.
func amFingerprint(t *testing.T, amURL, name string) string {
	t.Helper()
	var alerts []struct {
		Fingerprint string `json:"fingerprint"`
	}
	getJSON(t, amURL+"/api/v2/alerts?filter="+url.QueryEscape(`alertname="`+name+`"`), &alerts)
	if len(alerts) != 1 {
		t.Fatalf("Alertmanager holds %d alerts named %s, want 1", len(alerts), name)
	}
	return alerts[0].Fingerprint
}
