package loadtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/gobwas/ws/wsutil"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
)

// The raw-write baseline (--compare-baseline) is the floor flarecast is
// measured against: the load tester binary started again as a server
// (BaselineServerFlag), so that it is a process of its own whose CPU is read
// from /proc like flarecast's and which --server-cpus pins the same way.
//
// It speaks just enough of flarecast's protocol for the load tester's
// clients: welcome with a session id, subscribed for a subscribe, the
// filter fields the load tester uses (mix.go), and the ingest socket's
// NDJSON with one {"ok":true,"message_id":N} line per event. For each event
// it parses the event with flarecast's parser (event.Parse) and builds the
// frame once (the same envelope and bytes flarecast sends: type,
// message_id, timestamp, event), compresses it once when a deflate client
// matches and it is at least compression-min-size (flarecast's default,
// 256 bytes) long, and calls one write on every matching socket, on the
// ingest connection's goroutine: no queue, no hand-off, no event loop. It
// sends no pings and reads nothing after the subscription.

// BaselineServerFlag, as the first argument of cmd/flarecast-loadtest,
// makes the process the baseline server (RunBaselineServer).
const BaselineServerFlag = "--baseline-server"

// baselineCompressionMinSize is flarecast's default --compression-min-size.
const baselineCompressionMinSize = 256

// baselineProgram returns the program to start as the baseline server, the
// arguments that make it one, and environment to add: by default this
// executable with BaselineServerFlag. The package's tests replace it.
var baselineProgram = func() (prog string, lead, env []string, err error) {
	prog, err = os.Executable()
	return prog, []string{BaselineServerFlag}, nil, err
}

// baselineFilter is a subscription's filter as the load tester sends it.
// Within a field any value matches; every field given must match.
type baselineFilter struct {
	EventTypes        []string          `json:"event_types"`
	Severities        []string          `json:"severities"`
	Sources           []string          `json:"sources"`
	IncidentIDs       []string          `json:"incident_ids"`
	AffectedResources []string          `json:"affected_resources"`
	Labels            map[string]string `json:"labels"`
}

// baselineEvent is what the filters look at in an event.
type baselineEvent struct {
	EventType         string
	Severity          string
	Source            string
	IncidentID        string
	AffectedResources []string
	Labels            map[string]string
}

func baselineEventOf(e *event.Event) baselineEvent {
	ev := baselineEvent{EventType: string(e.Type), Severity: e.Severity, Source: e.Source,
		IncidentID: e.IncidentID, AffectedResources: e.Resources, Labels: make(map[string]string, len(e.Labels))}
	for _, l := range e.Labels {
		ev.Labels[l.Key] = l.Value
	}
	return ev
}

func anyOf(list []string, v string) bool {
	if len(list) == 0 {
		return true
	}
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func (f *baselineFilter) matches(ev *baselineEvent) bool {
	if !anyOf(f.EventTypes, ev.EventType) || !anyOf(f.Severities, ev.Severity) ||
		!anyOf(f.Sources, ev.Source) || !anyOf(f.IncidentIDs, ev.IncidentID) {
		return false
	}
	if len(f.AffectedResources) > 0 {
		hit := false
		for _, r := range ev.AffectedResources {
			hit = hit || anyOf(f.AffectedResources, r)
		}
		if !hit {
			return false
		}
	}
	for k, v := range f.Labels {
		if ev.Labels[k] != v {
			return false
		}
	}
	return true
}

// keys are the index keys a subscription is filed under: the values of its
// most selective field (any event it matches carries one of them).
func (f *baselineFilter) keys() []string {
	var out []string
	switch {
	case len(f.IncidentIDs) > 0:
		for _, v := range f.IncidentIDs {
			out = append(out, "i:"+v)
		}
	case len(f.Sources) > 0:
		for _, v := range f.Sources {
			out = append(out, "s:"+v)
		}
	case len(f.AffectedResources) > 0:
		for _, v := range f.AffectedResources {
			out = append(out, "r:"+v)
		}
	case len(f.Labels) > 0:
		for k, v := range f.Labels {
			out = append(out, "l:"+k+"="+v)
			break // every label must match: one is enough to file it
		}
	}
	return out
}

// keys are the index keys an event is looked up under.
func (ev *baselineEvent) keys() []string {
	out := []string{"i:" + ev.IncidentID, "s:" + ev.Source}
	for _, r := range ev.AffectedResources {
		out = append(out, "r:"+r)
	}
	for k, v := range ev.Labels {
		out = append(out, "l:"+k+"="+v)
	}
	return out
}

type baselineSub struct {
	conn    net.Conn
	deflate bool
	filter  baselineFilter
	seen    uint64 // the last message_id it was considered for (no double delivery)
	dead    bool
}

type baselineServer struct {
	mu    sync.RWMutex
	index map[string][]*baselineSub
	all   []*baselineSub // filters with no indexed field
	ids   atomic.Uint64  // session ids

	nextID   uint64 // message ids, under pubMu
	pubMu    sync.Mutex
	frame    []byte
	deflated []byte
	scratch  []byte
	cscratch []byte
	dead     []*baselineSub
}

// RunBaselineServer is the baseline server's process: it takes flarecast
// serve's --listen, --admin-listen (ignored: no admin) and --ingest-socket,
// logs flarecast's "flarecast serving" line on stderr, and serves until
// ctx ends.
func RunBaselineServer(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("baseline-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "WebSocket listen address")
	_ = fs.String("admin-listen", "", "ignored: the baseline has no admin endpoint")
	socket := fs.String("ingest-socket", "", "ingest Unix socket")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *socket == "" {
		return errors.New("baseline server: --ingest-socket is required")
	}
	wl, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	defer wl.Close()
	il, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	defer il.Close()
	s := &baselineServer{index: map[string][]*baselineSub{}}
	go func() {
		<-ctx.Done()
		wl.Close()
		il.Close()
	}()
	go func() {
		for {
			c, err := il.Accept()
			if err != nil {
				return
			}
			go s.ingest(c)
		}
	}()
	fmt.Fprintf(stderr, "level=INFO msg=\"flarecast serving\" websocket=%s/ws admin=\n", wl.Addr())
	for {
		c, err := wl.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go s.handshake(c)
	}
}

// handshake upgrades, welcomes, takes the subscription and files it.
func (s *baselineServer) handshake(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	ext := &wsflate.Extension{Parameters: wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true}}
	u := ws.Upgrader{Negotiate: ext.Negotiate}
	if _, err := u.Upgrade(c); err != nil {
		c.Close()
		return
	}
	_, deflate := ext.Accepted()
	send := func(payload []byte) error {
		_, err := c.Write(codec.AppendFrame(nil, ws.OpText, payload))
		return err
	}
	id := "baseline-" + strconv.FormatUint(s.ids.Add(1), 10)
	if send(codec.AppendWelcome(nil, id, time.Now(), false)) != nil {
		c.Close()
		return
	}
	for {
		msg, op, err := wsutil.ReadClientData(c)
		if err != nil {
			c.Close()
			return
		}
		if op != ws.OpText {
			continue
		}
		var sub struct {
			Type           string          `json:"type"`
			SubscriptionID string          `json:"subscription_id"`
			Filters        json.RawMessage `json:"filters"`
		}
		if json.Unmarshal(msg, &sub) != nil || sub.Type != "subscribe" {
			continue // the load tester sends nothing else before subscribing
		}
		b := &baselineSub{conn: c, deflate: deflate}
		if json.Unmarshal(sub.Filters, &b.filter) != nil {
			_ = send(codec.AppendError(nil, "INVALID_FILTER", "unreadable filters"))
			c.Close()
			return
		}
		s.mu.Lock()
		if keys := b.filter.keys(); len(keys) > 0 {
			for _, k := range keys {
				s.index[k] = append(s.index[k], b)
			}
		} else {
			s.all = append(s.all, b)
		}
		s.mu.Unlock()
		reply := append([]byte(`{"type":"subscribed","subscription_id":`), strconv.Quote(sub.SubscriptionID)...)
		reply = append(append(append(reply, `,"filters":`...), sub.Filters...), '}')
		_ = c.SetDeadline(time.Time{})
		if send(reply) != nil {
			s.mu.Lock()
			b.dead = true
			s.mu.Unlock()
		}
		return // nothing is read after the subscription
	}
}

// ingest reads NDJSON events from one ingest connection, replies to each
// and fans it out.
func (s *baselineServer) ingest(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriter(c)
	var reply []byte
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			reply = append(reply[:0], `{"ok":false,"error":{"code":"TOO_LARGE","message":"event line too long"}}`+"\n"...)
			_, _ = w.Write(reply)
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			continue
		}
		if err != nil {
			w.Flush()
			return
		}
		line = line[:len(line)-1]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if len(line) == 0 {
			continue
		}
		// flarecast's own parser: the same validation, and the event
		// object exactly as flarecast sends it (with its priority).
		parsed, err := event.Parse(line)
		if err != nil {
			_, _ = w.WriteString(`{"ok":false,"error":{"code":"INVALID_EVENT","message":` + strconv.Quote(err.Error()) + `}}` + "\n")
			continue
		}
		ev := baselineEventOf(parsed)
		s.pubMu.Lock()
		s.nextID++
		id := s.nextID
		reply = append(strconv.AppendUint(append(reply[:0], `{"ok":true,"message_id":`...), id, 10), '}', '\n')
		_, _ = w.Write(reply)
		if r.Buffered() == 0 {
			_ = w.Flush()
		}
		s.fanout(id, parsed.JSON, &ev)
		s.pubMu.Unlock()
	}
}

// fanout builds the event's frame once (and its compressed frame once, when
// needed) and writes it to every matching socket. Called under pubMu.
func (s *baselineServer) fanout(id uint64, eventJSON []byte, ev *baselineEvent) {
	payload := codec.AppendEvent(s.scratch[:0], id, time.Now(), eventJSON)
	s.scratch = payload
	s.frame = codec.AppendFrame(s.frame[:0], ws.OpText, payload)
	compressed := false
	s.mu.RLock()
	write := func(b *baselineSub) {
		if b.dead || b.seen == id || !b.filter.matches(ev) {
			return
		}
		b.seen = id
		frame := s.frame
		if b.deflate && len(payload) >= baselineCompressionMinSize {
			if !compressed {
				s.deflated, s.cscratch = codec.AppendCompressedFrame(s.deflated[:0], s.cscratch, payload)
				compressed = true
			}
			frame = s.deflated
		}
		if _, err := b.conn.Write(frame); err != nil {
			s.dead = append(s.dead, b)
		}
	}
	for _, k := range ev.keys() {
		for _, b := range s.index[k] {
			write(b)
		}
	}
	for _, b := range s.all {
		write(b)
	}
	s.mu.RUnlock()
	if len(s.dead) > 0 {
		s.mu.Lock()
		for _, b := range s.dead {
			b.dead = true
			b.conn.Close()
		}
		s.mu.Unlock()
		s.dead = s.dead[:0]
	}
}

// BaselineReport compares flarecast with the raw-write baseline on the same
// workload (--compare-baseline).
type BaselineReport struct {
	Flarecast *BaselineSide `json:"flarecast"`
	Baseline  *BaselineSide `json:"baseline"`
	// Ratio is flarecast ÷ baseline.
	Ratio map[string]float64 `json:"ratio_flarecast_over_baseline,omitempty"`
	// SameRate is false when the two servers did not take events at the
	// same rate (within 5%): one of them pushed back, and the CPU per
	// delivery of two different loads is no comparison (the cost per
	// delivery falls as the rate rises).
	SameRate bool `json:"same_rate"`
	// Run is the whole baseline run.
	Run *Result `json:"baseline_run,omitempty"`
}

// BaselineSide is one server's cost and service in a comparison.
type BaselineSide struct {
	OK           bool    `json:"ok"`
	Expected     int64   `json:"expected"`
	Received     int64   `json:"received"`
	Lost         int64   `json:"lost"`
	Duplicates   int64   `json:"duplicates"`
	PerSec       float64 `json:"deliveries_per_sec"`
	CPUSec       float64 `json:"server_cpu_sec"`
	CPUPer100k   float64 `json:"server_cpu_sec_per_100k_deliveries"`
	P50          float64 `json:"p50_ms"`
	P99          float64 `json:"p99_ms"`
	P999         float64 `json:"p999_ms"`
	Max          float64 `json:"max_ms"`
	RSSEnd       int64   `json:"server_rss_end_bytes"`
	AchievedRate float64 `json:"achieved_events_per_sec"`
}

func baselineSide(r *Result) *BaselineSide {
	return &BaselineSide{OK: r.OK, Expected: r.Deliveries.Expected, Received: r.Deliveries.Received,
		Lost: r.Deliveries.Lost, Duplicates: r.Deliveries.Duplicates, PerSec: r.Deliveries.PerSecond,
		CPUSec: r.Server.CPUSec, CPUPer100k: r.Server.CPUSecPer100kDeliv,
		P50: r.Latency.P50, P99: r.Latency.P99, P999: r.Latency.P999, Max: r.Latency.Max,
		RSSEnd: r.Server.RSSEnd, AchievedRate: r.Events.AchievedRate}
}

func (br *BaselineReport) compare() {
	f, b := br.Flarecast, br.Baseline
	ratio := func(x, y float64) float64 {
		if y <= 0 {
			return 0
		}
		return x / y
	}
	br.SameRate = f.AchievedRate > 0 && b.AchievedRate > 0 &&
		max(f.AchievedRate, b.AchievedRate)/min(f.AchievedRate, b.AchievedRate) <= 1.05
	br.Ratio = map[string]float64{
		"cpu_per_delivery": ratio(f.CPUPer100k, b.CPUPer100k),
		"p50":              ratio(f.P50, b.P50), "p99": ratio(f.P99, b.P99),
		"p999": ratio(f.P999, b.P999), "max": ratio(f.Max, b.Max),
		"server_rss_end": ratio(float64(f.RSSEnd), float64(b.RSSEnd)),
	}
}

// write prints the baseline run's summary, then the comparison.
func (br *BaselineReport) write(w io.Writer) {
	if br.Run != nil {
		fmt.Fprintf(w, "\nraw-write baseline run (same workload):\n")
		br.Run.WriteTable(w)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	rt := func(k string) string {
		if v, ok := br.Ratio[k]; ok && v > 0 {
			return fmt.Sprintf("%.2f×", v)
		}
		return ""
	}
	fmt.Fprintf(tw, "\n  compare\tflarecast\tbaseline\tflarecast/baseline\n")
	line := func(name string, f func(*BaselineSide) string, ratioKey string) {
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", name, f(br.Flarecast), f(br.Baseline), rt(ratioKey))
	}
	line("deliveries", func(s *BaselineSide) string { return num(float64(s.Received)) + " of " + num(float64(s.Expected)) }, "")
	line("events/s taken", func(s *BaselineSide) string { return num(s.AchievedRate) }, "")
	line("deliveries/s", func(s *BaselineSide) string { return num(s.PerSec) }, "")
	line("server CPU", func(s *BaselineSide) string { return fmt.Sprintf("%.2f s", s.CPUSec) }, "")
	line("CPU-s per 100,000 deliveries", func(s *BaselineSide) string { return fmt.Sprintf("%.3f", s.CPUPer100k) }, "cpu_per_delivery")
	line("latency p50", func(s *BaselineSide) string { return ms(s.P50) }, "p50")
	line("latency p99", func(s *BaselineSide) string { return ms(s.P99) }, "p99")
	line("latency p99.9", func(s *BaselineSide) string { return ms(s.P999) }, "p999")
	line("latency max", func(s *BaselineSide) string { return ms(s.Max) }, "max")
	line("lost", func(s *BaselineSide) string { return strconv.FormatInt(s.Lost, 10) }, "")
	line("duplicates", func(s *BaselineSide) string { return strconv.FormatInt(s.Duplicates, 10) }, "")
	line("server RSS at end", func(s *BaselineSide) string { return bytesText(s.RSSEnd) }, "server_rss_end")
	line("ok", func(s *BaselineSide) string { return strconv.FormatBool(s.OK) }, "")
	tw.Flush()
	if !br.SameRate {
		fmt.Fprintf(w, "    NOT AT THE SAME RATE: the servers took %s and %s events/s (one pushed back at saturation);\n"+
			"    the ratios compare two different loads, not one load's cost: lower --rate until both keep up\n",
			num(br.Flarecast.AchievedRate), num(br.Baseline.AchievedRate))
	}
}

// runCompareBaseline runs the workload against a fresh flarecast, then
// against a fresh raw-write baseline with the same settings, and returns
// flarecast's result with the comparison (and the baseline run) in Baseline.
func runCompareBaseline(ctx context.Context, cfg Config, progress io.Writer) (*Result, error) {
	fc := cfg
	fc.CompareBaseline = false
	fmt.Fprintf(progress, "flarecast-loadtest: run 1 of 2: flarecast (%s)\n", cfg.ServerBin)
	res, err := runOne(ctx, fc, progress)
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return res, nil
	}
	bc := fc
	bc.baseline, bc.Name = true, cfg.name()+"-rawbaseline"
	bc.ServerCPUProfile = ""
	fmt.Fprintf(progress, "flarecast-loadtest: run 2 of 2: the raw-write baseline, same settings\n")
	b, err := runOne(ctx, bc, progress)
	if err != nil {
		return nil, fmt.Errorf("baseline run: %w", err)
	}
	res.Baseline = &BaselineReport{Flarecast: baselineSide(res), Baseline: baselineSide(b), Run: b}
	res.Baseline.compare()
	if !b.OK {
		res.Warnings = append(res.Warnings, "the baseline run was not OK: "+fmt.Sprint(b.Warnings))
	}
	res.OK = res.OK && b.OK
	if !res.Baseline.SameRate {
		res.Warnings = append(res.Warnings, fmt.Sprintf("flarecast took %.1f events/s, the baseline %.1f: not the same load, the ratios are no comparison",
			res.Baseline.Flarecast.AchievedRate, res.Baseline.Baseline.AchievedRate))
	}
	return res, nil
}
