package loadtest

import (
	"bytes"
	"strconv"
)

// FilterKind is one way a connection subscribes to its group. Every kind
// matches exactly the events of the group, because each event carries every
// field of its group: which kind a connection uses changes the path through
// the server's filter index, not the set of events it must receive.
type FilterKind uint8

var filterKinds = []struct {
	name string
	// filter appends the subscribe filter object for group g.
	filter func(dst []byte, g int) []byte
}{
	{"incident", func(dst []byte, g int) []byte {
		dst = append(dst, `{"incident_ids":["INC-`...)
		dst = strconv.AppendInt(dst, int64(g), 10)
		return append(dst, `"]}`...)
	}},
	{"source", func(dst []byte, g int) []byte {
		dst = append(dst, `{"sources":["lt-src-`...)
		dst = strconv.AppendInt(dst, int64(g), 10)
		return append(dst, `"]}`...)
	}},
	{"label", func(dst []byte, g int) []byte {
		dst = append(dst, `{"labels":{"lt_group":"g`...)
		dst = strconv.AppendInt(dst, int64(g), 10)
		return append(dst, `"}}`...)
	}},
	{"resource", func(dst []byte, g int) []byte {
		dst = append(dst, `{"affected_resources":["lt-res-`...)
		dst = strconv.AppendInt(dst, int64(g), 10)
		return append(dst, `"]}`...)
	}},
	// combo AND-s four fields, two of them shared by every group: the
	// index must intersect a broad posting list with a narrow one.
	{"combo", func(dst []byte, g int) []byte {
		dst = append(dst, `{"event_types":["incident_updated","alert_received"],"severities":["P3"],"labels":{"env":"loadtest"},"incident_ids":["INC-`...)
		dst = strconv.AppendInt(dst, int64(g), 10)
		return append(dst, `"]}`...)
	}},
}

func (k FilterKind) String() string { return filterKinds[k].name }

func kindByName(name string) (FilterKind, bool) {
	for i, k := range filterKinds {
		if k.name == name {
			return FilterKind(i), true
		}
	}
	return 0, false
}

// subscribeMessage is the client's subscribe message for group g.
func subscribeMessage(k FilterKind, g int) []byte {
	dst := append([]byte(nil), `{"type":"subscribe","subscription_id":"lt","filters":`...)
	dst = filterKinds[k].filter(dst, g)
	return append(dst, '}')
}

// appendEvent appends the ingest line of event seq for group g, sent at
// sentNS (Unix time in ns), padded with a title to about size bytes. The
// event is incident_updated at P3, so its priority is normal and no event
// overtakes another in a connection's queue.
func appendEvent(dst []byte, seq uint64, g int, sentNS int64, size int) []byte {
	start := len(dst)
	gs := strconv.AppendInt(nil, int64(g), 10)
	dst = append(dst, `{"event_type":"incident_updated","severity":"P3","state":"Investigating","incident_id":"INC-`...)
	dst = append(dst, gs...)
	dst = append(dst, `","source":"lt-src-`...)
	dst = append(dst, gs...)
	dst = append(dst, `","affected_resources":["lt-res-`...)
	dst = append(dst, gs...)
	dst = append(dst, `"],"labels":{"env":"loadtest","lt_group":"g`...)
	dst = append(dst, gs...)
	dst = append(dst, `"},"data":{"lt_seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"lt_sent_ns":`...)
	dst = strconv.AppendInt(dst, sentNS, 10)
	dst = append(dst, `},"title":"`...)
	const filler = "Error rate above threshold on the checkout path; paging the on-call engineer. "
	for pad := size - (len(dst) - start) - 2; pad > 0; {
		n := min(pad, len(filler))
		dst = append(dst, filler[:n]...)
		pad -= n
	}
	return append(dst, `"}`...)
}

var (
	keySeq  = []byte(`"lt_seq":`)
	keySent = []byte(`"lt_sent_ns":`)
	// prefixes of the server messages the client tells apart.
	typeEvent      = []byte(`{"type":"event"`)
	typeWelcome    = []byte(`"type":"welcome"`)
	typeSubscribed = []byte(`"type":"subscribed"`)
	typeClosing    = []byte(`"type":"closing"`)
	typeError      = []byte(`"type":"error"`)
)

// parseEvent finds the load tester's seq and send time in an event message
// without decoding the JSON: the hot path of the client allocates nothing.
// The send time is looked for after the seq first (appendEvent writes it
// there and the server passes data through as is), so each byte of a
// typical event is scanned once.
func parseEvent(msg []byte) (seq uint64, sentNS int64, ok bool) {
	i := bytes.Index(msg, keySeq)
	if i < 0 {
		return 0, 0, false
	}
	s, end, ok1 := uintAt(msg, i+len(keySeq))
	t, ok2 := uintAfter(msg[end:], keySent)
	if !ok2 {
		t, ok2 = uintAfter(msg, keySent)
	}
	return s, int64(t), ok1 && ok2
}

func uintAfter(msg, key []byte) (uint64, bool) {
	i := bytes.Index(msg, key)
	if i < 0 {
		return 0, false
	}
	v, _, ok := uintAt(msg, i+len(key))
	return v, ok
}

// uintAt reads the decimal at msg[i:] (after blanks) and returns where it ends.
func uintAt(msg []byte, i int) (v uint64, end int, ok bool) {
	for i < len(msg) && msg[i] == ' ' {
		i++
	}
	j := i
	for ; j < len(msg) && msg[j] >= '0' && msg[j] <= '9'; j++ {
		v = v*10 + uint64(msg[j]-'0')
	}
	return v, j, j > i
}
