package loadtest

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Config is one load-test run. Start from Preset (or ParseArgs, which applies
// a preset and then the command line) rather than the zero value.
type Config struct {
	// Scenario names the preset the run started from; it also prefixes the
	// output files unless Name is set.
	Scenario string
	// Name prefixes the output files (default: Scenario).
	Name string

	// Conns is how many WebSocket connections to open and subscribe.
	Conns int
	// Rate is the ingest rate in events per second; 0 publishes nothing
	// (the density scenario: idle subscribed connections).
	Rate float64
	// Duration is how long events are published (or, at rate 0, how long
	// the idle connections are held before the run ends).
	Duration time.Duration
	// Match is how many connections each event should reach: connections
	// are split into ceil(Conns/Match) groups. 0 means all of them.
	Match int
	// Mix weighs the filter kinds the connections subscribe with.
	Mix Mix
	// EventSize is the size in bytes of each event line sent to the ingest
	// socket (padded with a title); above the server's
	// --compression-min-size the event is sent compressed to deflate clients.
	EventSize int
	// Compression offers permessage-deflate (with no context takeover).
	Compression bool
	// ClientEngine is how the clients receive once subscribed: "loop",
	// a few epoll loops for all connections (loop.go: less CPU per delivery
	// and half the memory), "uring", the same loops receiving through
	// io_uring multishot receives (loop_uring.go; loop where io_uring is
	// refused), or "goroutine", one reader goroutine per
	// connection, which chaos and soak need for their resume and ack logic.
	// Empty picks uring unless connections are dropped or churned or abusers
	// run.
	ClientEngine string
	// ClientLoops is how many event loops the loop or uring engine runs (0: GOMAXPROCS).
	ClientLoops int
	// ClientCoalesce is how long a uring loop pauses after each batch of
	// receives before it waits again, so that one wake-up takes the rest
	// of a fan-out burst: a little latency (at most this) for much less
	// CPU per delivery (0: wake for every arrival).
	ClientCoalesce time.Duration

	// ConnectConcurrency bounds handshakes in flight.
	ConnectConcurrency int
	// ConnectRate bounds new connections per second (0: only the concurrency bounds it).
	ConnectRate float64
	// ConnectTimeout bounds the whole connect phase.
	ConnectTimeout time.Duration
	// HandshakeTimeout bounds one connection's dial, upgrade and subscribe.
	HandshakeTimeout time.Duration
	// Settle is how long the connections sit idle before the server's
	// memory is read, and between the samples taken then.
	Settle time.Duration
	// DrainTimeout bounds the wait, after publishing stops, for deliveries
	// still in flight.
	DrainTimeout time.Duration
	// SourceAddrs is how many loopback source addresses (127.0.0.1 …) the
	// client sockets are spread over; 0 picks one per 20,000 connections, at least 4.
	SourceAddrs int
	// ForceGC asks the server for a garbage collection (GET
	// /debug/pprof/heap?gc=1) before each memory reading, so the Go heap
	// figure is live memory, not garbage awaiting collection.
	ForceGC bool

	// URL is the server's WebSocket endpoint (loopback only).
	URL string
	// AdminURL is the server's admin HTTP base URL, for /metrics (loopback only; empty: none).
	AdminURL string
	// IngestSocket is the server's Unix ingest socket.
	IngestSocket string
	// ServerPID is the server's process id for /proc readings; 0 looks for
	// the process listening on URL's port.
	ServerPID int

	// PublishOnly opens no connection: it only publishes the scenario's
	// events (groups as if Conns clients were connected), for clients run
	// by another tool such as loadtest/k6/websocket.js.
	PublishOnly bool

	// Spawn starts ServerBin serve on free loopback ports with a temporary
	// ingest socket, instead of using URL, AdminURL and IngestSocket.
	Spawn bool
	// ServerBin is the flarecast binary Spawn runs.
	ServerBin string
	// ServerArgs are extra arguments for `flarecast serve` in Spawn mode.
	ServerArgs []string

	// CPUProfile writes the load tester's own CPU profile to this file.
	CPUProfile string
	// ServerCPUProfile writes a CPU profile of the server, taken from its
	// admin /debug/pprof/profile while events are published (up to
	// ServerProfileSeconds), to this file.
	ServerCPUProfile     string
	ServerProfileSeconds int

	// DropRate is the fraction of the clients per second whose connection
	// is reset (TCP RST) while events are published; each resumes its
	// session after a random pause of up to 500 ms. With DropRate or
	// ChurnRate set, clients ack what they received (chaos.go).
	DropRate float64
	// ChurnRate is the fraction of the clients per second whose connection
	// closes cleanly and is replaced by a new session that subscribes with
	// since = the last message_id processed.
	ChurnRate float64
	// CheckMemoryFlat samples the server's RSS and Go heap every
	// ProgressInterval while events are published and fails the run unless
	// memory is flat (see Flatness).
	CheckMemoryFlat bool
	// Abusers runs one abusive client of each kind (abuse.go) beside the
	// healthy ones while events are published: "off", "on", or "both" —
	// the same workload twice in one invocation, first without them, then
	// with them, and the two compared.
	Abusers string
	// AbuserKinds, when not empty, limits the abusers to these kinds
	// (comma-separated names of abuserKinds): to find which one costs what.
	AbuserKinds string
	// AbuserCPUs, when set, runs the abusers' process (abuseproc.go) under
	// `taskset -c AbuserCPUs`; ServerCPUs does the same for a spawned
	// server: with the load tester itself pinned (taskset -c … flarecast-loadtest),
	// server, healthy clients and abusers can each have their own cores.
	AbuserCPUs string
	ServerCPUs string
	// AbusersOnly is the abusers' process itself: it opens no healthy
	// connection and publishes nothing; it runs the abusers (AbuserKinds)
	// against URL until the load tester that started it says stop on stdin
	// (or, without it, for Duration), and prints their []AbuserStats as
	// JSON on stdout (RunAbusersOnly).
	AbusersOnly bool

	// CompareBaseline runs the workload twice, each against a server spawned
	// fresh with the same settings: flarecast, then the raw-write baseline
	// (baseline.go), and compares their CPU per delivery, latency and loss.
	// It implies Spawn.
	CompareBaseline bool
	// baseline spawns the raw-write baseline instead of ServerBin.
	baseline bool

	// Out is the directory the JSON result and charts are written to ("" writes none).
	Out string
	// ProgressInterval is how often the live progress line and the
	// latency-over-time samples are taken.
	ProgressInterval time.Duration
}

// Scenarios lists the presets, in documentation order.
var Scenarios = []string{"density", "seed", "fanout", "broadcast", "smoke", "chaos", "soak", "abuse"}

// Preset returns the configuration of a named scenario:
//
//	density    10,000 idle subscribed connections; measures RSS per connection
//	seed       15,000 connections, 10,000 events/s, each event matching 10 connections
//	fanout     10,000 connections, each event matching 1,000 (100 events/s: 100,000 deliveries/s)
//	broadcast  10,000 connections all matching every event, 10 events/s
//	smoke      200 connections, 200 events/s matching 10 each, 2 s (CI)
//	chaos      2,000 connections, 500 events/s matching 10, 60 s; 2% of the
//	           connections per second reset and resume their session
//	soak       2,000 connections, 500 events/s matching 10, 10 min; 1%/s reset
//	           and resume, 1%/s close cleanly and reopen; memory must stay flat
//	           (a spawned server keeps sessions 10 s and 5,000 events)
//	abuse      5,000 healthy connections, 200 events/s matching 100 (2%), 30 s,
//	           run twice: without, then with one abusive client of each kind
//	           (never reads, ping flood, 64 KiB re-subscribe loops, garbage
//	           frames, acks far ahead); compares the healthy clients' latency,
//	           loss and the server's RSS
func Preset(name string) (Config, error) {
	c := Config{
		Scenario:             name,
		Conns:                10000,
		Duration:             30 * time.Second,
		Match:                10,
		Mix:                  DefaultMix(),
		EventSize:            300,
		Compression:          true,
		ConnectConcurrency:   500,
		ConnectTimeout:       5 * time.Minute,
		HandshakeTimeout:     15 * time.Second,
		Settle:               2 * time.Second,
		DrainTimeout:         10 * time.Second,
		ForceGC:              true,
		URL:                  "ws://127.0.0.1:8080/ws",
		AdminURL:             "http://127.0.0.1:9090",
		IngestSocket:         "flarecast.sock",
		ServerBin:            "bin/flarecast",
		Out:                  "loadtest-out",
		ProgressInterval:     time.Second,
		ServerProfileSeconds: 20,
		Abusers:              "off",
		ClientEngine:         "uring",
		ClientCoalesce:       100 * time.Microsecond,
	}
	switch name {
	case "density":
		c.Rate, c.Duration = 0, 5*time.Second
	case "seed":
		c.Conns, c.Rate, c.Match = 15000, 10000, 10
	case "fanout":
		c.Conns, c.Rate, c.Match = 10000, 100, 1000
	case "broadcast":
		c.Conns, c.Rate, c.Match = 10000, 10, 0
	case "smoke":
		c.Conns, c.Rate, c.Match, c.Duration = 200, 200, 10, 2*time.Second
		c.Settle = 500 * time.Millisecond
	case "chaos":
		c.Conns, c.Rate, c.Match, c.Duration = 2000, 500, 10, 60*time.Second
		c.DropRate = 0.02
		c.ClientEngine = "goroutine"
	case "soak":
		c.Conns, c.Rate, c.Match, c.Duration = 2000, 500, 10, 10*time.Minute
		c.DropRate, c.ChurnRate, c.CheckMemoryFlat = 0.01, 0.01, true
		// A spawned server keeps detached sessions 10 s and 5,000 events
		// (10 s at 500/s) instead of 5 min and 100,000: what it holds
		// reaches its steady state within the first quarter of a 60 s
		// run, so growth after that is a leak, not a filling window.
		// Resumes come within a second, well inside both.
		c.ServerArgs = []string{"--session-timeout=10s", "--cleanup-interval=2s", "--history-size=5000"}
		c.ClientEngine = "goroutine"
	case "abuse":
		c.Conns, c.Rate, c.Match, c.Duration = 5000, 200, 100, 30*time.Second
		c.Abusers = "both"
		// The comparison with earlier abuse runs holds the client fixed.
		c.ClientEngine = "goroutine"
	default:
		return Config{}, fmt.Errorf("unknown scenario %q (want one of %s)", name, strings.Join(Scenarios, ", "))
	}
	return c, nil
}

// ParseArgs reads the command line: --scenario picks a preset, and every
// other flag given overrides the preset's value. Help goes to out.
func ParseArgs(args []string, out io.Writer) (Config, error) {
	var c Config
	base, _ := Preset("density") // defaults for the flag help; replaced below
	c = base
	fs := flag.NewFlagSet("flarecast-loadtest", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: flarecast-loadtest [--spawn] [--scenario NAME] [flags]\n\n"+
			"scenarios (flags override their values):\n"+
			"  density    10,000 idle subscribed connections; RSS per connection\n"+
			"  seed       15,000 connections, 10,000 events/s, each event matching 10\n"+
			"  fanout     10,000 connections, 100 events/s, each event matching 1,000\n"+
			"  broadcast  10,000 connections, 10 events/s, every event matching all\n"+
			"  smoke      200 connections, 200 events/s matching 10, 2 s\n"+
			"  chaos      2,000 connections, 500 events/s matching 10, 60 s; 2%%/s of the connections reset and resume\n"+
			"  soak       2,000 connections, 500 events/s matching 10, 10 min; 1%%/s reset, 1%%/s churn; memory must stay flat\n"+
			"  abuse      5,000 connections, 200 events/s matching 100, 30 s, twice: without, then with one abusive client\n"+
			"             of each kind (never reads, ping flood, 64 KiB re-subscribes, garbage frames, acks far ahead)\n\nflags (--conns, --rate, --duration, --match and --settle default to the scenario's values; density's are shown):\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.Scenario, "scenario", "density", "preset: "+strings.Join(Scenarios, ", "))
	fs.StringVar(&c.Name, "name", "", "prefix of the output files (default: the scenario)")
	fs.IntVar(&c.Conns, "conns", base.Conns, "WebSocket connections (capped by the open-file limit)")
	fs.Float64Var(&c.Rate, "rate", base.Rate, "events per second published to the ingest socket (0: idle)")
	fs.DurationVar(&c.Duration, "duration", base.Duration, "how long to publish (or hold the idle connections)")
	fs.IntVar(&c.Match, "match", base.Match, "connections each event reaches (0: all)")
	mix := base.Mix.String()
	fs.StringVar(&mix, "mix", mix, "filter kinds and weights: "+strings.Join(filterKindNames(), ", "))
	fs.IntVar(&c.EventSize, "event-size", base.EventSize, "bytes per ingest line (padded title)")
	fs.BoolVar(&c.Compression, "compression", base.Compression, "offer permessage-deflate")
	fs.IntVar(&c.ClientLoops, "client-loops", 0, "event loops of --client-engine loop or uring (0: GOMAXPROCS, one per CPU the load tester may use)")
	fs.DurationVar(&c.ClientCoalesce, "client-coalesce", base.ClientCoalesce, "--client-engine uring: pause after each batch of receives, so that one wake-up takes the rest of a fan-out burst (adds at most this to latency; 0: wake for every arrival)")
	fs.StringVar(&c.ClientEngine, "client-engine", "", "how clients receive: loop (a few epoll loops: less CPU per delivery, half the memory), uring (the loops with io_uring multishot receives instead of epoll and read; falls back to loop where io_uring is refused) or goroutine (one per connection; needed by --drop-rate/--churn-rate); default: the scenario's (goroutine for chaos, soak, abuse; uring otherwise)")
	fs.IntVar(&c.ConnectConcurrency, "connect-concurrency", base.ConnectConcurrency, "handshakes in flight")
	fs.Float64Var(&c.ConnectRate, "connect-rate", base.ConnectRate, "new connections per second (0: unlimited)")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", base.ConnectTimeout, "bound on the whole connect phase")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", base.HandshakeTimeout, "bound on one connection's dial, upgrade and subscribe")
	fs.DurationVar(&c.Settle, "settle", base.Settle, "idle time before memory is read")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", base.DrainTimeout, "wait for in-flight deliveries after publishing stops")
	fs.IntVar(&c.SourceAddrs, "source-addrs", base.SourceAddrs, "loopback source addresses 127.0.0.1…N (0: one per 20,000 connections, at least 4)")
	fs.BoolVar(&c.ForceGC, "force-gc", base.ForceGC, "ask the server to collect garbage (pprof heap?gc=1) before each memory reading")
	fs.StringVar(&c.URL, "url", base.URL, "server WebSocket URL (loopback only); a comma-separated list spreads connections over a fleet's instances")
	fs.StringVar(&c.AdminURL, "admin-url", base.AdminURL, "server admin URL for /metrics (loopback only; empty: none)")
	fs.StringVar(&c.IngestSocket, "ingest-socket", base.IngestSocket, "server ingest Unix socket; a comma-separated list publishes through several instances in turn")
	fs.IntVar(&c.ServerPID, "server-pid", 0, "server pid for /proc readings (0: find the process listening on --url's port)")
	fs.BoolVar(&c.PublishOnly, "publish-only", false, "open no connection; publish the scenario's events for clients run elsewhere (k6)")
	fs.BoolVar(&c.Spawn, "spawn", false, "start --server-bin serve on free loopback ports and a temporary ingest socket")
	fs.StringVar(&c.ServerBin, "server-bin", base.ServerBin, "flarecast binary for --spawn")
	fs.Func("server-arg", "extra `ARG` for the spawned flarecast serve (repeatable), e.g. --server-arg=--event-loops=2", func(s string) error {
		c.ServerArgs = append(c.ServerArgs, s)
		return nil
	})
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write the load tester's own CPU profile to this file")
	fs.StringVar(&c.ServerCPUProfile, "server-cpuprofile", "", "write a CPU profile of the server (admin /debug/pprof/profile) taken while publishing")
	fs.IntVar(&c.ServerProfileSeconds, "server-profile-seconds", 20, "length of the server CPU profile")
	fs.Float64Var(&c.DropRate, "drop-rate", base.DropRate, "fraction of the connections per second reset (TCP RST) and resumed while publishing (chaos: 0.02)")
	fs.Float64Var(&c.ChurnRate, "churn-rate", base.ChurnRate, "fraction of the connections per second closed cleanly and replaced by a new session (soak: 0.01)")
	fs.BoolVar(&c.CheckMemoryFlat, "check-memory-flat", base.CheckMemoryFlat, "sample server memory while publishing; fail unless the last quarter is within 15% + 4 MiB of the second (soak: true)")
	fs.StringVar(&c.AbuserKinds, "abuser-kinds", "", "with --abusers: only these kinds, comma-separated ("+abuserNames()+"; empty: all)")
	fs.StringVar(&c.Abusers, "abusers", base.Abusers, "one abusive client of each kind beside the healthy ones while publishing: off (false), on (true), or both (run without, then with them, and compare; abuse: both)")
	fs.StringVar(&c.AbuserCPUs, "abuser-cpus", "", "with --abusers: run the abusers' process under taskset -c `LIST` (e.g. 1; empty: not pinned)")
	fs.StringVar(&c.ServerCPUs, "server-cpus", "", "with --spawn: run the server under taskset -c `LIST` (e.g. 0; empty: not pinned)")
	fs.BoolVar(&c.AbusersOnly, "abusers-only", false, "internal: be the abusers' process the load tester starts for --abusers (runs --abuser-kinds against --url, stats as JSON on stdout)")
	fs.BoolVar(&c.CompareBaseline, "compare-baseline", false, "run twice, each against a fresh spawned server (implies --spawn): flarecast, then the raw-write baseline (one write of a once-built frame per matching socket, one goroutine); print both and their ratio")
	fs.StringVar(&c.Out, "out", base.Out, "directory for the JSON result and charts (empty: none)")
	fs.DurationVar(&c.ProgressInterval, "progress-interval", base.ProgressInterval, "progress line and timeline sampling interval")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	p, err := Preset(c.Scenario)
	if err != nil {
		return Config{}, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// The scenario's own values win over the flag defaults, and flags the
	// user gave win over the scenario.
	if !set["conns"] {
		c.Conns = p.Conns
	}
	if !set["rate"] {
		c.Rate = p.Rate
	}
	if !set["duration"] {
		c.Duration = p.Duration
	}
	if !set["match"] {
		c.Match = p.Match
	}
	if !set["settle"] {
		c.Settle = p.Settle
	}
	if !set["drop-rate"] {
		c.DropRate = p.DropRate
	}
	if !set["churn-rate"] {
		c.ChurnRate = p.ChurnRate
	}
	if !set["check-memory-flat"] {
		c.CheckMemoryFlat = p.CheckMemoryFlat
	}
	if !set["client-engine"] {
		c.ClientEngine = ""
		if !set["drop-rate"] && !set["churn-rate"] && !set["abusers"] {
			c.ClientEngine = p.ClientEngine
		}
	}
	switch {
	case !set["abusers"]:
		c.Abusers = p.Abusers
	case c.Abusers == "true":
		c.Abusers = "on"
	case c.Abusers == "false":
		c.Abusers = "off"
	}
	// The scenario's server arguments come first: --server-arg wins.
	c.ServerArgs = append(p.ServerArgs[:len(p.ServerArgs):len(p.ServerArgs)], c.ServerArgs...)
	if c.Mix, err = ParseMix(mix); err != nil {
		return Config{}, fmt.Errorf("--mix: %w", err)
	}
	if c.CompareBaseline {
		c.Spawn = true
	}
	return c, c.Validate()
}

// Validate reports settings that cannot work, including any target that is
// not on loopback.
func (c *Config) Validate() error {
	var errs []error
	if c.Conns <= 0 {
		errs = append(errs, fmt.Errorf("conns must be positive, got %d", c.Conns))
	}
	if c.Rate < 0 || c.Match < 0 || c.EventSize < 0 {
		errs = append(errs, errors.New("rate, match and event-size must not be negative"))
	}
	if c.Duration <= 0 {
		errs = append(errs, fmt.Errorf("duration must be positive, got %s", c.Duration))
	}
	if c.ConnectConcurrency <= 0 {
		errs = append(errs, fmt.Errorf("connect-concurrency must be positive, got %d", c.ConnectConcurrency))
	}
	if c.DropRate < 0 || c.ChurnRate < 0 || c.DropRate+c.ChurnRate > 1 {
		errs = append(errs, fmt.Errorf("drop-rate and churn-rate must be fractions (0…1 together), got %g and %g", c.DropRate, c.ChurnRate))
	}
	switch c.ClientEngine {
	case "", "goroutine":
	case "loop", "uring":
		if c.chaotic() {
			errs = append(errs, fmt.Errorf("--client-engine %s has no resume or ack logic: --drop-rate and --churn-rate need --client-engine goroutine", c.ClientEngine))
		}
	default:
		errs = append(errs, fmt.Errorf("--client-engine: want loop, uring or goroutine, got %q", c.ClientEngine))
	}
	if c.ClientCoalesce < 0 || c.ClientCoalesce > 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("--client-coalesce must be 0…10ms, got %s", c.ClientCoalesce))
	}
	if c.ClientLoops < 0 {
		errs = append(errs, fmt.Errorf("--client-loops must not be negative, got %d", c.ClientLoops))
	}
	if c.ProgressInterval <= 0 {
		errs = append(errs, errors.New("progress-interval must be positive"))
	}
	if len(c.Mix) == 0 {
		errs = append(errs, errors.New("the filter mix is empty"))
	}
	switch c.Abusers {
	case "", "off":
	case "on", "both":
		if !c.AbusersOnly && (c.PublishOnly || c.Rate <= 0) {
			errs = append(errs, errors.New("--abusers needs connections and a publish rate (not --publish-only, not --rate 0)"))
		}
	default:
		errs = append(errs, fmt.Errorf("--abusers: want off, on or both, got %q", c.Abusers))
	}
	for _, k := range c.abuserKinds() {
		if !slices.ContainsFunc(abuserKinds, func(a abuserKind) bool { return a.name == k }) {
			errs = append(errs, fmt.Errorf("--abuser-kinds: no abuser %q (want some of %s)", k, abuserNames()))
		}
	}
	for _, p := range []struct{ flag, list string }{{"--abuser-cpus", c.AbuserCPUs}, {"--server-cpus", c.ServerCPUs}} {
		if p.list == "" {
			continue
		}
		if !cpuList.MatchString(p.list) {
			errs = append(errs, fmt.Errorf("%s: want a CPU list such as 1 or 0,2-3, got %q", p.flag, p.list))
		} else if _, err := exec.LookPath("taskset"); err != nil {
			errs = append(errs, fmt.Errorf("%s needs taskset (util-linux), which is not in PATH: install it, or leave %s out and pin nothing", p.flag, p.flag))
		}
	}
	if c.ServerCPUs != "" && !c.Spawn {
		errs = append(errs, errors.New("--server-cpus pins a server the load tester spawns (--spawn); pin your own server with taskset yourself"))
	}
	if c.CompareBaseline {
		switch {
		case !c.Spawn:
			errs = append(errs, errors.New("--compare-baseline spawns both servers: it needs --spawn"))
		case c.PublishOnly || c.Rate <= 0:
			errs = append(errs, errors.New("--compare-baseline needs connections and a publish rate (not --publish-only, not --rate 0)"))
		case c.chaotic() || c.Abusers == "on" || c.Abusers == "both":
			errs = append(errs, errors.New("--compare-baseline compares plain delivery: not with --drop-rate, --churn-rate or --abusers (the baseline has no sessions)"))
		}
	}
	if c.AbusersOnly && (c.Spawn || c.PublishOnly) {
		errs = append(errs, errors.New("--abusers-only runs the abusers against --url: not with --spawn or --publish-only"))
	}
	if !c.Spawn {
		for _, u := range c.URLs() {
			if err := checkLoopbackURL(u, "ws"); err != nil {
				errs = append(errs, fmt.Errorf("--url: %w", err))
			}
		}
		if c.AdminURL != "" {
			if err := checkLoopbackURL(c.AdminURL, "http"); err != nil {
				errs = append(errs, fmt.Errorf("--admin-url: %w", err))
			}
		}
		if c.Rate > 0 && c.IngestSocket == "" && !c.AbusersOnly {
			errs = append(errs, errors.New("--ingest-socket is needed to publish events"))
		}
	} else if c.ServerBin == "" {
		errs = append(errs, errors.New("--spawn needs --server-bin"))
	}
	return errors.Join(errs...)
}

// cpuList is what taskset -c takes: CPUs and ranges (with an optional
// stride), comma-separated.
var cpuList = regexp.MustCompile(`^[0-9]+(-[0-9]+(:[0-9]+)?)?(,[0-9]+(-[0-9]+(:[0-9]+)?)?)*$`)

// groups is how many groups the connections are split into.
func (c *Config) groups(conns int) int {
	if c.Match <= 0 || c.Match >= conns {
		return 1
	}
	return (conns + c.Match - 1) / c.Match
}

// chaotic is whether connections are dropped or churned during the run.
func (c *Config) chaotic() bool { return c.DropRate > 0 || c.ChurnRate > 0 }

// engine is the client engine of the run: ClientEngine, or when empty,
// loop unless connections are dropped or churned or abusers run.
func (c *Config) engine() string {
	switch {
	case c.ClientEngine != "":
		return c.ClientEngine
	case c.chaotic() || c.Abusers == "on" || c.Abusers == "both":
		return "goroutine"
	default:
		return "uring"
	}
}

// abusive is whether this run has the abusers beside the healthy clients.
func (c *Config) abusive() bool { return c.Abusers == "on" }

// abuserKinds returns the names --abuser-kinds lists; nil for all.
func (c *Config) abuserKinds() []string {
	if c.AbuserKinds == "" {
		return nil
	}
	return strings.Split(c.AbuserKinds, ",")
}

func (c *Config) name() string {
	if c.Name != "" {
		return c.Name
	}
	return c.Scenario
}

// checkLoopbackURL refuses a URL whose host is not a loopback address: the
// load tester must never send traffic off this machine. Only loopback IP
// literals and "localhost" are taken; no other name is resolved, so no DNS
// answer can point the load tester elsewhere.
func checkLoopbackURL(raw, scheme string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(u.Scheme, scheme) {
		return fmt.Errorf("%q: want a %s:// URL", raw, scheme)
	}
	host := u.Hostname()
	switch ip := net.ParseIP(host); {
	case host == "":
		return fmt.Errorf("%q has no host", raw)
	case ip != nil && ip.IsLoopback(), host == "localhost":
		return nil
	case ip != nil:
		return fmt.Errorf("refusing non-loopback host %s: the load tester only targets 127.0.0.0/8, ::1 or localhost", host)
	default:
		return fmt.Errorf("refusing host name %s: the load tester only targets loopback; give 127.0.0.1, [::1] or localhost", host)
	}
}

// Mix is the weighted set of filter kinds the connections subscribe with:
// connection i takes the kind at position i of the weighted round robin.
type Mix []MixEntry

// MixEntry is one filter kind and its weight.
type MixEntry struct {
	Kind   FilterKind
	Weight int
}

// DefaultMix uses every filter kind equally.
func DefaultMix() Mix {
	m := make(Mix, 0, len(filterKinds))
	for k := range filterKinds {
		m = append(m, MixEntry{Kind: FilterKind(k), Weight: 1})
	}
	return m
}

// ParseMix reads "incident:2,label:1" (a kind without weight weighs 1).
func ParseMix(s string) (Mix, error) {
	var m Mix
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, hasW := strings.Cut(part, ":")
		weight := 1
		if hasW {
			n, err := strconv.Atoi(w)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("weight of %q must be a non-negative integer", name)
			}
			weight = n
		}
		k, ok := kindByName(name)
		if !ok {
			return nil, fmt.Errorf("unknown filter kind %q (want %s)", name, strings.Join(filterKindNames(), ", "))
		}
		if weight > 0 {
			m = append(m, MixEntry{Kind: k, Weight: weight})
		}
	}
	if len(m) == 0 {
		return nil, errors.New("no filter kind with a positive weight")
	}
	return m, nil
}

func (m Mix) String() string {
	parts := make([]string, len(m))
	for i, e := range m {
		parts[i] = e.Kind.String() + ":" + strconv.Itoa(e.Weight)
	}
	return strings.Join(parts, ",")
}

// kindOf returns the filter kind of connection i.
func (m Mix) kindOf(i int) FilterKind {
	total := 0
	for _, e := range m {
		total += e.Weight
	}
	r := i % total
	for _, e := range m {
		if r < e.Weight {
			return e.Kind
		}
		r -= e.Weight
	}
	return m[0].Kind
}

func filterKindNames() []string {
	names := make([]string, len(filterKinds))
	for i, k := range filterKinds {
		names[i] = k.name
	}
	sort.Strings(names)
	return names
}

// URLs returns the WebSocket URLs: connection i dials URLs()[i mod len].
// Several URLs are a fleet's instances; /metrics and RSS are read from the
// instance of AdminURL (and --server-pid) only.
func (c *Config) URLs() []string { return splitList(c.URL) }

// IngestSockets returns the ingest sockets: batch b is published through
// IngestSockets()[b mod len].
func (c *Config) IngestSockets() []string { return splitList(c.IngestSocket) }

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
