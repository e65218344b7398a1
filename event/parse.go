package event

import (
	"bytes"
	"fmt"
	"sort"
	"unicode/utf8"

	"github.com/bytedance/sonic"
)

// jsonAPI copies decoded strings: the ingest line buffer is reused for the
// next line while the event lives on in the ring and the history window.
var jsonAPI = sonic.Config{CopyString: true, ValidateString: true}.Froze()

// wireEvent is the part of an ingest line the server understands. The rest
// of the object is passed through to clients untouched.
type wireEvent struct {
	EventType  *string                `json:"event_type"`
	Severity   *string                `json:"severity"`
	State      *string                `json:"state"`
	Source     *string                `json:"source"`
	IncidentID *string                `json:"incident_id"`
	Resources  []string               `json:"affected_resources"`
	Labels     map[string]string      `json:"labels"`
	Priority   sonic.NoCopyRawMessage `json:"priority"`
}

// Error is an ingest line the server refuses; Message says what is wrong in
// one line, for the producer's reply.
type Error struct{ Message string }

func (e *Error) Error() string { return "invalid event: " + e.Message }

func invalidf(format string, args ...any) *Error {
	return &Error{Message: fmt.Sprintf(format, args...)}
}

// fieldKinds names the JSON kind each typed field must have, so a wrong
// type gets an error naming the field instead of a parser position.
var fieldKinds = []struct{ key, kind string }{
	{"event_type", "a string"}, {"severity", "a string"}, {"state", "a string"},
	{"source", "a string"}, {"incident_id", "a string"},
	{"affected_resources", "an array of strings"}, {"labels", "an object of string values"},
}

// Parse validates one ingest line (a JSON object) and builds the Event
// clients will receive. The server-assigned "priority" replaces any the
// producer sent.
func Parse(line []byte) (*Event, error) { return parse(line, false) }

// ParseAccepted rebuilds an event from the JSON another server already
// accepted (a fleet's shared log): it validates the same way, and keeps the
// bytes as they are when they already carry the right priority, so every
// instance sends clients the same bytes.
func ParseAccepted(data []byte) (*Event, error) { return parse(data, true) }

func parse(line []byte, accepted bool) (*Event, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return nil, invalidf("an event must be a JSON object")
	}
	if !utf8.Valid(line) {
		// Clients must drop a connection on a text frame that is not
		// UTF-8 (RFC 6455 §8.1): one such event would disconnect every
		// matching client, again on each resume while it is in history.
		return nil, invalidf("an event must be valid UTF-8")
	}
	var w wireEvent
	if err := jsonAPI.Unmarshal(line, &w); err != nil {
		return nil, describe(line, err)
	}
	if w.EventType == nil {
		return nil, invalidf("missing required field %q", "event_type")
	}
	ev := &Event{Type: Type(*w.EventType), Resources: w.Resources}
	if !ValidType(*w.EventType) {
		return nil, invalidf("unknown event_type %q", *w.EventType)
	}
	if w.Severity != nil {
		if !ValidSeverity(*w.Severity) {
			return nil, invalidf("severity %q is not one of P0, P1, P2, P3, P4", *w.Severity)
		}
		ev.Severity = *w.Severity
	}
	if w.State != nil {
		if !ValidState(*w.State) {
			return nil, invalidf("state %q is not one of Detected, Triaged, Investigating, Remediating, Resolved, Closed", *w.State)
		}
		ev.State = *w.State
	}
	if w.Source != nil {
		ev.Source = *w.Source
	}
	if w.IncidentID != nil {
		ev.IncidentID = *w.IncidentID
	}
	if len(w.Labels) > 0 {
		ev.Labels = make([]Label, 0, len(w.Labels))
		for k, v := range w.Labels {
			ev.Labels = append(ev.Labels, Label{Key: k, Value: v})
		}
		sort.Slice(ev.Labels, func(i, j int) bool { return ev.Labels[i].Key < ev.Labels[j].Key })
	}
	ev.Priority = PriorityOf(ev.Type, ev.Severity)
	if accepted && string(w.Priority) == `"`+ev.Priority.String()+`"` {
		ev.JSON = append([]byte(nil), line...)
		return ev, nil
	}
	if w.Priority != nil {
		json, err := withoutKey(line, "priority")
		if err != nil {
			return nil, err
		}
		line = json
	}
	ev.JSON = withPriority(line, ev.Priority)
	return ev, nil
}

// withPriority returns a new object: {"priority":"…", then the producer's fields.
func withPriority(obj []byte, p Priority) []byte {
	inner := bytes.TrimSpace(obj[1:]) // after '{'
	out := make([]byte, 0, len(obj)+24)
	out = append(out, `{"priority":"`...)
	out = append(out, p.String()...)
	out = append(out, '"')
	if inner[0] != '}' {
		out = append(out, ',')
	}
	return append(out, inner...)
}

// withoutKey re-encodes obj without key. Only a producer that sends its own
// "priority" pays for this.
func withoutKey(obj []byte, key string) ([]byte, error) {
	var fields map[string]sonic.NoCopyRawMessage
	if err := jsonAPI.Unmarshal(obj, &fields); err != nil {
		return nil, describe(obj, err)
	}
	delete(fields, key)
	out, err := jsonAPI.Marshal(fields)
	if err != nil {
		return nil, invalidf("cannot re-encode event: %v", err)
	}
	return out, nil
}

// describe turns a decoder error into a one-line message: the field with the
// wrong type when one of the typed fields is at fault, else where the JSON
// breaks.
func describe(line []byte, err error) *Error {
	var fields map[string]sonic.NoCopyRawMessage
	if jsonAPI.Unmarshal(line, &fields) != nil {
		return invalidf("malformed JSON")
	}
	for _, f := range fieldKinds {
		raw, ok := fields[f.key]
		if !ok || string(raw) == "null" {
			continue
		}
		var probe wireEvent
		one := append(append([]byte(`{"`), f.key...), `":`...)
		one = append(append(one, raw...), '}')
		if jsonAPI.Unmarshal(one, &probe) != nil {
			return invalidf("field %q must be %s", f.key, f.kind)
		}
	}
	return invalidf("malformed event: %s", firstLine(err.Error()))
}

func firstLine(s string) string {
	if i := bytes.IndexByte([]byte(s), '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
