// Package engine is flarecast's server core: the gnet reactor that speaks
// WebSocket to clients, the dispatcher that matches each accepted event
// against every subscription once, and the glue between them.
//
// Data flows one way: Publish (called by the ingest socket, HTTP ingest or an embedding
// program) validates nothing itself — it takes a parsed event.Event — and
// puts it into the ring, whose sequence number becomes the event's
// message_id; the dispatcher goroutine takes events from the ring in order,
// encodes each once, finds the matching sessions in the filter index, and
// queues the same frame for each of their connections; each event loop
// writes its connections' queued frames with one writev per connection.
package engine

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/flarecast/flarecast/adapter"
	"github.com/flarecast/flarecast/broker"
	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/ingest"
	"github.com/flarecast/flarecast/ring"
)

// Engine is one flarecast server. Create it with New, start it with Run.
type Engine struct {
	cfg      Config
	log      *slog.Logger
	metrics  *engineMetrics
	disp     *dispatcher
	broker   *broker.Redis       // nil on a single instance
	tailing  atomic.Bool         // the broker tailer runs (readiness)
	tokens   [][sha256.Size]byte // HTTP ingest's bearer tokens (digests)
	adapters *ingest.Adapters    // HTTP ingest's alert-source webhooks
	limits   connLimiter         // connections per server and per client address

	loopsMu sync.Mutex
	loops   map[gnet.EventLoop]*loop

	ringRefused sync.Once // --io-uring refused: said once, not per loop

	gnetEng   gnet.Engine
	bootedCh  chan struct{}
	addr      net.Addr
	adminAddr net.Addr
	httpAddr  net.Addr // the HTTP ingest listener's, once Run opened it
	stopping  atomic.Bool
	started   time.Time     // the engine clock's zero
	churn     atomic.Uint64 // connections opened plus connections closed (memory.go)

	// The rate limiters' buckets, derived once from cfg (limits.go).
	rateInterval, rateTolerance int64
	inputNsPerByte              float64 // 0: no input rate
	inputTolerance              int64
}

// ErrStopped is returned by Publish once the engine is shutting down.
var ErrStopped = errors.New("flarecast: engine stopped")

// New checks cfg and builds an engine; nothing listens until Run.
func New(cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{
		cfg:      cfg,
		log:      log,
		metrics:  newEngineMetrics(),
		loops:    make(map[gnet.EventLoop]*loop),
		bootedCh: make(chan struct{}),
		started:  time.Now(),
	}
	if cfg.RateLimit > 0 {
		e.rateInterval, e.rateTolerance, _ = rateBucket(cfg.RateLimit, cfg.RateBurst) // Validate checked it
	}
	if cfg.MaxInputRate > 0 {
		e.inputNsPerByte = float64(time.Second) / float64(cfg.MaxInputRate)
		e.inputTolerance = int64(inputBurst * time.Second)
	}
	e.disp = newDispatcher(e)
	if cfg.IngestListen != "" {
		if cfg.IngestTokenFile != "" {
			tokens, err := ingest.LoadTokens(cfg.IngestTokenFile)
			if err != nil {
				return nil, err
			}
			e.tokens = tokens
		}
		e.metrics.addHTTPIngest()
		acfg := adapter.Default()
		if cfg.AdaptersConfig != "" {
			loaded, err := adapter.Load(cfg.AdaptersConfig)
			if err != nil {
				return nil, err
			}
			acfg = loaded
		}
		e.adapters = &ingest.Adapters{
			Config:  acfg,
			Dedupe:  adapter.NewDedupe(acfg.Dedupe.MaxKeys, time.Duration(acfg.Dedupe.Window)),
			Observe: e.metrics.addAdapters(),
		}
	}
	if cfg.Broker != "" {
		b, err := broker.NewRedis(cfg.Broker, cfg.HistorySize, broker.MinReplicas(cfg.BrokerMinReplicas))
		if err != nil {
			return nil, err
		}
		e.broker = b
		e.metrics.addBroker()
		e.metrics.addSessionStore()
		e.disp.sync = newSessionSync(b.Sessions(), cfg.SessionTimeout, e.log, e.metrics.sessionStoreFailures.Inc)
		e.disp.claiming = make(map[*conn]struct{})
		e.metrics.set.NewGauge("flarecast_broker_up", func() float64 { return b2f(b.Up()) })
		e.metrics.set.NewGauge("flarecast_broker_reconnects_total", func() float64 { return float64(b.Reconnects()) })
		e.metrics.set.NewGauge("flarecast_broker_lag_events", func() float64 {
			newest, done := b.Newest(), e.metrics.lastDispatched.Load()
			if newest < done {
				return 0
			}
			return float64(newest - done)
		})
	}
	return e, nil
}

// Publish accepts one validated event and returns its message_id. It waits
// while the ring is full (backpressure reaches the producer; nothing is
// dropped) and fails only when ctx ends first or the engine is stopping.
func (e *Engine) Publish(ctx context.Context, ev *event.Event) (uint64, error) {
	ev.Accepted = time.Now()
	if e.broker != nil {
		return e.appendToBroker(ctx, ev)
	}
	id, err := e.disp.ring.Publish(ctx, ev)
	if errors.Is(err, ring.ErrClosed) {
		return 0, ErrStopped
	}
	if err != nil {
		return 0, err
	}
	e.metrics.ingestAccepted.Inc()
	return id, nil
}

// ErrUnavailable wraps a publish the fleet's broker could not store: the
// event was not accepted and the producer may retry.
var ErrUnavailable = errors.New("flarecast: broker unavailable")

// appendToBroker stores the event in the fleet's stream; it reaches this
// instance's ring, like every other instance's, through the tailer.
func (e *Engine) appendToBroker(ctx context.Context, ev *event.Event) (uint64, error) {
	if e.stopping.Load() {
		return 0, ErrStopped
	}
	start := time.Now()
	id, err := e.broker.Append(ctx, ev.JSON, ev.Accepted)
	if err != nil {
		if errors.Is(err, broker.ErrNotReplicated) {
			e.metrics.brokerUnreplicated.Inc()
		}
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	e.metrics.brokerAppend.UpdateDuration(start)
	e.metrics.ingestAccepted.Inc()
	return id, nil
}

// tail feeds the local ring from the fleet's stream until ctx ends. An
// entry it cannot read is skipped (logged, counted): one bad write to the
// stream must not stop the fleet. Events it cannot deliver any more become
// a gap marker, which gives the sessions HISTORY_GAP.
func (e *Engine) tail(ctx context.Context) error {
	e.tailing.Store(true)
	defer e.tailing.Store(false)
	return e.broker.Tail(ctx, 0, func(entry broker.Entry) error {
		if entry.GapFrom != 0 {
			e.metrics.brokerGaps.Inc()
			e.log.Warn("events of the broker stream will not be delivered here; sessions get HISTORY_GAP",
				"from", entry.GapFrom, "continuing_from", entry.ID)
			return e.disp.publishGap(ctx, entry.GapFrom, entry.ID)
		}
		if entry.Err != nil {
			e.metrics.brokerCorrupt.Inc()
			e.log.Error("skipping an undecodable entry of the broker stream", "message_id", entry.ID, "err", entry.Err)
			return nil
		}
		ev, err := event.ParseAccepted(entry.Data)
		if err != nil {
			e.metrics.brokerCorrupt.Inc()
			e.log.Error("skipping an unreadable event in the broker stream", "message_id", entry.ID, "err", err)
			return nil
		}
		ev.ID, ev.Accepted = entry.ID, entry.Accepted
		if _, err := e.disp.ring.Publish(ctx, ev); err != nil {
			return err
		}
		return nil
	})
}

// clock reads the engine's monotonic clock: nanoseconds since New. Per
// connection timestamps are this int64, not a 24-byte time.Time.
func (e *Engine) clock() int64 { return int64(time.Since(e.started)) }

// Rejected counts an ingest line that failed validation.
func (e *Engine) Rejected() { e.metrics.ingestRejected.Inc() }

// PublishJSON validates one event (a JSON object) exactly as the ingest
// socket does and publishes it: the ingest server calls it for every line,
// so an embedding program gets the same validation, the same message_ids
// and the same rejection counts. An invalid event returns an *event.Error;
// any other error means the event was not accepted (ErrStopped, ctx).
// line is not retained.
func (e *Engine) PublishJSON(ctx context.Context, line []byte) (uint64, error) {
	ev, err := e.parseLine(line)
	if err != nil {
		return 0, err
	}
	return e.Publish(ctx, ev)
}

// PublishJSONBatch is PublishJSON for several lines, setting ids[i] or
// errs[i] for each, in order. A fleet appends the valid events to its
// broker in one pipelined round trip instead of one per event; a single
// instance publishes them one by one into the ring.
func (e *Engine) PublishJSONBatch(ctx context.Context, lines [][]byte, ids []uint64, errs []error) {
	if e.broker == nil || len(lines) == 1 {
		for i, line := range lines {
			ids[i], errs[i] = e.PublishJSON(ctx, line)
		}
		return
	}
	if e.stopping.Load() {
		for i := range lines {
			errs[i] = ErrStopped
		}
		return
	}
	entries := make([]broker.Entry, len(lines))
	now := time.Now()
	for i, line := range lines {
		ev, err := e.parseLine(line)
		if err != nil {
			errs[i] = err
			continue
		}
		entries[i] = broker.Entry{Data: ev.JSON, Accepted: now}
	}
	start := time.Now()
	e.broker.AppendBatch(ctx, entries, errs)
	e.metrics.brokerAppend.UpdateDuration(start)
	for i := range entries {
		switch {
		case entries[i].Data == nil:
		case errs[i] != nil:
			if errors.Is(errs[i], broker.ErrNotReplicated) {
				e.metrics.brokerUnreplicated.Inc()
			}
			errs[i] = fmt.Errorf("%w: %v", ErrUnavailable, errs[i])
		default:
			ids[i] = entries[i].ID
			e.metrics.ingestAccepted.Inc()
		}
	}
}

// parseLine validates one event line as the ingest socket does, counting
// a refusal.
func (e *Engine) parseLine(line []byte) (*event.Event, error) {
	if len(line) > e.cfg.MaxMessageSize {
		e.Rejected()
		return nil, &event.Error{Message: fmt.Sprintf("line of %d bytes exceeds max-message-size (%d)", len(line), e.cfg.MaxMessageSize)}
	}
	ev, err := event.Parse(line)
	if err != nil {
		e.Rejected()
		return nil, err
	}
	return ev, nil
}

// Addr returns the WebSocket listener's address once Run has started
// listening (useful with port 0), or nil.
func (e *Engine) Addr() net.Addr {
	select {
	case <-e.bootedCh:
		return e.addr
	default:
		return nil
	}
}

// Ready is closed once the WebSocket listener accepts connections.
func (e *Engine) Ready() <-chan struct{} { return e.bootedCh }

// Run serves until ctx is cancelled, then shuts down gracefully: producers
// are refused, every accepted event is dispatched and written, each client
// gets `closing` (server_shutdown) and a 1001 close frame. It returns nil
// after a clean shutdown, or the first listener that could not be opened.
func (e *Engine) Run(ctx context.Context) error {
	var ingestLn, adminLn, httpLn net.Listener
	var err error
	if e.cfg.IngestSocket != "" {
		if ingestLn, err = ingest.Listen(e.cfg.IngestSocket); err != nil {
			return err
		}
		defer os.Remove(e.cfg.IngestSocket)
	}
	closeListeners := func() {
		for _, ln := range []net.Listener{ingestLn, adminLn, httpLn} {
			if ln != nil {
				ln.Close()
			}
		}
	}
	if e.cfg.AdminListen != "" {
		if adminLn, err = net.Listen("tcp", e.cfg.AdminListen); err != nil {
			closeListeners()
			return fmt.Errorf("admin listener: %w", err)
		}
		e.adminAddr = adminLn.Addr()
	}
	if e.cfg.IngestListen != "" {
		if httpLn, err = net.Listen("tcp", e.cfg.IngestListen); err != nil {
			closeListeners()
			return fmt.Errorf("HTTP ingest listener: %w", err)
		}
		e.httpAddr = httpLn.Addr()
	}

	dispDone := make(chan struct{})
	go func() {
		defer close(dispDone)
		e.disp.run()
	}()
	hkCtx, stopHK := context.WithCancel(context.Background())
	defer stopHK()

	gnetErr := make(chan error, 1)
	go func() {
		gnetErr <- gnet.Run(&handler{eng: e}, "tcp://"+e.cfg.Listen,
			gnet.WithMulticore(true),
			gnet.WithNumEventLoop(e.cfg.EventLoops),
			gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithLogger(gnetLogger{e.log}),
		)
	}()
	select {
	case <-e.bootedCh:
	case err := <-gnetErr:
		e.disp.ring.Close()
		<-dispDone
		closeListeners()
		return fmt.Errorf("WebSocket listener %s: %w", e.cfg.Listen, err)
	}
	e.probeRing()
	go e.housekeeper(hkCtx)
	if e.cfg.ReturnMemory {
		go e.returnMemory(hkCtx)
	}
	tailCtx, stopTail := context.WithCancel(context.Background())
	defer stopTail()
	tailDone := make(chan struct{})
	if e.broker != nil {
		go func() {
			defer close(tailDone)
			if err := e.tail(tailCtx); err != nil && tailCtx.Err() == nil {
				e.log.Error("broker tail stopped", "err", err)
			}
		}()
	} else {
		close(tailDone)
	}
	syncCtx, stopSync := context.WithCancel(context.Background())
	defer stopSync()
	syncDone := make(chan struct{})
	if y := e.disp.sync; y != nil {
		go func() {
			defer close(syncDone)
			y.run(syncCtx,
				func(r *claimRequest) { e.disp.cmds.push(command{kind: cmdRestore, claim: r}) },
				func(id string) { e.disp.cmds.push(command{kind: cmdReleased, resumeID: id}) })
		}()
	} else {
		close(syncDone)
	}

	ingestCtx, stopIngest := context.WithCancel(context.Background())
	defer stopIngest()
	ingestDone := make(chan struct{})
	if ingestLn != nil {
		srv := &ingest.Server{Publisher: e, MaxLineSize: e.cfg.MaxMessageSize, Logger: e.log}
		go func() {
			defer close(ingestDone)
			if err := srv.Serve(ingestCtx, ingestLn); err != nil {
				e.log.Error("ingest socket stopped", "err", err)
			}
		}()
	} else {
		close(ingestDone)
	}
	httpDone := make(chan struct{})
	if httpLn != nil {
		srv := &ingest.HTTPServer{
			Publisher: e, MaxLineSize: e.cfg.MaxMessageSize, MaxBody: e.cfg.IngestMaxBody,
			Tokens: e.tokens, Insecure: e.cfg.IngestInsecure,
			Observe: e.metrics.httpIngestRequest, Logger: e.log, Adapters: e.adapters,
		}
		go func() {
			defer close(httpDone)
			if err := srv.Serve(ingestCtx, httpLn); err != nil {
				e.log.Error("HTTP ingest stopped", "err", err)
			}
		}()
	} else {
		close(httpDone)
	}
	var admin *http.Server
	if adminLn != nil {
		admin = &http.Server{Handler: e.AdminHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = admin.Serve(adminLn) }()
	}
	e.log.Info("flarecast serving", "websocket", e.addr.String()+e.cfg.Path,
		"admin", addrString(e.adminAddr), "ingest", e.cfg.IngestSocket, "ingest_http", addrString(e.httpAddr))

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-gnetErr:
		runErr = fmt.Errorf("event loops stopped: %w", err)
	}
	e.stopping.Store(true)

	// Graceful shutdown: stop producers, drain the ring, then say goodbye
	// on every loop, then stop the loops.
	stopIngest()
	<-ingestDone
	<-httpDone // in-flight HTTP requests finished (within their grace)
	stopTail()
	<-tailDone
	e.disp.ring.Close()
	<-dispDone
	stopSync()
	<-syncDone
	if y := e.disp.sync; y != nil {
		// What the dispatcher queued last (detaches, acks) reaches the
		// store, so the sessions resume elsewhere from there.
		flushCtx, cancel := context.WithTimeout(context.Background(), claimTimeout)
		y.flush(flushCtx)
		cancel()
	}
	if e.broker != nil {
		e.broker.Close()
	}
	stopHK()
	if runErr == nil {
		var wg sync.WaitGroup
		for _, l := range e.allLoops() {
			wg.Add(1)
			if err := l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
				l.shutdown(wg.Done)
				return nil
			})); err != nil {
				wg.Done()
			}
		}
		waitTimeout(&wg, 3*time.Second)
		e.drainConnections(5 * time.Second)
		stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.gnetEng.Stop(stopCtx); err != nil {
			runErr = fmt.Errorf("stop event loops: %w", err)
		}
		<-gnetErr
	}
	for _, l := range e.allLoops() {
		l.closeRing() // the loops have stopped: nothing uses the rings
	}
	if admin != nil {
		shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = admin.Shutdown(shutCtx)
		cancel()
	}
	e.log.Info("flarecast stopped")
	return runErr
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// readiness reports why the engine should not get new clients, if it should not.
func (e *Engine) readiness() error {
	switch {
	case e.Addr() == nil:
		return errors.New("starting")
	case e.stopping.Load():
		return errors.New("shutting down")
	case e.broker != nil && !e.broker.Up():
		return errors.New("broker unreachable")
	case e.broker != nil && !e.tailing.Load():
		return errors.New("broker tailer stopped")
	case e.broker != nil && !e.broker.CaughtUp():
		return errors.New("loading the history window from the broker")
	}
	return nil
}

// IngestHTTPAddr returns the HTTP ingest listener's address once Run has
// opened it (useful with port 0), or nil.
func (e *Engine) IngestHTTPAddr() net.Addr {
	select {
	case <-e.bootedCh:
		return e.httpAddr
	default:
		return nil
	}
}

// AdminAddr returns the admin listener's address once Run has opened it.
func (e *Engine) AdminAddr() net.Addr {
	select {
	case <-e.bootedCh:
		return e.adminAddr
	default:
		return nil
	}
}

// drainConnections waits, up to timeout, for the goodbyes of a shutdown to
// reach every client, closing each connection as its data is written.
func (e *Engine) drainConnections(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		force := time.Now().After(deadline)
		for _, l := range e.allLoops() {
			_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
				l.closeDrained(force)
				return nil
			}))
		}
		if force || e.metrics.activeConnections.Load() == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// booted runs in gnet's OnBoot: it records the engine and the bound address.
func (e *Engine) booted(g gnet.Engine) {
	e.gnetEng = g
	e.addr = listenerAddr(g, e.cfg.Listen)
	close(e.bootedCh)
}

// listenerAddr asks the kernel which address the listener got, so that
// ":0" in tests resolves to a real port.
func listenerAddr(g gnet.Engine, fallback string) net.Addr {
	fd, err := g.Dup()
	if err == nil {
		defer unix.Close(fd)
		if sa, err := unix.Getsockname(fd); err == nil {
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
			case *unix.SockaddrInet6:
				return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
			}
		}
	}
	addr, _ := net.ResolveTCPAddr("tcp", strings.TrimPrefix(fallback, "tcp://"))
	return addr
}

// loopFor returns the state of gnet event loop el, creating it on first use.
func (e *Engine) loopFor(el gnet.EventLoop) *loop {
	e.loopsMu.Lock()
	defer e.loopsMu.Unlock()
	l, ok := e.loops[el]
	if !ok {
		l = newLoop(e, el)
		e.loops[el] = l
	}
	return l
}

func (e *Engine) allLoops() []*loop {
	e.loopsMu.Lock()
	defer e.loopsMu.Unlock()
	out := make([]*loop, 0, len(e.loops))
	for _, l := range e.loops {
		out = append(out, l)
	}
	return out
}

// housekeeper drives the periodic work: heartbeat pings, idle and
// handshake timeouts, expiry of detached sessions, and the loops' retry
// ticks for connections that wait (outbox.go).
func (e *Engine) housekeeper(ctx context.Context) {
	retry := time.NewTicker(retryInterval)
	defer retry.Stop()
	heartbeat := time.NewTicker(e.cfg.HeartbeatInterval)
	defer heartbeat.Stop()
	cleanup := time.NewTicker(min(e.cfg.CleanupInterval, e.cfg.HandshakeTimeout))
	defer cleanup.Stop()
	var ackSync <-chan time.Time // fleet only: acked positions to the session store
	if e.disp.sync != nil {
		t := time.NewTicker(ackSyncInterval)
		defer t.Stop()
		ackSync = t.C
	}
	for {
		var ping bool
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			for _, l := range e.allLoops() {
				if l.waitingCount.Load() > 0 {
					_ = l.el.Execute(ctx, l.retryFn)
				}
			}
			continue
		case <-heartbeat.C:
			ping = true
		case <-cleanup.C:
			e.disp.cmds.push(command{kind: cmdSweep, now: time.Now()})
		case <-ackSync:
			e.disp.cmds.push(command{kind: cmdSyncAcks, now: time.Now()})
			continue
		}
		now := time.Now()
		for _, l := range e.allLoops() {
			_ = l.el.Execute(ctx, gnet.RunnableFunc(func(context.Context) error {
				l.housekeep(now, ping)
				return nil
			}))
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
