package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flarecast/flarecast/client"
	"github.com/flarecast/flarecast/event"
)

// tailSubscription is the one subscription `flarecast tail` holds.
const tailSubscription = "tail"

// tailOptions is the parsed command line of `flarecast tail`.
type tailOptions struct {
	url          string
	token        string
	filters      client.Filters
	since        uint64
	hasSince     bool
	json         bool
	color        bool
	count        int
	reconnectFor time.Duration
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
	var severities, states []string
	fs.Var(listValue{&severities, oneOf("severity", event.ValidSeverity, "P0…P4")}, "severity", "severities to show, e.g. P0,P1 (default: all)")
	fs.Var(listValue{&states, oneOf("state", event.ValidState, strings.Join(event.States, ", "))}, "state", "incident states to show, comma-separated")
	fs.Var(listValue{&o.filters.Sources, nil}, "source", "sources to show, comma-separated")
	fs.Var(listValue{&o.filters.AffectedResources, nil}, "resource", "affected resources to show, comma-separated")
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
	o.filters.EventTypes = typed[client.EventType](types)
	o.filters.Severities = typed[client.Severity](severities)
	o.filters.States = typed[client.IncidentState](states)
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

// typed converts a validated flag list to the client's string type.
func typed[T ~string](in []string) []T {
	var out []T
	for _, v := range in {
		out = append(out, T(v))
	}
	return out
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

// tailer is one `flarecast tail`: a client of the public protocol, built
// on package client (which resumes the session after a drop, acks what was
// printed and hands each event over once), printing events as lines.
type tailer struct {
	o       *tailOptions
	out     *bufio.Writer
	errOut  io.Writer
	printed int
}

func newTailer(o *tailOptions, out, errOut io.Writer) *tailer {
	return &tailer{o: o, out: bufio.NewWriter(out), errOut: errOut}
}

// errText is err's message without the client package's prefix.
func errText(err error) string { return strings.TrimPrefix(err.Error(), "flarecast: ") }

func (t *tailer) run(ctx context.Context) error {
	var lostAt time.Time
	opts := &client.Options{
		Token:        t.o.token,
		ReconnectFor: t.o.reconnectFor,
		MaxBackoff:   5 * time.Second,
		OnState: func(sc client.StateChange) {
			switch {
			case sc.State == client.Reconnecting:
				lostAt = time.Now()
				fmt.Fprintf(t.errOut, "flarecast tail: %s; reconnecting\n", t.describe(sc.Err))
			case sc.State != client.Live:
			case sc.Resumed:
				fmt.Fprintf(t.errOut, "flarecast tail: resumed session %s on %s\n", short(sc.SessionID), t.o.url)
			case sc.NewSession:
				fmt.Fprintf(t.errOut, "flarecast tail: new session %s on %s (the old one expired)\n", short(sc.SessionID), t.o.url)
			default:
				fmt.Fprintf(t.errOut, "flarecast tail: connected to %s, session %s\n", t.o.url, short(sc.SessionID))
			}
		},
		OnGap: func(g client.Gap) {
			fmt.Fprintf(t.errOut, "flarecast tail: some events are no longer held by the server; continuing from message_id %d\n", g.FirstAvailable)
		},
		OnError: func(err error) {
			var se *client.ServerError
			if errors.As(err, &se) {
				fmt.Fprintf(t.errOut, "flarecast tail: server error %s: %s\n", se.Code, se.Message)
			}
		},
	}
	c, err := client.Dial(ctx, t.o.url, opts)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New(t.describe(err)) // the first connection failed: say why, once
	}
	defer c.Close()
	var subOpts []client.SubscribeOption
	if t.o.hasSince {
		subOpts = append(subOpts, client.Since(t.o.since))
	}
	sub, err := c.Subscribe(ctx, tailSubscription, t.o.filters, subOpts...)
	if err != nil {
		var se *client.ServerError
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, &se):
			return fmt.Errorf("server refused the subscription: %s: %s", se.Code, se.Message)
		}
		return errors.New(t.describe(err))
	}
	for {
		var ev client.Event
		var ok bool
		select {
		case ev, ok = <-sub.Events():
		default: // nothing waiting: show what was written before blocking
			t.out.Flush()
			select {
			case ev, ok = <-sub.Events():
			case <-ctx.Done():
				return nil
			}
		}
		if !ok {
			t.out.Flush()
			err := c.Err()
			if err == nil || ctx.Err() != nil {
				return nil
			}
			var ce *client.ClosedError
			if errors.As(err, &ce) && ce.Reason != "" {
				return fmt.Errorf("server closed the connection: %s", ce.Reason)
			}
			if !lostAt.IsZero() {
				return fmt.Errorf("gave up reconnecting to %s after %s: %s", t.o.url, t.o.reconnectFor, t.describe(err))
			}
			return errors.New(t.describe(err))
		}
		if t.o.json {
			t.out.Write(ev.Message)
			t.out.WriteByte('\n')
		} else {
			var fields tailEvent
			_ = json.Unmarshal(ev.Raw, &fields) // typed fields are validated by the server; oddities print as blanks
			t.out.WriteString(formatEvent(&ev, &fields, t.o.color))
		}
		t.printed++
		if t.o.count > 0 && t.printed >= t.o.count {
			t.out.Flush()
			return nil // the deferred Close acks what was printed and says goodbye
		}
	}
}

// describe words a connection failure as tail reports it.
func (t *tailer) describe(err error) string {
	var he *client.HandshakeError
	var ce *client.ClosedError
	switch {
	case errors.As(err, &he):
		reason := he.Status
		if he.Body != "" {
			reason += ": " + printable(he.Body)
		}
		return fmt.Sprintf("%s refused the WebSocket upgrade: %s", t.o.url, reason)
	case errors.As(err, &ce) && ce.Code != 0:
		return fmt.Sprintf("server closed the connection (%d %s)", ce.Code, ce.Text)
	}
	return errText(err)
}

func short(id string) string { return id[:min(8, len(id))] }

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
func formatEvent(m *client.Event, ev *tailEvent, color bool) string {
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
	ts := ""
	if t := m.Timestamp; !t.IsZero() {
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
