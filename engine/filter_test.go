package engine_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"testing"
)

// corpusEvent is one event of the filter corpus, with the fields a filter
// can look at. Every event is of normal priority, so a client receives its
// events in message_id order.
type corpusEvent struct {
	name       string
	eventType  string
	severity   string
	state      string
	source     string
	incidentID string
	resources  []string
	labels     map[string]string
}

func (e corpusEvent) line() string {
	m := map[string]any{"event_type": e.eventType, "name": e.name}
	if e.severity != "" {
		m["severity"] = e.severity
	}
	if e.state != "" {
		m["state"] = e.state
	}
	if e.source != "" {
		m["source"] = e.source
	}
	if e.incidentID != "" {
		m["incident_id"] = e.incidentID
	}
	if e.resources != nil {
		m["affected_resources"] = e.resources
	}
	if e.labels != nil {
		m["labels"] = e.labels
	}
	return eventLine(m)
}

// testFilter is a subscription filter as the test sends it, with a local
// reference matcher written from the spec (not from the server's code).
type testFilter struct {
	EventTypes  []string          `json:"event_types,omitempty"`
	Severities  []string          `json:"severities,omitempty"`
	States      []string          `json:"states,omitempty"`
	Sources     []string          `json:"sources,omitempty"`
	Resources   []string          `json:"affected_resources,omitempty"`
	IncidentIDs []string          `json:"incident_ids,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
}

func (f testFilter) wire() map[string]any {
	b, _ := json.Marshal(f)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

func (f testFilter) matches(e corpusEvent) bool {
	one := func(list []string, v string) bool { return len(list) == 0 || (v != "" && slices.Contains(list, v)) }
	if !one(f.EventTypes, e.eventType) || !one(f.Severities, e.severity) || !one(f.States, e.state) ||
		!one(f.Sources, e.source) || !one(f.IncidentIDs, e.incidentID) {
		return false
	}
	if len(f.Resources) > 0 && !slices.ContainsFunc(e.resources, func(r string) bool { return slices.Contains(f.Resources, r) }) {
		return false
	}
	for k, v := range f.Labels {
		if ev, ok := e.labels[k]; !ok || ev != v {
			return false
		}
	}
	return true
}

var filterCorpus = []corpusEvent{
	{"e1", "incident_updated", "P1", "Investigating", "llm-sentinel", "INC-1", []string{"api", "db"}, map[string]string{"env": "production", "team": "core"}},
	{"e2", "incident_updated", "P2", "Detected", "pagerduty", "INC-2", []string{"web"}, map[string]string{"env": "staging"}},
	{"e3", "comment_added", "", "", "llm-sentinel", "INC-1", nil, nil},
	{"e4", "incident_resolved", "P3", "Resolved", "", "INC-3", []string{"db"}, map[string]string{"env": "production"}},
	{"e5", "system_event", "", "", "", "", nil, nil},
	{"e6", "incident_updated", "P1", "Triaged", "pagerduty", "INC-4", []string{"api"}, map[string]string{"env": "production", "team": "edge"}},
	{"e7", "playbook_started", "P4", "Remediating", "runbook", "INC-2", []string{"cache", "api"}, map[string]string{"team": "core", "env": "Production"}},
	{"e8", "incident_closed", "P0", "Closed", "llm-sentinel", "INC-5", []string{}, map[string]string{"env": "production", "team": "core", "extra": "x"}},
	{"e9", "assignment_changed", "", "", "", "", nil, map[string]string{"env": "", "team": "core"}},
}

// TestFilters checks every filter field alone and combined: one client per
// filter, all eight corpus events published once, and each client must get
// exactly the events listed for it, in order. The lists are written by
// hand; a reference matcher double-checks the table itself.
func TestFilters(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		filter testFilter
		want   []string
		wire   map[string]any // sent instead of filter.wire() when set
	}{
		{"empty filter matches all", testFilter{}, []string{"e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"}, nil},
		{"event_types one", testFilter{EventTypes: []string{"incident_updated"}}, []string{"e1", "e2", "e6"}, nil},
		{"event_types two", testFilter{EventTypes: []string{"comment_added", "system_event"}}, []string{"e3", "e5"}, nil},
		{"severities one", testFilter{Severities: []string{"P1"}}, []string{"e1", "e6"}, nil},
		{"severities two", testFilter{Severities: []string{"P0", "P3"}}, []string{"e4", "e8"}, nil},
		{"severities all values never match a missing severity", testFilter{Severities: []string{"P0", "P1", "P2", "P3", "P4"}}, []string{"e1", "e2", "e4", "e6", "e7", "e8"}, nil},
		{"states one", testFilter{States: []string{"Detected"}}, []string{"e2"}, nil},
		{"states two", testFilter{States: []string{"Investigating", "Closed"}}, []string{"e1", "e8"}, nil},
		{"states all values never match a missing state", testFilter{States: []string{"Detected", "Triaged", "Investigating", "Remediating", "Resolved", "Closed"}}, []string{"e1", "e2", "e4", "e6", "e7", "e8"}, nil},
		{"sources one", testFilter{Sources: []string{"llm-sentinel"}}, []string{"e1", "e3", "e8"}, nil},
		{"sources two", testFilter{Sources: []string{"runbook", "pagerduty"}}, []string{"e2", "e6", "e7"}, nil},
		{"sources never match a missing source", testFilter{Sources: []string{"llm-sentinel", "pagerduty", "runbook"}}, []string{"e1", "e2", "e3", "e6", "e7", "e8"}, nil},
		{"affected_resources one", testFilter{Resources: []string{"db"}}, []string{"e1", "e4"}, nil},
		{"affected_resources any-of", testFilter{Resources: []string{"api"}}, []string{"e1", "e6", "e7"}, nil},
		{"affected_resources two", testFilter{Resources: []string{"cache", "web"}}, []string{"e2", "e7"}, nil},
		{"affected_resources never match none", testFilter{Resources: []string{"api", "db", "web", "cache"}}, []string{"e1", "e2", "e4", "e6", "e7"}, nil},
		{"affected_resources unknown", testFilter{Resources: []string{"nothing-has-this"}}, nil, nil},
		{"incident_ids one", testFilter{IncidentIDs: []string{"INC-1"}}, []string{"e1", "e3"}, nil},
		{"incident_ids two", testFilter{IncidentIDs: []string{"INC-2", "INC-5"}}, []string{"e2", "e7", "e8"}, nil},
		{"labels one", testFilter{Labels: map[string]string{"env": "production"}}, []string{"e1", "e4", "e6", "e8"}, nil},
		{"labels two must both hold", testFilter{Labels: map[string]string{"env": "production", "team": "core"}}, []string{"e1", "e8"}, nil},
		{"labels other key", testFilter{Labels: map[string]string{"team": "core"}}, []string{"e1", "e7", "e8", "e9"}, nil},
		{"labels empty value", testFilter{Labels: map[string]string{"env": ""}}, []string{"e9"}, nil},
		{"labels values are case-sensitive", testFilter{Labels: map[string]string{"env": "Production"}}, []string{"e7"}, nil},
		{"labels key nobody has", testFilter{Labels: map[string]string{"nope": "x"}}, nil, nil},
		{"severity AND source", testFilter{Severities: []string{"P1", "P2"}, Sources: []string{"pagerduty"}}, []string{"e2", "e6"}, nil},
		{"type AND resource AND label", testFilter{EventTypes: []string{"incident_updated"}, Resources: []string{"api"}, Labels: map[string]string{"env": "production"}}, []string{"e1", "e6"}, nil},
		{"state AND incident", testFilter{States: []string{"Investigating", "Triaged"}, IncidentIDs: []string{"INC-4"}}, []string{"e6"}, nil},
		{"all seven fields", testFilter{
			EventTypes: []string{"incident_updated"}, Severities: []string{"P1"}, States: []string{"Investigating"},
			Sources: []string{"llm-sentinel"}, Resources: []string{"db"}, IncidentIDs: []string{"INC-1"},
			Labels: map[string]string{"team": "core"},
		}, []string{"e1"}, nil},
		{"all seven fields, one off", testFilter{
			EventTypes: []string{"incident_updated"}, Severities: []string{"P1"}, States: []string{"Investigating"},
			Sources: []string{"llm-sentinel"}, Resources: []string{"db"}, IncidentIDs: []string{"INC-1"},
			Labels: map[string]string{"team": "edge"},
		}, nil, nil},
		{"fields AND-ed to nothing", testFilter{Severities: []string{"P0"}, Sources: []string{"pagerduty"}}, nil, nil},
		{"explicitly empty lists match all", testFilter{}, []string{"e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"}, map[string]any{
			"event_types": []string{}, "severities": []string{}, "states": []string{}, "sources": []string{},
			"affected_resources": []string{}, "incident_ids": []string{}, "labels": map[string]string{},
		}},
		{"null lists match all", testFilter{}, []string{"e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"}, map[string]any{
			"severities": nil, "labels": nil,
		}},
	}
	// The table must agree with the spec's semantics before it judges the server.
	for _, tc := range cases {
		var ref []string
		for _, e := range filterCorpus {
			if tc.filter.matches(e) {
				ref = append(ref, e.name)
			}
		}
		if !slices.Equal(ref, tc.want) {
			t.Fatalf("test table: %s lists %v but the reference matcher says %v", tc.name, tc.want, ref)
		}
	}

	s := startServer(t, nil)
	clients := make([]*client, len(cases))
	for i, tc := range cases {
		c := s.dial(t, "")
		c.subscribe("fence", fenceFilter)
		wire := tc.wire
		if wire == nil {
			wire = tc.filter.wire()
		}
		c.subscribe("f", wire)
		clients[i] = c
	}
	lines := make([]string, 0, len(filterCorpus)+1)
	for _, e := range filterCorpus {
		lines = append(lines, e.line())
	}
	ids := s.mustPublish(t, append(lines, fenceEvent)...)
	fence := ids[len(ids)-1]
	for i, tc := range cases {
		var got []string
		for _, m := range clients[i].untilEvent(fence) {
			ev, _ := m["event"].(map[string]any)
			name, _ := ev["name"].(string)
			got = append(got, name)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: filter %v received %v, want %v", tc.name, tc.filter.wire(), got, tc.want)
		}
	}
	var delivered int
	for _, tc := range cases {
		delivered += len(tc.want) + 1
	}
	s.waitMetric(t, "websocket_events_delivered_total", float64(delivered))
	s.metricEquals(t, "websocket_events_broadcast_total", float64(len(ids)))
}

// TestFilterSubscribedEchoMatchesWhatWasSent checks that subscribed echoes
// each test filter normalised (sorted lists, all keys).
func TestFilterSubscribedEcho(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	f := testFilter{
		EventTypes: []string{"playbook_started", "escalated", "escalated"}, Severities: []string{"P4", "P0"},
		States: []string{"Resolved", "Closed"}, Sources: []string{"b", "a"}, Resources: []string{"y", "x", "y"},
		IncidentIDs: []string{"INC-9", "INC-10"}, Labels: map[string]string{"b": "2", "a": "1"},
	}
	m := c.subscribe("echo", f.wire())
	got, _ := m["filters"].(map[string]any)
	sortedUnique := func(v []string) []any {
		v = slices.Clone(v)
		sort.Strings(v)
		v = slices.Compact(v)
		out := make([]any, len(v))
		for i := range v {
			out[i] = v[i]
		}
		return out
	}
	want := map[string]any{
		"event_types": sortedUnique(f.EventTypes), "severities": sortedUnique(f.Severities),
		"states": sortedUnique(f.States), "sources": sortedUnique(f.Sources),
		"affected_resources": sortedUnique(f.Resources), "incident_ids": sortedUnique(f.IncidentIDs),
		"labels": map[string]any{"a": "1", "b": "2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("subscribed filters\n got %v\nwant %v", got, want)
	}
}
