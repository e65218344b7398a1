package codec

import (
	"bytes"
	"fmt"
	"math"
	"sort"
	"sync"

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
// outlive that buffer. It matches struct members case-sensitively, as map
// keys are matched.
var jsonAPI = sonic.Config{CopyString: true, ValidateString: true, CaseSensitive: true}.Froze()

// Limits bound what one client message may ask of the server. They are
// checked while decoding, before anything reaches the dispatcher: a message
// over a limit is refused with LIMIT_EXCEEDED.
type Limits struct {
	// MaxFilterValues bounds the values of one subscription's filters: the
	// entries of every list and the label pairs, counted together as
	// listed (duplicates included). Zero or negative takes
	// DefaultMaxFilterValues: there is no "unlimited".
	MaxFilterValues int
}

// DefaultMaxFilterValues is the default of Limits.MaxFilterValues (and of
// `flarecast serve --max-filter-values`).
const DefaultMaxFilterValues = 1000

// MaxSubscriptionIDBytes is the longest subscription_id, in bytes (UTF-8),
// that subscribe accepts; a longer one gets LIMIT_EXCEEDED. An unsubscribe
// naming a longer one gets NOT_FOUND from the decoder itself.
const MaxSubscriptionIDBytes = 128

// DefaultLimits are the limits of `flarecast serve` without flags.
var DefaultLimits = Limits{MaxFilterValues: DefaultMaxFilterValues}

func (lim Limits) maxFilterValues() int {
	if lim.MaxFilterValues <= 0 {
		return DefaultMaxFilterValues
	}
	return lim.MaxFilterValues
}

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

// DecodeClientMessage decodes and validates one text message, within lim.
// Control messages are rare next to events, so clarity of the error (it
// names the offending key) wins over speed here; but what a message may cost
// is bounded, whatever its size. Its members are decoded into a struct, so
// unknown ones are skipped without being stored; a subscribe's values are
// counted in the raw bytes before any list is decoded, so that a message
// listing a million values is refused without becoming a million strings.
// Memory is then a small multiple of len(data) (the decoder copies what it
// parses), never a multiple of its number of values or members.
func DecodeClientMessage(data []byte, lim Limits) (*ClientMessage, *MessageError) {
	w := wirePool.Get().(*wireMessage)
	defer putWire(w)
	if err := jsonAPI.Unmarshal(data, w); err != nil {
		if len(bytes.TrimSpace(data)) > 0 && bytes.TrimSpace(data)[0] != '{' {
			return nil, invalid("message must be a JSON object")
		}
		return nil, invalid("malformed JSON")
	}
	m := &ClientMessage{}
	var err *MessageError
	if m.Type, err = messageType(w.Type); err != nil {
		return nil, err
	}
	switch m.Type {
	case TypeSubscribe:
		if m.SubscriptionID, err = subscriptionID(w.SubscriptionID); err != nil {
			return nil, err
		}
		if w.Filters == nil || isNull(w.Filters) {
			return nil, invalid("missing required field %q", "filters")
		}
		if err = decodeFilter(&m.Filter, w.Filters, "filters", lim.maxFilterValues()); err != nil {
			return nil, err
		}
		if w.Since != nil && !isNull(w.Since) {
			if m.Since, err = decodeUint(w.Since, "since"); err != nil {
				return nil, err
			}
			m.HasSince = true
		}
	case TypeUnsubscribe:
		if m.SubscriptionID, err = subscriptionID(w.SubscriptionID); err != nil {
			if err.Code == CodeLimitExceeded {
				// No subscription has such an id: answer as the
				// dispatcher would, without sending it there.
				return nil, &MessageError{Code: CodeNotFound, Message: fmt.Sprintf(
					"no subscription has an id over %d bytes", MaxSubscriptionIDBytes)}
			}
			return nil, err
		}
	case TypePing:
		if w.Timestamp == nil {
			return nil, invalid("missing required field %q", "timestamp")
		}
		m.Timestamp = append([]byte(nil), w.Timestamp...)
	case TypeAck:
		if w.MessageID == nil || isNull(w.MessageID) {
			return nil, invalid("missing required field %q", "message_id")
		}
		if m.MessageID, err = decodeUint(w.MessageID, "message_id"); err != nil {
			return nil, err
		}
	case TypeAuth:
		if m.Token, err = requiredString(w.Token, "token"); err != nil {
			return nil, err
		}
	default:
		return nil, &MessageError{Code: CodeUnsupported, Message: fmt.Sprintf("unknown message type %q", m.Type)}
	}
	return m, nil
}

// wireMessage holds the members of a client message that some type uses, as
// raw JSON: nil when absent, "null" when null. Keys match exactly (jsonAPI is
// case-sensitive) and the last of repeated keys wins, as with a map; other
// members are skipped.
type wireMessage struct {
	Type           sonic.NoCopyRawMessage `json:"type"`
	SubscriptionID sonic.NoCopyRawMessage `json:"subscription_id"`
	Filters        sonic.NoCopyRawMessage `json:"filters"`
	Since          sonic.NoCopyRawMessage `json:"since"`
	MessageID      sonic.NoCopyRawMessage `json:"message_id"`
	Timestamp      sonic.NoCopyRawMessage `json:"timestamp"`
	Token          sonic.NoCopyRawMessage `json:"token"`
}

// The wire structs are pooled: each is 168 bytes of slice headers, which
// the decoder's interface makes escape, and two of them per subscribe, freed
// at once, were most of the garbage a connection leaves in the 176-byte size
// class, where its own state is allocated (the density preset: holes in
// half-empty spans cost more than the structs themselves). A struct goes
// back zeroed, holding no reference to the message.
var (
	wirePool       = sync.Pool{New: func() any { return new(wireMessage) }}
	wireFilterPool = sync.Pool{New: func() any { return new(wireFilter) }}
)

func putWire(w *wireMessage) {
	*w = wireMessage{}
	wirePool.Put(w)
}

func putWireFilter(w *wireFilter) {
	*w = wireFilter{}
	wireFilterPool.Put(w)
}

// wireFilter is a filters object's members as raw JSON, like wireMessage.
type wireFilter struct {
	EventTypes  sonic.NoCopyRawMessage `json:"event_types"`
	Severities  sonic.NoCopyRawMessage `json:"severities"`
	States      sonic.NoCopyRawMessage `json:"states"`
	Sources     sonic.NoCopyRawMessage `json:"sources"`
	Resources   sonic.NoCopyRawMessage `json:"affected_resources"`
	IncidentIDs sonic.NoCopyRawMessage `json:"incident_ids"`
	Labels      sonic.NoCopyRawMessage `json:"labels"`
}

// filterKeys maps each filter key to its raw value, the list it fills and
// the vocabulary its values must come from (nil: any non-empty string).
var filterKeys = []struct {
	key   string
	raw   func(w *wireFilter) []byte
	list  func(f *filterindex.Filter) *[]string
	valid func(string) bool
}{
	{"event_types", func(w *wireFilter) []byte { return w.EventTypes }, func(f *filterindex.Filter) *[]string { return &f.EventTypes }, event.ValidType},
	{"severities", func(w *wireFilter) []byte { return w.Severities }, func(f *filterindex.Filter) *[]string { return &f.Severities }, event.ValidSeverity},
	{"states", func(w *wireFilter) []byte { return w.States }, func(f *filterindex.Filter) *[]string { return &f.States }, event.ValidState},
	{"sources", func(w *wireFilter) []byte { return w.Sources }, func(f *filterindex.Filter) *[]string { return &f.Sources }, nil},
	{"affected_resources", func(w *wireFilter) []byte { return w.Resources }, func(f *filterindex.Filter) *[]string { return &f.Resources }, nil},
	{"incident_ids", func(w *wireFilter) []byte { return w.IncidentIDs }, func(f *filterindex.Filter) *[]string { return &f.IncidentIDs }, nil},
}

// knownFilterKey reports whether key (unescaped) is a filter key.
func knownFilterKey(key []byte) bool {
	switch string(key) { // no allocation
	case "event_types", "severities", "states", "sources", "affected_resources", "incident_ids", "labels":
		return true
	}
	return false
}

// DecodeFilter decodes a filters object (the subscribe message's "filters",
// or a scope claim of the same shape). name prefixes the keys in errors. It
// sets no limit on the number of values: it is for trusted input (a token's
// scope); DecodeClientMessage applies Limits to a client's.
func DecodeFilter(raw []byte, name string) (filterindex.Filter, *MessageError) {
	var f filterindex.Filter
	err := decodeFilter(&f, raw, name, math.MaxInt)
	return f, err
}

// decodeFilter is DecodeFilter into f (what it holds on error is
// unspecified), refusing, with LIMIT_EXCEEDED, a filter of more than
// maxValues values (list entries and label pairs, as listed). It counts
// them in the raw JSON before decoding any list.
func decodeFilter(f *filterindex.Filter, raw []byte, name string, maxValues int) *MessageError {
	w := wireFilterPool.Get().(*wireFilter)
	defer putWireFilter(w)
	if len(raw) == 0 || raw[0] != '{' || jsonAPI.Unmarshal(raw, w) != nil {
		return invalid("%q must be an object", name)
	}
	if key, ok := unknownKey(raw); ok {
		return invalid("unknown filter key %q", name+"."+key)
	}
	if maxValues < math.MaxInt {
		// Shapes are checked below; counting a value of the wrong shape
		// first is harmless.
		values := countMembers(w.Labels, maxValues)
		for _, k := range filterKeys {
			if values > maxValues {
				break
			}
			values += countMembers(k.raw(w), maxValues-values)
		}
		if values > maxValues {
			return &MessageError{Code: CodeLimitExceeded, Message: fmt.Sprintf(
				"%q may list at most %d values in all (max-filter-values)", name, maxValues)}
		}
	}
	for _, k := range filterKeys {
		raw := k.raw(w)
		if raw == nil || isNull(raw) {
			continue
		}
		values, plain := plainStrings(raw)
		if !plain && (raw[0] != '[' || jsonAPI.Unmarshal(raw, &values) != nil) {
			return invalid("%q must be an array of strings", name+"."+k.key)
		}
		for _, v := range values {
			if v == "" || (k.valid != nil && !k.valid(v)) {
				return invalid("%q has an invalid value %q", name+"."+k.key, v)
			}
		}
		*k.list(f) = values
	}
	if raw := w.Labels; raw != nil && !isNull(raw) {
		var labels map[string]string
		if raw[0] != '{' || jsonAPI.Unmarshal(raw, &labels) != nil {
			return invalid("%q must be an object of strings", name+".labels")
		}
		for k, v := range labels {
			f.Labels = append(f.Labels, event.Label{Key: k, Value: v})
		}
		sort.Slice(f.Labels, func(i, j int) bool { return f.Labels[i].Key < f.Labels[j].Key })
	}
	f.Normalize()
	return nil
}

// unknownKey returns the first member key of the JSON object obj (which the
// decoder has found well-formed) that is not a filter key, unescaped. It
// allocates only to unescape a key written with escapes.
func unknownKey(obj []byte) (string, bool) {
	depth, expectKey := 0, false
	for i := 0; i < len(obj); i++ {
		switch obj[i] {
		case '"':
			end := stringEnd(obj, i)
			if depth == 1 && expectKey {
				expectKey = false
				raw := obj[i:min(end+1, len(obj))]
				key := raw[1 : len(raw)-1]
				if bytes.IndexByte(key, '\\') >= 0 {
					var s string
					if jsonAPI.Unmarshal(raw, &s) != nil {
						return string(key), true // not reached on well-formed JSON
					}
					key = []byte(s)
				}
				if !knownFilterKey(key) {
					return string(key), true
				}
			}
			i = end
		case '{', '[':
			depth++
			expectKey = depth == 1 && obj[i] == '{'
		case '}', ']':
			depth--
		case ',':
			expectKey = depth == 1
		}
	}
	return "", false
}

func isNull(raw []byte) bool { return string(raw) == "null" }

// countMembers returns the number of elements of the JSON array, or members
// of the JSON object, raw, which the decoder has already found well-formed;
// it stops counting, and returns, as soon as the count passes limit. It
// allocates nothing.
func countMembers(raw []byte, limit int) int {
	n, depth := 0, 0
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if depth == 1 && n == 0 && c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != ']' && c != '}' {
			n = 1 // the first member starts
		}
		switch c {
		case '"':
			i = stringEnd(raw, i)
		case '[', '{':
			depth++
		case ']', '}':
			depth--
		case ',':
			if depth == 1 {
				n++
			}
		}
		if n > limit {
			return n
		}
	}
	return n
}

// stringEnd returns the index of the quote closing the JSON string that
// opens at raw[open] (len(raw) if there is none).
func stringEnd(raw []byte, open int) int {
	i := open + 1
	for {
		j := bytes.IndexByte(raw[i:], '"')
		if j < 0 {
			return len(raw)
		}
		i += j
		escapes := 0
		for k := i - 1; k > open && raw[k] == '\\'; k-- {
			escapes++
		}
		if escapes%2 == 0 {
			return i
		}
		i++
	}
}

// subscriptionID returns the message's subscription_id, refusing one longer
// than MaxSubscriptionIDBytes with LIMIT_EXCEEDED. A JSON string decodes to
// at least one byte per six of its raw form (\u0041), so a raw value longer
// than that is refused without being decoded.
func subscriptionID(raw []byte) (string, *MessageError) {
	if len(raw) > 2+6*MaxSubscriptionIDBytes && raw[0] == '"' {
		return "", idTooLong()
	}
	id, err := requiredString(raw, "subscription_id")
	if err == nil && len(id) > MaxSubscriptionIDBytes {
		return "", idTooLong()
	}
	return id, err
}

func idTooLong() *MessageError {
	return &MessageError{Code: CodeLimitExceeded, Message: fmt.Sprintf(
		"%q may be at most %d bytes long", "subscription_id", MaxSubscriptionIDBytes)}
}

// requiredString decodes raw, the value of member key, as a non-empty string.
func requiredString(raw []byte, key string) (string, *MessageError) {
	if raw == nil || isNull(raw) {
		return "", invalid("missing required field %q", key)
	}
	s, plain := plainString(raw)
	if !plain && (raw[0] != '"' || jsonAPI.Unmarshal(raw, &s) != nil) {
		return "", invalid("%q must be a string", key)
	}
	if s == "" {
		return "", invalid("%q must not be empty", key)
	}
	return s, nil
}

// plainString returns the JSON string raw decoded, when it is printable
// ASCII without escapes (as ids and filter values mostly are): what the
// decoder would return, without its three allocations. ok is false for
// anything else, which the decoder then reads.
func plainString(raw []byte) (s string, ok bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	body := raw[1 : len(raw)-1]
	if !plainBytes(body) {
		return "", false
	}
	return string(body), true
}

func plainBytes(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// plainStrings is plainString for a non-empty JSON array of such strings:
// the list the decoder would return, allocated once at its length. ok is
// false for anything else (escapes, other bytes or values, an empty
// array), which the decoder then reads.
func plainStrings(raw []byte) (values []string, ok bool) {
	if len(raw) < 2 || raw[0] != '[' {
		return nil, false
	}
	skip := func(i int) int {
		for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\n' || raw[i] == '\r') {
			i++
		}
		return i
	}
	// First pass: check the shape and count; second: copy.
	n := 0
	for i := skip(1); ; {
		if i >= len(raw) || raw[i] != '"' {
			return nil, false
		}
		end := i + 1 + bytes.IndexByte(raw[i+1:], '"')
		if end <= i || !plainBytes(raw[i+1:end]) {
			return nil, false
		}
		n++
		i = skip(end + 1)
		if i < len(raw) && raw[i] == ',' {
			i = skip(i + 1)
			continue
		}
		if i != len(raw)-1 || raw[i] != ']' {
			return nil, false
		}
		break
	}
	values = make([]string, 0, n)
	for i := skip(1); len(values) < n; {
		end := i + 1 + bytes.IndexByte(raw[i+1:], '"')
		values = append(values, string(raw[i+1:end]))
		i = skip(end + 1)
		if raw[i] == ',' {
			i = skip(i + 1)
		}
	}
	return values, true
}

// messageType is requiredString(raw, "type"), with no allocation for a
// type the protocol knows written without escapes (every message has one).
func messageType(raw []byte) (string, *MessageError) {
	switch string(raw) { // no allocation
	case `"` + TypeSubscribe + `"`:
		return TypeSubscribe, nil
	case `"` + TypeUnsubscribe + `"`:
		return TypeUnsubscribe, nil
	case `"` + TypePing + `"`:
		return TypePing, nil
	case `"` + TypeAck + `"`:
		return TypeAck, nil
	case `"` + TypeAuth + `"`:
		return TypeAuth, nil
	}
	return requiredString(raw, "type")
}

func decodeUint(raw []byte, key string) (uint64, *MessageError) {
	var n uint64
	if raw[0] < '0' || raw[0] > '9' || jsonAPI.Unmarshal(raw, &n) != nil {
		return 0, invalid("%q must be a non-negative integer", key)
	}
	return n, nil
}
