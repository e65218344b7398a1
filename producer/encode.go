package producer

import (
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

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
	e.buf = appendString(e.buf, v)
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
		e.buf = appendString(e.buf, v)
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
		e.buf = appendString(e.buf, k)
		e.buf = append(e.buf, ':')
		e.buf = appendString(e.buf, m[k])
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

// appendString appends s as a JSON string. Every Go string encodes to a
// valid one: control characters are escaped and invalid UTF-8 becomes
// U+FFFD, which the server's strict decoder would otherwise refuse.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\ufffd"...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
