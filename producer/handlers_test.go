package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/producer"
)

// parsing is a Publisher that runs the server's own validation on every
// event and keeps what it parsed.
type parsing struct {
	mu     sync.Mutex
	events []*event.Event
}

func (p *parsing) PublishJSON(_ context.Context, line []byte) (uint64, error) {
	ev, err := event.Parse(line)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, ev)
	return uint64(len(p.events)), nil
}

func (p *parsing) last() *event.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.events[len(p.events)-1]
}

// model holds one value of every model type, built from the strings a
// test chooses, so the same table runs with ordinary and hostile text.
type model struct {
	inc  producer.Incident
	al   producer.Alert
	esc  producer.Escalation
	pb   producer.Playbook
	act  producer.PlaybookAction
	res  producer.PlaybookResult
	note producer.Notification
	asg  producer.Assignment
	com  producer.Comment
	sys  producer.SystemEvent
}

func fullModel(s string) model {
	at := time.Date(2026, 11, 26, 1, 0, 0, 123e6, time.UTC)
	labels := map[string]string{"env": "production", "team" + s: "sre" + s}
	inc := producer.Incident{
		ID: "INC-1042" + s, Title: "Error rate above 5%" + s, Description: s,
		Severity: producer.P1, State: producer.StateInvestigating, Source: "llm-sentinel" + s,
		AffectedResources: []string{"api-service", s}, Labels: labels,
		Assignee: "alice" + s, CreatedAt: at, UpdatedAt: at.Add(time.Minute), Resolution: s,
	}
	return model{
		inc: inc,
		al: producer.Alert{ID: "ALR-7" + s, Title: s, Description: s, Severity: producer.P0, Source: "prometheus" + s,
			AffectedResources: []string{"db" + s}, Labels: labels, ReceivedAt: at},
		esc:  producer.Escalation{Level: 2, FromSeverity: producer.P2, Reason: s, Targets: []string{"oncall" + s}},
		pb:   producer.Playbook{ID: "PB-3" + s, Name: "restart" + s},
		act:  producer.PlaybookAction{Name: "scale-up" + s, Success: true, Output: s, Duration: 1500 * time.Millisecond},
		res:  producer.PlaybookResult{Success: true, ActionsExecuted: 3, Message: s, Duration: time.Minute},
		note: producer.Notification{ID: "N-1" + s, Channel: "slack" + s, Recipient: "#ops" + s, Subject: s},
		asg:  producer.Assignment{Assignee: "bob" + s, PreviousAssignee: "alice" + s, AssignedBy: s},
		com:  producer.Comment{ID: "C-1" + s, Author: "carol" + s, Text: s, CreatedAt: at},
		sys: producer.SystemEvent{Kind: "maintenance" + s, Message: s, Severity: producer.P4, Source: "scheduler" + s,
			AffectedResources: []string{s}, Labels: labels},
	}
}

// minimalModel has only the required fields.
func minimalModel() model {
	inc := producer.Incident{ID: "INC-1", Severity: producer.P3, State: producer.StateDetected}
	return model{
		inc: inc, al: producer.Alert{ID: "ALR-1", Severity: producer.P3},
		pb: producer.Playbook{ID: "PB-1"}, act: producer.PlaybookAction{Name: "noop"},
	}
}

// handlerCall is one typed handler method.
type handlerCall struct {
	typ event.Type
	// incident: the event carries the incident's filter fields.
	incident bool
	call     func(context.Context, *producer.Handlers, *model) (uint64, error)
}

var handlerCalls = []handlerCall{
	{event.IncidentCreated, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Incidents.OnIncidentCreated(ctx, m.inc)
	}},
	{event.IncidentUpdated, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Incidents.OnIncidentUpdated(ctx, m.inc, "state", "assignee")
	}},
	{event.IncidentResolved, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Incidents.OnIncidentResolved(ctx, m.inc)
	}},
	{event.IncidentClosed, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Incidents.OnIncidentClosed(ctx, m.inc)
	}},
	{event.AlertReceived, false, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Alerts.OnAlertReceived(ctx, m.al)
	}},
	{event.AlertConverted, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Alerts.OnAlertConverted(ctx, m.al.ID, m.inc)
	}},
	{event.Escalated, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Escalations.OnEscalated(ctx, m.inc, m.esc)
	}},
	{event.PlaybookStarted, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Playbooks.OnPlaybookStarted(ctx, m.inc, m.pb)
	}},
	{event.PlaybookActionExecuted, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Playbooks.OnPlaybookActionExecuted(ctx, m.inc, m.pb, m.act)
	}},
	{event.PlaybookCompleted, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Playbooks.OnPlaybookCompleted(ctx, m.inc, m.pb, m.res)
	}},
	{event.NotificationSent, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Notifications.OnNotificationSent(ctx, m.inc, m.note)
	}},
	{event.AssignmentChanged, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Assignments.OnAssignmentChanged(ctx, m.inc, m.asg)
	}},
	{event.CommentAdded, true, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.Comments.OnCommentAdded(ctx, m.inc, m.com)
	}},
	{event.SystemEvent, false, func(ctx context.Context, h *producer.Handlers, m *model) (uint64, error) {
		return h.System.OnSystemEvent(ctx, m.sys)
	}},
}

func TestHandlersCoverEveryEventType(t *testing.T) {
	var got []event.Type
	for _, c := range handlerCalls {
		got = append(got, c.typ)
	}
	if !slices.Equal(got, event.Types) {
		t.Fatalf("handlers cover %v, the server knows %v", got, event.Types)
	}
}

// repaired is what the server decodes from s: invalid bytes become U+FFFD.
func repaired(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// checkParsed compares what the server parsed with the model it came from.
func checkParsed(t *testing.T, c handlerCall, m *model, ev *event.Event) {
	t.Helper()
	if ev.Type != c.typ {
		t.Errorf("%s: parsed as %s", c.typ, ev.Type)
	}
	var (
		id, source, state string
		sev               producer.Severity
		resources         []string
		labels            map[string]string
	)
	switch {
	case c.incident:
		id, sev, state, source = m.inc.ID, m.inc.Severity, m.inc.State.String(), m.inc.Source
		resources, labels = m.inc.AffectedResources, m.inc.Labels
		switch c.typ {
		case event.IncidentResolved:
			state = "Resolved"
		case event.IncidentClosed:
			state = "Closed"
		}
	case c.typ == event.AlertReceived:
		sev, source, resources, labels = m.al.Severity, m.al.Source, m.al.AffectedResources, m.al.Labels
	case c.typ == event.SystemEvent:
		sev, source, resources, labels = m.sys.Severity, m.sys.Source, m.sys.AffectedResources, m.sys.Labels
	}
	if ev.IncidentID != repaired(id) || ev.Severity != sev.String() || ev.State != state || ev.Source != repaired(source) {
		t.Errorf("%s: parsed incident %q severity %q state %q source %q; want %q %q %q %q",
			c.typ, ev.IncidentID, ev.Severity, ev.State, ev.Source, repaired(id), sev, state, repaired(source))
	}
	var want []string
	for _, r := range resources {
		want = append(want, repaired(r))
	}
	if !slices.Equal(ev.Resources, want) {
		t.Errorf("%s: parsed resources %q, want %q", c.typ, ev.Resources, want)
	}
	if len(ev.Labels) != len(labels) {
		t.Errorf("%s: parsed labels %v, want %v", c.typ, ev.Labels, labels)
	}
	for k, v := range labels {
		if got, ok := ev.Label(repaired(k)); !ok || got != repaired(v) {
			t.Errorf("%s: label %q = %q, want %q", c.typ, k, got, v)
		}
	}
	if ev.Priority != event.PriorityOf(c.typ, sev.String()) {
		t.Errorf("%s: priority %v", c.typ, ev.Priority)
	}
}

// TestHandlersOutputPassesValidation: every handler's event, with every
// field set, with only the required ones, and with hostile text in every
// string, is accepted by event.Parse and means what the model said.
func TestHandlersOutputPassesValidation(t *testing.T) {
	models := map[string]model{
		"full":    fullModel(""),
		"minimal": minimalModel(),
		"hostile": fullModel("\"quoted\" \\ \n\t\x00\x1f \xff\xfe invalid utf8 \u2028 é 日本 \U0001F525 </script>"),
	}
	for name, m := range models {
		for _, c := range handlerCalls {
			p := &parsing{}
			if _, err := c.call(context.Background(), producer.NewHandlers(p), &m); err != nil {
				t.Errorf("%s %s: %v", name, c.typ, err)
				continue
			}
			checkParsed(t, c, &m, p.last())
		}
	}
}

func FuzzHandlersOutputPassesValidation(f *testing.F) {
	for _, s := range []string{"", "a", "\xff", "\"\\", "\x00\u2028", "日本", strings.Repeat("\xc3", 3)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m := fullModel(s)
		for _, c := range handlerCalls {
			p := &parsing{}
			if _, err := c.call(context.Background(), producer.NewHandlers(p), &m); err != nil {
				t.Fatalf("%s with %q: %v", c.typ, s, err)
			}
			checkParsed(t, c, &m, p.last())
		}
	})
}

// TestHandlersRefuseIncompleteModels: a handler refuses what the model
// requires and is missing, without publishing anything.
func TestHandlersRefuseIncompleteModels(t *testing.T) {
	p := &parsing{}
	h := producer.NewHandlers(p)
	ctx := context.Background()
	full := fullModel("")
	cases := map[string]func() (uint64, error){
		"incident without ID": func() (uint64, error) {
			inc := full.inc
			inc.ID = ""
			return h.Incidents.OnIncidentCreated(ctx, inc)
		},
		"incident without severity": func() (uint64, error) {
			inc := full.inc
			inc.Severity = producer.Severity{}
			return h.Escalations.OnEscalated(ctx, inc, full.esc)
		},
		"incident without state": func() (uint64, error) {
			inc := full.inc
			inc.State = producer.State{}
			return h.Incidents.OnIncidentUpdated(ctx, inc)
		},
		"alert without severity": func() (uint64, error) {
			al := full.al
			al.Severity = producer.Severity{}
			return h.Alerts.OnAlertReceived(ctx, al)
		},
		"conversion without alert": func() (uint64, error) { return h.Alerts.OnAlertConverted(ctx, "", full.inc) },
		"playbook without ID": func() (uint64, error) {
			return h.Playbooks.OnPlaybookStarted(ctx, full.inc, producer.Playbook{Name: "x"})
		},
		"comment on no incident": func() (uint64, error) {
			return h.Comments.OnCommentAdded(ctx, producer.Incident{}, full.com)
		},
	}
	for name, call := range cases {
		if _, err := call(); !errors.Is(err, producer.ErrInvalidEvent) {
			t.Errorf("%s: got %v, want ErrInvalidEvent", name, err)
		}
	}
	if len(p.events) != 0 {
		t.Fatalf("%d refused events were published", len(p.events))
	}
	var zero producer.Handlers
	if _, err := zero.System.OnSystemEvent(ctx, full.sys); err == nil {
		t.Fatal("handlers without a Publisher published")
	}
}

// TestHandlersLive sends every handler's event to a live server over the
// socket and in-process, and checks a WebSocket client receives each one
// under the message_id the handler returned.
func TestHandlersLive(t *testing.T) {
	s := startServer(t, "")
	ws := s.subscribeAll(t)
	ctx := testCtx(t, 30*time.Second)
	c := dial(t, ctx, producer.Dialer{}, s.socket)
	m := fullModel(" \xff\"")
	want := map[uint64]event.Type{}
	for _, p := range []producer.Publisher{c, s.Eng} {
		h := producer.NewHandlers(p)
		for _, call := range handlerCalls {
			id, err := call.call(ctx, h, &m)
			if err != nil {
				t.Fatalf("%T %s: %v", p, call.typ, err)
			}
			if _, dup := want[id]; dup {
				t.Fatalf("message_id %d returned twice", id)
			}
			want[id] = call.typ
		}
	}
	// Delivery order follows priority (escalations overtake), so match by id.
	for _, d := range ws.events(len(want)) {
		if typ, ok := want[d.id]; !ok || d.event["event_type"] != string(typ) {
			t.Errorf("message_id %d delivered as %v, want %s", d.id, d.event["event_type"], typ)
		}
		delete(want, d.id)
	}
}

func TestSeverityAndState(t *testing.T) {
	for i, name := range event.Severities {
		s, err := producer.ParseSeverity(name)
		if err != nil || s.String() != name || s.IsZero() {
			t.Errorf("ParseSeverity(%q) = %v, %v", name, s, err)
		}
		if want := []producer.Severity{producer.P0, producer.P1, producer.P2, producer.P3, producer.P4}[i]; s != want {
			t.Errorf("ParseSeverity(%q) = %v, want %v", name, s, want)
		}
	}
	for i, name := range event.States {
		s, err := producer.ParseState(name)
		want := []producer.State{producer.StateDetected, producer.StateTriaged, producer.StateInvestigating,
			producer.StateRemediating, producer.StateResolved, producer.StateClosed}[i]
		if err != nil || s != want || s.String() != name {
			t.Errorf("ParseState(%q) = %v, %v", name, s, err)
		}
	}
	for _, bad := range []string{"", "p1", "P5", "P10"} {
		if _, err := producer.ParseSeverity(bad); err == nil {
			t.Errorf("ParseSeverity(%q) succeeded", bad)
		}
	}
	if _, err := producer.ParseState("resolved"); err == nil {
		t.Error(`ParseState("resolved") succeeded`)
	}

	// As text, in the caller's own JSON.
	var v struct {
		Severity producer.Severity `json:"severity"`
		State    producer.State    `json:"state"`
	}
	if err := json.Unmarshal([]byte(`{"severity":"P2","state":"Remediating"}`), &v); err != nil || v.Severity != producer.P2 || v.State != producer.StateRemediating {
		t.Fatalf("unmarshal: %+v %v", v, err)
	}
	if out, _ := json.Marshal(v); string(out) != `{"severity":"P2","state":"Remediating"}` {
		t.Fatalf("marshal: %s", out)
	}
	if err := json.Unmarshal([]byte(`{"severity":"P9"}`), &v); err == nil {
		t.Fatal("unmarshal accepted P9")
	}
}

type discard struct{}

func (discard) PublishJSON(context.Context, []byte) (uint64, error) { return 1, nil }

// TestHandlersAllocateNothing: encoding a typed event uses pooled buffers.
func TestHandlersAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	h := producer.NewHandlers(discard{})
	m := fullModel("")
	ctx := context.Background()
	for _, c := range handlerCalls {
		if n := testing.AllocsPerRun(200, func() { _, _ = c.call(ctx, h, &m) }); n != 0 {
			t.Errorf("%s: %.1f allocations per event", c.typ, n)
		}
	}
}
