package engine

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"

	"github.com/flarecast/flarecast/auth"
)

// handshake is the loop's scratch for one upgrade at a time.
type handshake struct {
	in      bytes.Reader
	out     bytes.Buffer
	path    bool // the request's path is the WebSocket endpoint
	echo    bool // the request's path is the echo endpoint (--echo-path)
	query   string
	deflate wsflate.Extension

	// Security: what admit needs of the request (security.go). Headers are
	// captured only when the configuration uses them.
	cfg       *Config
	bearer    string     // Authorization: Bearer …
	origin    string     // Origin, lowercased
	peer      netip.Addr // the TCP peer
	trustPeer bool       // the peer is a trusted proxy: believe its forwarding headers
	forwarded netip.Addr // rightmost untrusted X-Forwarded-For address
	realIP    netip.Addr // X-Real-IP
}

func (hs *handshake) Read(p []byte) (int, error) { return hs.in.Read(p) }

func (hs *handshake) Write(p []byte) (int, error) { return hs.out.Write(p) }

// handshake upgrades the connection once the whole request header is in
// buf, and returns how many bytes it used. Anything that is not a valid
// upgrade to the endpoint gets an HTTP error response and is closed.
func (c *conn) handshake(buf []byte) int {
	maxHeader := c.eng().cfg.MaxHeaderSize
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 || end+4 > maxHeader {
		if len(buf) > maxHeader {
			c.reject(refusal{status: http.StatusRequestHeaderFieldsTooLarge, reason: refuseHeaderTooLarge,
				body: "request header larger than " + strconv.Itoa(maxHeader) + " bytes"})
			return len(buf)
		}
		return 0
	}
	req := buf[:end+4]
	l := c.loop
	hs := &l.hs
	hs.in.Reset(req)
	hs.out.Reset()
	hs.path, hs.query = false, ""
	hs.deflate.Reset()
	hs.bearer, hs.origin = "", ""
	hs.forwarded, hs.realIP = netip.Addr{}, netip.Addr{}
	hs.peer = peerAddr(c.gc.RemoteAddr())
	hs.trustPeer = containsAddr(hs.cfg.TrustedProxies, hs.peer)
	_, err := l.upgrader.Upgrade(hs)
	if err != nil {
		var rej *ws.ConnectionRejectedError
		switch {
		case !hasUpgradeHeader(req) && hs.path:
			c.reject(refusal{status: http.StatusUpgradeRequired, reason: refuseUpgradeRequired,
				body: "this endpoint speaks WebSocket only"})
		default:
			reason := refuseBadRequest
			if errors.As(err, &rej) && rej.StatusCode() == http.StatusNotFound {
				reason = refuseNotFound
			}
			m := c.eng().metrics
			m.handshakeRejected.Inc()
			m.refuse(reason)
			_, _ = c.gc.Write(hs.out.Bytes())
			_ = c.gc.Close()
			c.state = stateClosing
		}
		return len(req)
	}
	if r := c.admit(hs); r.status != 0 {
		c.reject(r)
		return len(req)
	}
	_, _ = c.gc.Write(hs.out.Bytes())
	if c.closed {
		// The write failed (the client reset) and gnet ran OnClose
		// already, before the connection counted as upgraded.
		return len(req)
	}
	_, c.deflate = hs.deflate.Accepted()
	c.state, c.upgraded = stateOpen, true
	m := c.eng().metrics
	m.activeConnections.Add(1)
	m.totalConnections.Inc()
	if hs.echo {
		// A conformance endpoint: no session, nothing to wait for.
		c.echo, c.welcomed = true, true
		return len(req)
	}
	c.eng().disp.cmds.push(command{kind: cmdAttach, c: c, resumeID: hs.param("session_id"), claims: c.auth, now: time.Now()})
	return len(req)
}

// reject answers an upgrade request it refuses with an HTTP error, counts
// the refusal, and closes the connection.
func (c *conn) reject(r refusal) {
	status, reason := r.status, r.body
	m := c.eng().metrics
	m.handshakeRejected.Inc()
	m.refuse(r.reason)
	var b []byte
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"...)
	if status == http.StatusUpgradeRequired {
		b = append(b, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"...)
	}
	b = append(b, r.header...)
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(reason)+1), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, reason...)
	b = append(b, '\n')
	_, _ = c.gc.Write(b)
	_ = c.gc.Close()
	c.state = stateClosing
}

func hasUpgradeHeader(req []byte) bool {
	for _, line := range bytes.Split(req, []byte("\r\n")) {
		if k, _, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(bytes.TrimSpace(k), []byte("Upgrade")) {
			return true
		}
	}
	return false
}

// initUpgrader configures the loop's upgrader. Its callbacks write into the
// loop's handshake scratch: one upgrade runs at a time per loop.
func (l *loop) initUpgrader() {
	cfg := &l.eng.cfg
	hs := &l.hs
	hs.deflate.Parameters = wsflate.Parameters{ServerNoContextTakeover: true, ClientNoContextTakeover: true}
	hs.cfg = cfg
	l.upgrader = ws.Upgrader{
		OnHeader: hs.onHeader,
		OnRequest: func(uri []byte) error {
			path, query, _ := bytes.Cut(uri, []byte("?"))
			hs.echo = cfg.EchoPath != "" && string(path) == cfg.EchoPath
			if string(path) != cfg.Path && !hs.echo {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound),
					ws.RejectionReason("no WebSocket endpoint at this path; use "+cfg.Path))
			}
			hs.path = true
			hs.query = string(query)
			return nil
		},
	}
	if cfg.Compression {
		l.upgrader.Negotiate = hs.deflate.Negotiate
	}
}

// query returns one parameter of the upgrade request's query string.
func (hs *handshake) param(name string) string {
	if hs.query == "" {
		return ""
	}
	v, _ := url.ParseQuery(hs.query)
	return v.Get(name)
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

// admit runs the checks that need the whole request, once the WebSocket
// handshake itself is valid. On success c holds its token's claims and its
// connection slot.
func (c *conn) admit(hs *handshake) refusal {
	eng := c.eng()
	cfg := &eng.cfg
	if len(cfg.AllowedOrigins) > 0 && hs.origin != "" && !containsString(cfg.AllowedOrigins, hs.origin) {
		return refusal{status: http.StatusForbidden, reason: refuseOrigin, body: "origin not allowed"}
	}
	// The connection limits come before the token: verifying a signature
	// is the expensive check, and the limits are what cap its cost.
	if cfg.MaxConnections > 0 || cfg.MaxConnectionsPerIP > 0 {
		peer, r := eng.limits.acquire(cfg, limitKey(hs.clientAddr()))
		if r.status != 0 {
			return r
		}
		c.limited = true
		if peer != nil {
			c.more().peer = peer
		}
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
			c.releaseSlot()
			return refusal{status: http.StatusUnauthorized, reason: refuseUnauthorized, body: why, header: challenge}
		}
		c.auth = claims
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
