package codec

import (
	"bytes"
	"fmt"
	"sort"

	"github.com/bytedance/sonic"

	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
)

// Error codes of the client protocol.
const (
	CodeInvalidMessage = "INVALID_MESSAGE"
	CodeUnsupported    = "UNSUPPORTED"
	CodeNotFound       = "NOT_FOUND"
	CodeRateLimited    = "RATE_LIMITED"
	CodeUnauthorized   = "UNAUTHORIZED"
	CodeLimitExceeded  = "LIMIT_EXCEEDED"
	CodeHistoryGap     = "HISTORY_GAP"
)

// Client message types.
const (
	TypeSubscribe   = "subscribe"
	TypeUnsubscribe = "unsubscribe"
	TypePing        = "ping"
	TypeAck         = "ack"
	TypeAuth        = "auth"
)

// jsonAPI copies every decoded string: the bytes a client message is decoded
// from belong to the event loop's read buffer, and subscription filters
// outlive that buffer.
var jsonAPI = sonic.Config{CopyString: true, ValidateString: true}.Froze()

// MessageError is a client message the server refuses, with the protocol
// error code to answer with. The connection stays open.
type MessageError struct {
	Code    string
	Message string
}

func (e *MessageError) Error() string { return e.Code + ": " + e.Message }

func invalid(format string, args ...any) *MessageError {
	return &MessageError{Code: CodeInvalidMessage, Message: fmt.Sprintf(format, args...)}
}

// ClientMessage is one decoded client → server message. Only the fields of
// its Type are set.
type ClientMessage struct {
	Type           string
	SubscriptionID string
	Filter         filterindex.Filter // subscribe; normalised
	Since          uint64             // subscribe; valid when HasSince
	HasSince       bool
	MessageID      uint64 // ack
	Timestamp      []byte // ping: the raw JSON value, echoed verbatim in pong
	Token          string // auth
}

// DecodeClientMessage decodes and validates one text message. Control
// messages are rare next to events, so clarity of the error (it names the
// offending key) wins over speed here.
func DecodeClientMessage(data []byte) (*ClientMessage, *MessageError) {
	var fields map[string]sonic.NoCopyRawMessage
	if err := jsonAPI.Unmarshal(data, &fields); err != nil {
		if len(bytes.TrimSpace(data)) > 0 && bytes.TrimSpace(data)[0] != '{' {
			return nil, invalid("message must be a JSON object")
		}
		return nil, invalid("malformed JSON")
	}
	m := &ClientMessage{}
	var err *MessageError
	if m.Type, err = requiredString(fields, "type"); err != nil {
		return nil, err
	}
	switch m.Type {
	case TypeSubscribe:
		if m.SubscriptionID, err = requiredString(fields, "subscription_id"); err != nil {
			return nil, err
		}
		raw, ok := fields["filters"]
		if !ok || isNull(raw) {
			return nil, invalid("missing required field %q", "filters")
		}
		if m.Filter, err = DecodeFilter(raw, "filters"); err != nil {
			return nil, err
		}
		if raw, ok := fields["since"]; ok && !isNull(raw) {
			if m.Since, err = decodeUint(raw, "since"); err != nil {
				return nil, err
			}
			m.HasSince = true
		}
	case TypeUnsubscribe:
		if m.SubscriptionID, err = requiredString(fields, "subscription_id"); err != nil {
			return nil, err
		}
	case TypePing:
		raw, ok := fields["timestamp"]
		if !ok {
			return nil, invalid("missing required field %q", "timestamp")
		}
		m.Timestamp = append([]byte(nil), raw...)
	case TypeAck:
		raw, ok := fields["message_id"]
		if !ok || isNull(raw) {
			return nil, invalid("missing required field %q", "message_id")
		}
		if m.MessageID, err = decodeUint(raw, "message_id"); err != nil {
			return nil, err
		}
	case TypeAuth:
		if m.Token, err = requiredString(fields, "token"); err != nil {
			return nil, err
		}
	default:
		return nil, &MessageError{Code: CodeUnsupported, Message: fmt.Sprintf("unknown message type %q", m.Type)}
	}
	return m, nil
}

// filterKeys maps each filter key to the list it fills and the vocabulary
// its values must come from (nil: any non-empty string).
var filterKeys = []struct {
	key   string
	list  func(f *filterindex.Filter) *[]string
	valid func(string) bool
}{
	{"event_types", func(f *filterindex.Filter) *[]string { return &f.EventTypes }, event.ValidType},
	{"severities", func(f *filterindex.Filter) *[]string { return &f.Severities }, event.ValidSeverity},
	{"states", func(f *filterindex.Filter) *[]string { return &f.States }, event.ValidState},
	{"sources", func(f *filterindex.Filter) *[]string { return &f.Sources }, nil},
	{"affected_resources", func(f *filterindex.Filter) *[]string { return &f.Resources }, nil},
	{"incident_ids", func(f *filterindex.Filter) *[]string { return &f.IncidentIDs }, nil},
}

// DecodeFilter decodes a filters object (the subscribe message's "filters",
// or a scope claim of the same shape). name prefixes the keys in errors.
func DecodeFilter(raw []byte, name string) (filterindex.Filter, *MessageError) {
	var f filterindex.Filter
	var fields map[string]sonic.NoCopyRawMessage
	if len(raw) == 0 || raw[0] != '{' || jsonAPI.Unmarshal(raw, &fields) != nil {
		return f, invalid("%q must be an object", name)
	}
	for key := range fields {
		if key == "labels" {
			continue
		}
		known := false
		for _, k := range filterKeys {
			known = known || k.key == key
		}
		if !known {
			return f, invalid("unknown filter key %q", name+"."+key)
		}
	}
	for _, k := range filterKeys {
		raw, ok := fields[k.key]
		if !ok || isNull(raw) {
			continue
		}
		key := name + "." + k.key
		var values []string
		if raw[0] != '[' || jsonAPI.Unmarshal(raw, &values) != nil {
			return f, invalid("%q must be an array of strings", key)
		}
		for _, v := range values {
			if v == "" || (k.valid != nil && !k.valid(v)) {
				return f, invalid("%q has an invalid value %q", key, v)
			}
		}
		*k.list(&f) = values
	}
	if raw, ok := fields["labels"]; ok && !isNull(raw) {
		var labels map[string]string
		if raw[0] != '{' || jsonAPI.Unmarshal(raw, &labels) != nil {
			return f, invalid("%q must be an object of strings", name+".labels")
		}
		for k, v := range labels {
			f.Labels = append(f.Labels, event.Label{Key: k, Value: v})
		}
		sort.Slice(f.Labels, func(i, j int) bool { return f.Labels[i].Key < f.Labels[j].Key })
	}
	f.Normalize()
	return f, nil
}

func isNull(raw []byte) bool { return string(raw) == "null" }

func requiredString(fields map[string]sonic.NoCopyRawMessage, key string) (string, *MessageError) {
	raw, ok := fields[key]
	if !ok || isNull(raw) {
		return "", invalid("missing required field %q", key)
	}
	var s string
	if raw[0] != '"' || jsonAPI.Unmarshal(raw, &s) != nil {
		return "", invalid("%q must be a string", key)
	}
	if s == "" {
		return "", invalid("%q must not be empty", key)
	}
	return s, nil
}

func decodeUint(raw []byte, key string) (uint64, *MessageError) {
	var n uint64
	if raw[0] < '0' || raw[0] > '9' || jsonAPI.Unmarshal(raw, &n) != nil {
		return 0, invalid("%q must be a non-negative integer", key)
	}
	return n, nil
}
