package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/flarecast/flarecast/engine"
)

func serve(args []string) error {
	cfg := engine.DefaultConfig()
	fs := newFlagSet("serve")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "WebSocket listen address (clients connect to ws://ADDR/ws)")
	fs.StringVar(&cfg.AdminListen, "admin-listen", cfg.AdminListen, "admin HTTP address for /metrics, /healthz, /readyz, /debug/pprof/ (empty disables)")
	fs.StringVar(&cfg.IngestSocket, "ingest-socket", cfg.IngestSocket, "Unix socket producers write NDJSON events to (empty disables)")
	fs.StringVar(&cfg.IngestListen, "ingest-listen", cfg.IngestListen, "HTTP ingest address for producers on other hosts: POST /v1/events with NDJSON (empty disables)")
	fs.StringVar(&cfg.IngestTokenFile, "ingest-token-file", cfg.IngestTokenFile, "bearer tokens HTTP ingest accepts, one per line (# comments); required with --ingest-listen")
	fs.BoolVar(&cfg.IngestInsecure, "ingest-insecure", cfg.IngestInsecure, "serve HTTP ingest without a token, on a loopback --ingest-listen only")
	fs.StringVar(&cfg.AdaptersConfig, "adapters-config", cfg.AdaptersConfig, "YAML or JSON file overriding the alert-source adapters' mapping and holding the PagerDuty secret (README: Connect your alerts)")
	fs.Var(sizeValue{&cfg.IngestMaxBody}, "ingest-max-body", "largest HTTP ingest request body; larger gets 413 and nothing of it is published")
	fs.IntVar(&cfg.MaxPendingMessages, "max-pending-messages", cfg.MaxPendingMessages, "frames held back for a connection whose socket does not drain before it is closed as a slow consumer")
	fs.Var(sizeValue{&cfg.MaxPendingBytes}, "max-pending-bytes", "bytes held back (and buffered) for a connection whose socket does not drain before it is closed as a slow consumer")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", cfg.HeartbeatInterval, "how often the server pings each client")
	fs.DurationVar(&cfg.SessionTimeout, "session-timeout", cfg.SessionTimeout, "close a client silent for this long")
	fs.DurationVar(&cfg.CleanupInterval, "cleanup-interval", cfg.CleanupInterval, "how often idle clients and expired sessions are swept")
	fs.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", cfg.HandshakeTimeout, "close a connection that has not finished its upgrade request in this time")
	fs.IntVar(&cfg.BroadcastCapacity, "broadcast-capacity", cfg.BroadcastCapacity, "events buffered between ingest and dispatch (producers wait when full)")
	fs.IntVar(&cfg.HistorySize, "history-size", cfg.HistorySize, "events kept for resume and backfill (0 disables)")
	historyBytes := int(cfg.HistoryMaxBytes)
	fs.Var(sizeValue{&historyBytes}, "history-max-bytes", "memory bound of the history window")
	fs.Var(boolValue{&cfg.Compression}, "compression", "permessage-deflate for clients that offer it (true|false)")
	fs.Var(sizeValue{&cfg.CompressionMinSize}, "compression-min-size", "events smaller than this are sent uncompressed")
	fs.BoolVar(&cfg.IOURing, "io-uring", cfg.IOURing, "write each event loop's flush with one io_uring_enter instead of a write per connection (Linux; falls back to write where io_uring is refused; --io-uring=false to write always)")
	fs.Var(sizeValue{&cfg.MaxMessageSize}, "max-message-size", "largest client message and ingest line")
	fs.IntVar(&cfg.MaxSubscriptions, "max-subscriptions", cfg.MaxSubscriptions, "subscriptions per session")
	fs.Var(sizeValue{&cfg.MaxInputRate}, "max-input-rate", "bytes per second one connection may send (4 s burst; a frame counts at least 64 B); more waits (0: off)")
	fs.IntVar(&cfg.MaxFilterValues, "max-filter-values", cfg.MaxFilterValues, "values one subscription's filters may list, all lists and label pairs together; more gets LIMIT_EXCEEDED")
	fs.StringVar(&cfg.EchoPath, "echo-path", cfg.EchoPath, "serve a WebSocket echo endpoint on this path, for conformance suites (testing aid; off by default)")
	fs.StringVar(&cfg.Broker, "broker", cfg.Broker, "join a fleet through a shared Redis stream: redis://host:6379[/db][?stream=NAME], or Sentinels: redis://s1:26379?master_name=NAME&addr=s2:26379&addr=s3:26379 (empty: single instance)")
	fs.IntVar(&cfg.BrokerMinReplicas, "broker-min-replicas", cfg.BrokerMinReplicas, "Redis replicas an append must reach (WAIT) before the producer's ok; fewer in time: UNAVAILABLE (-1: 1 with Sentinel, 0 otherwise)")
	fs.IntVar(&cfg.EventLoops, "event-loops", cfg.EventLoops, "gnet event loops (default: number of CPUs)")
	fs.Var(boolValue{&cfg.Board}, "board", "serve the live incident board at / on --admin-listen (true|false)")
	security := addSecurityFlags(fs, &cfg)
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("serve takes no arguments, got " + fs.Arg(0))
	}
	cfg.HistoryMaxBytes = int64(historyBytes)
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageError("--log-level: " + err.Error())
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := security.apply(&cfg); err != nil {
		return err
	}

	if _, set := os.LookupEnv("GOGC"); !set {
		// Idle connections are this server's steady state: a tighter GC
		// target keeps the garbage of connection bursts (handshakes,
		// decoded subscribes) from settling into RSS. Measured with the
		// load tester's density preset: 1.56 → 1.48 KiB per connection.
		debug.SetGCPercent(50)
	}
	eng, err := engine.New(cfg)
	if err != nil {
		return usageError(err.Error())
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return eng.Run(ctx)
}
