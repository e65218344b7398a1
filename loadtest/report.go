package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is everything one run measured; it is what the JSON file holds.
type Result struct {
	Scenario string    `json:"scenario"`
	Name     string    `json:"name"`
	Started  time.Time `json:"started"`
	Command  string    `json:"command"`
	// OK is true when every expected delivery arrived exactly once, no
	// connection was refused or dropped, and nothing was interrupted.
	OK       bool     `json:"ok"`
	Warnings []string `json:"warnings,omitempty"`

	Settings    Settings        `json:"settings"`
	Machine     MachineStats    `json:"machine"`
	FDLimit     fdLimit         `json:"fd_limit"`
	Connections ConnectionStats `json:"connections"`
	Events      EventStats      `json:"events"`
	Deliveries  DeliveryStats   `json:"deliveries"`
	Latency     quantilesMS     `json:"latency"`
	Server      ServerStats     `json:"server"`
	Loadtest    LoadtestStats   `json:"loadtest"`
	// Chaos holds the chaos and soak scenarios' figures.
	Chaos *ChaosStats `json:"chaos,omitempty"`
	// Abuse compares the healthy clients without and with the abusers,
	// and says what each abuser did (--abusers).
	Abuse *AbuseReport `json:"abuse,omitempty"`
	// Baseline compares flarecast with the raw-write baseline server run
	// on the same workload (--compare-baseline).
	Baseline *BaselineReport `json:"baseline,omitempty"`

	// Timeline has one sample per progress interval: latency percentiles
	// of the deliveries in that interval, and throughput.
	Timeline []Sample `json:"timeline"`
	// Memory samples the server's memory against the connections held.
	Memory []MemSample `json:"memory"`
	// Files are the output files written, set by WriteFiles.
	Files []string `json:"files,omitempty"`
}

// Settings are the effective parameters of the run.
type Settings struct {
	Conns        int      `json:"conns"`
	Rate         float64  `json:"rate_events_per_sec"`
	DurationSec  float64  `json:"duration_sec"`
	Match        int      `json:"match"`
	Groups       int      `json:"groups"`
	Mix          string   `json:"mix"`
	EventSize    int      `json:"event_size_bytes"`
	Compression  bool     `json:"compression_offered"`
	Spawn        bool     `json:"spawn"`
	ServerBin    string   `json:"server_bin,omitempty"`
	ServerArgs   []string `json:"server_args,omitempty"`
	URL          string   `json:"url"`
	AdminURL     string   `json:"admin_url,omitempty"`
	IngestSocket string   `json:"ingest_socket,omitempty"`
	ForceGC      bool     `json:"force_gc"`
	// ClientEngine is how the clients received (loop or goroutine), Loops
	// how many event loops the loop engine ran.
	ClientEngine string `json:"client_engine,omitempty"`
	Loops        int    `json:"loops,omitempty"`
	// ClientCoalesceUS is the uring engine's pause after each batch of
	// receives (--client-coalesce), in µs.
	ClientCoalesceUS float64 `json:"client_coalesce_us,omitempty"`
	Abusers          string  `json:"abusers,omitempty"`
	// ServerCPUs and AbuserCPUs are the taskset CPU lists of the spawned
	// server and of the abusers' process (--server-cpus, --abuser-cpus).
	ServerCPUs string `json:"server_cpus,omitempty"`
	AbuserCPUs string `json:"abuser_cpus,omitempty"`
}

// MachineStats say how loaded the (shared) machine was while events flowed
// (or, at rate 0, while the idle connections were held).
type MachineStats struct {
	Cores        int     `json:"cores"`
	LoadAvgStart string  `json:"loadavg_start"`
	LoadAvgEnd   string  `json:"loadavg_end"`
	BusyCores    float64 `json:"busy_cores"`     // everyone
	ServerCores  float64 `json:"server_cores"`   // the flarecast server
	LoadCores    float64 `json:"loadtest_cores"` // this process and its abusers' process
	OtherCores   float64 `json:"other_cores"`    // everything else on the machine
}

// ConnectionStats describe the connect phase and what stayed connected.
type ConnectionStats struct {
	Requested      int            `json:"requested"`
	Attempted      int            `json:"attempted"`
	Held           int            `json:"held"`
	Failed         int            `json:"failed"`
	Failures       map[string]int `json:"failures,omitempty"`
	Deflate        int            `json:"deflate_negotiated"`
	SourceAddrs    int            `json:"source_addrs"`
	ConnectSec     float64        `json:"connect_sec"`
	ConnectRate    float64        `json:"connect_per_sec"`
	Dropped        int            `json:"dropped"`
	DroppedReasons map[string]int `json:"dropped_reasons,omitempty"`
	HeldAtEnd      int            `json:"held_at_end"`
}

// EventStats describe what was published.
type EventStats struct {
	TargetRate float64 `json:"target_per_sec"`
	Published  int64   `json:"published"`
	Accepted   int64   `json:"accepted"`
	Rejected   int64   `json:"rejected"`
	// Unconfirmed events got no reply in time (or the ingest connection
	// broke): the server may have accepted them, so they are left out of
	// the expected deliveries, and their deliveries make received exceed
	// expected.
	Unconfirmed   int64   `json:"unconfirmed"`
	FirstError    string  `json:"first_error,omitempty"`
	PublishSec    float64 `json:"publish_sec"`
	AchievedRate  float64 `json:"achieved_per_sec"`
	MatchPerEvent float64 `json:"match_per_event"`
}

// DeliveryStats are the exact delivery accounting.
type DeliveryStats struct {
	Expected   int64   `json:"expected"`
	Received   int64   `json:"received"`
	Lost       int64   `json:"lost"`
	Duplicates int64   `json:"duplicates"`
	Unexpected int64   `json:"unexpected"`
	Malformed  int64   `json:"malformed"`
	PerSecond  float64 `json:"per_sec"`
	PeakPerSec float64 `json:"peak_interval_per_sec"`
	DrainSec   float64 `json:"drain_sec"`
}

// ServerStats are the server's memory and CPU. Memory "before" is read
// before the first connection, "after" once every connection is subscribed
// and idle; per-connection figures are (after − before) / held.
type ServerStats struct {
	PID     int    `json:"pid,omitempty"`
	Spawned bool   `json:"spawned"`
	LogPath string `json:"log,omitempty"`

	RSSBefore  int64   `json:"rss_before_bytes"`
	RSSAfter   int64   `json:"rss_after_bytes"`
	RSSPerConn float64 `json:"rss_per_conn_bytes"`
	RSSEnd     int64   `json:"rss_end_bytes"`
	HeapEnd    int64   `json:"heap_inuse_end_bytes"`

	MetricsRSSBefore  int64   `json:"metrics_rss_before_bytes"`
	MetricsRSSAfter   int64   `json:"metrics_rss_after_bytes"`
	MetricsRSSPerConn float64 `json:"metrics_rss_per_conn_bytes"`
	HeapBefore        int64   `json:"heap_inuse_before_bytes"`
	HeapAfter         int64   `json:"heap_inuse_after_bytes"`
	HeapPerConn       float64 `json:"heap_inuse_per_conn_bytes"`
	Goroutines        int64   `json:"goroutines_after"`
	ActiveConns       int64   `json:"active_connections_after"`
	ActiveSubs        int64   `json:"active_subscriptions_after"`
	SlowConsumers     int64   `json:"slow_consumer_disconnects"`

	CPUSec             float64 `json:"cpu_sec"`
	CPUSecPer100kDeliv float64 `json:"cpu_sec_per_100k_deliveries"`
	StopError          string  `json:"stop_error,omitempty"`
}

// LoadtestStats are the load tester's own costs: it shares the machine.
// CPUSec includes its abusers' process (--abusers); RSS is its own.
type LoadtestStats struct {
	CPUSec float64 `json:"cpu_sec"`
	// CPUPerDeliveryUS is CPUSec (getrusage: user + system, while events
	// flowed; publishing included) per delivery received, in µs: what the
	// client engines are compared by.
	CPUPerDeliveryUS float64 `json:"cpu_us_per_delivery"`
	RSS              int64   `json:"rss_bytes"`
}

// Sample is one progress interval.
type Sample struct {
	T           float64 `json:"t_sec"`
	Phase       string  `json:"phase"`
	Conns       int     `json:"conns"`
	Deliveries  int64   `json:"deliveries"`
	PerSec      float64 `json:"deliveries_per_sec"`
	Published   int64   `json:"published"`
	P50         float64 `json:"p50_ms"`
	P95         float64 `json:"p95_ms"`
	P99         float64 `json:"p99_ms"`
	Max         float64 `json:"max_ms"`
	CumP99      float64 `json:"cumulative_p99_ms"`
	ServerRSS   int64   `json:"server_rss_bytes"`
	ServerCPUms float64 `json:"server_cpu_ms"`
}

// MemSample is the server's memory at a number of connections held.
type MemSample struct {
	T     float64 `json:"t_sec"`
	Phase string  `json:"phase"`
	Conns int     `json:"conns"`
	RSS   int64   `json:"rss_bytes"`
	Heap  int64   `json:"heap_inuse_bytes,omitempty"`
}

// WriteTable prints the readable summary of a run.
func (r *Result) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "  %s\t"+format+"\n", append([]any{k}, args...)...)
	}
	status := "OK"
	if !r.OK {
		status = "NOT OK"
	}
	fmt.Fprintf(tw, "flarecast-loadtest %s — %s\n", r.Name, status)
	s := r.Settings
	row("settings", "%d conns, %s events/s for %s, match %s (%d groups), mix %s, %d B events, compression offered %v",
		s.Conns, num(s.Rate), time.Duration(s.DurationSec*float64(time.Second)), matchText(s.Match), s.Groups, s.Mix, s.EventSize, s.Compression)
	m := r.Machine
	row("machine", "%d cores, load %s → %s; busy %.2f cores (server %.2f, loadtest %.2f, others %.2f)",
		m.Cores, m.LoadAvgStart, m.LoadAvgEnd, m.BusyCores, m.ServerCores, m.LoadCores, m.OtherCores)
	c := r.Connections
	row("connections", "%s held of %s requested (%s failed, %s dropped later); %s deflate; %d source addresses",
		num(float64(c.Held)), num(float64(c.Requested)), num(float64(c.Failed)), num(float64(c.Dropped)), num(float64(c.Deflate)), c.SourceAddrs)
	row("connect rate", "%s conn/s (%.2f s)", num(c.ConnectRate), c.ConnectSec)
	if r.FDLimit.Capped {
		row("fd limit", "%s", r.FDLimit.Message)
	}
	if r.Events.Published > 0 || r.Settings.Rate > 0 {
		e := r.Events
		row("events", "%s published, %s accepted, %s rejected, %s unconfirmed; %s/s achieved of %s/s; %.1f connections per event",
			num(float64(e.Published)), num(float64(e.Accepted)), num(float64(e.Rejected)), num(float64(e.Unconfirmed)),
			num(e.AchievedRate), num(e.TargetRate), e.MatchPerEvent)
		d := r.Deliveries
		row("deliveries", "%s received of %s expected; lost %d, duplicates %d, unexpected %d",
			num(float64(d.Received)), num(float64(d.Expected)), d.Lost, d.Duplicates, d.Unexpected)
		row("deliveries/s", "%s (peak interval %s)", num(d.PerSecond), num(d.PeakPerSec))
		l := r.Latency
		row("latency", "p50 %s  p90 %s  p95 %s  p99 %s  p99.9 %s  max %s  (ingest write → client read)",
			ms(l.P50), ms(l.P90), ms(l.P95), ms(l.P99), ms(l.P999), ms(l.Max))
	}
	if ch := r.Chaos; ch != nil {
		row("chaos", "%.1f%%/s reset, %.1f%%/s clean close: %s resets, %s clean closes",
			100*ch.DropRate, 100*ch.ChurnRate, num(float64(ch.Resets)), num(float64(ch.Closes)))
		row("reconnects", "%s resumed (resumed:true), %s not resumed, %s new sessions after a close, %d failed; %s acks sent",
			num(float64(ch.Resumed)), num(float64(ch.NotResumed)), num(float64(ch.Churned)), ch.ReconnectFailures, num(float64(ch.Acks)))
		row("at-least-once", "lost %d, illegal duplicates %d, replayed from the resume point (allowed) %s, HISTORY_GAP errors %d, out of order %d",
			r.Deliveries.Lost, r.Deliveries.Duplicates, num(float64(ch.ReplayDuplicates)), ch.HistoryGaps, ch.OutOfOrder)
		if f := ch.Memory; f != nil {
			verdict := "FLAT"
			if !f.Flat {
				verdict = "NOT FLAT"
			}
			row("memory", "%s: %s (%d samples)", verdict, f.Explanation, f.Samples)
		}
	}
	sv := r.Server
	if sv.RSSAfter > 0 {
		row("server RSS", "%s → %s: %s per connection (/proc VmRSS, %d connections subscribed and idle)",
			bytesText(sv.RSSBefore), bytesText(sv.RSSAfter), bytesText(int64(sv.RSSPerConn)), c.Held)
		if sv.RSSEnd > 0 && c.Held > 0 {
			row("server RSS at end", "%s: %s per connection", bytesText(sv.RSSEnd), bytesText((sv.RSSEnd-sv.RSSBefore)/int64(c.Held)))
		}
	}
	if sv.MetricsRSSAfter > 0 {
		row("server RSS (/metrics)", "%s → %s: %s per connection", bytesText(sv.MetricsRSSBefore), bytesText(sv.MetricsRSSAfter), bytesText(int64(sv.MetricsRSSPerConn)))
	}
	if sv.HeapAfter > 0 {
		row("server Go heap", "%s → %s: %s per connection (heap in use%s)", bytesText(sv.HeapBefore), bytesText(sv.HeapAfter), bytesText(int64(sv.HeapPerConn)), gcNote(r.Settings.ForceGC))
	}
	switch {
	case sv.CPUSecPer100kDeliv > 0:
		row("server CPU", "%.2f s; %.2f CPU-s per 100,000 deliveries; slow-consumer closes %d", sv.CPUSec, sv.CPUSecPer100kDeliv, sv.SlowConsumers)
	case sv.CPUSec > 0:
		row("server CPU", "%.2f s", sv.CPUSec)
	}
	engine := r.Settings.ClientEngine
	if r.Settings.Loops > 0 {
		engine = fmt.Sprintf("%s engine, %d loops", engine, r.Settings.Loops)
		if r.Settings.ClientCoalesceUS > 0 {
			engine = fmt.Sprintf("%s, %gµs coalescing", engine, r.Settings.ClientCoalesceUS)
		}
	} else if engine != "" {
		engine += " engine"
	}
	if r.Loadtest.CPUPerDeliveryUS > 0 {
		row("loadtest", "%.2f CPU-s, %.2f µs CPU per delivery (%s), RSS %s", r.Loadtest.CPUSec, r.Loadtest.CPUPerDeliveryUS, engine, bytesText(r.Loadtest.RSS))
	} else {
		row("loadtest", "%.2f CPU-s (%s), RSS %s", r.Loadtest.CPUSec, engine, bytesText(r.Loadtest.RSS))
	}
	for _, w := range r.Warnings {
		row("warning", "%s", w)
	}
	for _, f := range r.Files {
		row("file", "%s", f)
	}
	tw.Flush()
	if r.Baseline != nil {
		r.Baseline.write(w)
	}
	if r.Abuse != nil {
		r.Abuse.write(w)
	}
}

func gcNote(forced bool) string {
	if forced {
		return ", after a forced GC"
	}
	return ""
}

func matchText(m int) string {
	if m == 0 {
		return "all"
	}
	return num(float64(m))
}

// WriteFiles writes the JSON result and the charts into dir, named after
// the run, and records their paths in r.Files.
func (r *Result) WriteFiles(dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	base := filepath.Join(dir, r.Name)
	var files []string
	if b := r.Abuse; b != nil && b.Baseline != nil {
		// The first run's charts, beside the second's.
		if err := b.Baseline.writeCharts(filepath.Join(dir, b.Baseline.Name), &files); err != nil {
			return err
		}
	}
	if err := r.writeCharts(base, &files); err != nil {
		return err
	}
	jsonPath := base + ".json"
	r.Files = append(files, jsonPath)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	if err := os.WriteFile(jsonPath, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// writeCharts writes the latency and RSS charts of the run to base-*.png.
func (r *Result) writeCharts(base string, files *[]string) error {
	if path := base + "-latency.png"; len(r.Timeline) > 0 && r.Deliveries.Received > 0 {
		if err := latencyChart(r, path); err != nil {
			return err
		}
		*files = append(*files, path)
	}
	if path := base + "-rss.png"; len(r.Memory) > 1 {
		if err := rssChart(r, path); err != nil {
			return err
		}
		*files = append(*files, path)
	}
	return nil
}

// num formats a number with thousands separators, at most one decimal.
func num(v float64) string {
	neg := v < 0
	if neg {
		v = -v
	}
	s := fmt.Sprintf("%.0f", v)
	if v < 100 && v != float64(int64(v)) {
		s = fmt.Sprintf("%.1f", v)
	}
	intPart, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	for i, ch := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(ch)
	}
	if frac != "" {
		b.WriteString("." + frac)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func ms(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 10:
		return fmt.Sprintf("%.3fms", v)
	default:
		return fmt.Sprintf("%.1fms", v)
	}
}

func bytesText(n int64) string {
	neg := n < 0
	if neg {
		n = -n
	}
	var s string
	switch {
	case n >= 1<<30:
		s = fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		s = fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		s = fmt.Sprintf("%.2f KiB", float64(n)/(1<<10))
	default:
		s = fmt.Sprintf("%d B", n)
	}
	if neg {
		return "-" + s
	}
	return s
}

// topReasons keeps the most frequent keys of a count map.
func topReasons(m map[string]int, n int) map[string]int {
	if len(m) <= n {
		return m
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	out := make(map[string]int, n+1)
	rest := 0
	for i, k := range keys {
		if i < n {
			out[k] = m[k]
		} else {
			rest += m[k]
		}
	}
	out["(others)"] = rest
	return out
}
