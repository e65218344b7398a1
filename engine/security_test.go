package engine_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/engine"
)

// Tests of the security checklist (README, Security): authentication,
// scopes as an authorisation boundary, connection limits, rate limiting,
// origin and header-size checks, the slowloris timeout, and the refusal
// metrics. Helpers here are prefixed sec to stay clear of the other test
// files of the package.

var secSecret = []byte("flarecast-security-test-secret-0123456789")

func secAuth(t testing.TB) *auth.Verifier {
	t.Helper()
	v, err := auth.New(auth.Options{HS256Secret: secSecret})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// secToken signs an HS256 token for sub valid for ttl, with scope as the
// flarecast claim unless nil.
func secToken(t testing.TB, sub string, ttl time.Duration, scope any) string {
	t.Helper()
	claims := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix()}
	if scope != nil {
		claims["flarecast"] = scope
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func secTenant(name string) map[string]any {
	return map[string]any{"labels": map[string]string{"tenant": name}}
}

// secDial opens a WebSocket connection with extra headers, from the local
// address local when not empty (any 127.0.0.0/8 address works on Linux).
// It returns the HTTP response and body of a refused upgrade.
func secDial(t testing.TB, s *testServer, query string, header http.Header, local string) (*websocket.Conn, int, string, http.Header) {
	t.Helper()
	d := *websocket.DefaultDialer
	d.HandshakeTimeout = 5 * time.Second
	if local != "" {
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
		d.NetDialContext = nd.DialContext
	}
	url := s.wsURL
	if query != "" {
		url += "?" + query
	}
	ws, resp, err := d.Dial(url, header)
	if err == nil {
		t.Cleanup(func() { ws.Close() })
		return ws, http.StatusSwitchingProtocols, "", resp.Header
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return nil, resp.StatusCode, string(body), resp.Header
}

// secClient dials and expects the upgrade to succeed and a welcome.
func secClient(t testing.TB, s *testServer, query string, header http.Header, local string) *client {
	t.Helper()
	ws, status, body, _ := secDial(t, s, query, header, local)
	if ws == nil {
		t.Fatalf("upgrade refused: HTTP %d %q", status, body)
	}
	c := &client{t: t, ws: ws}
	c.sessionID, _ = c.expect("welcome")["session_id"].(string)
	return c
}

// secRefused dials and expects the upgrade to be refused with status.
func secRefused(t testing.TB, s *testServer, query string, header http.Header, local string, status int, bodyPart string) http.Header {
	t.Helper()
	ws, got, body, h := secDial(t, s, query, header, local)
	if ws != nil {
		t.Fatalf("upgrade accepted, want HTTP %d", status)
	}
	if got != status || !strings.Contains(body, bodyPart) {
		t.Fatalf("HTTP %d %q, want %d with %q", got, body, status, bodyPart)
	}
	return h
}

func secBearer(token string) http.Header { return http.Header{"Authorization": {"Bearer " + token}} }

// secWaitMetric polls /metrics until series reaches want.
func secWaitMetric(t testing.TB, s *testServer, series string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := s.metric(t, series)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", series, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func refusedSeries(reason string) string { return `flarecast_refused_total{reason="` + reason + `"}` }

// secReadClose reads until the server closes the connection and returns the
// messages before the close and the close frame's code.
func secReadClose(t testing.TB, c *client) ([]map[string]any, int) {
	t.Helper()
	var msgs []map[string]any
	for {
		m, err := c.tryRead(10 * time.Second)
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("want a close frame, got %v after %v", err, msgs)
			}
			return msgs, ce.Code
		}
		msgs = append(msgs, m)
	}
}

func TestAuthHandshake(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.Auth = secAuth(t) })
	good := secToken(t, "alice", time.Hour, nil)

	h := secRefused(t, s, "", nil, "", http.StatusUnauthorized, "missing token")
	if !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("401 without a Bearer challenge: %v", h)
	}
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}).
		SignedString([]byte("not-the-server-secret-not-the-server-secret"))
	h = secRefused(t, s, "token="+forged, nil, "", http.StatusUnauthorized, "signature")
	if !strings.Contains(h.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("401 for a bad token without error=invalid_token: %v", h)
	}
	secRefused(t, s, "", secBearer(secToken(t, "alice", -time.Minute, nil)), "", http.StatusUnauthorized, "expired")
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}).
		SignedString(jwt.UnsafeAllowNoneSignatureType)
	secRefused(t, s, "token="+none, nil, "", http.StatusUnauthorized, "algorithm")
	secRefused(t, s, "token=garbage", nil, "", http.StatusUnauthorized, "malformed")
	secRefused(t, s, "", http.Header{"Authorization": {"Basic YWxpY2U6c2VjcmV0"}}, "", http.StatusUnauthorized, "missing token")

	// Both ways of presenting a valid token work.
	c1 := secClient(t, s, "token="+good, nil, "")
	c2 := secClient(t, s, "", secBearer(good), "")
	c1.subscribe("all", map[string]any{})
	c2.subscribe("all", map[string]any{})
	ids := s.mustPublish(t, ev(`"severity":"P1"`))
	for _, c := range []*client{c1, c2} {
		if got := c.events(1); got[0] != ids[0] {
			t.Fatalf("event %v, want %v", got, ids)
		}
	}
	s.metricEquals(t, refusedSeries("unauthorized"), 6)
	s.metricEquals(t, "websocket_handshakes_rejected_total", 6)
	s.metricEquals(t, "websocket_total_connections", 2)
}

// TestAuthTokenExpiry: a session whose token expires is told so and closed
// with 1008; one that refreshed its token in time stays.
func TestAuthTokenExpiry(t *testing.T) {
	s := startServer(t, func(c *engine.Config) {
		c.Auth = secAuth(t)
		c.CleanupInterval = 100 * time.Millisecond
	})
	token := secToken(t, "alice", 2*time.Second, nil) // exp has 1 s resolution: 1–2 s from now
	expiring := secClient(t, s, "token="+token, nil, "")
	refreshed := secClient(t, s, "token="+token, nil, "")
	refreshed.send(map[string]any{"type": "auth", "token": secToken(t, "alice", time.Hour, nil)})
	m := refreshed.expect("authenticated")
	exp, err := time.Parse(time.RFC3339, m["expires_at"].(string))
	if err != nil || time.Until(exp) < 59*time.Minute {
		t.Fatalf("authenticated %v: expires_at should be an hour away", m)
	}

	msgs, code := secReadClose(t, expiring)
	if code != websocket.ClosePolicyViolation || len(msgs) != 1 || msgs[0]["type"] != "closing" || msgs[0]["reason"] != "token_expired" {
		t.Fatalf("expiring session: messages %v, close %d; want closing token_expired and 1008", msgs, code)
	}
	s.metricEquals(t, `websocket_connections_closed_total{reason="token_expired"}`, 1)
	// The refreshed session outlives the original expiry: over several
	// cleanup passes it keeps answering, and gets no closing.
	for deadline := time.Now().Add(600 * time.Millisecond); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		refreshed.send(map[string]any{"type": "ping", "timestamp": 1})
		refreshed.expect("pong")
	}
	s.metricEquals(t, `websocket_connections_closed_total{reason="token_expired"}`, 1)
}

func TestAuthRefreshRefusals(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.Auth = secAuth(t) })
	c := secClient(t, s, "token="+secToken(t, "alice", time.Hour, secTenant("acme")), nil, "")
	for name, token := range map[string]string{
		"other subject": secToken(t, "bob", time.Hour, secTenant("acme")),
		"other scope":   secToken(t, "alice", time.Hour, secTenant("globex")),
		"no scope":      secToken(t, "alice", time.Hour, nil),
		"expired":       secToken(t, "alice", -time.Minute, secTenant("acme")),
		"garbage":       "x.y.z",
	} {
		c.send(map[string]any{"type": "auth", "token": token})
		if m := c.expect("error"); m["code"] != "UNAUTHORIZED" {
			t.Fatalf("%s: %v, want UNAUTHORIZED", name, m)
		}
	}
	// The session goes on with its token.
	c.send(map[string]any{"type": "auth", "token": secToken(t, "alice", 2*time.Hour, secTenant("acme"))})
	c.expect("authenticated")
	s.metricEquals(t, refusedSeries("auth_refresh_denied"), 5)

	// Without --auth jwt the message is unsupported.
	plain := startServer(t, nil)
	pc := plain.dial(t, "")
	pc.send(map[string]any{"type": "auth", "token": "x"})
	if m := pc.expect("error"); m["code"] != "UNSUPPORTED" {
		t.Fatalf("auth without --auth jwt: %v", m)
	}
}

// secTenantEvent is an event of tenant name; n makes events distinct.
func secTenantEvent(name string, n int) string {
	return ev(`"source":"src-` + name + `","incident_id":"INC-` + name + `-` + strconv.Itoa(n) +
		`","severity":"P1","labels":{"tenant":"` + name + `","env":"prod"}`)
}

// secReadTenants reads event messages until the one with message_id last and
// returns the tenant label of each; any other message fails the test.
func secReadTenants(t testing.TB, c *client, last uint64) []string {
	t.Helper()
	var tenants []string
	for {
		m := c.read(5 * time.Second)
		if m["type"] != "event" {
			t.Fatalf("want events up to %d, got %v", last, m)
		}
		evt, _ := m["event"].(map[string]any)
		labels, _ := evt["labels"].(map[string]any)
		name, _ := labels["tenant"].(string)
		tenants = append(tenants, name)
		if uint64(m["message_id"].(float64)) >= last {
			return tenants
		}
	}
}

func secOnlyTenant(t testing.TB, what string, got []string, want string, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("%s: %d events (%v), want %d of tenant %s", what, len(got), got, n, want)
	}
	for _, name := range got {
		if name != want {
			t.Fatalf("%s: received an event of tenant %q, want only %q: %v", what, name, want, got)
		}
	}
}

// TestSecurityTenantBoundary is the authorisation boundary: a client whose
// token is scoped to tenant acme never receives an event of tenant globex,
// whatever it subscribes to, through live delivery, since-backfill and
// resume, and a token of another holder cannot take its session.
func TestSecurityTenantBoundary(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.Auth = secAuth(t) })
	aliceToken := secToken(t, "alice", time.Hour, secTenant("acme"))

	// History before anyone connects: interleaved tenants.
	var lines []string
	for i := range 6 {
		lines = append(lines, secTenantEvent("globex", i), secTenantEvent("acme", i))
	}
	hist := s.mustPublish(t, lines...)

	alice := secClient(t, s, "token="+aliceToken, nil, "")
	// Whatever alice asks for, the subscription is her scope at most.
	sub := alice.subscribe("everything", map[string]any{})
	filters, _ := sub["filters"].(map[string]any)
	if labels, _ := filters["labels"].(map[string]any); labels["tenant"] != "acme" {
		t.Fatalf("subscribed %v: the token's scope should show in the filters", sub)
	}
	for _, f := range []map[string]any{
		{"labels": map[string]string{"tenant": "globex"}},
		{"labels": map[string]string{"tenant": "globex", "env": "prod"}},
	} {
		alice.send(map[string]any{"type": "subscribe", "subscription_id": "steal", "filters": f})
		if m := alice.expect("error"); m["code"] != "UNAUTHORIZED" {
			t.Fatalf("subscribe %v: %v, want UNAUTHORIZED", f, m)
		}
	}
	// Narrower or orthogonal subscriptions are accepted, and stay in scope.
	alice.subscribe("by-source", map[string]any{"sources": []string{"src-globex", "src-acme"}})
	alice.subscribe("by-incident", map[string]any{"incident_ids": []string{"INC-globex-1", "INC-acme-1"}})
	// Backfill from the start of history.
	alice.send(map[string]any{"type": "subscribe", "subscription_id": "backfill", "filters": map[string]any{}, "since": 0})
	alice.expect("subscribed")
	secOnlyTenant(t, "backfill", secReadTenants(t, alice, hist[len(hist)-1]), "acme", 6)

	// Live delivery.
	lines = lines[:0]
	for i := 6; i < 10; i++ {
		lines = append(lines, secTenantEvent("acme", i), secTenantEvent("globex", i))
	}
	live := s.mustPublish(t, lines...)
	secOnlyTenant(t, "live", secReadTenants(t, alice, live[len(live)-2]), "acme", 4)

	// Resume: alice acks what she read and drops, both tenants publish,
	// alice comes back.
	session := alice.sessionID
	alice.send(map[string]any{"type": "ack", "message_id": live[len(live)-2]})
	alice.ws.Close()
	secWaitMetric(t, s, "websocket_active_connections", 0)
	lines = lines[:0]
	for i := 10; i < 14; i++ {
		lines = append(lines, secTenantEvent("globex", i), secTenantEvent("acme", i))
	}
	away := s.mustPublish(t, lines...)
	back := secClient(t, s, "session_id="+session+"&token="+aliceToken, nil, "")
	if back.sessionID != session {
		t.Fatalf("resume gave session %s, want %s", back.sessionID, session)
	}
	secOnlyTenant(t, "resume", secReadTenants(t, back, away[len(away)-1]), "acme", 4)

	// Another holder cannot resume or take over alice's session: not bob,
	// and not a token with alice's subject but another scope.
	for name, token := range map[string]string{
		"other subject":          secToken(t, "bob", time.Hour, secTenant("acme")),
		"same subject, scope B":  secToken(t, "alice", time.Hour, secTenant("globex")),
		"same subject, no scope": secToken(t, "alice", time.Hour, nil),
	} {
		ws, status, body, _ := secDial(t, s, "session_id="+session+"&token="+token, nil, "")
		if ws == nil {
			t.Fatalf("%s: upgrade refused (%d %s); the refusal comes after it", name, status, body)
		}
		thief := &client{t: t, ws: ws}
		msgs, code := secReadClose(t, thief)
		if code != websocket.ClosePolicyViolation || len(msgs) != 2 ||
			msgs[0]["type"] != "error" || msgs[0]["code"] != "UNAUTHORIZED" ||
			msgs[1]["type"] != "closing" || msgs[1]["reason"] != "policy_violation" {
			t.Fatalf("%s resuming alice's session: %v, close %d; want UNAUTHORIZED, closing, 1008", name, msgs, code)
		}
	}
	s.metricEquals(t, refusedSeries("resume_denied"), 3)
	s.metricEquals(t, refusedSeries("scope_denied"), 2)
	// Alice's connection was not taken over and still gets acme only.
	last := s.mustPublish(t, secTenantEvent("globex", 99), secTenantEvent("acme", 99))
	secOnlyTenant(t, "after the attempts", secReadTenants(t, back, last[1]), "acme", 1)
	back.expectSilence(200 * time.Millisecond)
}

func TestLimitMaxConnections(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.MaxConnections = 2 })
	a := secClient(t, s, "", nil, "")
	secClient(t, s, "", nil, "")
	h := secRefused(t, s, "", nil, "", http.StatusServiceUnavailable, "connection limit")
	if h.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After: %v", h)
	}
	s.metricEquals(t, refusedSeries("max_connections"), 1)
	// A refused upgrade holds no slot, and a closed connection gives its back.
	a.ws.Close()
	secWaitMetric(t, s, "websocket_active_connections", 1)
	secClient(t, s, "", nil, "")
	secRefused(t, s, "", nil, "", http.StatusServiceUnavailable, "connection limit")
}

// TestLimitMaxConnectionsPerIP counts per client address; forwarding
// headers from a peer that is not a trusted proxy change nothing.
func TestLimitMaxConnectionsPerIP(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.MaxConnectionsPerIP = 2 })
	first := secClient(t, s, "", nil, "127.0.0.1")
	secClient(t, s, "", nil, "127.0.0.1")
	secRefused(t, s, "", nil, "127.0.0.1", http.StatusTooManyRequests, "127.0.0.1")
	spoof := http.Header{"X-Forwarded-For": {"192.0.2.10"}, "X-Real-Ip": {"192.0.2.11"}}
	secRefused(t, s, "", spoof, "127.0.0.1", http.StatusTooManyRequests, "127.0.0.1")
	// Another address has its own count.
	secClient(t, s, "", nil, "127.0.0.2")
	secClient(t, s, "", nil, "127.0.0.2")
	secRefused(t, s, "", nil, "127.0.0.2", http.StatusTooManyRequests, "127.0.0.2")
	s.metricEquals(t, refusedSeries("max_connections_per_ip"), 3)
	// Closing gives the address its slot back.
	first.ws.Close()
	secWaitMetric(t, s, "websocket_active_connections", 3)
	secClient(t, s, "", nil, "127.0.0.1")
}

// TestLimitTrustedProxyHeaders: behind a trusted proxy the client address
// is the rightmost X-Forwarded-For entry that is not a trusted proxy (or
// X-Real-IP); from any other peer the headers are ignored.
func TestLimitTrustedProxyHeaders(t *testing.T) {
	s := startServer(t, func(c *engine.Config) {
		c.MaxConnectionsPerIP = 1
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	xff := func(v string) http.Header { return http.Header{"X-Forwarded-For": {v}} }
	secClient(t, s, "", xff("192.0.2.1"), "127.0.0.1")
	secRefused(t, s, "", xff("192.0.2.1"), "127.0.0.1", http.StatusTooManyRequests, "192.0.2.1")
	// A client cannot pick its address by prepending entries: the proxy's
	// own entry (rightmost) is what counts.
	secRefused(t, s, "", xff("192.0.2.77, 192.0.2.1"), "127.0.0.1", http.StatusTooManyRequests, "192.0.2.1")
	// Trusted proxies in the chain are skipped.
	secRefused(t, s, "", xff("192.0.2.1, 127.0.0.1"), "127.0.0.1", http.StatusTooManyRequests, "192.0.2.1")
	secClient(t, s, "", xff("192.0.2.2"), "127.0.0.1")
	secRefused(t, s, "", http.Header{"X-Real-Ip": {"192.0.2.2"}}, "127.0.0.1", http.StatusTooManyRequests, "192.0.2.2")
	// IPv6 clients are counted by /64.
	secClient(t, s, "", xff("2001:db8:1:2::1"), "127.0.0.1")
	secRefused(t, s, "", xff("2001:db8:1:2::ffff"), "127.0.0.1", http.StatusTooManyRequests, "2001:db8:1:2::")
	// Not a trusted proxy: the headers are ignored, the peer counts.
	secClient(t, s, "", xff("192.0.2.50"), "127.0.0.2")
	secRefused(t, s, "", xff("192.0.2.51"), "127.0.0.2", http.StatusTooManyRequests, "127.0.0.2")
	// No forwarding header from the proxy: the proxy's own address.
	secClient(t, s, "", nil, "127.0.0.1")
	secRefused(t, s, "", nil, "127.0.0.1", http.StatusTooManyRequests, "127.0.0.1")
}

func TestOriginCheck(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.AllowedOrigins = []string{"https://Ops.Example.com"} })
	origin := func(o string) http.Header { return http.Header{"Origin": {o}} }
	secRefused(t, s, "", origin("https://evil.example"), "", http.StatusForbidden, "origin")
	secRefused(t, s, "", origin("http://ops.example.com"), "", http.StatusForbidden, "origin")
	secRefused(t, s, "", origin("null"), "", http.StatusForbidden, "origin")
	secClient(t, s, "", origin("https://ops.example.com"), "")
	secClient(t, s, "", origin("HTTPS://OPS.EXAMPLE.COM"), "")
	secClient(t, s, "", nil, "") // not a browser: no Origin
	s.metricEquals(t, refusedSeries("forbidden_origin"), 3)

	// Off by default: any origin.
	open := startServer(t, nil)
	secClient(t, open, "", origin("https://evil.example"), "")
}

// secRaw sends raw bytes on a new connection and returns the HTTP status
// of the answer (0 when the server closed without one).
func secRaw(t testing.TB, s *testServer, req string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimSuffix(strings.TrimPrefix(s.wsURL, "ws://"), "/ws"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestLimitMaxHeaderSize(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.MaxHeaderSize = 2048 })
	host := strings.TrimSuffix(strings.TrimPrefix(s.wsURL, "ws://"), "/ws")
	upgrade := func(pad int) string {
		return "GET /ws HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
			"X-Pad: " + strings.Repeat("p", pad) + "\r\n\r\n"
	}
	if got := secRaw(t, s, upgrade(1500)); got != http.StatusSwitchingProtocols {
		t.Fatalf("a request under the limit: HTTP %d, want 101", got)
	}
	if got := secRaw(t, s, upgrade(2100)); got != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("a complete request over the limit: HTTP %d, want 431", got)
	}
	if got := secRaw(t, s, "GET /ws HTTP/1.1\r\nX-Pad: "+strings.Repeat("p", 3000)); got != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("an unfinished request over the limit: HTTP %d, want 431", got)
	}
	s.metricEquals(t, refusedSeries("header_too_large"), 2)
}

// TestSlowlorisHandshakeTimeout: a client that trickles its upgrade request
// a byte at a time, never finishing it, is closed once the handshake
// timeout has passed, without any answer.
func TestSlowlorisHandshakeTimeout(t *testing.T) {
	const timeout = 500 * time.Millisecond
	s := startServer(t, func(c *engine.Config) { c.HandshakeTimeout = timeout })
	// The server may accept before Dial returns here: time from before it.
	start := time.Now()
	c, err := net.DialTimeout("tcp", strings.TrimSuffix(strings.TrimPrefix(s.wsURL, "ws://"), "/ws"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sent := make(chan int, 1)
	go func() {
		req := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: " + strings.Repeat("s", 4000)
		n := 0
		defer func() { sent <- n }()
		for ; n < len(req); n++ {
			if ctx.Err() != nil {
				return
			}
			if _, err := c.Write([]byte{req[n]}); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond) // the attack is to be slow
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	got, err := io.ReadAll(c)
	elapsed := time.Since(start)
	cancel()
	n := <-sent
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept a trickling handshake open for %v (sent %d bytes)", elapsed, n)
	}
	if len(got) != 0 {
		t.Fatalf("the server answered %q; it should just close", got)
	}
	if elapsed < timeout {
		t.Fatalf("closed after %v, before the handshake timeout %v", elapsed, timeout)
	}
	s.metricEquals(t, refusedSeries("handshake_timeout"), 1)
}

// TestRateLimit: messages over the bucket get RATE_LIMITED and are not
// handled; a client that keeps sending is closed with 1008.
func TestRateLimit(t *testing.T) {
	// One message per 10 s with a burst of 3: the test sends far faster
	// than the bucket refills, however slow the machine.
	s := startServer(t, func(c *engine.Config) { c.RateLimit = 0.1; c.RateBurst = 3 })
	c := s.dial(t, "")
	for i := range 4 {
		c.send(map[string]any{"type": "ping", "timestamp": i})
	}
	for i := range 3 {
		if m := c.expect("pong"); m["timestamp"] != float64(i) {
			t.Fatalf("pong %v, want timestamp %d", m, i)
		}
	}
	if m := c.expect("error"); m["code"] != "RATE_LIMITED" {
		t.Fatalf("4th message: %v, want RATE_LIMITED", m)
	}
	// Keep going: strikes 2..9 get RATE_LIMITED, the 10th closes.
	for i := range 20 {
		if err := c.ws.WriteJSON(map[string]any{"type": "ping", "timestamp": 100 + i}); err != nil {
			break // closed under us: expected at some point
		}
	}
	msgs, code := secReadClose(t, c)
	if code != websocket.ClosePolicyViolation {
		t.Fatalf("close %d, want 1008", code)
	}
	limited := 0
	for _, m := range msgs[:len(msgs)-1] {
		if m["type"] != "error" || m["code"] != "RATE_LIMITED" {
			t.Fatalf("unexpected %v while flooding (all %v)", m, msgs)
		}
		limited++
	}
	if last := msgs[len(msgs)-1]; last["type"] != "closing" || last["reason"] != "policy_violation" || limited != 8 {
		t.Fatalf("flood: %d RATE_LIMITED then %v; want 8 then closing policy_violation", limited, last)
	}
	s.metricEquals(t, refusedSeries("rate_limited"), 9)
	s.metricEquals(t, refusedSeries("rate_abuse"), 1)
	s.metricEquals(t, `websocket_errors_total{code="RATE_LIMITED"}`, 9)

	// Other connections have their own bucket.
	other := s.dial(t, "")
	other.send(map[string]any{"type": "ping", "timestamp": "x"})
	other.expect("pong")
}

func TestLimitSubscriptionsCounted(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.MaxSubscriptions = 1 })
	c := s.dial(t, "")
	c.subscribe("a", map[string]any{})
	c.send(map[string]any{"type": "subscribe", "subscription_id": "b", "filters": map[string]any{}})
	if m := c.expect("error"); m["code"] != "LIMIT_EXCEEDED" {
		t.Fatalf("%v, want LIMIT_EXCEEDED", m)
	}
	s.metricEquals(t, refusedSeries("max_subscriptions"), 1)
}

// TestSecurityRefusalMetricsExported: every refusal reason is a series from
// the start, so dashboards and alerts see zeros rather than gaps.
func TestSecurityRefusalMetricsExported(t *testing.T) {
	s := startServer(t, nil)
	for _, reason := range []string{
		"bad_request", "not_found", "upgrade_required", "header_too_large", "handshake_timeout",
		"forbidden_origin", "unauthorized", "max_connections", "max_connections_per_ip", "resume_denied",
		"auth_refresh_denied", "scope_denied", "max_subscriptions", "rate_limited", "rate_abuse",
	} {
		if got := s.metric(t, refusedSeries(reason)); got != 0 {
			t.Errorf("%s = %v, want 0 on a fresh server", refusedSeries(reason), got)
		}
	}
	host := strings.TrimSuffix(strings.TrimPrefix(s.wsURL, "ws://"), "/ws")
	secRaw(t, s, "GET /nope HTTP/1.1\r\nHost: "+host+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	secRaw(t, s, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
	secRaw(t, s, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
	s.metricEquals(t, refusedSeries("not_found"), 1)
	s.metricEquals(t, refusedSeries("upgrade_required"), 1)
	s.metricEquals(t, refusedSeries("bad_request"), 1)
}

func TestSecurityConfigValidate(t *testing.T) {
	for name, mutate := range map[string]func(*engine.Config){
		"negative max-connections": func(c *engine.Config) { c.MaxConnections = -1 },
		"negative per-ip":          func(c *engine.Config) { c.MaxConnectionsPerIP = -1 },
		"negative rate":            func(c *engine.Config) { c.RateLimit = -1 },
		"negative burst":           func(c *engine.Config) { c.RateBurst = -1 },
		"tiny header limit":        func(c *engine.Config) { c.MaxHeaderSize = 100 },
		"origin with a path":       func(c *engine.Config) { c.AllowedOrigins = []string{"https://a.example/x"} },
		"origin without scheme":    func(c *engine.Config) { c.AllowedOrigins = []string{"a.example"} },
		"invalid proxy prefix":     func(c *engine.Config) { c.TrustedProxies = []netip.Prefix{{}} },
	} {
		cfg := engine.DefaultConfig()
		mutate(&cfg)
		if _, err := engine.New(cfg); err == nil {
			t.Errorf("%s: engine.New accepted it", name)
		}
	}
}

// TestSecurityScopeJSON documents the wire shape of a refused resume and of
// the authenticated reply for clients.
func TestSecurityScopeJSON(t *testing.T) {
	s := startServer(t, func(c *engine.Config) { c.Auth = secAuth(t) })
	c := secClient(t, s, "token="+secToken(t, "carol", time.Hour, map[string]any{"severities": []string{"P0", "P1"}}), nil, "")
	sub := c.subscribe("x", map[string]any{"severities": []string{"P1", "P2"}})
	b, _ := json.Marshal(sub["filters"].(map[string]any)["severities"])
	if string(b) != `["P1"]` {
		t.Fatalf("subscribed severities %s, want the intersection [\"P1\"]", b)
	}
	ids := s.mustPublish(t, ev(`"severity":"P2"`), ev(`"severity":"P0"`), ev(`"severity":"P1"`))
	if got := c.events(1); got[0] != ids[2] {
		t.Fatalf("got %v, want only %d (P1)", got, ids[2])
	}
}
