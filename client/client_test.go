package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/client"
	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/internal/cutproxy"
	"github.com/flarecast/flarecast/internal/enginetest"
)

// server is a real engine in this process (internal/enginetest).
type server struct{ *enginetest.Server }

func startServer(t *testing.T, mutate func(*engine.Config)) *server {
	t.Helper()
	s, err := tryStart(t, mutate)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// restartOn starts a new engine on addr (the port of one just stopped),
// retrying while the kernel still holds the port.
func restartOn(t *testing.T, addr string) *server {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s, err := tryStart(t, func(cfg *engine.Config) { cfg.Listen = addr })
		if err == nil {
			return s
		}
		if !strings.Contains(err.Error(), "address already in use") || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tryStart(t *testing.T, mutate func(*engine.Config)) (*server, error) {
	t.Helper()
	cfg := enginetest.Config()
	cfg.EventLoops = 1
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := enginetest.Start(t, cfg)
	if err != nil {
		return nil, err
	}
	return &server{s}, nil
}

func (s *server) publish(t *testing.T, lines ...string) []uint64 {
	t.Helper()
	ids := make([]uint64, len(lines))
	for i, l := range lines {
		id, err := s.Eng.PublishJSON(context.Background(), []byte(l))
		if err != nil {
			t.Errorf("publish %s: %v", l, err)
			return nil
		}
		ids[i] = id
	}
	return ids
}

func ev(typ client.EventType, sev client.Severity, extra string) string {
	return fmt.Sprintf(`{"event_type":%q,"severity":%q%s}`, typ, sev, extra)
}

func dial(t *testing.T, url string, opts *client.Options) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func subscribe(t *testing.T, c *client.Client, id string, f client.Filters, opts ...client.SubscribeOption) *client.Subscription {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.Subscribe(ctx, id, f, opts...)
	if err != nil {
		t.Fatalf("Subscribe %s: %v", id, err)
	}
	return s
}

// next takes the next event, failing after a deadline.
func next(t *testing.T, s *client.Subscription) client.Event {
	t.Helper()
	select {
	case e, ok := <-s.Events():
		if !ok {
			t.Fatalf("subscription %s ended: %v", s.ID(), s.Err())
		}
		return e
	case <-time.After(15 * time.Second):
		t.Fatalf("no event on %s within 15s", s.ID())
	}
	return client.Event{}
}

func ids(evs []client.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.MessageID
	}
	return out
}

// TestSubscribeInOrder: events arrive typed, filtered, in message_id order,
// on the channel and through the iterator, each to every subscription it
// matches.
func TestSubscribeInOrder(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s.WS, nil)
	crit := subscribe(t, c, "crit", client.Filters{Severities: []client.Severity{client.P0, client.P1}})
	esc := subscribe(t, c, "esc", client.Filters{EventTypes: []client.EventType{client.Escalated}, Labels: map[string]string{"env": "prod"}})

	var wantCrit, wantEsc []uint64
	for i := range 60 {
		sev := []client.Severity{client.P0, client.P1, client.P2, client.P3}[i%4]
		typ := []client.EventType{client.IncidentCreated, client.Escalated, client.CommentAdded}[i%3]
		id := s.publish(t, ev(typ, sev, fmt.Sprintf(`,"incident_id":"INC-%d","state":"Triaged","source":"sentinel","affected_resources":["api"],"labels":{"env":"prod"},"title":"t%d","custom":1`, i, i)))[0]
		if sev == client.P0 || sev == client.P1 {
			wantCrit = append(wantCrit, id)
		}
		if typ == client.Escalated {
			wantEsc = append(wantEsc, id)
		}
	}
	// An event matching both subscriptions goes to both, one after the
	// other: each subscription is consumed in its own goroutine.
	var gotCrit []client.Event
	critDone := make(chan struct{})
	go func() {
		defer close(critDone)
		for e := range crit.Events() {
			gotCrit = append(gotCrit, e)
			if len(gotCrit) == len(wantCrit) {
				return
			}
		}
	}()
	var gotEsc []client.Event
	for e, err := range esc.All() {
		if err != nil {
			t.Fatal(err)
		}
		gotEsc = append(gotEsc, e)
		if len(gotEsc) == len(wantEsc) {
			break
		}
	}
	select {
	case <-critDone:
	case <-time.After(15 * time.Second):
		t.Fatalf("crit got %d of %d events", len(gotCrit), len(wantCrit))
	}
	if !slices.Equal(ids(gotCrit), wantCrit) || !slices.Equal(ids(gotEsc), wantEsc) {
		t.Fatalf("crit %v want %v; esc %v want %v", ids(gotCrit), wantCrit, ids(gotEsc), wantEsc)
	}
	e := gotEsc[0]
	if e.EventType != client.Escalated || e.State != client.StateTriaged || e.Source != "sentinel" || e.Labels["env"] != "prod" ||
		!slices.Equal(e.AffectedResources, []string{"api"}) || !strings.HasPrefix(e.IncidentID, "INC-") || !strings.HasPrefix(e.Title, "t") ||
		e.Timestamp.IsZero() || e.Priority == "" || !strings.Contains(string(e.Raw), `"custom":1`) || !strings.Contains(string(e.Message), `"type":"event"`) {
		t.Fatalf("event fields: %+v", e)
	}
	if err := esc.Unsubscribe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-esc.Events(); ok {
		t.Fatal("an unsubscribed subscription's channel must close")
	}
	s.WaitMetric(t, "websocket_active_subscriptions", 1)
	if got := s.Metric(t, "websocket_active_subscriptions"); got != 1 {
		t.Fatalf("active subscriptions %v after unsubscribe, want 1", got)
	}
}

// TestAcksAfterProcessing: the client receives ten events but the
// application takes four; the ack (coalesced, and sent on Close) names
// the fourth, so the server's resume point is the fifth: a resume of the
// session replays exactly the six the application never took.
func TestAcksAfterProcessing(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s.WS, nil)
	sub := subscribe(t, c, "all", client.Filters{})
	published := s.publish(t, slices.Repeat([]string{ev(client.IncidentUpdated, client.P2, "")}, 10)...)
	for i := range 4 {
		if got := next(t, sub).MessageID; got != published[i] {
			t.Fatalf("event %d: id %d want %d", i, got, published[i])
		}
	}
	s.WaitMetric(t, "websocket_acks_received_total", 1)
	session := c.SessionID()
	c.Close()
	s.WaitMetric(t, `websocket_connections_closed_total{reason="client_closed"}`, 1)

	ws, _, err := websocket.DefaultDialer.Dial(s.WS+"?session_id="+session, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	var replayed []uint64
	for len(replayed) < 6 {
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		var m struct {
			Type      string `json:"type"`
			Resumed   bool   `json:"resumed"`
			MessageID uint64 `json:"message_id"`
		}
		if err := ws.ReadJSON(&m); err != nil {
			t.Fatalf("read: %v (replayed so far %v)", err, replayed)
		}
		switch m.Type {
		case "welcome":
			if !m.Resumed {
				t.Fatal("session not resumed")
			}
		case "event":
			replayed = append(replayed, m.MessageID)
		}
	}
	if !slices.Equal(replayed, published[4:]) {
		t.Fatalf("replayed %v, want %v (everything after the 4 processed)", replayed, published[4:])
	}
}

// TestCutMidPublish cuts the connection (TCP resets) several times while
// events are published: the client resumes and hands over every matching
// event exactly once, in message_id order within each priority.
func TestCutMidPublish(t *testing.T) {
	s := startServer(t, nil)
	p := cutproxy.Start(t, s.Addr)
	var lost atomic.Int32
	c := dial(t, "ws://"+p.Addr()+"/ws", &client.Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		OnState: func(sc client.StateChange) {
			if sc.State == client.Reconnecting {
				lost.Add(1)
			}
		}})
	sub := subscribe(t, c, "mixed", client.Filters{Severities: []client.Severity{client.P0, client.P1, client.P3}})

	const n = 3000
	want := map[uint64]client.Priority{}
	var mu sync.Mutex
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := range n {
			typ := []client.EventType{client.Escalated, client.IncidentCreated, client.CommentAdded}[i%3]
			sev := []client.Severity{client.P0, client.P1, client.P2, client.P3}[i%4]
			got := s.publish(t, ev(typ, sev, ""))
			if got == nil {
				return
			}
			if sev != client.P2 {
				mu.Lock()
				want[got[0]] = ""
				mu.Unlock()
			}
		}
	}()
	cuts := 0
	got := map[uint64]int{}
	last := map[client.Priority]uint64{}
	for {
		mu.Lock()
		total := len(want)
		mu.Unlock()
		select {
		case <-pubDone:
			mu.Lock()
			total = len(want)
			mu.Unlock()
			if len(got) >= total {
				goto done
			}
		default:
		}
		e := next(t, sub)
		got[e.MessageID]++
		if got[e.MessageID] > 1 {
			t.Fatalf("message %d delivered twice", e.MessageID)
		}
		if e.MessageID <= last[e.Priority] {
			t.Fatalf("%s event %d after %d", e.Priority, e.MessageID, last[e.Priority])
		}
		last[e.Priority] = e.MessageID
		if cuts < 4 && len(got) > (cuts+1)*total/6 && rand.IntN(10) == 0 && c.State() == client.Live && int(lost.Load()) == cuts {
			p.Cut()
			cuts++
		}
	}
done:
	// Nothing more (no late duplicate) before a last live event.
	sentinel := s.publish(t, ev(client.Escalated, client.P0, ""))[0]
	if e := next(t, sub); e.MessageID != sentinel {
		t.Fatalf("got %d after the stream, want the sentinel %d", e.MessageID, sentinel)
	}
	for id := range want {
		if got[id] != 1 {
			t.Errorf("message %d delivered %d times", id, got[id])
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d", len(got), len(want))
	}
	if cuts == 0 || lost.Load() == 0 || s.Metric(t, `flarecast_session_resumes_total{result="resumed"}`) < 1 {
		t.Fatalf("cuts %d, reconnects %d, resumes %v: the test did not exercise a resume", cuts, lost.Load(),
			s.Metric(t, `flarecast_session_resumes_total{result="resumed"}`))
	}
	t.Logf("%d events, %d cuts, %v resumes", len(got), cuts, s.Metric(t, `flarecast_session_resumes_total{result="resumed"}`))
}

// restarted is the start of the restart tests: a client reaching the
// server through a cut proxy, subscribed to incident_updated, received
// five events; then the proxy reset its connection and held new ones while
// the server restarted on the same port (b). The proxy resets before the
// old engine stops: a server-side close would leave the port in
// TIME_WAIT, which the engine's listener cannot bind over.
type restarted struct {
	b      *server
	p      *cutproxy.Proxy
	sub    *client.Subscription
	before []uint64 // the old server's five, as received

	mu     sync.Mutex
	states []client.StateChange
}

func restartBehindProxy(t *testing.T) *restarted {
	a := startServer(t, nil)
	r := &restarted{p: cutproxy.Start(t, a.Addr)}
	c := dial(t, "ws://"+r.p.Addr()+"/ws", &client.Options{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		OnState: func(sc client.StateChange) { r.mu.Lock(); r.states = append(r.states, sc); r.mu.Unlock() }})
	r.sub = subscribe(t, c, "p", client.Filters{EventTypes: []client.EventType{client.IncidentUpdated}})
	published := a.publish(t, slices.Repeat([]string{ev(client.IncidentUpdated, client.P1, "")}, 5)...)
	for range published {
		r.before = append(r.before, next(t, r.sub).MessageID)
	}
	if !slices.Equal(r.before, published) {
		t.Fatalf("got %v, want %v", r.before, published)
	}
	r.p.HoldNew()
	r.p.Cut()
	a.Stop(t)
	r.b = restartOn(t, a.Addr)
	return r
}

// newSession reports whether the client went live on a new session.
func (r *restarted) newSession() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.states, func(sc client.StateChange) bool { return sc.State == client.Live && sc.NewSession })
}

// expectSentinel checks that nothing more (no duplicate) comes before a
// last live event.
func (r *restarted) expectSentinel(t *testing.T) {
	t.Helper()
	sentinel := r.b.publish(t, ev(client.IncidentUpdated, client.P1, ""))[0]
	if e := next(t, r.sub); e.MessageID != sentinel {
		t.Fatalf("got %d after the stream, want the sentinel %d", e.MessageID, sentinel)
	}
}

// TestServerRestart restarts the server (a new engine on the same port):
// the session is gone, the client subscribes again with since, notices
// the ids started again and backfills the new server's window, so nothing
// it holds is lost, and nothing is handed over twice.
func TestServerRestart(t *testing.T) {
	r := restartBehindProxy(t)
	b := r.b
	early := b.publish(t, ev(client.IncidentUpdated, client.P2, ""), ev(client.CommentAdded, client.P2, ""), ev(client.IncidentUpdated, client.P3, ""))
	r.p.Release()
	b.WaitMetric(t, "websocket_active_subscriptions", 1)
	late := b.publish(t, slices.Repeat([]string{ev(client.IncidentUpdated, client.P1, "")}, 4)...)
	want := append([]uint64{early[0], early[2]}, late...)
	var got []uint64
	for len(got) < len(want) {
		got = append(got, next(t, r.sub).MessageID)
	}
	// Each of the new server's once (those published before the client
	// noticed the restart are backfilled when it does, after the first
	// live one).
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	r.expectSentinel(t)
	if !r.newSession() {
		t.Fatal("no new-session state change")
	}
}

// TestServerRestartThenCut: after a restart the new session's connection
// is cut before the new server's first event reaches it, so the session
// resumes on another connection. The first event of the session, on
// whichever of its connections, still tells the client that the ids
// started again; before, the watch ended with the connection, and the
// new server's ids up to the old ones were dropped as duplicates.
func TestServerRestartThenCut(t *testing.T) {
	r := restartBehindProxy(t)
	b := r.b
	r.p.Release()
	b.WaitMetric(t, "websocket_active_subscriptions", 1)
	deadline := time.Now().Add(15 * time.Second)
	for !r.newSession() {
		if time.Now().After(deadline) {
			t.Fatal("no new-session state change after the restart")
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.p.Cut() // before the new server's first event
	b.WaitMetric(t, `flarecast_session_resumes_total{result="resumed"}`, 1)
	want := b.publish(t, slices.Repeat([]string{ev(client.IncidentUpdated, client.P2, "")}, 7)...)
	var got []uint64
	for len(got) < len(want) {
		got = append(got, next(t, r.sub).MessageID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	r.expectSentinel(t)
}

var secret = []byte("flarecast-client-test-secret-0123456789")

func token(t *testing.T, sub string, ttl time.Duration) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "exp": time.Now().Add(ttl).Unix()}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func authServer(t *testing.T) *server {
	v, err := auth.New(auth.Options{HS256Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, func(cfg *engine.Config) {
		cfg.Auth = v
		cfg.CleanupInterval = 50 * time.Millisecond
	})
}

// TestTokenRefresh: the first token expires in about two seconds; the
// client gets a new one through GetToken and sends it in an `auth`
// message before then, so the connection outlives the first token.
func TestTokenRefresh(t *testing.T) {
	s := authServer(t)
	var calls atomic.Int32
	var reconnects atomic.Int32
	first := token(t, "bot", 2*time.Second)
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	c := dial(t, s.WS, &client.Options{
		GetToken: func(context.Context) (string, error) {
			if calls.Add(1) == 1 {
				return first, nil
			}
			return token(t, "bot", time.Hour), nil
		},
		OnState: func(sc client.StateChange) {
			if sc.State == client.Reconnecting {
				reconnects.Add(1)
			}
		},
	})
	sub := subscribe(t, c, "all", client.Filters{})
	time.Sleep(time.Until(exp.Add(time.Second))) // let the first token's exp pass (the server sweeps every 50ms)
	id := s.publish(t, ev(client.SystemEvent, client.P4, ""))[0]
	if got := next(t, sub).MessageID; got != id {
		t.Fatalf("got %d want %d", got, id)
	}
	if calls.Load() < 2 || reconnects.Load() != 0 || s.Metric(t, `websocket_connections_closed_total{reason="token_expired"}`) != 0 {
		t.Fatalf("GetToken calls %d, reconnects %d, token_expired closes %v: want a refresh on the same connection",
			calls.Load(), reconnects.Load(), s.Metric(t, `websocket_connections_closed_total{reason="token_expired"}`))
	}
}

// TestTokenExpiredClosing: a static token that expires ends the client
// with the server's closing reason as a typed error.
func TestTokenExpiredClosing(t *testing.T) {
	s := authServer(t)
	c := dial(t, s.WS, &client.Options{Token: token(t, "bot", time.Second)})
	sub := subscribe(t, c, "all", client.Filters{})
	select {
	case <-c.Done():
	case <-time.After(15 * time.Second):
		t.Fatal("the client did not end after its token expired")
	}
	var ce *client.ClosedError
	if !errors.As(c.Err(), &ce) || ce.Reason != client.ReasonTokenExpired || ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("Err() = %#v, want a ClosedError token_expired 1008", c.Err())
	}
	var last error
	for _, err := range sub.All() {
		last = err
	}
	if !errors.As(last, &ce) {
		t.Fatalf("the iterator ended with %v, want the closing error", last)
	}
}

// TestLimitExceeded: a refused subscribe is a *ServerError with the code.
func TestLimitExceeded(t *testing.T) {
	s := startServer(t, func(cfg *engine.Config) { cfg.MaxSubscriptions = 1 })
	c := dial(t, s.WS, nil)
	subscribe(t, c, "one", client.Filters{})
	_, err := c.Subscribe(context.Background(), "two", client.Filters{})
	var se *client.ServerError
	if !errors.As(err, &se) || se.Code != client.CodeLimitExceeded {
		t.Fatalf("err = %v, want LIMIT_EXCEEDED", err)
	}
	_, err = c.Subscribe(context.Background(), "one", client.Filters{Severities: []client.Severity{"P7"}})
	if !errors.As(err, &se) || se.Code != client.CodeInvalidMessage {
		t.Fatalf("err = %v, want INVALID_MESSAGE", err)
	}
}

// TestHandshakeRefused: a refused upgrade is a *HandshakeError from Dial.
func TestHandshakeRefused(t *testing.T) {
	s := authServer(t)
	_, err := client.Dial(context.Background(), s.WS, nil)
	var he *client.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
		t.Fatalf("err = %v, want HTTP 401", err)
	}
}

// TestGap: a since below the history window is reported as a gap.
func TestGap(t *testing.T) {
	s := startServer(t, func(cfg *engine.Config) { cfg.HistorySize = 2 })
	ids := s.publish(t, slices.Repeat([]string{ev(client.IncidentUpdated, client.P2, "")}, 5)...)
	gaps := make(chan client.Gap, 1)
	c := dial(t, s.WS, &client.Options{OnGap: func(g client.Gap) { gaps <- g }})
	sub := subscribe(t, c, "all", client.Filters{}, client.Since(0))
	if got := []uint64{next(t, sub).MessageID, next(t, sub).MessageID}; !slices.Equal(got, ids[3:]) {
		t.Fatalf("got %v want %v", got, ids[3:])
	}
	select {
	case g := <-gaps:
		if g.FirstAvailable != ids[3] {
			t.Fatalf("gap %+v, want first_available %d", g, ids[3])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no gap reported")
	}
}

var _ = json.Marshal

// TestSessionLostBeforeAnyEvent: a client whose session expires before it
// processed any event subscribes again from where its subscription started
// (the subscribed reply's from), so the events published while it was away
// still reach it.
func TestSessionLostBeforeAnyEvent(t *testing.T) {
	s := startServer(t, func(cfg *engine.Config) {
		cfg.SessionTimeout, cfg.CleanupInterval = 300*time.Millisecond, 50*time.Millisecond
	})
	p := cutproxy.Start(t, s.Addr)
	newSession := make(chan struct{}, 1)
	c := dial(t, "ws://"+p.Addr()+"/ws", &client.Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		OnState: func(sc client.StateChange) {
			if sc.NewSession {
				newSession <- struct{}{}
			}
		}})
	s.publish(t, ev(client.IncidentCreated, client.P1, "")) // before it subscribed: not for it
	sub := subscribe(t, c, "p1", client.Filters{Severities: []client.Severity{client.P1}})

	p.HoldNew()
	p.Cut()
	want := s.publish(t, ev(client.IncidentCreated, client.P1, ""), ev(client.Escalated, client.P1, ""))
	time.Sleep(600 * time.Millisecond) // past the session timeout and a sweep
	p.Release()
	select {
	case <-newSession:
	case <-time.After(15 * time.Second):
		t.Fatal("the client never came back on a new session")
	}
	got := []uint64{next(t, sub).MessageID, next(t, sub).MessageID}
	if !slices.Equal(got, want) {
		t.Fatalf("after the session was lost, got %v; want the events published meanwhile, %v", got, want)
	}
}
