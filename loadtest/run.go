package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"

	"github.com/flarecast/flarecast/producer"
)

// runner is the state of one run.
type runner struct {
	cfg       Config
	urls      []string // cfg.URLs(): one per fleet instance
	progress  io.Writer
	tty       bool
	base      time.Time // the start of the run, for timeline offsets
	groups    int
	groupSize []int64
	lat       *recorder
	inflated  *inflateCache
	closing   atomic.Bool

	clients     []*client   // by connection index; nil where the connection failed
	loops       *loopEngine // the loop engine's event loops; nil with the goroutine engine
	readersDone sync.WaitGroup
	dropped     atomic.Int64 // connections the server closed during the run
	attempted   atomic.Int64
	held        atomic.Int64
	deflate     atomic.Int64
	failMu      sync.Mutex
	failures    map[string]int

	accMu       sync.Mutex
	accepted    bitset // seqs the server accepted
	published   atomic.Int64
	acceptedN   atomic.Int64
	rejected    atomic.Int64
	unconfirmed atomic.Int64
	expected    atomic.Int64
	firstError  atomic.Value // string

	phase     atomic.Value // string
	serverPID int
	mc        *metricsClient

	tlMu     sync.Mutex
	total    *hdrhistogram.Histogram
	timeline []Sample
	memory   []MemSample
	flat     *Flatness

	warnMu   sync.Mutex
	warnings []string

	// chaos and soak (chaos.go)
	chaotic                           bool // connections are dropped or churned: clients ack and reconnect
	historyGaps, acks, resets, closes atomic.Int64
	resumed, notResumed, churned      atomic.Int64
	reconnectFailures                 atomic.Int64
}

// now is the clock events are stamped with and deliveries read against:
// Unix time in ns, so that clients run by another tool (k6) can compute
// the same latency from the same field.
func (r *runner) now() int64 { return time.Now().UnixNano() }

func (r *runner) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.warnMu.Lock()
	r.warnings = append(r.warnings, msg)
	r.warnMu.Unlock()
	fmt.Fprintf(r.progress, "\rflarecast-loadtest: warning: %s\n", msg)
}

// Run performs one load test as cfg describes and returns what it measured.
// Progress lines go to progress (stderr). The run is bounded: it ends after
// the connect phase (at most cfg.ConnectTimeout), cfg.Duration of publishing
// and at most cfg.DrainTimeout of draining, or when ctx ends. With
// cfg.Abusers "both" it runs twice (without, then with the abusers) and
// returns the second run's result with the comparison in Result.Abuse.
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if progress == nil {
		progress = io.Discard
	}
	if cfg.CompareBaseline {
		return runCompareBaseline(ctx, cfg, progress)
	}
	if cfg.Abusers == "both" {
		return runAbuseBoth(ctx, cfg, progress)
	}
	return runOne(ctx, cfg, progress)
}

// runOne is one run: with the abusers when cfg.Abusers is "on".
func runOne(ctx context.Context, cfg Config, progress io.Writer) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, progress: progress, lat: newRecorder(), inflated: newInflateCache(), total: newLatencyHistogram(),
		failures: map[string]int{}, base: time.Now(), chaotic: cfg.chaotic()}
	if f, ok := progress.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			r.tty = true
		}
	}
	// Progress lines come from the sampler, warnings and notes from any goroutine.
	r.progress = &lockedWriter{w: progress}
	r.phase.Store("start")
	res := &Result{Scenario: cfg.Scenario, Name: cfg.name(), Started: time.Now().UTC(), Command: strings.Join(os.Args, " ")}
	res.Machine.LoadAvgStart = loadAvg()

	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return nil, fmt.Errorf("cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("cpuprofile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	// Descriptors first: the connection count depends on them.
	want := cfg.Conns
	if cfg.PublishOnly {
		want = 0
	}
	lim, err := raiseNoFile(want)
	if err != nil {
		return nil, err
	}
	res.FDLimit = lim
	if lim.Capped {
		r.warn("%s", lim.Message)
	}
	n := lim.Allowed
	if cfg.PublishOnly {
		n = cfg.Conns
	}

	// The server: spawned here, or the one at cfg.URL.
	var srv *spawnedServer
	if cfg.Spawn {
		logPath := ""
		if cfg.Out != "" {
			if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
				return nil, fmt.Errorf("output directory: %w", err)
			}
			logPath = filepath.Join(cfg.Out, cfg.name()+"-server.log")
		}
		bin, lead, extra, env := cfg.ServerBin, []string(nil), cfg.ServerArgs, []string(nil)
		if cfg.baseline {
			// The raw-write baseline (baseline.go): this binary again.
			if bin, lead, env, err = baselineProgram(); err != nil {
				return nil, fmt.Errorf("baseline server: %w", err)
			}
			extra = nil
		}
		if srv, err = spawnServer(ctx, bin, lead, extra, env, cfg.ServerCPUs, logPath); err != nil {
			return nil, err
		}
		cfg.URL, cfg.AdminURL, cfg.IngestSocket, cfg.ServerPID = srv.url, srv.adminURL, srv.socket, srv.pid()
		res.Server.Spawned, res.Server.LogPath = true, logPath
		defer func() {
			if srv != nil {
				srv.stop()
			}
		}()
		if err := checkLoopbackURL(cfg.URL, "ws"); err != nil {
			return nil, err
		}
	}
	r.cfg = cfg
	r.urls = cfg.URLs()
	if cfg.Spawn {
		pinned := ""
		if cfg.ServerCPUs != "" {
			pinned = " on CPUs " + cfg.ServerCPUs
		}
		what := cfg.ServerBin
		if cfg.baseline {
			what = "the raw-write baseline"
		}
		fmt.Fprintf(progress, "flarecast-loadtest: spawned %s (pid %d%s): %s, admin %s, ingest %s\n",
			what, cfg.ServerPID, pinned, cfg.URL, cfg.AdminURL, cfg.IngestSocket)
	}
	r.mc = newMetricsClient(cfg.AdminURL)
	r.serverPID = cfg.ServerPID
	if r.serverPID == 0 {
		if port, err := urlPort(cfg.URL); err == nil {
			if pid, err := findListenerPID(port); err == nil {
				r.serverPID = pid
			} else {
				r.warn("server pid not found (%v): no /proc RSS; pass --server-pid", err)
			}
		}
	}
	res.Server.PID = r.serverPID
	res.Settings = Settings{Conns: n, Rate: cfg.Rate, DurationSec: cfg.Duration.Seconds(), Match: cfg.Match,
		Mix: cfg.Mix.String(), EventSize: cfg.EventSize, Compression: cfg.Compression, Spawn: cfg.Spawn,
		URL: cfg.URL, AdminURL: cfg.AdminURL, IngestSocket: cfg.IngestSocket, ForceGC: cfg.ForceGC, Abusers: cfg.Abusers}
	if cfg.Spawn {
		res.Settings.ServerBin, res.Settings.ServerArgs, res.Settings.ServerCPUs = cfg.ServerBin, cfg.ServerArgs, cfg.ServerCPUs
		if cfg.baseline {
			res.Settings.ServerBin, res.Settings.ServerArgs = "raw-write baseline ("+BaselineServerFlag+")", nil
		}
	}
	if cfg.abusive() {
		res.Settings.AbuserCPUs = cfg.AbuserCPUs
	}

	// Groups: connection i is in group i mod groups.
	r.groups = cfg.groups(n)
	r.groupSize = make([]int64, r.groups)
	for i := range n {
		r.groupSize[i%r.groups]++
	}
	res.Settings.Groups = r.groups

	// Memory before the first connection.
	if r.mc != nil {
		if m, err := r.mc.scrape(ctx); err == nil && m["websocket_active_connections"] > 0 {
			r.warn("the server already holds %.0f connections: per-connection memory is measured from its current state", m["websocket_active_connections"])
		}
	}
	before := r.readMemory(ctx)
	res.Server.RSSBefore, res.Server.MetricsRSSBefore, res.Server.HeapBefore = before.rss, before.metricsRSS, before.heap
	r.addMemSample("baseline", before)

	open := n
	if cfg.PublishOnly {
		open = 0 // the clients are someone else's (k6): groups still follow n
	}
	r.clients = make([]*client, open)
	res.Settings.ClientEngine = cfg.engine()
	if eng := cfg.engine(); open > 0 && (eng == "loop" || eng == "uring") {
		loops := cfg.ClientLoops
		if loops == 0 {
			loops = loopCount()
		}
		r.loops, err = newLoopEngine(r, loops, loopOpts{ring: eng == "uring", coalesce: cfg.ClientCoalesce})
		if errors.Is(err, errRingRefused) {
			r.warn("--client-engine uring: %v; using the loop engine", err)
			res.Settings.ClientEngine = "loop"
			r.loops, err = newLoopEngine(r, loops, loopOpts{})
		}
		if err == nil && res.Settings.ClientEngine == "uring" {
			res.Settings.ClientCoalesceUS = float64(cfg.ClientCoalesce) / float64(time.Microsecond)
		}
		if err != nil {
			return nil, err
		}
		defer r.loops.stop()
	}
	if r.loops != nil {
		res.Settings.Loops = len(r.loops.loops)
	}

	// Sampler: progress line, timeline and memory samples until the end.
	stopSampler := make(chan struct{})
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		r.sample(ctx, stopSampler)
	}()
	stopSampling := func() {
		if stopSampler != nil {
			close(stopSampler)
			<-samplerDone
			stopSampler = nil
		}
	}
	defer stopSampling()

	// Connect and subscribe.
	r.phase.Store("connect")
	connectStart := time.Now()
	r.connectAll(ctx, open)
	connectSec := time.Since(connectStart).Seconds()
	held := int(r.held.Load())
	res.Connections = ConnectionStats{Requested: cfg.Conns, Attempted: int(r.attempted.Load()), Held: held,
		Failed: int(r.attempted.Load()) - held, Failures: topReasons(r.failures, 8), Deflate: int(r.deflate.Load()),
		SourceAddrs: len(sourceAddrs(cfg.SourceAddrs, n)), ConnectSec: connectSec}
	if connectSec > 0 {
		res.Connections.ConnectRate = float64(held) / connectSec
	}
	if held < open {
		r.warn("%d of %d connections held (%d failed): %v", held, n, n-held, res.Connections.Failures)
	}
	if cfg.Compression && res.Connections.Deflate < held {
		r.warn("permessage-deflate offered but negotiated on %d of %d connections", res.Connections.Deflate, held)
	}

	// Memory with every connection subscribed and idle.
	if ctx.Err() == nil && !cfg.PublishOnly {
		r.phase.Store("settle")
		sleepCtx(ctx, cfg.Settle)
		after := r.readMemory(ctx)
		r.addMemSample("settled", after)
		sv := &res.Server
		sv.RSSAfter, sv.MetricsRSSAfter, sv.HeapAfter = after.rss, after.metricsRSS, after.heap
		sv.Goroutines, sv.ActiveConns, sv.ActiveSubs = after.goroutines, after.conns, after.subs
		if held > 0 {
			if sv.RSSAfter > 0 && sv.RSSBefore > 0 {
				sv.RSSPerConn = float64(sv.RSSAfter-sv.RSSBefore) / float64(held)
			}
			if sv.MetricsRSSAfter > 0 && sv.MetricsRSSBefore > 0 {
				sv.MetricsRSSPerConn = float64(sv.MetricsRSSAfter-sv.MetricsRSSBefore) / float64(held)
			}
			if sv.HeapAfter > 0 {
				sv.HeapPerConn = float64(sv.HeapAfter-sv.HeapBefore) / float64(held)
			}
		}
		if r.mc != nil && after.conns != int64(held) {
			r.warn("the server reports %d active connections, the load tester holds %d", after.conns, held)
		}
	}

	// Publish (or hold the idle connections) for the duration.
	profDone := make(chan struct{})
	if cfg.ServerCPUProfile != "" && r.mc != nil && ctx.Err() == nil {
		go func() {
			defer close(profDone)
			secs := max(1, min(cfg.ServerProfileSeconds, int(cfg.Duration.Seconds())))
			if err := r.mc.cpuProfile(ctx, secs, cfg.ServerCPUProfile); err != nil {
				r.warn("%v", err)
			}
		}()
	} else {
		close(profDone)
	}
	cpu0 := r.cpuSnapshot()
	pubStart := time.Now()
	var ab *abuserProcess // the abusers' process (abuseproc.go)
	var abusersCPU time.Duration
	var doneAt time.Time
	if ctx.Err() == nil && (held > 0 || cfg.PublishOnly) {
		if cfg.Rate > 0 {
			r.phase.Store("publish")
			stopChaos := make(chan struct{})
			var chaosDone sync.WaitGroup
			if r.chaotic && !cfg.PublishOnly {
				chaosDone.Add(1)
				go func() { defer chaosDone.Done(); r.chaos(stopChaos) }()
			}
			if cfg.CheckMemoryFlat {
				chaosDone.Add(1)
				go func() { defer chaosDone.Done(); r.sampleMemory(ctx, stopChaos) }()
			}
			if cfg.abusive() {
				r.phase.Store("abusers")
				ab = r.startAbuserProcess(ctx)
				r.phase.Store("publish")
			}
			if err := r.publish(ctx); err != nil {
				r.warn("publishing stopped: %v", err)
			}
			close(stopChaos)
			chaosDone.Wait()
			res.Events.PublishSec = time.Since(pubStart).Seconds()
			if cfg.CheckMemoryFlat {
				r.tlMu.Lock()
				t0 := pubStart.Sub(r.base).Seconds()
				r.flat = flatness(r.memory, t0, t0+res.Events.PublishSec)
				r.tlMu.Unlock()
			}
			if !cfg.PublishOnly {
				r.phase.Store("drain")
				drainStart := time.Now()
				doneAt = r.drain(ctx)
				res.Deliveries.DrainSec = doneAt.Sub(drainStart).Seconds()
			}
			if ab != nil {
				r.phase.Store("stop")
				res.Abuse = &AbuseReport{Abusers: ab.finish(r)}
				// The load tester's CPU includes its abusers' process.
				abusersCPU = ab.cpu()
			}
		} else {
			r.phase.Store("hold")
			sleepCtx(ctx, cfg.Duration)
			doneAt = time.Now()
		}
	}
	cpu1 := r.cpuSnapshot()
	cpu1.self += abusersCPU
	<-profDone
	if ctx.Err() != nil {
		r.warn("interrupted: %v", context.Cause(ctx))
	}

	// Server state at the end, before the clients go.
	end := r.readMemory(context.WithoutCancel(ctx))
	res.Server.RSSEnd, res.Server.HeapEnd = end.rss, end.heap
	res.Server.SlowConsumers = end.slow
	stopSampling()
	res.Loadtest.RSS, _ = procRSS(os.Getpid())

	// Close every client, then stop a spawned server, then account.
	r.closing.Store(true)
	heldAtEnd := int(r.held.Load() - r.dropped.Load())
	res.Machine.LoadAvgEnd = loadAvg()
	for _, c := range r.clients {
		if c != nil {
			c.end()
		}
	}
	if r.loops != nil {
		r.loops.stop()
	}
	if srv != nil {
		if err := srv.stop(); err != nil {
			res.Server.StopError = err.Error()
			r.warn("server stop: %v", err)
		}
		srv = nil
	}
	r.readersDone.Wait()
	res.Connections.HeldAtEnd = heldAtEnd

	r.account(res, pubStart, doneAt, cpu0, cpu1)
	res.Warnings = r.warnings
	res.OK = ctx.Err() == nil && res.Deliveries.Lost == 0 && res.Deliveries.Duplicates == 0 &&
		res.Deliveries.Unexpected == 0 && res.Deliveries.Malformed == 0 && res.Events.Rejected == 0 && res.Events.Unconfirmed == 0 &&
		res.Connections.Held == open && res.Connections.Dropped == 0
	if ch := res.Chaos; ch != nil {
		res.OK = res.OK && ch.ReconnectFailures == 0 && (ch.Memory == nil || ch.Memory.Flat)
	}
	if ab != nil && ab.err != nil {
		res.OK = false // the abusers did not run, or did not report
	}
	if res.Abuse != nil {
		res.Abuse.With = healthySummary(res)
		for _, a := range res.Abuse.Abusers {
			if a.Missing > 0 {
				res.Warnings = append(res.Warnings, fmt.Sprintf("the %s client never received %d events it was owed: the server took an ack for an id it never sent", a.Kind, a.Missing))
			}
		}
	}
	fmt.Fprint(r.progress, r.clearLine())
	return res, nil
}

// connectAll opens n connections into r.clients, at most ConnectConcurrency handshakes at a
// time and at most ConnectRate per second; each connection's goroutine
// becomes its reader once subscribed.
func (r *runner) connectAll(ctx context.Context, n int) {
	cfg := r.cfg
	runCtx := ctx // the sessions of chaos and soak outlive the connect phase
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	dialers := r.dialers(n)
	sem := make(chan struct{}, cfg.ConnectConcurrency)
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range n {
		if cfg.ConnectRate > 0 {
			sleepCtx(ctx, time.Until(begin.Add(time.Duration(float64(i)/cfg.ConnectRate*float64(time.Second)))))
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		r.attempted.Add(1)
		wg.Add(1)
		go func(i int) {
			c := &client{id: i, group: i % r.groups, kind: cfg.Mix.kindOf(i)}
			err := c.connect(ctx, dialers[i%len(dialers)], r.urls[i%len(r.urls)], cfg.HandshakeTimeout)
			<-sem
			if err != nil {
				r.failed(err)
				wg.Done()
				return
			}
			if c.deflate {
				r.deflate.Add(1)
			}
			if r.loops != nil {
				if err := r.loops.enroll(c); err != nil {
					r.failed(err)
					wg.Done()
					return
				}
				r.clients[i] = c
				r.held.Add(1)
				wg.Done()
				return
			}
			r.clients[i] = c
			r.held.Add(1)
			r.readersDone.Add(1)
			wg.Done()
			defer r.readersDone.Done()
			if r.chaotic {
				c.session(runCtx, r, dialers[i%len(dialers)])
				return
			}
			c.readLoop(r)
		}(i)
	}
	wg.Wait()
}

// dialers returns one gorilla dialer per loopback source address.
func (r *runner) dialers(n int) []*ws.Dialer {
	cfg := r.cfg
	host := ""
	if u, err := url.Parse(cfg.URL); err == nil {
		host = u.Hostname()
	}
	if ip := net.ParseIP(host); ip == nil || ip.To4() == nil {
		// IPv6 loopback has one address, and "localhost" may resolve to
		// it: no spreading over IPv4 source addresses.
		return []*ws.Dialer{newDialer((&net.Dialer{Timeout: cfg.HandshakeTimeout}).DialContext, cfg.Compression, cfg.HandshakeTimeout)}
	}
	ips := sourceAddrs(cfg.SourceAddrs, n)
	out := make([]*ws.Dialer, len(ips))
	for i, ip := range ips {
		out[i] = newDialer(dialerFrom(ip, cfg.HandshakeTimeout), cfg.Compression, cfg.HandshakeTimeout)
	}
	return out
}

var addrPattern = regexp.MustCompile(`\[?[0-9a-f.:]+\]?:\d+`)

func (r *runner) failed(err error) {
	key := addrPattern.ReplaceAllString(err.Error(), "ADDR")
	r.failMu.Lock()
	r.failures[key]++
	r.failMu.Unlock()
}

// publish sends events at cfg.Rate for cfg.Duration over one ingest
// connection. The schedule is open-loop: each millisecond it sends the
// events due by then, each stamped with the time it is written, and batches
// are pipelined so replies never hold the schedule back; if the server
// stops accepting (backpressure), the achieved rate shows it.
func (r *runner) publish(ctx context.Context) error {
	cfg := r.cfg
	// One producer per ingest socket: a fleet's instances take batches in turn.
	var pcs []*producer.Client
	for _, path := range cfg.IngestSockets() {
		pc, err := producer.Dial(ctx, path)
		if err != nil {
			return err
		}
		defer pc.Close()
		pcs = append(pcs, pc)
	}
	batches := 0
	r.accepted = make(bitset, int(cfg.Rate*cfg.Duration.Seconds())/64+1)
	// A batch holds at most 10 ms of events, and at most 100 ms of events
	// await their replies: when the server pushes back (its ring is full),
	// the schedule falls behind and the achieved rate shows it, instead of
	// events queueing here with their send times already stamped.
	maxBatch := uint64(max(cfg.Rate/100, 10))
	inflight := make(chan struct{}, 10)
	var wg sync.WaitGroup
	// The schedule ends after Duration even while waiting for a slot;
	// replies are awaited a while longer, so an event is only counted as
	// refused when the server said so (or never answered).
	schedule, stopSchedule := context.WithTimeout(ctx, cfg.Duration)
	defer stopSchedule()
	replies, stopReplies := context.WithTimeout(ctx, cfg.Duration+cfg.DrainTimeout+30*time.Second)
	defer stopReplies()
	// Each millisecond at most, or when the next event is due if later: a
	// wake-up that finds nothing due costs the load tester's cores more
	// than it seems (a sleeping process woken, on a small VM), and at a few
	// hundred events/s most 1 ms ticks found nothing.
	tick := time.NewTimer(time.Millisecond)
	defer tick.Stop()
	begin := time.Now()
	var seq uint64
	for schedule.Err() == nil {
		due := uint64(time.Since(begin).Seconds()*cfg.Rate) + 1 // the first event goes at once
		if due > seq {
			select {
			case inflight <- struct{}{}:
			case <-schedule.Done():
				continue
			}
			count := min(due-seq, maxBatch)
			buf := make([]byte, 0, int(count)*(cfg.EventSize+128))
			events := make([][]byte, count)
			for k := range count {
				s := seq + k
				start := len(buf)
				buf = appendEvent(buf, s, int(s%uint64(r.groups)), r.now(), cfg.EventSize)
				events[k] = buf[start:len(buf):len(buf)]
			}
			first := seq
			seq += count
			r.published.Add(int64(count))
			pc := pcs[batches%len(pcs)]
			batches++
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := pc.PublishBatch(replies, events)
				<-inflight
				r.recordPublished(first, res)
			}()
		}
		select {
		case <-tick.C:
			wait := max(time.Until(begin.Add(time.Duration(float64(seq)/cfg.Rate*float64(time.Second)))), time.Millisecond)
			tick.Reset(wait)
		case <-schedule.Done():
		}
	}
	wg.Wait()
	return nil
}

func (r *runner) recordPublished(first uint64, res []producer.Result) {
	var expected, accepted, rejected, unconfirmed int64
	r.accMu.Lock()
	for k, p := range res {
		s := first + uint64(k)
		if p.Err != nil {
			var refused *producer.Error
			if errors.As(p.Err, &refused) {
				rejected++
			} else {
				unconfirmed++ // no reply: the server may have accepted it
			}
			r.firstError.CompareAndSwap(nil, p.Err.Error())
			continue
		}
		r.accepted.set(s)
		accepted++
		expected += r.groupSize[s%uint64(r.groups)]
	}
	r.accMu.Unlock()
	r.acceptedN.Add(accepted)
	r.rejected.Add(rejected)
	r.unconfirmed.Add(unconfirmed)
	r.expected.Add(expected)
}

// drain waits until every expected delivery has arrived, or DrainTimeout,
// and returns when it stopped waiting.
func (r *runner) drain(ctx context.Context) time.Time {
	deadline := time.Now().Add(r.cfg.DrainTimeout)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if r.lat.count() >= r.expected.Load() {
			break
		}
		sleepCtx(ctx, 10*time.Millisecond)
	}
	return time.Now()
}

// memory is one reading of the server's memory.
type memory struct {
	rss, metricsRSS, heap         int64
	goroutines, conns, subs, slow int64
}

func (r *runner) readMemory(ctx context.Context) memory {
	var m memory
	if r.mc != nil && r.cfg.ForceGC {
		if err := r.mc.gc(ctx); err != nil {
			r.warn("%v", err)
			r.cfg.ForceGC = false
		} else {
			sleepCtx(ctx, 200*time.Millisecond)
		}
	}
	if r.serverPID > 0 {
		m.rss, _ = procRSS(r.serverPID)
	}
	if r.mc != nil {
		if s, err := r.mc.scrape(ctx); err == nil {
			m.metricsRSS = int64(s["process_resident_memory_bytes"])
			m.heap = int64(s["go_memstats_heap_inuse_bytes"])
			m.goroutines = int64(s["go_goroutines"])
			m.conns = int64(s["websocket_active_connections"])
			m.subs = int64(s["websocket_active_subscriptions"])
			m.slow = int64(s["websocket_slow_consumer_disconnects_total"])
		} else {
			r.warn("%v", err)
		}
	}
	return m
}

func (r *runner) addMemSample(phase string, m memory) {
	rss := m.rss
	if rss == 0 {
		rss = m.metricsRSS
	}
	r.tlMu.Lock()
	r.memory = append(r.memory, MemSample{T: time.Since(r.base).Seconds(), Phase: phase, Conns: int(r.held.Load()), RSS: rss, Heap: m.heap})
	r.tlMu.Unlock()
}

// sample runs until stop: every ProgressInterval it moves the interval's
// latencies into the totals, appends a timeline sample and prints the
// progress line; every quarter second it samples the server's RSS while
// connections are being opened.
func (r *runner) sample(ctx context.Context, stop <-chan struct{}) {
	iv := newLatencyHistogram()
	memTick := time.NewTicker(250 * time.Millisecond)
	defer memTick.Stop()
	progTick := time.NewTicker(r.cfg.ProgressInterval)
	defer progTick.Stop()
	last := time.Now()
	var lastCPU time.Duration
	if r.serverPID > 0 {
		lastCPU, _ = procCPU(r.serverPID)
	}
	var lastPublished int64
	memScrapes := 0
	flush := func() {
		now := time.Now()
		iv.Reset()
		r.lat.drain(iv)
		secs := now.Sub(last).Seconds()
		last = now
		q := quantilesOf(iv)
		s := Sample{T: time.Since(r.base).Seconds(), Phase: r.phase.Load().(string), Conns: int(r.held.Load()),
			Deliveries: iv.TotalCount(), PerSec: float64(iv.TotalCount()) / secs,
			P50: q.P50, P95: q.P95, P99: q.P99, Max: q.Max}
		pub := r.published.Load()
		s.Published, lastPublished = pub-lastPublished, pub
		if r.serverPID > 0 {
			s.ServerRSS, _ = procRSS(r.serverPID)
			cpu, _ := procCPU(r.serverPID)
			s.ServerCPUms = float64(cpu-lastCPU) / float64(time.Millisecond)
			lastCPU = cpu
		}
		r.tlMu.Lock()
		r.total.Merge(iv)
		s.CumP99 = float64(r.total.ValueAtQuantile(99)) / 1000
		// A last sliver of an interval would plot as a spurious dip.
		if final := r.phase.Load() == "done"; !final || secs >= r.cfg.ProgressInterval.Seconds()/2 {
			r.timeline = append(r.timeline, s)
		}
		r.tlMu.Unlock()
		r.printProgress(s, float64(s.Published)/secs)
	}
	for {
		select {
		case <-stop:
			r.phase.Store("done")
			flush()
			return
		case <-progTick.C:
			flush()
		case <-memTick.C:
			if r.phase.Load() != "connect" {
				continue
			}
			var m memory
			if r.serverPID > 0 {
				m.rss, _ = procRSS(r.serverPID)
			}
			// Scrapes cost the server: one a second while connecting.
			if r.mc != nil && memScrapes%4 == 0 {
				if s, err := r.mc.scrape(ctx); err == nil {
					m.metricsRSS, m.heap = int64(s["process_resident_memory_bytes"]), int64(s["go_memstats_heap_inuse_bytes"])
				}
			}
			memScrapes++
			r.addMemSample("connect", m)
		}
	}
}

func (r *runner) clearLine() string {
	if r.tty {
		return "\r\033[K"
	}
	return ""
}

func (r *runner) printProgress(s Sample, pubRate float64) {
	line := fmt.Sprintf("[%6.1fs] %-7s conns %s/%d", s.T, s.Phase, num(float64(s.Conns)), len(r.clients))
	if len(r.clients) == 0 {
		line = fmt.Sprintf("[%6.1fs] %-7s conns %s", s.T, s.Phase, num(float64(s.Conns)))
	}
	if r.cfg.Rate > 0 {
		line += fmt.Sprintf(" | ingest %s/s | %s deliveries/s | p99 %s (so far %s)",
			num(pubRate), num(s.PerSec), ms(s.P99), ms(s.CumP99))
	}
	if s.ServerRSS > 0 {
		line += " | server RSS " + bytesText(s.ServerRSS)
	}
	if r.tty {
		fmt.Fprint(r.progress, "\r\033[K"+line)
	} else {
		fmt.Fprintln(r.progress, line)
	}
}

// cpu is a snapshot of who used the machine's CPUs.
type cpu struct {
	at                  time.Time
	server, self        time.Duration
	machBusy, machTotal int64
}

func (r *runner) cpuSnapshot() cpu {
	c := cpu{at: time.Now(), self: selfCPU()}
	if r.serverPID > 0 {
		c.server, _ = procCPU(r.serverPID)
	}
	c.machBusy, c.machTotal = machineCPU()
	return c
}

// account fills in the result's delivery, event, connection and CPU figures
// once every reader goroutine has exited.
func (r *runner) account(res *Result, pubStart, doneAt time.Time, c0, c1 cpu) {
	G := uint64(r.groups)
	published := uint64(r.published.Load())
	d := &res.Deliveries
	dropped := map[string]int{}
	var replayDups, outOfOrder int64
	notes := 0
	for _, c := range r.clients {
		if c == nil {
			continue
		}
		d.Duplicates += c.dups
		replayDups += c.replayDups
		if c.dupNote != "" && notes < 5 {
			notes++
			r.warnings = append(r.warnings, fmt.Sprintf("illegal duplicate: connection %d: %s", c.id, c.dupNote))
		}
		outOfOrder += c.outOfOrder
		d.Unexpected += c.unexpected
		d.Malformed += c.malformed
		if c.closeNote != "" {
			res.Connections.Dropped++
			dropped[addrPattern.ReplaceAllString(c.closeNote, "ADDR")]++
		}
		for idx, s := uint64(0), uint64(c.group); s < published; idx, s = idx+1, s+G {
			if r.accepted.has(s) && !c.got.has(idx) {
				if d.Lost < 10 && r.chaotic {
					r.warnings = append(r.warnings, fmt.Sprintf("lost: connection %d (group %d, %d reconnects, max message_id %d, last ack %d, replay floor %d) never received seq %d; first gap: %s",
						c.id, c.group, c.reconnects, c.maxID, c.connAcked, c.sureFloor, s, c.gapNote))
				}
				d.Lost++
			}
		}
	}
	res.Connections.DroppedReasons = topReasons(dropped, 8)
	if r.chaotic || r.cfg.CheckMemoryFlat {
		res.Chaos = &ChaosStats{DropRate: r.cfg.DropRate, ChurnRate: r.cfg.ChurnRate,
			Resets: r.resets.Load(), Closes: r.closes.Load(), Resumed: r.resumed.Load(), NotResumed: r.notResumed.Load(),
			Churned: r.churned.Load(), ReconnectFailures: r.reconnectFailures.Load(), HistoryGaps: r.historyGaps.Load(),
			Acks: r.acks.Load(), ReplayDuplicates: replayDups, OutOfOrder: outOfOrder, Memory: r.flat}
	}
	d.Expected = r.expected.Load()
	d.Received = r.lat.count()
	if !doneAt.IsZero() && r.cfg.Rate > 0 {
		if secs := doneAt.Sub(pubStart).Seconds(); secs > 0 {
			d.PerSecond = float64(d.Received) / secs
		}
	}
	res.Latency = quantilesOf(r.total)
	res.Timeline, res.Memory = r.timeline, r.memory
	for _, s := range r.timeline {
		if s.Phase == "publish" && s.PerSec > d.PeakPerSec {
			d.PeakPerSec = s.PerSec
		}
	}
	if d.Expected != d.Received+d.Lost {
		r.warnings = append(r.warnings, fmt.Sprintf("accounting mismatch: expected %d ≠ received %d + lost %d", d.Expected, d.Received, d.Lost))
	}

	e := &res.Events
	e.TargetRate = r.cfg.Rate
	e.Published, e.Accepted, e.Rejected, e.Unconfirmed = r.published.Load(), r.acceptedN.Load(), r.rejected.Load(), r.unconfirmed.Load()
	if v, ok := r.firstError.Load().(string); ok {
		e.FirstError = v
	}
	if e.PublishSec > 0 {
		e.AchievedRate = float64(e.Accepted) / e.PublishSec
	}
	if e.Accepted > 0 {
		e.MatchPerEvent = float64(d.Expected) / float64(e.Accepted)
	}

	wall := c1.at.Sub(c0.at).Seconds()
	m := &res.Machine
	m.Cores = machineCores()
	if wall > 0 {
		m.ServerCores = (c1.server - c0.server).Seconds() / wall
		m.LoadCores = (c1.self - c0.self).Seconds() / wall
		if dt := c1.machTotal - c0.machTotal; dt > 0 {
			m.BusyCores = float64(c1.machBusy-c0.machBusy) / float64(dt) * float64(m.Cores)
		}
		m.OtherCores = max(m.BusyCores-m.ServerCores-m.LoadCores, 0)
	}
	res.Server.CPUSec = (c1.server - c0.server).Seconds()
	if d.Received > 0 {
		res.Server.CPUSecPer100kDeliv = res.Server.CPUSec / float64(d.Received) * 1e5
	}
	res.Loadtest.CPUSec = (c1.self - c0.self).Seconds()
	if d.Received > 0 {
		res.Loadtest.CPUPerDeliveryUS = res.Loadtest.CPUSec / float64(d.Received) * 1e6
	}
}

// lockedWriter serializes writes to w (fmt writes each line in one call).
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
