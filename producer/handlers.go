package producer

import (
	"context"
	"errors"

	"github.com/flarecast/flarecast/event"
)

// Publisher takes one event as JSON and returns its message_id. Both ends
// of flarecast implement it: *Client over the ingest socket, and
// *engine.Engine in the process that embeds the server; either validates
// the event the same way. PublishJSON must not retain event.
type Publisher interface {
	PublishJSON(ctx context.Context, event []byte) (uint64, error)
}

// Handlers are the typed publishers of every event type, grouped as
// flarecast's seed groups them (handlers.incidents.on_incident_created…).
// Each method encodes its event into a pooled buffer, publishes it, and
// returns its message_id or an error that errors.Is one of ErrInvalidEvent,
// ErrUnavailable, ErrNoReply or ErrClosed, whichever Publisher is behind.
//
// The event types are fixed by the methods, severities and states by their
// types, and every string is encoded as valid JSON, so the server cannot
// refuse what a handler sends but for one reason: a line longer than its
// max-message-size. Required fields (an incident's ID, severity and state;
// an alert's ID and severity) are checked before sending.
type Handlers struct {
	Incidents     Incidents
	Alerts        Alerts
	Escalations   Escalations
	Playbooks     Playbooks
	Notifications Notifications
	Assignments   Assignments
	Comments      Comments
	System        System
}

// NewHandlers returns handlers publishing to p.
func NewHandlers(p Publisher) *Handlers {
	return &Handlers{
		Incidents:     Incidents{p},
		Alerts:        Alerts{p},
		Escalations:   Escalations{p},
		Playbooks:     Playbooks{p},
		Notifications: Notifications{p},
		Assignments:   Assignments{p},
		Comments:      Comments{p},
		System:        System{p},
	}
}

// errNoPublisher is the error of a handler group not made by NewHandlers.
var errNoPublisher = errors.New("producer: handlers without a Publisher (use NewHandlers)")

// send publishes e's event and recycles e.
func send(ctx context.Context, p Publisher, e *encoder) (uint64, error) {
	if p == nil {
		putEncoder(e)
		return 0, errNoPublisher
	}
	id, err := p.PublishJSON(ctx, e.bytes())
	putEncoder(e)
	if err != nil {
		return 0, classify(err)
	}
	return id, nil
}

// checkIncident refuses an incident the model says cannot exist.
func checkIncident(inc *Incident, full bool) error {
	switch {
	case inc.ID == "":
		return invalid("incident without an ID")
	case full && inc.Severity.IsZero():
		return invalid("incident %s without a severity", inc.ID)
	case full && inc.State.IsZero():
		return invalid("incident %s without a state", inc.ID)
	}
	return nil
}

// Incidents publishes the incident lifecycle.
type Incidents struct{ p Publisher }

// OnIncidentCreated publishes incident_created with the whole incident.
func (h Incidents) OnIncidentCreated(ctx context.Context, inc Incident) (uint64, error) {
	return h.incident(ctx, event.IncidentCreated, &inc, nil)
}

// OnIncidentUpdated publishes incident_updated with the whole incident and
// the names of the fields that changed, if given.
func (h Incidents) OnIncidentUpdated(ctx context.Context, inc Incident, changed ...string) (uint64, error) {
	return h.incident(ctx, event.IncidentUpdated, &inc, changed)
}

// OnIncidentResolved publishes incident_resolved. The event's state is
// Resolved whatever inc.State says: that is what the event reports.
func (h Incidents) OnIncidentResolved(ctx context.Context, inc Incident) (uint64, error) {
	inc.State = StateResolved
	return h.incident(ctx, event.IncidentResolved, &inc, nil)
}

// OnIncidentClosed publishes incident_closed; the event's state is Closed.
func (h Incidents) OnIncidentClosed(ctx context.Context, inc Incident) (uint64, error) {
	inc.State = StateClosed
	return h.incident(ctx, event.IncidentClosed, &inc, nil)
}

func (h Incidents) incident(ctx context.Context, typ event.Type, inc *Incident, changed []string) (uint64, error) {
	if err := checkIncident(inc, true); err != nil {
		return 0, err
	}
	e := getEncoder(typ)
	e.incident(inc)
	e.str("description", inc.Description)
	e.str("assignee", inc.Assignee)
	e.time("created_at", inc.CreatedAt)
	e.time("updated_at", inc.UpdatedAt)
	e.str("resolution", inc.Resolution)
	e.strs("changes", changed)
	return send(ctx, h.p, e)
}

// Alerts publishes alerts as they arrive and as they become incidents.
type Alerts struct{ p Publisher }

// OnAlertReceived publishes alert_received.
func (h Alerts) OnAlertReceived(ctx context.Context, a Alert) (uint64, error) {
	switch {
	case a.ID == "":
		return 0, invalid("alert without an ID")
	case a.Severity.IsZero():
		return 0, invalid("alert %s without a severity", a.ID)
	}
	e := getEncoder(event.AlertReceived)
	e.str("alert_id", a.ID)
	e.str("severity", a.Severity.String())
	e.str("source", a.Source)
	e.strs("affected_resources", a.AffectedResources)
	e.labels(a.Labels)
	e.str("title", a.Title)
	e.str("description", a.Description)
	e.time("received_at", a.ReceivedAt)
	return send(ctx, h.p, e)
}

// OnAlertConverted publishes alert_converted: the alert alertID became (or
// joined) the incident inc, whose fields the event carries.
func (h Alerts) OnAlertConverted(ctx context.Context, alertID string, inc Incident) (uint64, error) {
	if alertID == "" {
		return 0, invalid("alert conversion without an alert ID")
	}
	if err := checkIncident(&inc, true); err != nil {
		return 0, err
	}
	e := getEncoder(event.AlertConverted)
	e.incident(&inc)
	e.str("alert_id", alertID)
	return send(ctx, h.p, e)
}

// Escalations publishes escalations. Their priority is critical at P0/P1
// and high otherwise, so they overtake routine events on the way out.
type Escalations struct{ p Publisher }

// OnEscalated publishes escalated for inc, which carries the severity
// after the escalation.
func (h Escalations) OnEscalated(ctx context.Context, inc Incident, esc Escalation) (uint64, error) {
	if err := checkIncident(&inc, true); err != nil {
		return 0, err
	}
	e := getEncoder(event.Escalated)
	e.incident(&inc)
	if esc.Level != 0 {
		e.int("escalation_level", int64(esc.Level))
	}
	e.str("previous_severity", esc.FromSeverity.String())
	e.str("reason", esc.Reason)
	e.strs("targets", esc.Targets)
	return send(ctx, h.p, e)
}

// Playbooks publishes the runs of automated playbooks on an incident.
type Playbooks struct{ p Publisher }

// OnPlaybookStarted publishes playbook_started.
func (h Playbooks) OnPlaybookStarted(ctx context.Context, inc Incident, pb Playbook) (uint64, error) {
	e, err := h.begin(event.PlaybookStarted, &inc, pb)
	if err != nil {
		return 0, err
	}
	return send(ctx, h.p, e)
}

// OnPlaybookActionExecuted publishes playbook_action_executed.
func (h Playbooks) OnPlaybookActionExecuted(ctx context.Context, inc Incident, pb Playbook, act PlaybookAction) (uint64, error) {
	if act.Name == "" {
		return 0, invalid("playbook action without a name")
	}
	e, err := h.begin(event.PlaybookActionExecuted, &inc, pb)
	if err != nil {
		return 0, err
	}
	e.str("action", act.Name)
	e.bool("success", act.Success)
	e.str("output", act.Output)
	e.millis("duration_ms", act.Duration)
	return send(ctx, h.p, e)
}

// OnPlaybookCompleted publishes playbook_completed.
func (h Playbooks) OnPlaybookCompleted(ctx context.Context, inc Incident, pb Playbook, res PlaybookResult) (uint64, error) {
	e, err := h.begin(event.PlaybookCompleted, &inc, pb)
	if err != nil {
		return 0, err
	}
	e.bool("success", res.Success)
	e.int("actions_executed", int64(res.ActionsExecuted))
	e.str("message", res.Message)
	e.millis("duration_ms", res.Duration)
	return send(ctx, h.p, e)
}

func (h Playbooks) begin(typ event.Type, inc *Incident, pb Playbook) (*encoder, error) {
	if pb.ID == "" {
		return nil, invalid("playbook without an ID")
	}
	if err := checkIncident(inc, false); err != nil {
		return nil, err
	}
	e := getEncoder(typ)
	e.incident(inc)
	e.str("playbook_id", pb.ID)
	e.str("playbook_name", pb.Name)
	return e, nil
}

// Notifications publishes the notifications sent about incidents.
type Notifications struct{ p Publisher }

// OnNotificationSent publishes notification_sent.
func (h Notifications) OnNotificationSent(ctx context.Context, inc Incident, n Notification) (uint64, error) {
	if err := checkIncident(&inc, false); err != nil {
		return 0, err
	}
	e := getEncoder(event.NotificationSent)
	e.incident(&inc)
	e.str("notification_id", n.ID)
	e.str("channel", n.Channel)
	e.str("recipient", n.Recipient)
	e.str("subject", n.Subject)
	return send(ctx, h.p, e)
}

// Assignments publishes changes of incident ownership.
type Assignments struct{ p Publisher }

// OnAssignmentChanged publishes assignment_changed.
func (h Assignments) OnAssignmentChanged(ctx context.Context, inc Incident, a Assignment) (uint64, error) {
	if err := checkIncident(&inc, false); err != nil {
		return 0, err
	}
	e := getEncoder(event.AssignmentChanged)
	e.incident(&inc)
	e.str("assignee", a.Assignee)
	e.str("previous_assignee", a.PreviousAssignee)
	e.str("assigned_by", a.AssignedBy)
	return send(ctx, h.p, e)
}

// Comments publishes notes added to incidents.
type Comments struct{ p Publisher }

// OnCommentAdded publishes comment_added.
func (h Comments) OnCommentAdded(ctx context.Context, inc Incident, c Comment) (uint64, error) {
	if err := checkIncident(&inc, false); err != nil {
		return 0, err
	}
	e := getEncoder(event.CommentAdded)
	e.incident(&inc)
	e.str("comment_id", c.ID)
	e.str("author", c.Author)
	e.str("text", c.Text)
	e.time("created_at", c.CreatedAt)
	return send(ctx, h.p, e)
}

// System publishes news about the platform itself.
type System struct{ p Publisher }

// OnSystemEvent publishes system_event.
func (h System) OnSystemEvent(ctx context.Context, s SystemEvent) (uint64, error) {
	e := getEncoder(event.SystemEvent)
	e.str("severity", s.Severity.String())
	e.str("source", s.Source)
	e.strs("affected_resources", s.AffectedResources)
	e.labels(s.Labels)
	e.str("kind", s.Kind)
	e.str("message", s.Message)
	return send(ctx, h.p, e)
}
