package filterindex

import (
	"reflect"
	"testing"

	"github.com/flarecast/flarecast/event"
)

// sampleEvent is a fully populated event most single-filter cases run against.
func sampleEvent() *event.Event {
	return &event.Event{
		Type:       event.IncidentUpdated,
		Severity:   "P1",
		State:      "Investigating",
		Source:     "pagerduty",
		IncidentID: "INC-1",
		Resources:  []string{"db-1", "api-2"},
		Labels:     []event.Label{{Key: "env", Value: "prod"}, {Key: "team", Value: "core"}},
	}
}

type matchCase struct {
	name string
	f    Filter
	ev   *event.Event // nil: sampleEvent()
	want bool
}

func matchCases() []matchCase {
	bare := &event.Event{Type: event.SystemEvent} // lacks every optional field
	return []matchCase{
		{name: "empty filter matches all", f: Filter{}, want: true},
		{name: "empty filter matches bare event", f: Filter{}, ev: bare, want: true},
		{name: "empty lists match all", f: Filter{EventTypes: []string{}, Labels: []event.Label{}}, want: true},

		{name: "type in", f: Filter{EventTypes: []string{"escalated", "incident_updated"}}, want: true},
		{name: "type out", f: Filter{EventTypes: []string{"escalated"}}, want: false},
		{name: "severity in", f: Filter{Severities: []string{"P1"}}, want: true},
		{name: "severity out", f: Filter{Severities: []string{"P0", "P2"}}, want: false},
		{name: "state in", f: Filter{States: []string{"Investigating"}}, want: true},
		{name: "state out", f: Filter{States: []string{"Resolved"}}, want: false},
		{name: "source in", f: Filter{Sources: []string{"datadog", "pagerduty"}}, want: true},
		{name: "source out", f: Filter{Sources: []string{"datadog"}}, want: false},
		{name: "incident in", f: Filter{IncidentIDs: []string{"INC-1"}}, want: true},
		{name: "incident out", f: Filter{IncidentIDs: []string{"INC-2"}}, want: false},

		{name: "resources any of, first", f: Filter{Resources: []string{"db-1"}}, want: true},
		{name: "resources any of, second", f: Filter{Resources: []string{"api-2", "zz"}}, want: true},
		{name: "resources both listed", f: Filter{Resources: []string{"api-2", "db-1"}}, want: true},
		{name: "resources none", f: Filter{Resources: []string{"db-2"}}, want: false},

		{name: "label match", f: Filter{Labels: []event.Label{{Key: "team", Value: "core"}}}, want: true},
		{name: "labels all match", f: Filter{Labels: []event.Label{{Key: "env", Value: "prod"}, {Key: "team", Value: "core"}}}, want: true},
		{name: "label wrong value", f: Filter{Labels: []event.Label{{Key: "team", Value: "edge"}}}, want: false},
		{name: "label missing key", f: Filter{Labels: []event.Label{{Key: "region", Value: "eu"}}}, want: false},
		{name: "labels one of two wrong", f: Filter{Labels: []event.Label{{Key: "env", Value: "prod"}, {Key: "team", Value: "edge"}}}, want: false},

		{name: "missing severity", f: Filter{Severities: []string{"P1"}}, ev: bare, want: false},
		{name: "missing state", f: Filter{States: []string{"Detected"}}, ev: bare, want: false},
		{name: "missing source", f: Filter{Sources: []string{"x"}}, ev: bare, want: false},
		{name: "missing incident", f: Filter{IncidentIDs: []string{"INC-1"}}, ev: bare, want: false},
		{name: "missing resources", f: Filter{Resources: []string{"db-1"}}, ev: bare, want: false},
		{name: "missing labels", f: Filter{Labels: []event.Label{{Key: "env", Value: "prod"}}}, ev: bare, want: false},
		{name: "empty string listed never matches missing field", f: Filter{Severities: []string{""}}, ev: bare, want: false},
		{name: "empty string listed never matches present field", f: Filter{Severities: []string{""}}, want: false},
		{name: "empty resource never matches", f: Filter{Resources: []string{""}}, ev: &event.Event{Resources: []string{""}}, want: false},
		{name: "label with empty value", f: Filter{Labels: []event.Label{{Key: "k", Value: ""}}}, ev: &event.Event{Labels: []event.Label{{Key: "k"}}}, want: true},

		{name: "combined all match", f: Filter{
			EventTypes: []string{"incident_updated"}, Severities: []string{"P0", "P1"},
			States: []string{"Investigating"}, Sources: []string{"pagerduty"},
			Resources: []string{"api-2"}, IncidentIDs: []string{"INC-1"},
			Labels: []event.Label{{Key: "team", Value: "core"}},
		}, want: true},
		{name: "combined one field fails", f: Filter{
			EventTypes: []string{"incident_updated"}, Severities: []string{"P0", "P1"},
			States: []string{"Resolved"}, Resources: []string{"api-2"},
		}, want: false},
		{name: "combined label fails", f: Filter{
			EventTypes: []string{"incident_updated"}, Labels: []event.Label{{Key: "env", Value: "staging"}},
		}, want: false},
	}
}

func TestFilterMatches(t *testing.T) {
	for _, c := range matchCases() {
		ev := c.ev
		if ev == nil {
			ev = sampleEvent()
		}
		if got := c.f.Matches(ev); got != c.want {
			t.Errorf("%s: Matches = %v, want %v", c.name, got, c.want)
		}
		f := c.f.Clone()
		f.Normalize()
		if got := f.Matches(ev); got != c.want {
			t.Errorf("%s: Matches after Normalize = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestNormalize(t *testing.T) {
	f := Filter{
		EventTypes: []string{"b", "a", "b"},
		Severities: []string{},
		Resources:  []string{"r2", "r1", "r2", "r1"},
		Labels: []event.Label{
			{Key: "team", Value: "x"}, {Key: "env", Value: "prod"}, {Key: "team", Value: "y"},
		},
	}
	f.Normalize()
	want := Filter{
		EventTypes: []string{"a", "b"},
		Resources:  []string{"r1", "r2"},
		Labels:     []event.Label{{Key: "env", Value: "prod"}, {Key: "team", Value: "y"}},
	}
	if !reflect.DeepEqual(f, want) {
		t.Fatalf("Normalize = %+v, want %+v", f, want)
	}
	g := f.Clone()
	g.Normalize()
	if !reflect.DeepEqual(g, want) {
		t.Fatalf("Normalize not idempotent: %+v", g)
	}
}

func TestClone(t *testing.T) {
	f := Filter{Severities: []string{"P1"}, Labels: []event.Label{{Key: "k", Value: "v"}}}
	g := f.Clone()
	g.Severities[0] = "P2"
	g.Labels[0].Value = "w"
	if f.Severities[0] != "P1" || f.Labels[0].Value != "v" {
		t.Fatalf("Clone shares slices with the original: %+v", f)
	}
}

func TestMatchesAll(t *testing.T) {
	if !(&Filter{}).MatchesAll() || !(&Filter{Sources: []string{}}).MatchesAll() {
		t.Error("empty filter should match all")
	}
	if (&Filter{Labels: []event.Label{{Key: "k"}}}).MatchesAll() {
		t.Error("filter with a label should not match all")
	}
}
