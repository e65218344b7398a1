package event

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzParse: any ingest line is an event or an *Error, never a panic; an
// accepted event's JSON is valid, carries the server's priority, and parses
// back (as a fleet instance re-reads it from the broker) to the same event.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"event_type":"incident_created","incident_id":"INC-1","severity":"P1","state":"Detected","source":"s","affected_resources":["a","b"],"labels":{"env":"prod"},"data":{"x":[1,2]}}`,
		`{"event_type":"escalated","severity":"P0","priority":"low"}`,
		`{"event_type":"bogus"}`, `{"event_type":"alert_received","severity":1}`, `{}`, `[]`, `{"event_type":"system_event"} x`,
		`{"event_type":"comment_added","labels":{"a":"1","a":"2"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := Parse(line)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if !json.Valid(ev.JSON) {
			t.Fatalf("accepted event has invalid JSON %q", ev.JSON)
		}
		var obj map[string]any
		if err := json.Unmarshal(ev.JSON, &obj); err != nil || obj["priority"] != ev.Priority.String() {
			t.Fatalf("event JSON %s lacks priority %s", ev.JSON, ev.Priority)
		}
		again, err := ParseAccepted(ev.JSON)
		if err != nil {
			t.Fatalf("re-parsing accepted JSON %s: %v", ev.JSON, err)
		}
		if !reflect.DeepEqual(again, ev) {
			t.Fatalf("re-parsed event differs:\n%+v\n%+v", again, ev)
		}
	})
}
