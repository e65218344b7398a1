package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Severity is an event's severity, P0 (worst) to P4.
type Severity string

// The severities of the protocol.
const (
	P0 Severity = "P0"
	P1 Severity = "P1"
	P2 Severity = "P2"
	P3 Severity = "P3"
	P4 Severity = "P4"
)

// IncidentState is the state of the incident an event is about.
type IncidentState string

// The incident states of the protocol.
const (
	StateDetected      IncidentState = "Detected"
	StateTriaged       IncidentState = "Triaged"
	StateInvestigating IncidentState = "Investigating"
	StateRemediating   IncidentState = "Remediating"
	StateResolved      IncidentState = "Resolved"
	StateClosed        IncidentState = "Closed"
)

// EventType is an event's event_type.
type EventType string

// The event types of the protocol.
const (
	IncidentCreated        EventType = "incident_created"
	IncidentUpdated        EventType = "incident_updated"
	IncidentResolved       EventType = "incident_resolved"
	IncidentClosed         EventType = "incident_closed"
	AlertReceived          EventType = "alert_received"
	AlertConverted         EventType = "alert_converted"
	Escalated              EventType = "escalated"
	PlaybookStarted        EventType = "playbook_started"
	PlaybookActionExecuted EventType = "playbook_action_executed"
	PlaybookCompleted      EventType = "playbook_completed"
	NotificationSent       EventType = "notification_sent"
	AssignmentChanged      EventType = "assignment_changed"
	CommentAdded           EventType = "comment_added"
	SystemEvent            EventType = "system_event"
)

// Priority is the server's priority of an event: critical, high or normal.
type Priority string

// The priorities the server assigns.
const (
	PriorityCritical Priority = "critical"
	PriorityHigh     Priority = "high"
	PriorityNormal   Priority = "normal"
)

// Filters select the events of a subscription (docs/protocol.md, Filters).
// An empty list matches every event; a non-empty list matches an event
// whose field has one of the values (and never one lacking the field);
// every label must be on the event with that value; all are AND-ed.
type Filters struct {
	EventTypes        []EventType       `json:"event_types,omitempty"`
	Severities        []Severity        `json:"severities,omitempty"`
	States            []IncidentState   `json:"states,omitempty"`
	Sources           []string          `json:"sources,omitempty"`
	AffectedResources []string          `json:"affected_resources,omitempty"`
	IncidentIDs       []string          `json:"incident_ids,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
}

// Matches reports whether ev matches f as the server decides it. The client
// uses it to hand each event to the subscriptions it matches (event
// messages carry no subscription id).
func (f *Filters) Matches(ev *Event) bool {
	in := func(ok bool, n int) bool { return n == 0 || ok }
	if !in(ev.EventType != "" && slices.Contains(f.EventTypes, ev.EventType), len(f.EventTypes)) ||
		!in(ev.Severity != "" && slices.Contains(f.Severities, ev.Severity), len(f.Severities)) ||
		!in(ev.State != "" && slices.Contains(f.States, ev.State), len(f.States)) ||
		!in(ev.Source != "" && slices.Contains(f.Sources, ev.Source), len(f.Sources)) ||
		!in(ev.IncidentID != "" && slices.Contains(f.IncidentIDs, ev.IncidentID), len(f.IncidentIDs)) {
		return false
	}
	if len(f.AffectedResources) > 0 && !slices.ContainsFunc(ev.AffectedResources, func(r string) bool {
		return slices.Contains(f.AffectedResources, r)
	}) {
		return false
	}
	for k, v := range f.Labels {
		if got, ok := ev.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Event is one event message. The typed fields are the protocol's; Raw is
// the event object as the server sent it (unknown fields included) and
// Message the whole `event` message.
type Event struct {
	MessageID         uint64
	Timestamp         time.Time // when the server accepted the event
	EventType         EventType
	IncidentID        string
	Severity          Severity
	State             IncidentState
	Priority          Priority
	Source            string
	AffectedResources []string
	Labels            map[string]string
	Title             string
	Description       string
	Raw               json.RawMessage
	Message           json.RawMessage
}

// eventFields is the typed part of an event object.
type eventFields struct {
	EventType         EventType         `json:"event_type"`
	IncidentID        string            `json:"incident_id"`
	Severity          Severity          `json:"severity"`
	State             IncidentState     `json:"state"`
	Priority          Priority          `json:"priority"`
	Source            string            `json:"source"`
	AffectedResources []string          `json:"affected_resources"`
	Labels            map[string]string `json:"labels"`
	Title             any               `json:"title"`
	Description       any               `json:"description"`
}

func parseEvent(m *serverMessage, frame []byte) Event {
	ev := Event{MessageID: m.MessageID, Raw: m.Event, Message: frame}
	ev.Timestamp, _ = time.Parse(time.RFC3339Nano, m.Timestamp)
	var f eventFields
	_ = json.Unmarshal(m.Event, &f) // the server validated the typed fields; oddities stay blank
	ev.EventType, ev.IncidentID, ev.Severity, ev.State = f.EventType, f.IncidentID, f.Severity, f.State
	ev.Priority, ev.Source, ev.AffectedResources, ev.Labels = f.Priority, f.Source, f.AffectedResources, f.Labels
	ev.Title, _ = f.Title.(string)
	ev.Description, _ = f.Description.(string)
	return ev
}

// Error codes of the protocol's `error` message.
const (
	CodeInvalidMessage = "INVALID_MESSAGE"
	CodeUnsupported    = "UNSUPPORTED"
	CodeNotFound       = "NOT_FOUND"
	CodeRateLimited    = "RATE_LIMITED"
	CodeUnauthorized   = "UNAUTHORIZED"
	CodeLimitExceeded  = "LIMIT_EXCEEDED"
	CodeHistoryGap     = "HISTORY_GAP"
)

// Reasons of the protocol's `closing` message.
const (
	ReasonServerShutdown   = "server_shutdown"
	ReasonSessionTimeout   = "session_timeout"
	ReasonSlowConsumer     = "slow_consumer"
	ReasonSessionTakenOver = "session_taken_over"
	ReasonTokenExpired     = "token_expired"
	ReasonPolicyViolation  = "policy_violation"
)

// ServerError is an `error` message of the server: Code is one of the
// Code constants. Subscribe and Unsubscribe return it when the server
// refuses them; other errors go to Options.OnError.
type ServerError struct {
	Code           string
	Message        string
	FirstAvailable uint64 // HISTORY_GAP only
}

func (e *ServerError) Error() string { return "flarecast: " + e.Code + ": " + e.Message }

// ClosedError is a connection the server ended: Reason is the `closing`
// message's reason (a Reason constant, empty when the server sent none),
// Code and Text the close frame's (0 when the connection broke without one).
type ClosedError struct {
	Reason string
	Code   int
	Text   string
}

func (e *ClosedError) Error() string {
	s := "flarecast: server closed the connection"
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.Code != 0 {
		s += fmt.Sprintf(" (%d %s)", e.Code, e.Text)
	}
	return s
}

// HandshakeError is an upgrade the server refused with an HTTP status
// (401 without a valid token, 404, 429, 503…).
type HandshakeError struct {
	StatusCode int
	Status     string
	Body       string // the first line of the response body
}

func (e *HandshakeError) Error() string {
	s := "flarecast: server refused the WebSocket upgrade: " + e.Status
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

// ErrClosed is returned by calls on a closed client or subscription.
var ErrClosed = errors.New("flarecast: client closed")

// Gap is a HISTORY_GAP: events from the resume or since point up to
// FirstAvailable-1 had left the server's window and cannot be delivered.
type Gap struct {
	FirstAvailable uint64
	Message        string
}

// State is the client's connection state.
type State int

// The states a client goes through.
const (
	Connecting   State = iota // the first connection is being made
	Live                      // connected and welcomed
	Reconnecting              // the connection was lost; retrying with backoff
	Closed                    // closed by Close, or given up (see Client.Err)
)

func (s State) String() string {
	switch s {
	case Connecting:
		return "connecting"
	case Live:
		return "live"
	case Reconnecting:
		return "reconnecting"
	case Closed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// StateChange reports a state transition to Options.OnState.
type StateChange struct {
	State State
	// Err is why the connection was lost (Reconnecting) or the client ended
	// (Closed; nil after Close).
	Err error
	// SessionID is the session once Live; Resumed tells whether it is the
	// session of the previous connection (false: a new session, whose
	// subscriptions the client made again with since).
	SessionID  string
	Resumed    bool
	NewSession bool // Live on a new session after an earlier one was lost
}

// serverMessage is any message the server sends; only its type's fields are set.
type serverMessage struct {
	Type           string          `json:"type"`
	SessionID      string          `json:"session_id"`
	Resumed        bool            `json:"resumed"`
	MessageID      uint64          `json:"message_id"`
	Timestamp      string          `json:"timestamp"`
	Event          json.RawMessage `json:"event"`
	Code           string          `json:"code"`
	Message        string          `json:"message"`
	FirstAvailable uint64          `json:"first_available"`
	Reason         string          `json:"reason"`
	SubscriptionID string          `json:"subscription_id"`
	From           uint64          `json:"from"`
	ExpiresAt      string          `json:"expires_at"`
}
