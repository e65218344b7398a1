package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/codec"
)

// The security checks of the upgrade, in the order they run: the header
// size while the request arrives (431), the WebSocket handshake itself
// (400/404/426), then admit: the browser Origin (403), the token (401), and
// the connection limits (503 server-wide, 429 per client address). Counting
// comes last so that a refused request never holds a slot. After the
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
)

var refusalReasons = []string{
	refuseBadRequest, refuseNotFound, refuseUpgradeRequired, refuseHeaderTooLarge, refuseHandshakeTime,
	refuseOrigin, refuseUnauthorized, refuseMaxConns, refuseMaxConnsPerIP, refuseResume,
	refuseAuthRefresh, refuseScope, refuseMaxSubs, refuseRateLimited, refuseRateAbuse,
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
	if c.RateLimit < 0 || math.IsNaN(c.RateLimit) || math.IsInf(c.RateLimit, 0) {
		errs = append(errs, fmt.Errorf("rate-limit must be a non-negative number, got %v", c.RateLimit))
	}
	if c.RateBurst < 0 {
		errs = append(errs, fmt.Errorf("rate-burst must not be negative, got %d", c.RateBurst))
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

// onHeader captures, from the upgrade request, the headers the security
// checks need, and only when the configuration uses them: without auth,
// origins and proxies, a handshake copies nothing.
func (hs *handshake) onHeader(key, value []byte) error {
	cfg := hs.cfg
	switch string(key) {
	case "Authorization":
		if cfg.Auth != nil && len(value) > 7 && bytes.EqualFold(value[:7], []byte("Bearer ")) {
			hs.bearer = string(bytes.TrimSpace(value[7:]))
		}
	case "Origin":
		if len(cfg.AllowedOrigins) > 0 {
			hs.origin = strings.ToLower(string(value))
		}
	case "X-Forwarded-For":
		if hs.trustPeer {
			if a, ok := rightmostUntrusted(value, cfg.TrustedProxies); ok {
				hs.forwarded = a
			}
		}
	case "X-Real-Ip":
		if hs.trustPeer {
			if a, err := parseAddr(bytes.TrimSpace(value)); err == nil {
				hs.realIP = a
			}
		}
	}
	return nil
}

// rightmostUntrusted returns the last address of an X-Forwarded-For list
// that is not a trusted proxy: the client as seen by the first proxy we
// trust. Entries to its left were written by the client itself and prove
// nothing. Of several X-Forwarded-For lines, the last one with such an
// entry wins, as if the lines were joined.
func rightmostUntrusted(list []byte, trusted []netip.Prefix) (netip.Addr, bool) {
	for len(list) > 0 {
		var entry []byte
		if i := bytes.LastIndexByte(list, ','); i >= 0 {
			entry, list = list[i+1:], list[:i]
		} else {
			entry, list = list, nil
		}
		a, err := parseAddr(bytes.TrimSpace(entry))
		if err != nil {
			return netip.Addr{}, false
		}
		if !containsAddr(trusted, a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// parseAddr parses an address as proxies write it: 192.0.2.1, 2001:db8::1,
// or with a port (192.0.2.1:4711, [2001:db8::1]:4711).
func parseAddr(b []byte) (netip.Addr, error) {
	a, err := netip.ParseAddr(string(b))
	if err != nil {
		ap, perr := netip.ParseAddrPort(string(b))
		if perr != nil {
			return netip.Addr{}, err
		}
		a = ap.Addr()
	}
	return a.Unmap(), nil
}

func containsAddr(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// peerAddr returns the TCP peer's address, or the zero Addr when unknown.
func peerAddr(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// clientAddr returns the address a request is counted under: what a
// trusted proxy says, else the peer.
func (hs *handshake) clientAddr() netip.Addr {
	switch {
	case !hs.trustPeer:
		return hs.peer
	case hs.forwarded.IsValid():
		return hs.forwarded
	case hs.realIP.IsValid():
		return hs.realIP
	}
	return hs.peer
}

// limitKey is what a per-address limit counts: the address itself for
// IPv4, the /64 for IPv6, which one client usually holds whole.
func limitKey(a netip.Addr) netip.Addr {
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}

// admit runs the checks that need the whole request, once the WebSocket
// handshake itself is valid. On success c holds its token's claims and its
// connection slot.
func (c *conn) admit(hs *handshake) refusal {
	eng := c.eng()
	cfg := &eng.cfg
	if len(cfg.AllowedOrigins) > 0 && hs.origin != "" && !containsString(cfg.AllowedOrigins, hs.origin) {
		return refusal{status: http.StatusForbidden, reason: refuseOrigin, body: "origin not allowed"}
	}
	if cfg.Auth != nil {
		token := hs.bearer
		if token == "" {
			token = hs.param("token")
		}
		claims, err := cfg.Auth.Verify(token)
		if err != nil {
			why := "invalid token"
			var aerr *auth.Error
			if errors.As(err, &aerr) {
				why = aerr.Reason
			}
			challenge := "WWW-Authenticate: Bearer realm=\"flarecast\"\r\n"
			if token != "" {
				challenge = "WWW-Authenticate: Bearer realm=\"flarecast\", error=\"invalid_token\"\r\n"
			}
			return refusal{status: http.StatusUnauthorized, reason: refuseUnauthorized, body: why, header: challenge}
		}
		c.auth = claims
	}
	if cfg.MaxConnections > 0 || cfg.MaxConnectionsPerIP > 0 {
		peer, r := eng.limits.acquire(cfg, limitKey(hs.clientAddr()))
		if r.status != 0 {
			c.auth = nil
			return r
		}
		c.limited, c.peer = true, peer
	}
	return refusal{}
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
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

// allowMessage applies the rate limit to one client message and reports
// whether to handle it. The bucket is GCRA: one int64 per connection, the
// "theoretical arrival time" of the next message relative to openedAt (a
// monotonic reading, taken from lastSeen, which readFrame has just set).
func (c *conn) allowMessage() bool {
	cfg := &c.eng().cfg
	interval := int64(float64(time.Second) / cfg.RateLimit)
	burst := cfg.RateBurst
	if burst == 0 {
		burst = max(1, int(math.Ceil(cfg.RateLimit)))
	}
	tolerance := interval * int64(burst-1)
	now := c.lastSeen - c.openedAt
	tat := max(c.rateTAT, now)
	if tat-now > tolerance {
		m := c.eng().metrics
		if c.rateStrikes++; c.rateStrikes >= rateStrikesToClose {
			m.refuse(refuseRateAbuse)
			c.closeWith(codec.ReasonPolicyViolation, ws.StatusPolicyViolation, "message rate limit exceeded")
			return false
		}
		m.refuse(refuseRateLimited)
		c.sendError(codec.CodeRateLimited, "more than "+strconv.FormatFloat(cfg.RateLimit, 'f', -1, 64)+
			" messages per second; this one was dropped")
		return false
	}
	if tat-now <= tolerance/2 {
		c.rateStrikes = 0 // the bucket was at least half full: the client slowed down
	}
	c.rateTAT = tat + interval
	return true
}

// refreshAuth handles {"type":"auth","token":…}: a token of the same
// subject and scope replaces the connection's, moving its expiry; anything
// else is refused with UNAUTHORIZED and the current token stays.
func (c *conn) refreshAuth(token string) {
	v := c.eng().cfg.Auth
	if v == nil {
		c.sendError(codec.CodeUnsupported, "authentication is not enabled on this server")
		return
	}
	claims, err := v.Verify(token)
	if err != nil {
		why := "invalid token"
		var aerr *auth.Error
		if errors.As(err, &aerr) {
			why = aerr.Reason
		}
		c.eng().metrics.refuse(refuseAuthRefresh)
		c.sendError(codec.CodeUnauthorized, why)
		return
	}
	if !c.auth.SameHolder(claims) {
		c.eng().metrics.refuse(refuseAuthRefresh)
		c.sendError(codec.CodeUnauthorized, "the new token must have the session's subject and scope")
		return
	}
	c.auth = claims
	c.write(codec.AppendFrame(c.loop.scratch[:0], codec.OpText, appendAuthenticated(nil, claims.ExpiresAt)))
}

// appendAuthenticated appends the reply to a successful auth message.
func appendAuthenticated(dst []byte, expires time.Time) []byte {
	dst = append(dst, `{"type":"authenticated","expires_at":"`...)
	dst = expires.UTC().AppendFormat(dst, time.RFC3339)
	return append(dst, '"', '}')
}

// refuseSession tells c, from any goroutine, that its session request is
// refused, and closes it with 1008.
func (l *loop) refuseSession(c *conn, message string) {
	_ = l.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		if !c.closed && c.state == stateOpen {
			c.sendError(codec.CodeUnauthorized, message)
			c.closeWith(codec.ReasonPolicyViolation, ws.StatusPolicyViolation, "session refused")
		}
		return nil
	}))
}
