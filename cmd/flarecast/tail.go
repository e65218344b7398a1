package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"

	"github.com/flarecast/flarecast/event"
)

// tailSubscription is the one subscription `flarecast tail` holds.
const tailSubscription = "tail"

// tailOptions is the parsed command line of `flarecast tail`.
type tailOptions struct {
	url          string
	token        string
	filters      tailFilters
	since        uint64
	hasSince     bool
	json         bool
	color        bool
	count        int
	reconnectFor time.Duration
}

// tailFilters is the subscribe message's filters object.
type tailFilters struct {
	EventTypes  []string          `json:"event_types,omitempty"`
	Severities  []string          `json:"severities,omitempty"`
	States      []string          `json:"states,omitempty"`
	Sources     []string          `json:"sources,omitempty"`
	Resources   []string          `json:"affected_resources,omitempty"`
	IncidentIDs []string          `json:"incident_ids,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// listValue is a comma-separated list flag; each value is checked by valid
// (nil: any non-empty string). Giving the flag again replaces the list.
type listValue struct {
	p     *[]string
	valid func(string) error
}

func (l listValue) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l listValue) Set(s string) error {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v == "" {
			continue
		}
		if l.valid != nil {
			if err := l.valid(v); err != nil {
				return err
			}
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return errors.New("empty list")
	}
	*l.p = out
	return nil
}

// labelValue collects key=value pairs; the flag may be repeated and each
// value may hold several pairs separated by commas.
type labelValue struct{ m *map[string]string }

func (l labelValue) String() string {
	if l.m == nil {
		return ""
	}
	var kv []string
	for k, v := range *l.m {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func (l labelValue) Set(s string) error {
	for _, pair := range strings.Split(s, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("want key=value, got %q", pair)
		}
		if *l.m == nil {
			*l.m = map[string]string{}
		}
		(*l.m)[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return nil
}

func oneOf(what string, valid func(string) bool, list string) func(string) error {
	return func(v string) error {
		if !valid(v) {
			return fmt.Errorf("%q is not a valid %s (%s)", v, what, list)
		}
		return nil
	}
}

func parseTail(args []string) (*tailOptions, error) {
	o := &tailOptions{}
	fs := newFlagSet("tail")
	fs.StringVar(&o.url, "url", "ws://127.0.0.1:8080/ws", "the server's WebSocket endpoint (ws:// or wss://)")
	fs.StringVar(&o.token, "token", "", "bearer token (JWT) for a server run with --auth jwt, sent as Authorization: Bearer; prefer FLARECAST_TOKEN (flags show in ps)")
	var types []string
	fs.Var(listValue{&types, func(v string) error {
		if !event.ValidType(v) {
			return fmt.Errorf("%q is not an event type (incident_created, escalated, …)", v)
		}
		return nil
	}}, "type", "event types to show, comma-separated (default: all)")
	fs.Var(listValue{&o.filters.Severities, oneOf("severity", event.ValidSeverity, "P0…P4")}, "severity", "severities to show, e.g. P0,P1 (default: all)")
	fs.Var(listValue{&o.filters.States, oneOf("state", event.ValidState, strings.Join(event.States, ", "))}, "state", "incident states to show, comma-separated")
	fs.Var(listValue{&o.filters.Sources, nil}, "source", "sources to show, comma-separated")
	fs.Var(listValue{&o.filters.Resources, nil}, "resource", "affected resources to show, comma-separated")
	fs.Var(listValue{&o.filters.IncidentIDs, nil}, "incident", "incident ids to show, comma-separated")
	fs.Var(labelValue{&o.filters.Labels}, "label", "key=value every shown event must carry; repeatable (values from FLARECAST_LABEL add up)")
	since := fs.String("since", "", "first replay the held events with a message_id above N, then go live")
	fs.BoolVar(&o.json, "json", false, "print each event message as one JSON line, as the server sent it")
	color := fs.String("color", "auto", "colour the output: auto (when stdout is a terminal and NO_COLOR is unset), always, never")
	fs.IntVar(&o.count, "count", 0, "exit after printing this many events (0: run until interrupted)")
	fs.DurationVar(&o.reconnectFor, "reconnect-for", 5*time.Minute, "keep trying to reconnect this long after a drop before giving up")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, usageError("tail takes no arguments, got " + strconv.Quote(fs.Arg(0)))
	}
	o.filters.EventTypes = types
	u, err := url.Parse(o.url)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return nil, usageError(fmt.Sprintf("--url: want ws://host:port/path or wss://…, got %q", o.url))
	}
	if *since != "" {
		n, err := strconv.ParseUint(*since, 10, 64)
		if err != nil {
			return nil, usageError(fmt.Sprintf("--since: want a message_id (a non-negative integer), got %q", *since))
		}
		o.since, o.hasSince = n, true
	}
	if o.count < 0 {
		return nil, usageError(fmt.Sprintf("--count must not be negative, got %d", o.count))
	}
	if o.reconnectFor < 0 {
		return nil, usageError("--reconnect-for must not be negative")
	}
	switch *color {
	case "always":
		o.color = true
	case "never":
	case "auto":
		_, noColor := os.LookupEnv("NO_COLOR")
		o.color = !noColor && os.Getenv("TERM") != "dumb" && isTerminal(os.Stdout)
	default:
		return nil, usageError(fmt.Sprintf("--color: want auto, always or never, got %q", *color))
	}
	return o, nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func tail(args []string) error {
	o, err := parseTail(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	t := newTailer(o, os.Stdout, os.Stderr)
	defer t.out.Flush()
	return t.run(ctx)
}

// tailer is one `flarecast tail`: a client of the public protocol that
// resumes its session after a drop and prints each event once.
type tailer struct {
	o      *tailOptions
	out    *bufio.Writer
	errOut io.Writer

	sessionID  string
	everOpen   bool // a connection was welcomed once: later failures are retried
	welcomed   bool // the current connection was welcomed
	subscribed bool // the server confirmed the subscription in this session
	printed    int

	// maxSeen is the highest message_id processed in this tail: a new
	// session subscribes with since = maxSeen.
	maxSeen uint64
	// Acknowledging (docs/protocol.md): once a second, ack the highest
	// message_id received on the current connection (connMax) if it moved
	// on since the last ack on that connection (connAcked). The server turns
	// it into a resume point itself.
	connMax, connAcked uint64
	// After a fresh session subscribes with since=N every event is above N;
	// one at or below N means the server's numbering started again.
	expectAbove int64
	seen        map[uint64]struct{}
	seenOrder   []uint64
}

// tailSeenMax bounds the message_ids remembered for de-duplication.
const tailSeenMax = 20000

func newTailer(o *tailOptions, out, errOut io.Writer) *tailer {
	return &tailer{o: o, out: bufio.NewWriter(out), errOut: errOut, expectAbove: -1, seen: map[uint64]struct{}{}}
}

// errTailDone ends the tail without an error (count reached, interrupted).
var errTailDone = errors.New("done")

// errTailRetry is a connection that ended in a way a reconnect may mend.
type errTailRetry struct{ reason string }

func (e *errTailRetry) Error() string { return e.reason }

// run connects, and reconnects after each drop (resuming the session) for
// up to --reconnect-for, with a growing, jittered delay between attempts.
func (t *tailer) run(ctx context.Context) error {
	var lostAt time.Time
	var delay time.Duration
	for {
		t.welcomed = false
		t.connMax, t.connAcked = 0, 0 // an ack names a frame of the connection it is sent on
		err := t.connect(ctx)
		var retry *errTailRetry
		switch {
		case err == nil, errors.Is(err, errTailDone), ctx.Err() != nil:
			return nil
		case !errors.As(err, &retry):
			return err
		case !t.everOpen:
			return errors.New(retry.reason) // the first connection failed: say why, once
		}
		if t.welcomed || lostAt.IsZero() { // a new drop
			lostAt, delay = time.Now(), 250*time.Millisecond
			fmt.Fprintf(t.errOut, "flarecast tail: %s; reconnecting\n", retry.reason)
		}
		if time.Since(lostAt) > t.o.reconnectFor {
			return fmt.Errorf("gave up reconnecting to %s after %s: %s", t.o.url, t.o.reconnectFor, retry.reason)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay + rand.N(delay/2)):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// connect runs one connection until it ends.
func (t *tailer) connect(ctx context.Context) error {
	u, _ := url.Parse(t.o.url)
	q := u.Query()
	var header http.Header
	if t.o.token != "" {
		// A header, not ?token=: query strings end up in proxies' access logs.
		header = http.Header{"Authorization": {"Bearer " + t.o.token}}
	}
	if t.sessionID != "" {
		q.Set("session_id", t.sessionID)
	}
	u.RawQuery = q.Encode()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, EnableCompression: true, Proxy: http.ProxyFromEnvironment}
	conn, resp, err := d.DialContext(ctx, u.String(), header)
	if err != nil {
		if ctx.Err() != nil {
			return errTailDone
		}
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			resp.Body.Close()
			reason := resp.Status
			if line := strings.TrimSpace(strings.SplitN(string(body), "\n", 2)[0]); line != "" {
				reason += ": " + printable(line)
			}
			msg := fmt.Sprintf("%s refused the WebSocket upgrade: %s", t.o.url, reason)
			if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
				return errors.New(msg) // 401, 403, 404…: trying again will not help
			}
			return &errTailRetry{msg}
		}
		return &errTailRetry{fmt.Sprintf("cannot connect to %s: %v", t.o.url, err)}
	}
	defer conn.Close()

	msgs := make(chan []byte, 64)
	readErr := make(chan error, 1)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				readErr <- err
				return
			}
			select {
			case msgs <- data:
			case <-done:
				return
			}
		}
	}()
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			t.goodbye(conn)
			return errTailDone
		case err := <-readErr:
			t.out.Flush()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return &errTailRetry{fmt.Sprintf("server closed the connection (%d %s)", ce.Code, ce.Text)}
			}
			return &errTailRetry{fmt.Sprintf("connection lost: %v", err)}
		case <-ticker.C:
			if err := t.ack(conn); err != nil {
				return &errTailRetry{fmt.Sprintf("connection lost: %v", err)}
			}
		case data := <-msgs:
			if err := t.handle(conn, data); err != nil {
				t.out.Flush()
				if errors.Is(err, errTailDone) {
					t.goodbye(conn)
				}
				return err
			}
			if len(msgs) == 0 {
				t.out.Flush()
			}
		}
	}
}

// goodbye closes the connection politely: a close frame, then the socket.
func (t *tailer) goodbye(conn *websocket.Conn) {
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"),
		time.Now().Add(time.Second))
}

// ack acknowledges the highest message_id received on this connection,
// when it has moved on since the last ack.
func (t *tailer) ack(conn *websocket.Conn) error {
	if t.connMax <= t.connAcked {
		return nil
	}
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := conn.WriteJSON(map[string]any{"type": "ack", "message_id": t.connMax}); err != nil {
		return err
	}
	t.connAcked = t.connMax
	return nil
}

// serverMessage is any message the server sends; only its type's fields are set.
type serverMessage struct {
	Type           string          `json:"type"`
	SessionID      string          `json:"session_id"`
	Resumed        bool            `json:"resumed"`
	MessageID      uint64          `json:"message_id"`
	Timestamp      string          `json:"timestamp"`
	Event          json.RawMessage `json:"event"`
	Code           string          `json:"code"`
	Message        string          `json:"message"`
	FirstAvailable uint64          `json:"first_available"`
	Reason         string          `json:"reason"`
	SubscriptionID string          `json:"subscription_id"`
}

func (t *tailer) handle(conn *websocket.Conn, data []byte) error {
	var m serverMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("server sent a message that is not JSON: %.80q", data)
	}
	switch m.Type {
	case "welcome":
		return t.welcome(conn, &m)
	case "subscribed":
		if m.SubscriptionID == tailSubscription {
			t.subscribed = true
		}
	case "event":
		return t.event(&m, data)
	case "error":
		if m.Code == "HISTORY_GAP" {
			fmt.Fprintf(t.errOut, "flarecast tail: some events are no longer held by the server; continuing from message_id %d\n", m.FirstAvailable)
			return nil
		}
		if !t.subscribed {
			return fmt.Errorf("server refused the subscription: %s: %s", m.Code, m.Message)
		}
		fmt.Fprintf(t.errOut, "flarecast tail: server error %s: %s\n", m.Code, m.Message)
	case "closing":
		switch m.Reason {
		case "token_expired", "policy_violation":
			return fmt.Errorf("server closed the connection: %s", m.Reason)
		case "session_taken_over":
			t.sessionID = "" // another client resumed it: start a new session, from what was processed
		}
	}
	return nil
}

func (t *tailer) welcome(conn *websocket.Conn, m *serverMessage) error {
	resumed := m.Resumed && t.sessionID == m.SessionID
	hadSession := t.sessionID != ""
	t.sessionID, t.everOpen, t.welcomed = m.SessionID, true, true
	if !resumed {
		t.subscribed = false
	}
	switch {
	case resumed:
		fmt.Fprintf(t.errOut, "flarecast tail: resumed session %s on %s\n", short(m.SessionID), t.o.url)
	case hadSession:
		fmt.Fprintf(t.errOut, "flarecast tail: new session %s on %s (the old one expired)\n", short(m.SessionID), t.o.url)
	default:
		fmt.Fprintf(t.errOut, "flarecast tail: connected to %s, session %s\n", t.o.url, short(m.SessionID))
	}
	if t.subscribed {
		return nil // resumed: the server kept the subscription and replays what is missing
	}
	// Subscribe: from --since at first, later from what was processed (a
	// replacement subscription without since would skip what the drop missed).
	sub := map[string]any{"type": "subscribe", "subscription_id": tailSubscription, "filters": t.o.filters}
	if w := t.maxSeen; w > 0 {
		sub["since"] = w
		if !resumed {
			t.expectAbove = int64(w)
		}
	} else if t.o.hasSince {
		sub["since"] = t.o.since
	}
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := conn.WriteJSON(sub); err != nil {
		return &errTailRetry{fmt.Sprintf("connection lost: %v", err)}
	}
	return nil
}

func short(id string) string { return id[:min(8, len(id))] }

func (t *tailer) event(m *serverMessage, raw []byte) error {
	id := m.MessageID
	if t.expectAbove >= 0 {
		if int64(id) <= t.expectAbove {
			fmt.Fprintf(t.errOut, "flarecast tail: the server's message ids started again (restarted?)\n")
			clear(t.seen)
			t.seenOrder = t.seenOrder[:0]
			t.maxSeen = 0
		}
		t.expectAbove = -1
	}
	// Every frame received counts for the ack, a replayed duplicate too.
	t.connMax = max(t.connMax, id)
	if _, dup := t.seen[id]; dup {
		return nil
	}
	t.seen[id] = struct{}{}
	t.seenOrder = append(t.seenOrder, id)
	if len(t.seenOrder) > tailSeenMax {
		delete(t.seen, t.seenOrder[0])
		t.seenOrder = t.seenOrder[1:]
	}
	var ev tailEvent
	_ = json.Unmarshal(m.Event, &ev) // typed fields are validated by the server; oddities print as blanks
	t.maxSeen = max(t.maxSeen, id)
	if t.o.json {
		t.out.Write(raw)
		t.out.WriteByte('\n')
	} else {
		t.out.WriteString(formatEvent(m, &ev, t.o.color))
	}
	t.printed++
	if t.o.count > 0 && t.printed >= t.o.count {
		return errTailDone
	}
	return nil
}

// tailEvent is the part of an event a line shows.
type tailEvent struct {
	Priority    string            `json:"priority"`
	EventType   string            `json:"event_type"`
	Severity    string            `json:"severity"`
	State       string            `json:"state"`
	Source      string            `json:"source"`
	IncidentID  string            `json:"incident_id"`
	Resources   []string          `json:"affected_resources"`
	Labels      map[string]string `json:"labels"`
	Title       any               `json:"title"`
	Message     any               `json:"message"`
	Summary     any               `json:"summary"`
	Description any               `json:"description"`
}

// ANSI styles of the human format.
const (
	ansiReset = "\x1b[0m"
	ansiBold  = "\x1b[1m"
	ansiDim   = "\x1b[2m"
)

var severityStyle = map[string]string{
	"P0": "\x1b[1;97;41m", "P1": "\x1b[1;30;43m", "P2": "\x1b[1;33m", "P3": "\x1b[1;34m", "P4": "\x1b[2m",
}

var priorityStyle = map[string]string{"critical": "\x1b[1;91m", "high": "\x1b[93m", "normal": "\x1b[2m"}

// formatEvent renders one event as one line:
//
//	01:50:29.612 #39     P1 high     incident_created  INC-2041  Detected  llm-sentinel  [checkout] env=production  Checkout errors…
//
// Everything the producer wrote is stripped of control characters, so an
// event cannot move the cursor or restyle the terminal.
func formatEvent(m *serverMessage, ev *tailEvent, color bool) string {
	var b strings.Builder
	field := func(style, s string, width int) {
		s = printable(s)
		if s == "" {
			s = "-"
		}
		if color && style != "" {
			b.WriteString(style)
			b.WriteString(s)
			b.WriteString(ansiReset)
		} else {
			b.WriteString(s)
		}
		for n := len([]rune(s)); n < width; n++ {
			b.WriteByte(' ')
		}
		b.WriteByte(' ')
	}
	ts := m.Timestamp
	if t, err := time.Parse(time.RFC3339Nano, m.Timestamp); err == nil {
		if color {
			ts = t.Local().Format("15:04:05.000")
		} else {
			ts = t.UTC().Format("2006-01-02T15:04:05.000Z")
		}
	}
	field(ansiDim, ts, 0)
	field(ansiDim, "#"+strconv.FormatUint(m.MessageID, 10), 7)
	sev := ev.Severity
	if color && sev != "" {
		sev = " " + sev + " "
	}
	field(severityStyle[ev.Severity], sev, 2)
	field(priorityStyle[ev.Priority], ev.Priority, 8)
	field(ansiBold, ev.EventType, 24)
	field("\x1b[36m", ev.IncidentID, 9)
	field("", ev.State, 13)
	field("\x1b[35m", ev.Source, 12)
	if len(ev.Resources) > 0 {
		field("\x1b[32m", "["+strings.Join(ev.Resources, ",")+"]", 0)
	}
	keys := make([]string, 0, len(ev.Labels))
	for k := range ev.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		field(ansiDim, k+"="+ev.Labels[k], 0)
	}
	for _, v := range []any{ev.Title, ev.Message, ev.Summary, ev.Description} {
		if s, ok := v.(string); ok && s != "" {
			field("", s, 0)
			break
		}
	}
	return strings.TrimRight(b.String(), " ") + "\n"
}

// printable replaces control characters (C0, DEL, C1) with U+FFFD.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) {
			return '\uFFFD'
		}
		return r
	}, s)
}
