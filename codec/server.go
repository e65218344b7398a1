package codec

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/flarecast/flarecast/filterindex"
)

// Server → client messages are written by appending into a caller's buffer,
// so the dispatcher and the event loops encode into pooled or reused memory
// and allocate only the frame they keep.

// Server message types and closing reasons.
const (
	ReasonServerShutdown   = "server_shutdown"
	ReasonSessionTimeout   = "session_timeout"
	ReasonSlowConsumer     = "slow_consumer"
	ReasonSessionTakenOver = "session_taken_over"
	ReasonTokenExpired     = "token_expired"
	ReasonPolicyViolation  = "policy_violation"
)

// AppendEvent appends the payload of an event message. eventJSON is the
// event object as accepted (producer fields plus priority).
func AppendEvent(dst []byte, messageID uint64, accepted time.Time, eventJSON []byte) []byte {
	dst = append(dst, `{"type":"event","message_id":`...)
	dst = strconv.AppendUint(dst, messageID, 10)
	dst = append(dst, `,"timestamp":"`...)
	dst = accepted.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","event":`...)
	dst = append(dst, eventJSON...)
	return append(dst, '}')
}

// AppendWelcome appends the payload of the welcome message.
func AppendWelcome(dst []byte, sessionID string, now time.Time, resumed bool) []byte {
	dst = append(dst, `{"type":"welcome","session_id":`...)
	dst = AppendString(dst, sessionID)
	dst = append(dst, `,"server_time":"`...)
	dst = now.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","resumed":`...)
	dst = strconv.AppendBool(dst, resumed)
	return append(dst, '}')
}

// AppendSubscribed appends the payload of the subscribed message, with the
// normalised filters the subscription really uses and from, the message_id
// after which it delivers: a client that loses its session before it
// processed anything subscribes again with since = from and misses nothing.
func AppendSubscribed(dst []byte, subscriptionID string, f *filterindex.Filter, from uint64) []byte {
	dst = append(dst, `{"type":"subscribed","subscription_id":`...)
	dst = AppendString(dst, subscriptionID)
	dst = append(dst, `,"filters":`...)
	dst = AppendFilter(dst, f)
	dst = append(dst, `,"from":`...)
	dst = strconv.AppendUint(dst, from, 10)
	return append(dst, '}')
}

// AppendFilter appends a filter as the JSON object clients send.
func AppendFilter(dst []byte, f *filterindex.Filter) []byte {
	dst = append(dst, '{')
	for i, k := range filterKeys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendString(dst, k.key)
		dst = append(dst, ':', '[')
		for j, v := range *k.list(f) {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = AppendString(dst, v)
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"labels":{`...)
	for i, l := range f.Labels {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = AppendString(dst, l.Key)
		dst = append(dst, ':')
		dst = AppendString(dst, l.Value)
	}
	return append(dst, '}', '}')
}

// AppendUnsubscribed appends the payload of the unsubscribed message.
func AppendUnsubscribed(dst []byte, subscriptionID string) []byte {
	dst = append(dst, `{"type":"unsubscribed","subscription_id":`...)
	dst = AppendString(dst, subscriptionID)
	return append(dst, '}')
}

// AppendPong appends the payload of a pong answering a ping whose raw
// timestamp value is echoed verbatim.
func AppendPong(dst []byte, timestamp []byte, now time.Time) []byte {
	dst = append(dst, `{"type":"pong","timestamp":`...)
	dst = append(dst, timestamp...)
	dst = append(dst, `,"server_time":"`...)
	dst = now.UTC().AppendFormat(dst, time.RFC3339)
	return append(dst, '"', '}')
}

// AppendError appends the payload of an error message.
func AppendError(dst []byte, code, message string) []byte {
	dst = append(dst, `{"type":"error","code":`...)
	dst = AppendString(dst, code)
	dst = append(dst, `,"message":`...)
	dst = AppendString(dst, message)
	return append(dst, '}')
}

// AppendHistoryGap appends the HISTORY_GAP error, which tells the client
// the oldest message_id the server still holds.
func AppendHistoryGap(dst []byte, message string, firstAvailable uint64) []byte {
	dst = AppendError(dst, CodeHistoryGap, message)
	dst = append(dst[:len(dst)-1], `,"first_available":`...)
	dst = strconv.AppendUint(dst, firstAvailable, 10)
	return append(dst, '}')
}

// AppendClosing appends the payload of the closing message.
func AppendClosing(dst []byte, reason string) []byte {
	dst = append(dst, `{"type":"closing","reason":`...)
	dst = AppendString(dst, reason)
	return append(dst, '}')
}

// TextFrame wraps payload into a newly allocated, complete text frame.
func TextFrame(payload []byte) []byte {
	return AppendFrame(make([]byte, 0, HeaderSize(len(payload))+len(payload)), OpText, payload)
}

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD so
// the output is always valid JSON and a valid text frame.
func AppendString(dst []byte, s string) []byte {
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

// Ingest reply codes.
const (
	CodeInvalidEvent = "INVALID_EVENT"
	CodeUnavailable  = "UNAVAILABLE"
)

// AppendIngestOK appends the reply line for an accepted event.
func AppendIngestOK(dst []byte, messageID uint64) []byte {
	dst = append(dst, `{"ok":true,"message_id":`...)
	dst = strconv.AppendUint(dst, messageID, 10)
	return append(dst, '}', '\n')
}

// AppendIngestError appends the reply line for a refused event.
func AppendIngestError(dst []byte, code, message string) []byte {
	dst = append(dst, `{"ok":false,"code":`...)
	dst = AppendString(dst, code)
	dst = append(dst, `,"message":`...)
	dst = AppendString(dst, message)
	return append(dst, '}', '\n')
}
