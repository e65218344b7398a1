package engine

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/flarecast/flarecast/codec"
)

// The security checks of the upgrade, in the order they run: the header
// size while the request arrives (431), the WebSocket handshake itself
// (400/404/426), then admit: the browser Origin (403), the connection limits
// (503 server-wide, 429 per client address), and the token (401). The limits
// come before the token so that they also cap the cost of verifying
// signatures; a request refused afterwards gives its slot back. After the
// upgrade: the message rate (RATE_LIMITED, then 1008), the token's expiry
// (closing token_expired) and its scope (every subscription is intersected
// with it in the dispatcher). Every refusal is counted in
// flarecast_refused_total by one of these reasons.
const (
	refuseBadRequest      = "bad_request"            // not a valid WebSocket upgrade (400 and the like)
	refuseNotFound        = "not_found"              // upgrade to another path (404)
	refuseUpgradeRequired = "upgrade_required"       // plain HTTP on the endpoint (426)
	refuseHeaderTooLarge  = "header_too_large"       // header over max-header-size (431)
	refuseHandshakeTime   = "handshake_timeout"      // upgrade not finished in handshake-timeout (slowloris)
	refuseOrigin          = "forbidden_origin"       // Origin not in allowed-origins (403)
	refuseUnauthorized    = "unauthorized"           // missing or invalid token (401)
	refuseMaxConns        = "max_connections"        // server full (503)
	refuseMaxConnsPerIP   = "max_connections_per_ip" // client address at its limit (429)
	refuseResume          = "resume_denied"          // resume of a session another token holder made
	refuseAuthRefresh     = "auth_refresh_denied"    // an auth message with a bad or foreign token
	refuseScope           = "scope_denied"           // a subscription entirely outside the token's scope
	refuseMaxSubs         = "max_subscriptions"      // over max-subscriptions (LIMIT_EXCEEDED)
	refuseRateLimited     = "rate_limited"           // a message over the rate limit (RATE_LIMITED)
	refuseRateAbuse       = "rate_abuse"             // persistent excess: closed with 1008
	refuseInputOverflow   = "input_overflow"         // unread input past its bound while input waits: closed
)

var refusalReasons = []string{
	refuseBadRequest, refuseNotFound, refuseUpgradeRequired, refuseHeaderTooLarge, refuseHandshakeTime,
	refuseOrigin, refuseUnauthorized, refuseMaxConns, refuseMaxConnsPerIP, refuseResume,
	refuseAuthRefresh, refuseScope, refuseMaxSubs, refuseRateLimited, refuseRateAbuse, refuseInputOverflow,
}

// rateStrikesToClose is how many messages over the rate limit a connection
// may send before it is closed with 1008, unless it lets its bucket refill
// to half in between: a client that ignores RATE_LIMITED is abusive, one
// that slows down is not.
const rateStrikesToClose = 10

// refusal is why an upgrade request is not admitted.
type refusal struct {
	status int    // HTTP status; 0 when admitted
	reason string // flarecast_refused_total label
	body   string // one line for the client
	header string // extra response header lines, each ending in CRLF
}

func (c *Config) validateSecurity() []error {
	var errs []error
	if c.MaxConnections < 0 || c.MaxConnectionsPerIP < 0 {
		errs = append(errs, errors.New("max-connections and max-connections-per-ip must not be negative"))
	}
	switch {
	case c.RateLimit < 0 || math.IsNaN(c.RateLimit) || math.IsInf(c.RateLimit, 0):
		errs = append(errs, fmt.Errorf("rate-limit must be a non-negative number, got %v", c.RateLimit))
	case c.RateBurst < 0:
		errs = append(errs, fmt.Errorf("rate-burst must not be negative, got %d", c.RateBurst))
	case c.RateLimit > 0:
		if _, _, err := rateBucket(c.RateLimit, c.RateBurst); err != nil {
			errs = append(errs, err)
		}
	}
	if c.MaxHeaderSize < 1024 {
		errs = append(errs, fmt.Errorf("max-header-size must be at least 1KiB, got %d", c.MaxHeaderSize))
	}
	for i, o := range c.AllowedOrigins {
		norm, err := normalizeOrigin(o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c.AllowedOrigins[i] = norm
	}
	for _, p := range c.TrustedProxies {
		if !p.IsValid() {
			errs = append(errs, errors.New("trusted-proxies holds an invalid prefix"))
		}
	}
	return errs
}

// normalizeOrigin checks that o is a bare origin (scheme://host[:port]) and
// lowercases it, as browsers send it.
func normalizeOrigin(o string) (string, error) {
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("allowed-origins: %q is not an origin such as https://ops.example.com", o)
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), nil
}

// connLimiter counts admitted connections, server-wide and per client
// address. Connections from one address land on different event loops, so
// the count is shared under a mutex; it is taken once per upgrade and once
// per close, never per message.
type connLimiter struct {
	mu    sync.Mutex
	total int
	perIP map[netip.Addr]*peerCount
}

// peerCount is one address's entry; a connection keeps a pointer to it so
// that its close needs no lookup.
type peerCount struct {
	addr netip.Addr
	n    int
}

// acquire takes a slot for a connection from addr, or says why not.
func (cl *connLimiter) acquire(cfg *Config, addr netip.Addr) (*peerCount, refusal) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cfg.MaxConnections > 0 && cl.total >= cfg.MaxConnections {
		return nil, refusal{status: http.StatusServiceUnavailable, reason: refuseMaxConns,
			body: "server at its connection limit; retry later", header: "Retry-After: 5\r\n"}
	}
	var p *peerCount
	if cfg.MaxConnectionsPerIP > 0 {
		p = cl.perIP[addr]
		if p == nil {
			p = &peerCount{addr: addr}
			if cl.perIP == nil {
				cl.perIP = make(map[netip.Addr]*peerCount)
			}
			cl.perIP[addr] = p
		}
		if p.n >= cfg.MaxConnectionsPerIP {
			return nil, refusal{status: http.StatusTooManyRequests, reason: refuseMaxConnsPerIP,
				body: "too many connections from " + addr.String(), header: "Retry-After: 5\r\n"}
		}
		p.n++
	}
	cl.total++
	return p, refusal{}
}

// release gives back the slot of a closed connection.
func (cl *connLimiter) release(p *peerCount) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.total--
	if p != nil {
		if p.n--; p.n == 0 {
			delete(cl.perIP, p.addr)
		}
	}
}

// The rate limiter keeps time in int64 nanoseconds: one message every
// 1s/rate, a bucket of burst such intervals, and a next-allowed time up to
// burst intervals past the connection's age. rateBucket keeps all of them
// non-zero and in range.
const (
	// maxRateLimit is one message per nanosecond: above it the interval
	// truncates to 0 and the limit would silently be off.
	maxRateLimit = 1e9
	// maxRateSpan bounds interval × burst, in nanoseconds (2^62, about 146
	// years), leaving half the int64 range for the connection's age.
	maxRateSpan = 1 << 62
)

// rateBucket returns the limiter's interval between messages and its
// tolerance (burst-1 intervals), in nanoseconds, for a rate above zero; or
// an error naming the setting it cannot count.
func rateBucket(rate float64, burst int) (interval, tolerance int64, err error) {
	if rate > maxRateLimit {
		return 0, 0, fmt.Errorf("rate-limit %v: at most %g messages per second (one per nanosecond)", rate, float64(maxRateLimit))
	}
	span := float64(time.Second) / rate
	if span > maxRateSpan {
		return 0, 0, fmt.Errorf("rate-limit %v: at least %.3g messages per second (one per 146 years), or 0 for no limit",
			rate, float64(time.Second)/maxRateSpan)
	}
	if burst == 0 {
		burst = max(1, int(math.Ceil(rate)))
	}
	if span*float64(burst) > maxRateSpan {
		return 0, 0, fmt.Errorf("rate-burst %d: at most %d at rate-limit %v (the bucket would span over 146 years)",
			burst, int64(maxRateSpan/span), rate)
	}
	interval = int64(span)
	return interval, interval * int64(burst-1), nil
}

// minInputCost is what the input rate charges for a frame at least: a
// flood of tiny frames costs the server per frame, not per byte.
const minInputCost = 64

// inputBurst is how much input, in seconds of --max-input-rate, a client
// may send at once: its set-up (subscriptions, a token) goes through
// without waiting.
const inputBurst = 4

// inputAllowed reports whether the connection may read its next frame
// under its input rate (--max-input-rate); if not, the frame waits where
// it is (readInbound), still masked. The bucket is GCRA in nanoseconds
// after openedAt, like the message rate limit: a frame is let through
// while the bucket is not over its burst, and charged once read
// (chargeInput), so one larger than the burst is never stuck.
func (c *conn) inputAllowed(now int64) bool {
	eng := c.eng()
	if eng.inputNsPerByte == 0 {
		return true
	}
	age := now - c.openedAt
	return max(c.inputTAT, age)-age <= eng.inputTolerance
}

// chargeInput counts a frame of n bytes against the input rate.
func (c *conn) chargeInput(n int, now int64) {
	eng := c.eng()
	if eng.inputNsPerByte == 0 {
		return
	}
	c.inputTAT = max(c.inputTAT, now-c.openedAt) + int64(float64(max(n, minInputCost))*eng.inputNsPerByte)
}

// allowMessage applies the rate limit to one client message and reports
// whether to handle it. The bucket is GCRA: one int64 per connection (in
// its rare state: the limit is off by default), the
// "theoretical arrival time" of the next message relative to openedAt (a
// monotonic reading, taken from lastSeen, which readFrame has just set).
func (c *conn) allowMessage() bool {
	eng := c.eng()
	interval, tolerance := eng.rateInterval, eng.rateTolerance
	now := c.lastSeen - c.openedAt
	r := c.more()
	tat := max(r.rateTAT, now)
	if tat-now > tolerance {
		m := eng.metrics
		if c.rateStrikes++; c.rateStrikes >= rateStrikesToClose {
			m.refuse(refuseRateAbuse)
			c.closeWith(codec.ReasonPolicyViolation, ws.StatusPolicyViolation, "message rate limit exceeded")
			return false
		}
		m.refuse(refuseRateLimited)
		c.sendError(codec.CodeRateLimited, "more than "+strconv.FormatFloat(eng.cfg.RateLimit, 'f', -1, 64)+
			" messages per second; this one was dropped")
		return false
	}
	if tat-now <= tolerance/2 {
		c.rateStrikes = 0 // the bucket was at least half full: the client slowed down
	}
	r.rateTAT = tat + interval
	return true
}

// releaseSlot gives back the connection's slot in the limiter, if it holds one.
func (c *conn) releaseSlot() {
	if c.limited {
		c.limited = false
		var peer *peerCount
		if c.rare != nil {
			peer = c.rare.peer
		}
		c.eng().limits.release(peer)
	}
}
