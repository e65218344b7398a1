package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"time"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/ingest"
)

// Config is everything `flarecast serve` can be told. The zero value is not
// usable; start from DefaultConfig, which holds the seed's defaults.
type Config struct {
	// Listen is the WebSocket endpoint's TCP address; clients connect to Path on it.
	Listen string
	// Path is the URL path of the WebSocket endpoint.
	Path string
	// AdminListen is the address of the plain HTTP server for /metrics,
	// /healthz, /readyz and /debug/pprof/. Empty disables it.
	AdminListen string
	// IngestSocket is the Unix socket producers write NDJSON events to.
	// Empty disables it (embedders may publish in-process only).
	IngestSocket string
	// IngestListen is the TCP address of the HTTP ingest endpoint
	// (POST /v1/events, package ingest's HTTPServer) for producers on
	// other hosts. Empty disables it.
	IngestListen string
	// IngestTokenFile holds the bearer tokens HTTP ingest accepts, one per
	// line (blank lines and #comments ignored). Required with
	// IngestListen unless IngestInsecure.
	IngestTokenFile string
	// IngestInsecure serves HTTP ingest without a token; only on a
	// loopback address, for experiments.
	IngestInsecure bool
	// IngestMaxBody bounds one HTTP ingest request body in bytes.
	IngestMaxBody int
	// AdaptersConfig is the --adapters-config file (YAML or JSON, package
	// adapter's Config) of the alert-source webhooks that HTTP ingest
	// serves under /v1/adapters/; empty keeps the defaults.
	AdaptersConfig string

	// MaxPendingMessages and MaxPendingBytes bound what waits for one
	// connection because its socket does not drain: frames held back once
	// the kernel's buffers and the connection's write buffer are full
	// (frames), and those plus the write buffer's bytes (bytes). A
	// connection over either is closed as a slow consumer. Frames that only
	// wait for the event loop's next write do not count: a reader that keeps
	// up survives any burst.
	MaxPendingMessages int
	MaxPendingBytes    int
	// HeartbeatInterval is how often the server pings every connection.
	HeartbeatInterval time.Duration
	// SessionTimeout closes a connection the client has sent nothing on for this long.
	SessionTimeout time.Duration
	// CleanupInterval is how often idle connections are looked for.
	CleanupInterval time.Duration
	// BroadcastCapacity sizes the ring between ingest and the dispatcher.
	BroadcastCapacity int
	// HistorySize and HistoryMaxBytes bound the window of recent events
	// kept for resume and backfill; whichever binds first.
	HistorySize     int
	HistoryMaxBytes int64
	// Compression enables permessage-deflate for clients that offer it.
	Compression bool
	// CompressionMinSize leaves smaller events uncompressed.
	CompressionMinSize int
	// IOURing writes each flush's frames with one io_uring_enter per event
	// loop instead of one write(2) per connection (Linux; where io_uring is
	// refused the loops keep write(2), and flarecast_io_uring_loops says
	// so). It saved 10-33% of the CPU per delivery in the load tester's
	// runs and cut p99 at high rates several times over.
	IOURing bool
	// MaxMessageSize bounds client messages and ingest lines, in bytes.
	MaxMessageSize int
	// MaxSubscriptions bounds the subscriptions of one session.
	MaxSubscriptions int
	// MaxInputRate bounds what one connection may send, in bytes per
	// second (a frame counts at least 64 bytes), with a burst of four
	// seconds' worth. Input over it waits in the server (and a client that
	// keeps sending is closed once that passes its bound): parsing is the
	// event loop's time, shared with every other connection on it. 0
	// turns it off.
	MaxInputRate int
	// MaxFilterValues bounds the values of one subscription's filters, all
	// lists and label pairs together: a subscription's cost in the index
	// and in the dispatcher's time grows with it.
	MaxFilterValues int
	// EchoPath, when set, serves a WebSocket echo endpoint on that path with
	// the same engine, frame codec and permessage-deflate code: a testing
	// aid for conformance suites such as Autobahn|Testsuite. Off by default.
	EchoPath string
	// Broker joins a fleet sharing one event stream: a redis:// URL. Empty
	// means a single instance with its in-memory ring.
	Broker string
	// BrokerMinReplicas is how many Redis replicas must hold an append
	// (WAIT) before the producer hears ok; fewer in time and the event is
	// refused (UNAVAILABLE), though it may still be delivered. Negative:
	// 1 when Broker names Sentinels, 0 for a single Redis.
	BrokerMinReplicas int
	// HandshakeTimeout closes a connection that has not completed its
	// upgrade request in this time (slowloris).
	HandshakeTimeout time.Duration
	// EventLoops is the number of gnet event loops (default: GOMAXPROCS).
	EventLoops int
	// ReturnMemory gives the heap's free pages back to the OS once a burst
	// of connections opening or closing has settled (memory.go): a
	// process-wide debug.FreeOSMemory, at most every 10 s. Embedders that
	// manage the process's memory themselves may turn it off.
	ReturnMemory bool
	// Board serves the live incident board (a self-contained page, package
	// board) at GET / on the admin listener.
	Board bool

	// Security (see the README's Security section). The zero values turn
	// each check off, as `make run` on loopback wants.

	// Auth verifies the token of every upgrade request (`--auth jwt`); nil
	// accepts every client (`--auth none`).
	Auth *auth.Verifier
	// MaxConnections bounds the WebSocket connections of the server, and
	// MaxConnectionsPerIP those of one client address (an IPv6 client is
	// counted by its /64); 0 means unlimited. Refused upgrades get 503 and
	// 429.
	MaxConnections      int
	MaxConnectionsPerIP int
	// TrustedProxies are the peers (a TLS-terminating nginx) whose
	// X-Forwarded-For / X-Real-IP name the client address; from any other
	// peer those headers are ignored.
	TrustedProxies []netip.Prefix
	// RateLimit bounds the messages a client sends per second (a token
	// bucket of RateBurst); excess gets RATE_LIMITED, persistent excess a
	// 1008 close. 0 disables it. RateBurst 0 means one second's worth.
	RateLimit float64
	RateBurst int
	// AllowedOrigins, when not empty, lists the browser origins
	// (scheme://host[:port]) that may open a connection; a request with
	// another Origin header gets 403. Requests without Origin (not from a
	// browser) are not affected.
	AllowedOrigins []string
	// MaxHeaderSize bounds the upgrade request's header; larger gets 431.
	MaxHeaderSize int

	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of `flarecast serve`.
func DefaultConfig() Config {
	return Config{
		Listen:             ":8080",
		Path:               "/ws",
		AdminListen:        ":9090",
		IngestSocket:       "flarecast.sock",
		IngestMaxBody:      8 << 20,
		MaxPendingMessages: 1000,
		MaxPendingBytes:    1 << 20,
		HeartbeatInterval:  30 * time.Second,
		SessionTimeout:     5 * time.Minute,
		CleanupInterval:    time.Minute,
		BroadcastCapacity:  10000,
		BrokerMinReplicas:  -1,
		HistorySize:        100000,
		HistoryMaxBytes:    64 << 20,
		Compression:        true,
		IOURing:            true,
		CompressionMinSize: 256,
		MaxMessageSize:     64 << 10,
		MaxSubscriptions:   100,
		MaxFilterValues:    1000,
		MaxInputRate:       256 << 10,
		HandshakeTimeout:   10 * time.Second,
		EventLoops:         runtime.GOMAXPROCS(0),
		ReturnMemory:       true,
		Board:              true,
		MaxHeaderSize:      8 << 10,
	}
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	var errs []error
	positive := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", name, v))
		}
	}
	positiveDur := func(name string, v time.Duration) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", name, v))
		}
	}
	if c.Listen == "" {
		errs = append(errs, errors.New("listen address must not be empty"))
	}
	if c.Path == "" || c.Path[0] != '/' {
		errs = append(errs, fmt.Errorf("path must start with '/', got %q", c.Path))
	}
	positive("max-pending-messages", c.MaxPendingMessages)
	positive("max-pending-bytes", c.MaxPendingBytes)
	positive("max-filter-values", c.MaxFilterValues)
	positive("broadcast-capacity", c.BroadcastCapacity)
	positive("max-message-size", c.MaxMessageSize)
	positive("max-subscriptions", c.MaxSubscriptions)
	if c.MaxSubscriptions > maxSessionSubs {
		errs = append(errs, fmt.Errorf("max-subscriptions must be at most %d, got %d", maxSessionSubs, c.MaxSubscriptions))
	}
	positive("event-loops", c.EventLoops)
	errs = append(errs, c.validateSecurity()...)
	errs = append(errs, c.validateIngestHTTP()...)
	positiveDur("heartbeat-interval", c.HeartbeatInterval)
	positiveDur("session-timeout", c.SessionTimeout)
	positiveDur("cleanup-interval", c.CleanupInterval)
	positiveDur("handshake-timeout", c.HandshakeTimeout)
	if c.EchoPath != "" && (c.EchoPath[0] != '/' || c.EchoPath == c.Path) {
		errs = append(errs, fmt.Errorf("echo-path must start with '/' and differ from the endpoint path, got %q", c.EchoPath))
	}
	if c.HistorySize < 0 || c.HistoryMaxBytes < 0 {
		errs = append(errs, errors.New("history-size and history-max-bytes must not be negative"))
	}
	if c.MaxInputRate < 0 {
		errs = append(errs, fmt.Errorf("max-input-rate must not be negative, got %d", c.MaxInputRate))
	}
	if c.CompressionMinSize < 0 {
		errs = append(errs, fmt.Errorf("compression-min-size must not be negative, got %d", c.CompressionMinSize))
	}
	return errors.Join(errs...)
}

// validateIngestHTTP checks the HTTP ingest settings: a listener needs a
// token file, or --ingest-insecure on a loopback address.
func (c *Config) validateIngestHTTP() []error {
	if c.IngestListen == "" {
		if c.AdaptersConfig != "" {
			return []error{errors.New("adapters-config needs ingest-listen: the adapters are served on the HTTP ingest listener")}
		}
		return nil
	}
	var errs []error
	switch {
	case c.IngestTokenFile != "" && c.IngestInsecure:
		errs = append(errs, errors.New("ingest-token-file and ingest-insecure exclude each other"))
	case c.IngestTokenFile == "" && !c.IngestInsecure:
		errs = append(errs, errors.New("ingest-listen needs ingest-token-file (or ingest-insecure on a loopback address)"))
	case c.IngestInsecure && !ingest.IsLoopback(c.IngestListen):
		errs = append(errs, fmt.Errorf("ingest-insecure serves without a token: only on a loopback address such as 127.0.0.1:8081, got %q", c.IngestListen))
	}
	if c.IngestMaxBody <= 0 {
		errs = append(errs, fmt.Errorf("ingest-max-body must be positive, got %d", c.IngestMaxBody))
	}
	return errs
}
