package adapter

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/flarecast/flarecast/event"
)

// VerifySignature checks PagerDuty's X-PagerDuty-Signature header: one or
// more comma-separated "v1=<hex HMAC-SHA256 of the raw body>" (several
// while a secret is being rotated); one matching the secret suffices.
func VerifySignature(secret, header string, body []byte) bool {
	if secret == "" || header == "" {
		return false
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	want := m.Sum(nil)
	ok := false
	for sig := range strings.SplitSeq(header, ",") {
		v, hexSum, found := strings.Cut(strings.TrimSpace(sig), "=")
		if !found || v != "v1" {
			continue
		}
		got, err := hex.DecodeString(hexSum)
		if err == nil && hmac.Equal(got, want) {
			ok = true
		}
	}
	return ok
}

// Sign returns the X-PagerDuty-Signature value of body (for tests and
// for senders that imitate PagerDuty).
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

type pdPayload struct {
	Event *struct {
		ID           string          `json:"id"`
		EventType    string          `json:"event_type"`
		ResourceType string          `json:"resource_type"`
		OccurredAt   string          `json:"occurred_at"`
		Agent        *pdRef          `json:"agent"`
		Data         json.RawMessage `json:"data"`
	} `json:"event"`
}

type pdRef struct {
	ID      string `json:"id"`
	Summary string `json:"summary"`
	HTMLURL string `json:"html_url"`
	Type    string `json:"type"`
}

type pdIncident struct {
	ID               string  `json:"id"`
	Type             string  `json:"type"`
	HTMLURL          string  `json:"html_url"`
	Number           int64   `json:"number"`
	Status           string  `json:"status"`
	Title            string  `json:"title"`
	IncidentKey      string  `json:"incident_key"`
	Urgency          string  `json:"urgency"`
	Service          *pdRef  `json:"service"`
	EscalationPolicy *pdRef  `json:"escalation_policy"`
	Priority         *pdRef  `json:"priority"`
	Teams            []pdRef `json:"teams"`
	Assignees        []pdRef `json:"assignees"`
}

type pdEvent struct {
	EventType        string            `json:"event_type"`
	Severity         string            `json:"severity,omitempty"`
	State            string            `json:"state,omitempty"`
	Source           string            `json:"source"`
	IncidentID       string            `json:"incident_id"`
	Resources        []string          `json:"affected_resources,omitempty"`
	Labels           map[string]string `json:"labels,omitempty"`
	Title            string            `json:"title,omitempty"`
	PDEventID        string            `json:"pagerduty_event_id"`
	PDEventType      string            `json:"pagerduty_event_type"`
	OccurredAt       string            `json:"occurred_at,omitempty"`
	IncidentNumber   int64             `json:"incident_number,omitempty"`
	URL              string            `json:"url,omitempty"`
	Assignees        []string          `json:"assignees,omitempty"`
	EscalationPolicy string            `json:"escalation_policy,omitempty"`
	Agent            string            `json:"agent,omitempty"`
}

// pdTypes maps PagerDuty's incident event types to flarecast's; the state
// of the "" entries follows the incident's status.
var pdTypes = map[string]struct{ typ, state string }{
	"incident.triggered":        {string(event.IncidentCreated), "Detected"},
	"incident.acknowledged":     {string(event.IncidentUpdated), "Triaged"},
	"incident.unacknowledged":   {string(event.IncidentUpdated), "Detected"},
	"incident.reassigned":       {string(event.IncidentUpdated), ""},
	"incident.delegated":        {string(event.IncidentUpdated), ""},
	"incident.priority_updated": {string(event.IncidentUpdated), ""},
	"incident.reopened":         {string(event.IncidentUpdated), "Detected"},
	"incident.escalated":        {string(event.Escalated), ""},
	"incident.resolved":         {string(event.IncidentResolved), "Resolved"},
}

// pdStates maps an incident's status to a state.
var pdStates = map[string]string{"triggered": "Detected", "acknowledged": "Triaged", "resolved": "Resolved"}

// MapPagerDuty maps one PagerDuty webhook v3 delivery (one event). An
// error refuses the payload; an event type flarecast does not map
// (incident.annotated, service.updated, pagey.ping, …) is one skipped Item.
func MapPagerDuty(body []byte, cfg *PagerDutyConfig) ([]Item, error) {
	var p pdPayload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("payload is not a PagerDuty webhook JSON object: %s", oneLine(err))
	}
	if p.Event == nil || p.Event.EventType == "" {
		return nil, fmt.Errorf("payload has no \"event\" with an \"event_type\" (PagerDuty webhooks v3)")
	}
	ev := p.Event
	it := Item{ID: ev.ID}
	m, ok := pdTypes[ev.EventType]
	if !ok {
		it.Skip = fmt.Sprintf("PagerDuty event type %q is not mapped", ev.EventType)
		return []Item{it}, nil
	}
	var inc pdIncident
	if err := json.Unmarshal(ev.Data, &inc); err != nil || inc.ID == "" {
		it.Skip = "event.data is not an incident with an id"
		return []Item{it}, nil
	}
	out := pdEvent{
		EventType: m.typ, State: m.state, Source: cfg.Source, IncidentID: inc.ID,
		Title: inc.Title, PDEventID: ev.ID, PDEventType: ev.EventType, OccurredAt: ev.OccurredAt,
		IncidentNumber: inc.Number, URL: inc.HTMLURL, Labels: map[string]string{},
	}
	if out.State == "" {
		out.State = pdStates[inc.Status]
	}
	if inc.Priority != nil {
		out.Severity = cfg.Priorities[inc.Priority.Summary]
		out.Labels["priority"] = inc.Priority.Summary
	}
	if out.Severity == "" {
		out.Severity = cfg.Urgencies[strings.ToLower(inc.Urgency)]
	}
	if inc.Urgency != "" {
		out.Labels["urgency"] = inc.Urgency
	}
	if inc.Service != nil && inc.Service.Summary != "" {
		out.Resources = []string{inc.Service.Summary}
		out.Labels["service"] = inc.Service.Summary
	}
	if inc.EscalationPolicy != nil {
		out.EscalationPolicy = inc.EscalationPolicy.Summary
	}
	for _, a := range inc.Assignees {
		out.Assignees = append(out.Assignees, a.Summary)
	}
	if ev.Agent != nil {
		out.Agent = ev.Agent.Summary
	}
	if len(out.Labels) == 0 {
		out.Labels = nil
	}
	line, err := json.Marshal(&out)
	if err != nil {
		it.Skip = "cannot encode the event: " + oneLine(err)
		return []Item{it}, nil
	}
	it.Line = line
	if ev.ID != "" {
		it.Key = "pd|" + ev.ID
	}
	return []Item{it}, nil
}
