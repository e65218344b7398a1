// Package event defines the incident-management event that producers hand to
// flarecast: its vocabulary (event types, severities, states), the priority
// the server derives from it, and the validation of one ingest line.
//
// An Event is immutable once Parse returns it: the ingest goroutine builds it,
// the ring carries a pointer to it, and the dispatcher, the filter index and
// the history window only read it.
package event

import "time"

// Type is the value of an event's "event_type" field.
type Type string

// The event types a producer may send.
const (
	IncidentCreated        Type = "incident_created"
	IncidentUpdated        Type = "incident_updated"
	IncidentResolved       Type = "incident_resolved"
	IncidentClosed         Type = "incident_closed"
	AlertReceived          Type = "alert_received"
	AlertConverted         Type = "alert_converted"
	Escalated              Type = "escalated"
	PlaybookStarted        Type = "playbook_started"
	PlaybookActionExecuted Type = "playbook_action_executed"
	PlaybookCompleted      Type = "playbook_completed"
	NotificationSent       Type = "notification_sent"
	AssignmentChanged      Type = "assignment_changed"
	CommentAdded           Type = "comment_added"
	SystemEvent            Type = "system_event"
)

// Types lists every valid event type, in documentation order.
var Types = []Type{
	IncidentCreated, IncidentUpdated, IncidentResolved, IncidentClosed,
	AlertReceived, AlertConverted, Escalated,
	PlaybookStarted, PlaybookActionExecuted, PlaybookCompleted,
	NotificationSent, AssignmentChanged, CommentAdded, SystemEvent,
}

// Severities lists the valid severities, most severe first.
var Severities = []string{"P0", "P1", "P2", "P3", "P4"}

// States lists the valid incident states, in lifecycle order.
var States = []string{"Detected", "Triaged", "Investigating", "Remediating", "Resolved", "Closed"}

// ValidType reports whether s names an event type.
func ValidType(s string) bool { return contains(Types, Type(s)) }

// ValidSeverity reports whether s is one of P0…P4.
func ValidSeverity(s string) bool { return contains(Severities, s) }

// ValidState reports whether s is one of the six incident states.
func ValidState(s string) bool { return contains(States, s) }

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// Priority orders delivery inside one connection's queue: critical and high
// events overtake normal ones that are still waiting.
type Priority uint8

// Priorities, lowest first.
const (
	Normal Priority = iota
	High
	Critical
)

// String returns the wire name of p.
func (p Priority) String() string {
	switch p {
	case Critical:
		return "critical"
	case High:
		return "high"
	default:
		return "normal"
	}
}

// PriorityOf derives the server-assigned priority: critical for escalations at
// P0/P1; high for other escalations and for new incidents and alerts at P0/P1;
// normal for everything else.
func PriorityOf(t Type, severity string) Priority {
	urgent := severity == "P0" || severity == "P1"
	switch t {
	case Escalated:
		if urgent {
			return Critical
		}
		return High
	case IncidentCreated, AlertReceived:
		if urgent {
			return High
		}
	}
	return Normal
}

// Label is one key/value pair of an event's or a filter's labels.
type Label struct {
	Key, Value string
}

// Event is one accepted event. The typed fields are the ones subscriptions
// filter on; JSON carries the producer's fields, unknown ones included,
// plus "priority".
type Event struct {
	Type       Type
	Severity   string
	State      string
	Source     string
	IncidentID string
	Resources  []string
	Labels     []Label // sorted by Key; keys are unique
	Priority   Priority

	// JSON is the event object exactly as clients receive it.
	JSON []byte
	// Accepted is when the server accepted the event; set once, before the
	// event is published to the ring.
	Accepted time.Time
	// ID is the message_id a fleet's broker assigned, set before the event
	// enters the ring; zero on a single instance, where the ring's sequence
	// number is the message_id.
	ID uint64
}

// Label returns the value of the label key and whether the event has it.
func (e *Event) Label(key string) (string, bool) {
	for _, l := range e.Labels {
		if l.Key == key {
			return l.Value, true
		}
	}
	return "", false
}
