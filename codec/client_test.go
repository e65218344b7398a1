package codec

import (
	"bytes"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
)

func decodeOK(t *testing.T, msg string, lim Limits) *ClientMessage {
	t.Helper()
	m, err := DecodeClientMessage([]byte(msg), lim)
	if err != nil {
		t.Fatalf("%.200s: %v", msg, err)
	}
	return m
}

func decodeErr(t *testing.T, msg string, lim Limits, code, mention string) {
	t.Helper()
	m, err := DecodeClientMessage([]byte(msg), lim)
	if err == nil {
		t.Fatalf("%.200s: accepted (%+v), want %s", msg, m, code)
	}
	if err.Code != code || !strings.Contains(err.Message, mention) || strings.Contains(err.Message, "\n") {
		t.Fatalf("%.200s: %v, want %s naming %q on one line", msg, err, code, mention)
	}
}

func TestDecodeClientMessage(t *testing.T) {
	m := decodeOK(t, `{"type":"subscribe","subscription_id":"s1","since":7,"extra":{"x":[1,2]},
		"filters":{"event_types":["escalated"],"severities":["P1","P0","P1"],"states":["Detected"],"sources":["pd"],
		"affected_resources":["db-1"],"incident_ids":["INC-1"],"labels":{"team":"core","env":"prod"}}}`, DefaultLimits)
	want := &ClientMessage{Type: TypeSubscribe, SubscriptionID: "s1", Since: 7, HasSince: true, Filter: filterindex.Filter{
		EventTypes: []string{"escalated"}, Severities: []string{"P0", "P1"}, States: []string{"Detected"}, Sources: []string{"pd"},
		Resources: []string{"db-1"}, IncidentIDs: []string{"INC-1"},
		Labels: []event.Label{{Key: "env", Value: "prod"}, {Key: "team", Value: "core"}},
	}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("subscribe decoded as %+v, want %+v", m, want)
	}
	if m := decodeOK(t, `{"type":"subscribe","subscription_id":"s","filters":{},"since":null}`, DefaultLimits); m.HasSince || !m.Filter.MatchesAll() {
		t.Fatalf("empty subscribe: %+v", m)
	}
	if m := decodeOK(t, `{"type":"unsubscribe","subscription_id":"s1"}`, DefaultLimits); m.SubscriptionID != "s1" {
		t.Fatalf("unsubscribe: %+v", m)
	}
	for _, ts := range []string{`"2026-01-01T00:00:00Z"`, `null`, `{"a":[1,"x"]}`, `12.5`} {
		if m := decodeOK(t, `{"type":"ping","timestamp":`+ts+`}`, DefaultLimits); string(m.Timestamp) != ts {
			t.Fatalf("ping timestamp %s echoed as %s", ts, m.Timestamp)
		}
	}
	if m := decodeOK(t, `{"type":"ack","message_id":42}`, DefaultLimits); m.MessageID != 42 {
		t.Fatalf("ack: %+v", m)
	}
	if m := decodeOK(t, `{"type":"auth","token":"x.y.z"}`, DefaultLimits); m.Token != "x.y.z" {
		t.Fatalf("auth: %+v", m)
	}
	// Keys as in a map: exact case, escapes decoded, the last repeat wins.
	if m := decodeOK(t, `{"type":"ack","message_id":1,"message_id":2}`, DefaultLimits); m.MessageID != 2 {
		t.Fatalf("repeated key: %+v", m)
	}
	if m := decodeOK(t, `{"t\u0079pe":"subscribe","subscription_id":"s","filters":{"sever\u0069ties":["P2"]}}`, DefaultLimits); !slices(m.Filter.Severities, "P2") {
		t.Fatalf("escaped keys: %+v", m)
	}
	if m := decodeOK(t, `{"type":"subscribe","subscription_id":"s","filters":{"severities":["P1"],"severities":["P2"]}}`, DefaultLimits); !slices(m.Filter.Severities, "P2") {
		t.Fatalf("repeated filter key: %+v", m)
	}

	for _, c := range []struct{ msg, code, mention string }{
		{`[]`, CodeInvalidMessage, "JSON object"},
		{`{"type":"ping"`, CodeInvalidMessage, "malformed"},
		{`{"Type":"ping","timestamp":1}`, CodeInvalidMessage, `"type"`},
		{`{"type":"nope"}`, CodeUnsupported, "nope"},
		{`{"type":"ping"}`, CodeInvalidMessage, "timestamp"},
		{`{"type":"subscribe","subscription_id":"s"}`, CodeInvalidMessage, "filters"},
		{`{"type":"subscribe","subscription_id":"","filters":{}}`, CodeInvalidMessage, "subscription_id"},
		{`{"type":"subscribe","subscription_id":"s","filters":[]}`, CodeInvalidMessage, "filters"},
		// The first unknown key, in the order written.
		{`{"type":"subscribe","subscription_id":"s","filters":{"severities":["P1"],"zz":1,"aa":2}}`, CodeInvalidMessage, "filters.zz"},
		{`{"type":"subscribe","subscription_id":"s","filters":{"Severities":["P1"]}}`, CodeInvalidMessage, "filters.Severities"},
		{`{"type":"subscribe","subscription_id":"s","filters":{"severities":["P7"]}}`, CodeInvalidMessage, "P7"},
		{`{"type":"subscribe","subscription_id":"s","filters":{"sources":"pd"}}`, CodeInvalidMessage, "filters.sources"},
		{`{"type":"subscribe","subscription_id":"s","filters":{"labels":{"a":1}}}`, CodeInvalidMessage, "filters.labels"},
		{`{"type":"ack","message_id":-1}`, CodeInvalidMessage, "message_id"},
	} {
		decodeErr(t, c.msg, DefaultLimits, c.code, c.mention)
	}
}

func slices(got []string, want ...string) bool { return reflect.DeepEqual(got, want) }

// subscribeWith builds a subscribe of n values spread over every list and
// the labels, each distinct.
func subscribeWith(n int) string {
	var lists [6][]string
	labels := map[string]string{}
	vocab := [3][]string{
		{"incident_created", "incident_updated", "incident_resolved", "incident_closed", "alert_received", "escalated"},
		{"P0", "P1", "P2", "P3", "P4"},
		{"Detected", "Triaged", "Investigating"},
	}
	for i := range n {
		switch k := i % 7; {
		case k < 3 && len(lists[k]) < len(vocab[k]):
			lists[k] = append(lists[k], vocab[k][len(lists[k])])
		case k == 6:
			labels[fmt.Sprintf("k%d", i)] = "v"
		default:
			lists[3+i%3] = append(lists[3+i%3], fmt.Sprintf("v%d", i))
		}
	}
	var b strings.Builder
	b.WriteString(`{"type":"subscribe","subscription_id":"s","filters":{`)
	for i, key := range []string{"event_types", "severities", "states", "sources", "affected_resources", "incident_ids"} {
		fmt.Fprintf(&b, `%q:[`, key)
		for j, v := range lists[i] {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%q", v)
		}
		b.WriteString("],")
	}
	b.WriteString(`"labels":{`)
	first := true
	for k, v := range labels {
		if !first {
			b.WriteByte(',')
		}
		first = false
		fmt.Fprintf(&b, "%q:%q", k, v)
	}
	b.WriteString("}}}")
	return b.String()
}

func TestFilterValuesLimit(t *testing.T) {
	for _, max := range []int{1, 7, 50, DefaultMaxFilterValues} {
		lim := Limits{MaxFilterValues: max}
		m := decodeOK(t, subscribeWith(max), lim)
		if n := filterValues(&m.Filter); n != max {
			t.Fatalf("limit %d: the message at the limit decoded to %d values", max, n)
		}
		decodeErr(t, subscribeWith(max+1), lim, CodeLimitExceeded, fmt.Sprintf("at most %d values", max))
		decodeErr(t, subscribeWith(max+1), lim, CodeLimitExceeded, "max-filter-values")
	}
	// The zero Limits are the defaults, not "unlimited".
	decodeOK(t, subscribeWith(DefaultMaxFilterValues), Limits{})
	decodeErr(t, subscribeWith(DefaultMaxFilterValues+1), Limits{}, CodeLimitExceeded, "1000")
	// Values count as listed, duplicates included; labels count too.
	lim := Limits{MaxFilterValues: 3}
	decodeOK(t, `{"type":"subscribe","subscription_id":"s","filters":{"severities":["P1","P1"],"labels":{"a":"x"}}}`, lim)
	decodeErr(t, `{"type":"subscribe","subscription_id":"s","filters":{"severities":["P1","P1","P1"],"labels":{"a":"x"}}}`, lim, CodeLimitExceeded, "3")
	decodeErr(t, `{"type":"subscribe","subscription_id":"s","filters":{"labels":{"a":"x","b":"x","c":"x","d":"x"}}}`, lim, CodeLimitExceeded, "3")
	// Commas and brackets inside values are not separators.
	decodeOK(t, `{"type":"subscribe","subscription_id":"s","filters":{"sources":["a,b,c,d","[x],{y}","\"],[\",\\"]}}`, lim)
	// Other messages do not count filters.
	decodeOK(t, `{"type":"ack","message_id":1,"filters":{"severities":["P1","P1","P1","P1"]}}`, lim)
	// DecodeFilter, for trusted scopes, has no limit.
	if _, err := DecodeFilter([]byte(subscribeWith(5000)[len(`{"type":"subscribe","subscription_id":"s","filters":`):len(subscribeWith(5000))-1]), "filters"); err != nil {
		t.Fatalf("DecodeFilter with 5000 values: %v", err)
	}
}

func TestSubscriptionIDLimit(t *testing.T) {
	sub := func(id string) string { return `{"type":"subscribe","subscription_id":"` + id + `","filters":{}}` }
	unsub := func(id string) string { return `{"type":"unsubscribe","subscription_id":"` + id + `"}` }
	// Over the limit, subscribe gets LIMIT_EXCEEDED, and unsubscribe
	// NOT_FOUND (no subscription can have that id).
	for _, kind := range []struct {
		msg           func(string) string
		code, mention string
	}{{sub, CodeLimitExceeded, "at most 128 bytes"}, {unsub, CodeNotFound, "over 128 bytes"}} {
		msg, code, mention := kind.msg, kind.code, kind.mention
		for _, c := range []struct {
			unit string // one byte of the id, as written
			size int    // its bytes once decoded
		}{{"a", 1}, {"é", 2}, {`\u0041`, 1}, {`\u00e9`, 2}, {`\ud83d\ude00`, 4}} {
			n := MaxSubscriptionIDBytes / c.size
			if m := decodeOK(t, msg(strings.Repeat(c.unit, n)), DefaultLimits); len(m.SubscriptionID) != n*c.size {
				t.Fatalf("id of %d bytes decoded as %d", n*c.size, len(m.SubscriptionID))
			}
			decodeErr(t, msg(strings.Repeat(c.unit, n+1)), DefaultLimits, code, mention)
		}
		decodeErr(t, msg(strings.Repeat("a", 16<<20)), DefaultLimits, code, mention)
	}
}

// TestHugeMessagesCostLittle: 16 MiB messages listing a million values, or a
// million members, are refused (or decoded) without building anything per
// value: what decoding allocates is bounded by a small multiple of the
// message's size (the decoder copies what it parses), not by its count of
// values.
func TestHugeMessagesCostLittle(t *testing.T) {
	build := func(pre, item, post string, n int) []byte {
		var b bytes.Buffer
		b.WriteString(pre)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, item, i)
		}
		b.WriteString(post)
		return b.Bytes()
	}
	const n = 1_000_000
	for _, c := range []struct {
		name string
		msg  []byte
		code string
	}{
		{"values", build(`{"type":"subscribe","subscription_id":"s","filters":{"incident_ids":[`, `"INC-%011d"`, `]}}`, n), CodeLimitExceeded},
		{"labels", build(`{"type":"subscribe","subscription_id":"s","filters":{"labels":{`, `"k%07d":"v"`, `}}}`, n), CodeLimitExceeded},
		{"unknown filter keys", build(`{"type":"subscribe","subscription_id":"s","filters":{`, `"k%07d":1`, `}}`, n), CodeInvalidMessage},
		{"repeated filter key", []byte(`{"type":"subscribe","subscription_id":"s","filters":{` +
			strings.Repeat(`"sources":null,`, n) + `"sources":["x"]}}`), ""},
		{"unknown members", build(`{"type":"ack","message_id":1,`, `"k%07d":1`, `}`, n), ""},
	} {
		var err *MessageError
		var ms [2]runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms[0])
		_, err = DecodeClientMessage(c.msg, DefaultLimits)
		runtime.ReadMemStats(&ms[1])
		code := ""
		if err != nil {
			code = err.Code
		}
		if code != c.code {
			t.Errorf("%s: %v, want code %q", c.name, err, c.code)
		}
		alloc := ms[1].TotalAlloc - ms[0].TotalAlloc
		t.Logf("%s: %d MiB message, %d MiB allocated", c.name, len(c.msg)>>20, alloc>>20)
		if alloc > 3*uint64(len(c.msg)) {
			t.Errorf("%s: decoding a %d-byte message allocated %d bytes", c.name, len(c.msg), alloc)
		}
	}
}

func TestCountMembers(t *testing.T) {
	for _, c := range []struct {
		raw  string
		want int
	}{
		{`[]`, 0}, {`[ ]`, 0}, {"[\n\t]", 0}, {`{}`, 0}, {`null`, 0},
		{`["a"]`, 1}, {`[ "a" , "b" ]`, 2}, {`[1,[2,3],{"a":[4,5]},"6"]`, 4},
		{`["a,b","c]d","e\"f,g","h\\",",\\\","]`, 5},
		{`{"a":"1","b,c":"2,3","d":{"e":1,"f":2}}`, 3},
	} {
		if got := countMembers([]byte(c.raw), 100); got != c.want {
			t.Errorf("countMembers(%s) = %d, want %d", c.raw, got, c.want)
		}
	}
	// It stops once past the limit.
	if got := countMembers([]byte(`["a","b","c","d","e"]`), 2); got != 3 {
		t.Errorf("countMembers past a limit of 2 = %d, want 3", got)
	}
	for _, k := range filterKeys {
		if !knownFilterKey([]byte(k.key)) {
			t.Errorf("filter key %q is not known to knownFilterKey", k.key)
		}
	}
}
