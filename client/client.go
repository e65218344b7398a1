package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	// gorilla/websocket rather than gobwas/ws: the client needs a complete
	// dialer (proxies from the environment, TLS, handshake timeout,
	// permessage-deflate, the HTTP response of a refused upgrade), automatic
	// pong replies and read deadlines, all of which gorilla provides in a
	// few calls; gobwas/ws is a frame toolkit suited to the server's event
	// loop, and a client on it would re-implement most of the above.
	"github.com/gorilla/websocket"
)

// Options configure a client. The zero value works against a server run
// with --auth none.
type Options struct {
	// Token is a bearer token (JWT) for a server run with --auth jwt, sent as
	// Authorization: Bearer. GetToken, when set, is called for the token of
	// every connection and to refresh it (through the `auth` message)
	// before it expires.
	Token    string
	GetToken func(ctx context.Context) (string, error)
	// RefreshBefore is how long before the token's exp GetToken is called
	// (default: a third of the token's remaining life, at most 30s).
	RefreshBefore time.Duration
	// Header is added to every upgrade request.
	Header http.Header
	// Dialer makes the WebSocket connections (default: permessage-deflate
	// offered, proxies from the environment, a 10s handshake timeout).
	Dialer *websocket.Dialer
	// MinBackoff and MaxBackoff bound the delay between reconnection
	// attempts; it doubles from MinBackoff (250ms) up to MaxBackoff (5s),
	// with up to 50% added at random.
	MinBackoff, MaxBackoff time.Duration
	// ReconnectFor gives up (the client closes with the last error) when
	// no connection could be made this long after a drop (0: never).
	ReconnectFor time.Duration
	// AckInterval coalesces acks: at most one per interval (default 200ms),
	// and one on Close.
	AckInterval time.Duration
	// HeartbeatInterval is the server's --heartbeat-interval (default 30s):
	// a connection that receives nothing for three of them is taken for
	// dead and replaced.
	HeartbeatInterval time.Duration
	// DedupWindow is how many message_ids the de-duplication remembers
	// above the lowest one it may still see (default 1<<20, 128 KiB).
	DedupWindow int
	// OnState, OnGap and OnError are called from the client's goroutine
	// (keep them short): state changes, HISTORY_GAP notifications, and
	// server errors that answer no call of this package. They must not
	// call Close (it waits for that goroutine).
	OnState func(StateChange)
	OnGap   func(Gap)
	OnError func(error)
	// Logger receives debug logs of the connection's life (default: none).
	Logger *slog.Logger
}

// Client is a connection to a flarecast server that survives drops: it
// reconnects with backoff, resumes its session, re-subscribes with since
// when the session is gone, acks what the application processed, and
// hands each event over once. Its methods are safe for concurrent use.
type Client struct {
	url  *url.URL
	opts Options
	log  *slog.Logger

	reqs     chan *request
	closeReq chan struct{}
	closeOne sync.Once
	done     chan struct{} // the run goroutine ended
	deliv    chan item     // reader → dispatcher
	dispDone chan struct{}

	mu        sync.Mutex
	subs      map[string]*Subscription
	err       error
	state     State
	sessionID string

	// Acknowledging: the dispatcher records the highest message_id it
	// processed from connection gen; the run loop acks it.
	ackMu        sync.Mutex
	gen          uint64
	connProcess  uint64
	maxProcessed atomic.Uint64 // highest id processed, any connection: since for a new session
	restarted    chan struct{} // the dispatcher saw the server's ids start again
	lastToken    string        // the token of the current connection (run goroutine only)
	welcomed     bool          // a connection was welcomed before (run goroutine only)
}

// item is what the dispatcher works on, in arrival order.
type item struct {
	gen   uint64
	ev    *Event
	fresh bool // a new session subscribed with since=above: an id ≤ above means a restart
	above uint64
	close *Subscription
}

type reqKind int

const (
	reqSubscribe reqKind = iota
	reqUnsubscribe
)

type request struct {
	kind  reqKind
	sub   *Subscription
	since *uint64
	reply chan error // nil: internal
}

// Subscription is one subscription of a client.
type Subscription struct {
	c       *Client
	id      string
	filters Filters
	since   *uint64
	// fromPlus1: one more than the message_id after which the server
	// delivers to this subscription (its subscribed reply's from; 0 until
	// that came, as from may be 0): where a new session starts it again
	// while nothing was processed yet.
	fromPlus1 atomic.Uint64
	ch        chan Event
	done      chan struct{} // closed when the subscription ends
	endOnce   sync.Once
	err       error
}

// SubscribeOption modifies a subscription.
type SubscribeOption func(*Subscription)

// Since first replays the held events with a message_id above id, then goes live.
func Since(id uint64) SubscribeOption { return func(s *Subscription) { s.since = &id } }

// Dial connects to url (ws://host:port/ws or wss://…) and returns once the
// server has welcomed the client; a first connection that fails is
// returned as the error (a *HandshakeError when the server refused the
// upgrade). Afterwards the client reconnects by itself until Close.
func Dial(ctx context.Context, rawURL string, opts *Options) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return nil, fmt.Errorf("flarecast: want a ws:// or wss:// URL, got %q", rawURL)
	}
	c := &Client{url: u, reqs: make(chan *request), closeReq: make(chan struct{}), done: make(chan struct{}),
		deliv: make(chan item, 1024), dispDone: make(chan struct{}), subs: map[string]*Subscription{},
		restarted: make(chan struct{}, 1)}
	if opts != nil {
		c.opts = *opts
	}
	o := &c.opts
	if o.MinBackoff <= 0 {
		o.MinBackoff = 250 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(5*time.Second, o.MinBackoff)
	}
	if o.AckInterval <= 0 {
		o.AckInterval = 200 * time.Millisecond
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 30 * time.Second
	}
	if o.DedupWindow <= 0 {
		o.DedupWindow = 1 << 20
	}
	c.log = o.Logger
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c.setState(StateChange{State: Connecting})
	conn, w, err := c.connect(ctx)
	if err != nil {
		c.setState(StateChange{State: Closed, Err: err})
		return nil, err
	}
	go c.dispatch()
	go c.run(conn, w)
	return c, nil
}

// Err is why the client closed: nil while it runs and after Close, else
// the error it gave up on.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// State is the current connection state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// SessionID is the current session's id.
func (c *Client) SessionID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessionID
}

// Done is closed when the client has closed (Close, or gave up: see Err).
func (c *Client) Done() <-chan struct{} { return c.dispDone }

func (c *Client) setState(sc StateChange) {
	c.mu.Lock()
	c.state = sc.State
	c.mu.Unlock()
	if c.opts.OnState != nil {
		c.opts.OnState(sc)
	}
}

// Close acks what was processed, closes the connection and ends every
// subscription (their channels close). It waits for the client's
// goroutines; a handler blocked elsewhere does not hold it up.
func (c *Client) Close() error {
	c.closeOne.Do(func() { close(c.closeReq) })
	<-c.done
	<-c.dispDone
	return nil
}

// Subscribe subscribes with id (a subscription the client holds with the
// same id is replaced and ends) and returns once the server confirmed it.
// A refusal is a *ServerError (LIMIT_EXCEEDED, INVALID_MESSAGE,
// UNAUTHORIZED…). While the client reconnects, the request waits for the
// next connection.
func (c *Client) Subscribe(ctx context.Context, id string, filters Filters, opts ...SubscribeOption) (*Subscription, error) {
	s := &Subscription{c: c, id: id, filters: filters, ch: make(chan Event), done: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	r := &request{kind: reqSubscribe, sub: s, since: s.since, reply: make(chan error, 1)}
	if err := c.call(ctx, r); err != nil {
		s.end(err)
		if ctx.Err() != nil {
			// The request may have reached the server: take it back.
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = s.Unsubscribe(ctx)
			}()
		}
		return nil, err
	}
	return s, nil
}

func (c *Client) call(ctx context.Context, r *request) error {
	select {
	case c.reqs <- r:
	case <-c.done:
		return c.closedErr()
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.reply:
		return err
	case <-c.done:
		return c.closedErr()
	case <-ctx.Done():
		// The server may still take it; the run loop keeps the books.
		return ctx.Err()
	}
}

func (c *Client) closedErr() error {
	if err := c.Err(); err != nil {
		return err
	}
	return ErrClosed
}

// ID is the subscription's id.
func (s *Subscription) ID() string { return s.id }

// Events delivers the subscription's events, each once, in the order the
// server sent them (message_id order while the connection keeps up). An
// event counts as processed, and is acked, once it has been received from
// this channel. The channel closes when the subscription ends.
func (s *Subscription) Events() <-chan Event { return s.ch }

// Err is why the subscription ended: nil while it runs and after
// Unsubscribe or Close, else the client's error.
func (s *Subscription) Err() error {
	<-s.done
	return s.err
}

// All iterates over the subscription's events until it ends; a client
// that gave up yields its error last. Breaking out of the loop does not
// unsubscribe.
func (s *Subscription) All() iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		for ev := range s.ch {
			if !yield(ev, nil) {
				return
			}
		}
		if err := s.Err(); err != nil {
			yield(Event{}, err)
		}
	}
}

// Unsubscribe ends the subscription: no event is handed to it after this
// returns, and its channel closes.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	return s.c.call(ctx, &request{kind: reqUnsubscribe, sub: s, reply: make(chan error, 1)})
}

func (s *Subscription) end(err error) {
	s.endOnce.Do(func() {
		s.err = err
		close(s.done)
	})
}

func (s *Subscription) sinceMsg(since *uint64) map[string]any {
	m := map[string]any{"type": "subscribe", "subscription_id": s.id, "filters": s.filters}
	if since != nil {
		m["since"] = *since
	}
	return m
}

// dispatch hands events to the subscriptions in arrival order, drops
// duplicates, and records what was processed for the acks. A send on an
// unbuffered channel completes when the application took the event, so
// "processed" means taken.
func (c *Client) dispatch() {
	defer close(c.dispDone)
	seen := newSeenSet(c.opts.DedupWindow)
	// After a new session subscribed with since=N, the first event it
	// receives on any of its connections (gen ≥ watchGen: a cut may come
	// before that event, and the session then resumes on a later one)
	// tells whether the server's numbering started again.
	var watchAbove *uint64
	var watchGen uint64
	// A new session welcomed before a restart was seen made its since
	// from the old numbering: its watch is void (gens ≤ voidThrough).
	var voidThrough uint64
	for {
		var it item
		select {
		case it = <-c.deliv:
		case <-c.done:
			c.mu.Lock()
			subs := c.subs
			c.subs = map[string]*Subscription{}
			err := c.err
			c.mu.Unlock()
			for _, s := range subs {
				s.end(err)
				close(s.ch)
			}
			return
		}
		switch {
		case it.fresh:
			watchAbove = nil
			if it.above > 0 && it.gen > voidThrough {
				a := it.above
				watchAbove, watchGen = &a, it.gen
			}
			continue
		case it.close != nil:
			close(it.close.ch)
			continue
		}
		ev := it.ev
		if watchAbove != nil && it.gen >= watchGen {
			if ev.MessageID <= *watchAbove {
				// A new session subscribed with since=N got an id ≤ N: the
				// server's numbering started again (a restarted single
				// server). Forget the old ids and backfill its window.
				c.log.Info("flarecast: the server's message ids started again", "id", ev.MessageID, "since", *watchAbove)
				seen.reset()
				c.maxProcessed.Store(0)
				c.ackMu.Lock()
				voidThrough = c.gen
				c.ackMu.Unlock()
				select {
				case c.restarted <- struct{}{}:
				default:
				}
			}
			watchAbove = nil
		}
		if seen.add(ev.MessageID) {
			c.mu.Lock()
			var to []*Subscription
			for _, s := range c.subs {
				if s.filters.Matches(ev) {
					to = append(to, s)
				}
			}
			c.mu.Unlock()
			for _, s := range to {
				select {
				case s.ch <- *ev:
				case <-s.done:
				case <-c.done:
				}
			}
			if c.maxProcessed.Load() < ev.MessageID {
				c.maxProcessed.Store(ev.MessageID)
			}
		}
		c.ackMu.Lock()
		if it.gen == c.gen && ev.MessageID > c.connProcess {
			c.connProcess = ev.MessageID
		}
		c.ackMu.Unlock()
	}
}

// token returns the token for a new connection.
func (c *Client) token(ctx context.Context) (string, error) {
	if c.opts.GetToken != nil {
		return c.opts.GetToken(ctx)
	}
	return c.opts.Token, nil
}

// connect dials once and reads the welcome.
func (c *Client) connect(ctx context.Context) (*websocket.Conn, *serverMessage, error) {
	u := *c.url
	q := u.Query()
	c.mu.Lock()
	if c.sessionID != "" {
		q.Set("session_id", c.sessionID)
	}
	c.mu.Unlock()
	u.RawQuery = q.Encode()
	header := http.Header{}
	for k, v := range c.opts.Header {
		header[k] = v
	}
	tok, err := c.token(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("flarecast: getting a token: %w", err)
	}
	c.lastToken = tok
	if tok != "" {
		// A header, not ?token=: query strings end up in proxies' access logs.
		header.Set("Authorization", "Bearer "+tok)
	}
	d := c.opts.Dialer
	if d == nil {
		d = &websocket.Dialer{HandshakeTimeout: 10 * time.Second, EnableCompression: true, Proxy: http.ProxyFromEnvironment}
	}
	conn, resp, err := d.DialContext(ctx, u.String(), header)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			resp.Body.Close()
			line := strings.TrimSpace(strings.SplitN(string(body), "\n", 2)[0])
			return nil, nil, &HandshakeError{StatusCode: resp.StatusCode, Status: resp.Status, Body: line}
		}
		return nil, nil, fmt.Errorf("flarecast: cannot connect to %s: %w", c.url.Redacted(), err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(3 * c.opts.HeartbeatInterval))
	_, data, err := conn.ReadMessage()
	var w serverMessage
	if err == nil {
		err = json.Unmarshal(data, &w)
	}
	if err == nil && w.Type != "welcome" {
		err = fmt.Errorf("flarecast: want a welcome, got %.80q", data)
	}
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("flarecast: connection to %s lost before its welcome: %w", c.url.Redacted(), err)
	}
	return conn, &w, nil
}

// fatal reports whether a failure must end the client rather than be retried.
func fatal(err error) bool {
	var he *HandshakeError
	if errors.As(err, &he) {
		return he.StatusCode != http.StatusTooManyRequests && he.StatusCode < 500
	}
	var ce *ClosedError
	return errors.As(err, &ce) && ce.Reason == ReasonPolicyViolation
}

// run serves connections until Close or a fatal error.
func (c *Client) run(conn *websocket.Conn, w *serverMessage) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-c.closeReq:
		case <-c.done:
		}
		cancel()
	}()
	var pending []*request // sent, awaiting their reply; resent after a drop
	var final error
	for {
		err := c.serve(ctx, conn, w, &pending)
		if ctx.Err() != nil {
			break
		}
		var ce *ClosedError
		if errors.As(err, &ce) && ce.Reason == ReasonTokenExpired && c.opts.GetToken == nil {
			final = err
			break
		}
		if fatal(err) {
			final = err
			break
		}
		if errors.As(err, &ce) && ce.Reason == ReasonSessionTakenOver {
			// Another client resumed this session: taking it back would
			// start a tug of war. Start a new one, from what was processed.
			c.mu.Lock()
			c.sessionID = ""
			c.mu.Unlock()
		}
		c.setState(StateChange{State: Reconnecting, Err: err})
		c.log.Debug("flarecast: connection lost", "err", err)
		lostAt, delay := time.Now(), c.opts.MinBackoff
		conn = nil
		for conn == nil {
			select {
			case <-ctx.Done():
			case <-time.After(delay + rand.N(delay/2+1)):
			}
			if ctx.Err() != nil {
				break
			}
			conn, w, err = c.connect(ctx)
			if err == nil {
				break
			}
			if fatal(err) || (c.opts.ReconnectFor > 0 && time.Since(lostAt) > c.opts.ReconnectFor) {
				final = err
				break
			}
			c.log.Debug("flarecast: reconnect failed", "err", err)
			delay = min(2*delay, c.opts.MaxBackoff)
		}
		if conn == nil {
			break
		}
	}
	for _, r := range pending {
		if r.reply != nil {
			r.reply <- c.closeErrOr(final)
		}
	}
	c.mu.Lock()
	c.err = final
	c.mu.Unlock()
	c.setState(StateChange{State: Closed, Err: final})
	close(c.done)
}

func (c *Client) closeErrOr(err error) error {
	if err != nil {
		return err
	}
	return ErrClosed
}

// serve runs one connection until it ends, and returns why.
func (c *Client) serve(ctx context.Context, conn *websocket.Conn, w *serverMessage, pending *[]*request) error {
	defer conn.Close()
	c.mu.Lock()
	resumed := w.Resumed && c.sessionID == w.SessionID
	hadSession := c.welcomed
	c.welcomed = true
	c.sessionID = w.SessionID
	subs := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	c.ackMu.Lock()
	c.gen++
	gen := c.gen
	c.connProcess = 0
	c.ackMu.Unlock()
	var acked uint64

	send := func(v any) error {
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return conn.WriteJSON(v)
	}
	// What was in flight goes again: on a resumed session as it was; on a
	// new one every subscription is made again, from what was processed.
	old := *pending
	*pending = nil
	var toSend []*request
	if resumed {
		toSend = old
	} else {
		since := c.maxProcessed.Load()
		waiting := map[*Subscription]*request{}
		for _, r := range old {
			if r.kind == reqSubscribe {
				waiting[r.sub] = r
			} else if r.reply != nil {
				r.reply <- nil // the new session holds no subscription
			}
		}
		for _, s := range subs {
			r := &request{kind: reqSubscribe, sub: s, since: s.since}
			if since > 0 {
				r.since = &since
			} else if f := s.fromPlus1.Load(); f > 0 {
				// Nothing processed yet: from where the old session
				// delivered this subscription.
				from := f - 1
				r.since = &from
			}
			if p := waiting[s]; p != nil {
				r.reply = p.reply
			}
			toSend = append(toSend, r)
		}
		if hadSession {
			// Even with since 0: a new session ends the watch of the one
			// before it.
			select {
			case c.deliv <- item{gen: gen, fresh: true, above: since}:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	for _, r := range toSend {
		if err := c.sendRequest(send, r); err != nil {
			*pending = append(*pending, toSend...)
			return err
		}
		*pending = append(*pending, r)
	}
	c.setState(StateChange{State: Live, SessionID: w.SessionID, Resumed: resumed, NewSession: hadSession && !resumed})

	// The reader: events go to the dispatcher (blocking when it is 1024
	// behind: the socket then stops draining and the server holds the
	// rest), everything else to this loop.
	ctrl := make(chan *serverMessage, 16)
	readErr := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	deadline := 3 * c.opts.HeartbeatInterval
	conn.SetPingHandler(func(data string) error {
		_ = conn.SetReadDeadline(time.Now().Add(deadline))
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(5*time.Second))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	var closing string
	var closingMu sync.Mutex
	go func() {
		for {
			_ = conn.SetReadDeadline(time.Now().Add(deadline))
			_, data, err := conn.ReadMessage()
			if err != nil {
				readErr <- err
				return
			}
			m := new(serverMessage)
			if err := json.Unmarshal(data, m); err != nil {
				readErr <- fmt.Errorf("flarecast: server sent a message that is not JSON: %.80q", data)
				return
			}
			if m.Type == "event" {
				ev := parseEvent(m, data)
				select {
				case c.deliv <- item{gen: gen, ev: &ev}:
				case <-stop:
					return
				}
				continue
			}
			if m.Type == "closing" {
				closingMu.Lock()
				closing = m.Reason
				closingMu.Unlock()
			}
			select {
			case ctrl <- m:
			case <-stop:
				return
			}
		}
	}()

	ackTick := time.NewTicker(c.opts.AckInterval)
	defer ackTick.Stop()
	ack := func() error {
		c.ackMu.Lock()
		n := c.connProcess
		c.ackMu.Unlock()
		if n <= acked {
			return nil
		}
		if err := send(map[string]any{"type": "ack", "message_id": n}); err != nil {
			return err
		}
		acked = n
		return nil
	}
	refresh := c.refreshTimer(c.lastToken)
	defer refresh.Stop()
	tokens := make(chan string, 1)
	lost := func(err error) error {
		var ce *websocket.CloseError
		closingMu.Lock()
		reason := closing
		closingMu.Unlock()
		if errors.As(err, &ce) {
			return &ClosedError{Reason: reason, Code: ce.Code, Text: ce.Text}
		}
		if reason != "" {
			return &ClosedError{Reason: reason}
		}
		return fmt.Errorf("flarecast: connection lost: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			_ = ack()
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
			return ctx.Err()
		case err := <-readErr:
			return lost(err)
		case <-ackTick.C:
			if err := ack(); err != nil {
				return lost(err)
			}
		case <-c.restarted:
			// Backfill the restarted server's window: every subscription
			// again from since 0 (what was already handed over is not
			// handed over twice).
			zero := uint64(0)
			for _, s := range c.snapshotSubs() {
				r := &request{kind: reqSubscribe, sub: s, since: &zero}
				if err := c.sendRequest(send, r); err != nil {
					return lost(err)
				}
				*pending = append(*pending, r)
			}
		case <-refresh.C:
			go func() {
				tok, err := c.opts.GetToken(ctx)
				if err != nil {
					c.report(fmt.Errorf("flarecast: refreshing the token: %w", err))
					return
				}
				tokens <- tok
			}()
		case tok := <-tokens:
			if err := send(map[string]any{"type": "auth", "token": tok}); err != nil {
				return lost(err)
			}
			c.lastToken = tok
			refresh.Stop()
			refresh = c.refreshTimer(tok)
		case r := <-c.reqs:
			if r.kind == reqUnsubscribe {
				c.mu.Lock()
				cur := c.subs[r.sub.id]
				if cur == r.sub {
					delete(c.subs, r.sub.id)
				}
				c.mu.Unlock()
				if cur != r.sub {
					r.reply <- nil // already ended (replaced)
					continue
				}
				c.endSub(r.sub, nil)
			}
			if err := c.sendRequest(send, r); err != nil {
				*pending = append(*pending, r)
				return lost(err)
			}
			*pending = append(*pending, r)
		case m := <-ctrl:
			switch m.Type {
			case "subscribed", "unsubscribed":
				want := reqSubscribe
				if m.Type == "unsubscribed" {
					want = reqUnsubscribe
				}
				for i, r := range *pending {
					if r.kind == want && r.sub.id == m.SubscriptionID {
						if want == reqSubscribe {
							r.sub.fromPlus1.Store(m.From + 1)
						}
						*pending = append((*pending)[:i], (*pending)[i+1:]...)
						if r.reply != nil {
							r.reply <- nil
						}
						break
					}
				}
			case "error":
				serr := &ServerError{Code: m.Code, Message: m.Message, FirstAvailable: m.FirstAvailable}
				if m.Code == CodeHistoryGap {
					if c.opts.OnGap != nil {
						c.opts.OnGap(Gap{FirstAvailable: m.FirstAvailable, Message: m.Message})
					}
					continue
				}
				if len(*pending) > 0 {
					r := (*pending)[0]
					*pending = (*pending)[1:]
					if r.kind == reqSubscribe {
						c.mu.Lock()
						if c.subs[r.sub.id] == r.sub {
							delete(c.subs, r.sub.id)
						}
						c.mu.Unlock()
						c.endSub(r.sub, serr)
					}
					if r.reply != nil {
						r.reply <- serr
						continue
					}
				}
				c.report(serr)
			case "closing":
				// The close frame follows; the reader reports it.
			}
		}
	}
}

// sendRequest writes a subscribe or unsubscribe. A subscribe is
// registered before it is sent, so its first events find it.
func (c *Client) sendRequest(send func(any) error, r *request) error {
	if r.kind == reqUnsubscribe {
		return send(map[string]any{"type": "unsubscribe", "subscription_id": r.sub.id})
	}
	c.mu.Lock()
	prev := c.subs[r.sub.id]
	c.subs[r.sub.id] = r.sub
	c.mu.Unlock()
	if prev != nil && prev != r.sub {
		c.endSub(prev, nil)
	}
	return send(r.sub.sinceMsg(r.since))
}

// endSub ends s and has the dispatcher close its channel (it is the only
// sender on it).
func (c *Client) endSub(s *Subscription, err error) {
	s.end(err)
	go func() {
		select {
		case c.deliv <- item{close: s}:
		case <-c.done:
		}
	}()
}

func (c *Client) snapshotSubs() []*Subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		out = append(out, s)
	}
	return out
}

func (c *Client) report(err error) {
	c.log.Debug("flarecast: server error", "err", err)
	if c.opts.OnError != nil {
		c.opts.OnError(err)
	}
}

// refreshTimer fires RefreshBefore (or a third of its remaining life, at
// most 30s) before tok expires; it never fires without GetToken or exp.
func (c *Client) refreshTimer(tok string) *time.Timer {
	exp := tokenExpiry(tok)
	if c.opts.GetToken == nil || exp.IsZero() {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t
	}
	left := time.Until(exp)
	lead := c.opts.RefreshBefore
	if lead <= 0 {
		lead = min(30*time.Second, left/3)
	}
	return time.NewTimer(max(left-lead, 0))
}

// tokenExpiry reads a JWT's exp without verifying it (the server does).
func tokenExpiry(tok string) time.Time {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return time.Time{}
	}
	f, err := claims.Exp.Float64()
	if err != nil || f <= 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(f*1e9))
}
