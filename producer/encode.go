package producer

import (
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
)

// encoder builds one event's JSON. Encoders are pooled with their buffers:
// a typed publish allocates nothing once the pool is warm.
type encoder struct {
	buf  []byte
	keys []string // scratch for sorting label keys
}

// maxPooledEvent is the largest buffer returned to the pool.
const maxPooledEvent = 64 << 10

var encoderPool = sync.Pool{New: func() any { return &encoder{buf: make([]byte, 0, 1024)} }}

func getEncoder(eventType event.Type) *encoder {
	e := encoderPool.Get().(*encoder)
	e.buf = append(e.buf[:0], `{"event_type":"`...)
	e.buf = append(e.buf, eventType...)
	e.buf = append(e.buf, '"')
	return e
}

func putEncoder(e *encoder) {
	if cap(e.buf) > maxPooledEvent {
		return
	}
	encoderPool.Put(e)
}

// bytes closes the object and returns it; valid until putEncoder.
func (e *encoder) bytes() []byte {
	e.buf = append(e.buf, '}')
	return e.buf
}

func (e *encoder) key(k string) {
	e.buf = append(e.buf, ',', '"')
	e.buf = append(e.buf, k...)
	e.buf = append(e.buf, '"', ':')
}

// str writes k unless v is empty.
func (e *encoder) str(k, v string) {
	if v == "" {
		return
	}
	e.key(k)
	e.buf = codec.AppendString(e.buf, v)
}

func (e *encoder) strs(k string, vs []string) {
	if len(vs) == 0 {
		return
	}
	e.key(k)
	e.buf = append(e.buf, '[')
	for i, v := range vs {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.buf = codec.AppendString(e.buf, v)
	}
	e.buf = append(e.buf, ']')
}

// labels writes m with its keys sorted, so equal events encode equally.
func (e *encoder) labels(m map[string]string) {
	if len(m) == 0 {
		return
	}
	e.keys = e.keys[:0]
	for k := range m {
		e.keys = append(e.keys, k)
	}
	slices.Sort(e.keys)
	e.key("labels")
	e.buf = append(e.buf, '{')
	for i, k := range e.keys {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.buf = codec.AppendString(e.buf, k)
		e.buf = append(e.buf, ':')
		e.buf = codec.AppendString(e.buf, m[k])
	}
	e.buf = append(e.buf, '}')
	clear(e.keys) // do not keep the caller's strings alive in the pool
}

func (e *encoder) time(k string, t time.Time) {
	if t.IsZero() {
		return
	}
	e.key(k)
	e.buf = append(e.buf, '"')
	e.buf = t.UTC().AppendFormat(e.buf, time.RFC3339Nano)
	e.buf = append(e.buf, '"')
}

func (e *encoder) int(k string, v int64) {
	e.key(k)
	e.buf = strconv.AppendInt(e.buf, v, 10)
}

func (e *encoder) bool(k string, v bool) {
	e.key(k)
	e.buf = strconv.AppendBool(e.buf, v)
}

// millis writes a duration as whole milliseconds, unless it is zero.
func (e *encoder) millis(k string, d time.Duration) {
	if d == 0 {
		return
	}
	e.int(k, d.Milliseconds())
}

// incident writes the fields subscribers filter on, and the title.
func (e *encoder) incident(inc *Incident) {
	e.str("incident_id", inc.ID)
	e.str("severity", inc.Severity.String())
	e.str("state", inc.State.String())
	e.str("source", inc.Source)
	e.strs("affected_resources", inc.AffectedResources)
	e.labels(inc.Labels)
	e.str("title", inc.Title)
}
