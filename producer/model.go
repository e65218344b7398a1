package producer

import (
	"fmt"
	"time"
)

// Severity is an incident's severity, P0 (most severe) to P4. Only the
// values below exist: the type's field is unexported, so no conversion can
// make an invalid one. The zero Severity means "not given": it is left
// out of events, and the incident events refuse it.
type Severity struct{ level uint8 }

// The severities, most severe first.
var (
	P0 = Severity{1}
	P1 = Severity{2}
	P2 = Severity{3}
	P3 = Severity{4}
	P4 = Severity{5}
)

var severityNames = [...]string{"", "P0", "P1", "P2", "P3", "P4"}

// String returns the wire name ("P0"…"P4"), or "" for the zero Severity.
func (s Severity) String() string { return severityNames[s.level] }

// IsZero reports whether s is the zero Severity.
func (s Severity) IsZero() bool { return s.level == 0 }

// ParseSeverity returns the severity named s ("P0"…"P4").
func ParseSeverity(s string) (Severity, error) {
	for i, name := range severityNames[1:] {
		if s == name {
			return Severity{uint8(i + 1)}, nil
		}
	}
	return Severity{}, fmt.Errorf("severity %q is not one of P0, P1, P2, P3, P4", s)
}

// MarshalText encodes s by name, so Severity fields work in JSON and
// configuration files.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes a severity by name; an empty text is the zero Severity.
func (s *Severity) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = Severity{}
		return nil
	}
	v, err := ParseSeverity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// State is where an incident is in its lifecycle. Like Severity, only the
// values below exist, and the zero State means "not given".
type State struct{ step uint8 }

// The incident states, in lifecycle order.
var (
	StateDetected      = State{1}
	StateTriaged       = State{2}
	StateInvestigating = State{3}
	StateRemediating   = State{4}
	StateResolved      = State{5}
	StateClosed        = State{6}
)

var stateNames = [...]string{"", "Detected", "Triaged", "Investigating", "Remediating", "Resolved", "Closed"}

// String returns the wire name ("Detected"…"Closed"), or "" for the zero State.
func (s State) String() string { return stateNames[s.step] }

// IsZero reports whether s is the zero State.
func (s State) IsZero() bool { return s.step == 0 }

// ParseState returns the state named s ("Detected"…"Closed").
func ParseState(s string) (State, error) {
	for i, name := range stateNames[1:] {
		if s == name {
			return State{uint8(i + 1)}, nil
		}
	}
	return State{}, fmt.Errorf("state %q is not one of Detected, Triaged, Investigating, Remediating, Resolved, Closed", s)
}

// MarshalText encodes s by name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes a state by name; an empty text is the zero State.
func (s *State) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = State{}
		return nil
	}
	v, err := ParseState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Incident is the incident model every incident-related event carries:
// its ID, Severity and State are required (a handler refuses an Incident
// without them before sending anything); the rest is optional and left
// out of the event when empty.
type Incident struct {
	ID          string
	Title       string
	Description string
	Severity    Severity
	State       State
	// Source is what detected the incident ("llm-sentinel", "prometheus").
	Source string
	// AffectedResources are the services or hosts involved; subscribers
	// filter on them.
	AffectedResources []string
	// Labels are free key/value pairs ("env": "production"); subscribers
	// filter on them.
	Labels map[string]string
	// Assignee is who owns the incident now.
	Assignee  string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Resolution says how the incident was resolved; sent when set.
	Resolution string
}

// Alert is a signal from a monitoring source, before or as it becomes an
// incident. ID and Severity are required.
type Alert struct {
	ID                string
	Title             string
	Description       string
	Severity          Severity
	Source            string
	AffectedResources []string
	Labels            map[string]string
	ReceivedAt        time.Time
}

// Escalation is one step up an incident's escalation policy.
type Escalation struct {
	// Level is the escalation policy level reached, from 1.
	Level int
	// FromSeverity is the severity before the escalation, when it changed;
	// the incident carries the new one.
	FromSeverity Severity
	Reason       string
	// Targets are who were paged (people, rotations, channels).
	Targets []string
}

// Playbook identifies an automated runbook.
type Playbook struct {
	ID   string
	Name string
}

// PlaybookAction is one step a playbook executed.
type PlaybookAction struct {
	Name     string
	Success  bool
	Output   string
	Duration time.Duration
}

// PlaybookResult is how a playbook run ended.
type PlaybookResult struct {
	Success         bool
	ActionsExecuted int
	Message         string
	Duration        time.Duration
}

// Notification is a message sent about an incident.
type Notification struct {
	ID string
	// Channel is how it was sent ("slack", "email", "pagerduty", "sms").
	Channel   string
	Recipient string
	Subject   string
}

// Assignment is a change of an incident's owner.
type Assignment struct {
	Assignee         string
	PreviousAssignee string
	AssignedBy       string
}

// Comment is a note added to an incident's timeline.
type Comment struct {
	ID        string
	Author    string
	Text      string
	CreatedAt time.Time
}

// SystemEvent is news about the incident platform itself, not about one
// incident (a source going silent, a maintenance window). Everything is
// optional.
type SystemEvent struct {
	// Kind classifies the event ("maintenance", "source_down").
	Kind              string
	Message           string
	Severity          Severity
	Source            string
	AffectedResources []string
	Labels            map[string]string
}
