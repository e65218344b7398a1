package adapter

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/flarecast/flarecast/event"
)

// Item is one alert (or PagerDuty event) of a webhook: the event line to
// publish, or why it was skipped.
type Item struct {
	// Line is the event, a JSON object, when the alert was mapped.
	Line []byte
	// Key identifies the delivered state for deduplication.
	Key string
	// ID names the alert in the reply: its fingerprint (PagerDuty: the
	// webhook event's id).
	ID string
	// Skip says why the alert was not mapped; Line is nil then.
	Skip string
}

// alertPayload is Alertmanager's webhook (version 4); Grafana's contact
// point sends the same shape with more fields (kept in the events).
type alertPayload struct {
	Version     string            `json:"version"`
	GroupKey    string            `json:"groupKey"`
	Status      string            `json:"status"`
	Receiver    string            `json:"receiver"`
	ExternalURL string            `json:"externalURL"`
	Alerts      []json.RawMessage `json:"alerts"`
	// Grafana
	OrgID *int64 `json:"orgId"`
}

type alert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     string            `json:"startsAt"`
	EndsAt       string            `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
	// Grafana
	SilenceURL   string             `json:"silenceURL"`
	DashboardURL string             `json:"dashboardURL"`
	PanelURL     string             `json:"panelURL"`
	ImageURL     string             `json:"imageURL"`
	ValueString  string             `json:"valueString"`
	Values       map[string]float64 `json:"values"`
}

// alertEvent is the event an alert becomes (unknown fields pass through
// to clients, so the alert's own fields ride along).
type alertEvent struct {
	EventType    string            `json:"event_type"`
	Severity     string            `json:"severity,omitempty"`
	State        string            `json:"state"`
	Source       string            `json:"source"`
	IncidentID   string            `json:"incident_id"`
	Resources    []string          `json:"affected_resources,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	Title        string            `json:"title,omitempty"`
	Description  string            `json:"description,omitempty"`
	Fingerprint  string            `json:"fingerprint"`
	AlertStatus  string            `json:"alert_status"`
	StartsAt     string            `json:"starts_at,omitempty"`
	EndsAt       string            `json:"ends_at,omitempty"`
	GeneratorURL string            `json:"generator_url,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Receiver     string            `json:"receiver,omitempty"`
	ExternalURL  string            `json:"external_url,omitempty"`
	// Grafana
	SilenceURL   string             `json:"silence_url,omitempty"`
	DashboardURL string             `json:"dashboard_url,omitempty"`
	PanelURL     string             `json:"panel_url,omitempty"`
	ImageURL     string             `json:"image_url,omitempty"`
	ValueString  string             `json:"value_string,omitempty"`
	Values       map[string]float64 `json:"values,omitempty"`
}

// MapAlerts maps an Alertmanager (grafana false) or Grafana (grafana true)
// webhook body. An error is a payload that cannot be read at all (the
// whole request is refused); an alert that cannot be mapped is an Item
// with Skip set, and the others are still mapped.
//
// A firing alert becomes alert_received (state Detected); a resolved one
// incident_resolved (state Resolved). Both carry the alert's fingerprint
// as incident_id and as "fingerprint", so they correlate.
func MapAlerts(body []byte, cfg *AlertConfig, grafana bool) ([]Item, error) {
	var p alertPayload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("payload is not a webhook JSON object: %s", oneLine(err))
	}
	if p.Alerts == nil {
		return nil, fmt.Errorf("payload has no \"alerts\" array")
	}
	if !grafana && p.Version != "" && p.Version != "4" {
		return nil, fmt.Errorf("webhook version %q is not supported: Alertmanager sends version 4", p.Version)
	}
	items := make([]Item, len(p.Alerts))
	for i, raw := range p.Alerts {
		items[i] = mapAlert(raw, &p, cfg)
	}
	return items, nil
}

func mapAlert(raw json.RawMessage, p *alertPayload, cfg *AlertConfig) Item {
	var a alert
	if err := json.Unmarshal(raw, &a); err != nil {
		return Item{Skip: "unreadable alert: " + oneLine(err)}
	}
	fp := a.Fingerprint
	if fp == "" {
		if len(a.Labels) == 0 {
			return Item{Skip: "alert has neither a fingerprint nor labels"}
		}
		fp = Fingerprint(a.Labels)
	}
	it := Item{ID: fp}
	e := alertEvent{
		Source: cfg.Source, IncidentID: fp, Fingerprint: fp, AlertStatus: a.Status,
		Labels: a.Labels, Annotations: a.Annotations,
		StartsAt: a.StartsAt, EndsAt: a.EndsAt, GeneratorURL: a.GeneratorURL,
		Receiver: p.Receiver, ExternalURL: p.ExternalURL,
		SilenceURL: a.SilenceURL, DashboardURL: a.DashboardURL, PanelURL: a.PanelURL,
		ImageURL: a.ImageURL, ValueString: a.ValueString, Values: a.Values,
	}
	switch a.Status {
	case "firing":
		e.EventType, e.State = string(event.AlertReceived), "Detected"
	case "resolved":
		e.EventType, e.State = string(event.IncidentResolved), "Resolved"
	default:
		it.Skip = fmt.Sprintf("alert status %q is neither firing nor resolved", a.Status)
		return it
	}
	if a.StartsAt != "" {
		if _, err := time.Parse(time.RFC3339Nano, a.StartsAt); err != nil {
			it.Skip = fmt.Sprintf("startsAt %q is not an RFC 3339 time", a.StartsAt)
			return it
		}
	}
	sev, err := severity(a.Labels, cfg)
	if err != "" {
		it.Skip = err
		return it
	}
	e.Severity = sev
	for _, l := range cfg.ResourceLabels {
		if v := a.Labels[l]; v != "" && !slices.Contains(e.Resources, v) {
			e.Resources = append(e.Resources, v)
		}
	}
	e.Title = a.Annotations["summary"]
	if e.Title == "" {
		e.Title = a.Labels["alertname"]
	}
	e.Description = a.Annotations["description"]
	line, jerr := json.Marshal(&e)
	if jerr != nil {
		it.Skip = "cannot encode the event: " + oneLine(jerr)
		return it
	}
	it.Line = line
	it.Key = fp + "|" + a.Status + "|" + a.StartsAt
	return it
}

// severity applies the override label, then the mapping, then the default.
func severity(labels map[string]string, cfg *AlertConfig) (string, string) {
	if cfg.SeverityOverrideLabel != "" {
		if v, ok := labels[cfg.SeverityOverrideLabel]; ok {
			if !event.ValidSeverity(v) {
				return "", fmt.Sprintf("label %s=%q is not one of P0, P1, P2, P3, P4", cfg.SeverityOverrideLabel, v)
			}
			return v, ""
		}
	}
	v := labels[cfg.SeverityLabel]
	if event.ValidSeverity(strings.ToUpper(v)) {
		return strings.ToUpper(v), ""
	}
	if s, ok := cfg.Severities[strings.ToLower(v)]; ok && v != "" {
		return s, ""
	}
	return cfg.DefaultSeverity, ""
}

// Fingerprint is Alertmanager's fingerprint of a label set (FNV-1a 64 of
// the sorted names and values, 0xff-separated, as 16 hex digits): the one
// an alert without a "fingerprint" field would have had.
func Fingerprint(labels map[string]string) string {
	names := make([]string, 0, len(labels))
	for k := range labels {
		names = append(names, k)
	}
	slices.Sort(names)
	h := fnv.New64a()
	sep := []byte{0xff}
	for _, k := range names {
		h.Write([]byte(k))
		h.Write(sep)
		h.Write([]byte(labels[k]))
		h.Write(sep)
	}
	return fmt.Sprintf("%016x", h.Sum64())
}

func oneLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
