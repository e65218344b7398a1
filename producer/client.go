package producer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Dialer holds a Client's options; the zero value is the defaults.
type Dialer struct {
	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts. A lost connection that had been answering is redialled at
	// once; after that each failed attempt doubles the wait from
	// MinBackoff (default 50ms) up to MaxBackoff (default 5s), jittered so
	// a fleet of producers does not redial in step after a server restart.
	MinBackoff, MaxBackoff time.Duration
	// MaxInFlight bounds the events sent and not yet answered (default
	// 4096). Beyond it a publish waits: a saturated server slows its
	// producers down instead of growing their memory.
	MaxInFlight int
}

const (
	defaultMinBackoff  = 50 * time.Millisecond
	defaultMaxBackoff  = 5 * time.Second
	defaultMaxInFlight = 4096
	// maxSpareBuffer is the largest write buffer a connection keeps for
	// reuse; a burst beyond it is not held on to.
	maxSpareBuffer = 1 << 20
)

// Client publishes events to flarecast's ingest socket. It is safe for
// concurrent use: events from every goroutine are pipelined on one
// connection, written together when they arrive together, and each reply
// is matched to its event by order.
//
// When the connection breaks the Client redials in the background with
// backoff. An event that had not been written yet is sent on the next
// connection; one that had been written gets ErrNoReply. A publish made
// while disconnected waits for the connection, at most until its context
// ends (then ErrUnavailable: the event was not sent).
type Client struct {
	path                   string
	minBackoff, maxBackoff time.Duration
	tokens                 chan struct{} // one per event awaiting its reply

	cur atomic.Pointer[conn] // nil while disconnected

	mu      sync.Mutex
	up      chan struct{} // closed while cur is set; a fresh one once it is lost
	dialErr error         // why the last reconnection attempt failed
	flaps   int           // connections lost in a row before any reply
	closed  bool

	ctx    context.Context // ends with Close: stops reconnection
	cancel context.CancelFunc
	wg     sync.WaitGroup // reply readers and the reconnector
}

// Result is the outcome of one event of a batch: its message_id, or an error.
type Result struct {
	MessageID uint64
	Err       error
}

// Dial connects to the ingest socket at path with the default options.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d Dialer
	return d.Dial(ctx, path)
}

// Dial connects to the ingest socket at path. The first connection must
// succeed; later ones are made in the background when it breaks.
func (d *Dialer) Dial(ctx context.Context, path string) (*Client, error) {
	c := &Client{
		path:       path,
		minBackoff: cmp(d.MinBackoff, defaultMinBackoff),
		maxBackoff: cmp(d.MaxBackoff, defaultMaxBackoff),
		tokens:     make(chan struct{}, cmp(d.MaxInFlight, defaultMaxInFlight)),
		up:         make(chan struct{}),
	}
	c.maxBackoff = max(c.maxBackoff, c.minBackoff)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	nc, err := c.dial(ctx)
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.install(nc)
	return c, nil
}

// cmp returns v, or def when v is not positive.
func cmp[T int | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// Close closes the connection and stops reconnecting. Events written and
// still waiting for their reply get ErrNoReply; later publishes ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.cancel()
	cn := c.cur.Swap(nil)
	c.mu.Unlock()
	if cn != nil {
		cn.fail(errClosedInFlight, 0)
	}
	c.wg.Wait()
	return nil
}

var errClosedInFlight = fmt.Errorf("%w: client closed", ErrNoReply)

// PublishJSON sends one event (a JSON object; a pretty-printed one is
// compacted onto one line) and returns its message_id. It makes a Client a
// Publisher, as *engine.Engine is one. event is not retained.
func (c *Client) PublishJSON(ctx context.Context, event []byte) (uint64, error) {
	line := oneLine(event)
	for {
		cn, err := c.connected(ctx)
		if err != nil {
			return 0, err
		}
		if err := c.acquire(ctx, cn); err != nil {
			return 0, err
		}
		cl := getCall()
		if !cn.enqueue(cl, line) {
			c.release()
			putCall(cl)
			continue // broke meanwhile: nothing sent, try the next connection
		}
		cn.flush()
		id, err, retry := c.wait(ctx, cl)
		if !retry {
			return id, err
		}
	}
}

// PublishBatch sends events back to back and returns one Result per event,
// in order: each has a message_id or an error, none is dropped. Events
// that could not be written before the connection broke are sent again on
// the next one, in their order.
func (c *Client) PublishBatch(ctx context.Context, events [][]byte) []Result {
	out := make([]Result, len(events))
	calls := make([]*call, len(events))
	todo := make([]int, len(events))
	for i := range todo {
		todo[i] = i
	}
	for len(todo) > 0 {
		cn, err := c.connected(ctx)
		if err != nil {
			for _, i := range todo {
				out[i].Err = err
			}
			break
		}
		n := 0
		for _, i := range todo {
			if err = c.acquire(ctx, cn); err != nil {
				break
			}
			cl := getCall()
			if !cn.enqueue(cl, oneLine(events[i])) {
				c.release()
				putCall(cl)
				break
			}
			calls[i] = cl
			n++
		}
		cn.flush()
		var again []int
		for _, i := range todo[:n] {
			var retry bool
			out[i].MessageID, out[i].Err, retry = c.wait(ctx, calls[i])
			calls[i] = nil
			if retry {
				again = append(again, i)
			}
		}
		if err != nil { // could not acquire: the rest fail alike
			for _, i := range todo[n:] {
				out[i].Err = err
			}
			todo = again
			continue
		}
		todo = append(again, todo[n:]...)
	}
	return out
}

// connected returns the live connection, waiting for one while ctx allows.
func (c *Client) connected(ctx context.Context) (*conn, error) {
	if ctx.Err() != nil {
		return nil, &Error{Code: CodeUnavailable, Message: "not sent", Err: context.Cause(ctx)}
	}
	for {
		if cn := c.cur.Load(); cn != nil {
			return cn, nil
		}
		c.mu.Lock()
		up, closed, dialErr := c.up, c.closed, c.dialErr
		c.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		select {
		case <-up:
		case <-c.ctx.Done():
			return nil, ErrClosed
		case <-ctx.Done():
			msg := "not connected to " + c.path
			if dialErr != nil {
				msg += " (" + dialErr.Error() + ")"
			}
			return nil, &Error{Code: CodeUnavailable, Message: msg, Err: context.Cause(ctx)}
		}
	}
}

// acquire takes an in-flight slot, first writing out cn's queued lines
// when it has to wait, since only their replies free slots.
func (c *Client) acquire(ctx context.Context, cn *conn) error {
	select {
	case c.tokens <- struct{}{}:
		return nil
	default:
	}
	cn.flush()
	select {
	case c.tokens <- struct{}{}:
		return nil
	case <-ctx.Done():
		return &Error{Code: CodeUnavailable, Message: "too many events awaiting replies", Err: context.Cause(ctx)}
	case <-c.ctx.Done():
		return ErrClosed
	}
}

func (c *Client) release() { <-c.tokens }

// wait returns the outcome of cl, or ErrNoReply when ctx ends first; retry
// reports an event that was never written and must be sent again.
func (c *Client) wait(ctx context.Context, cl *call) (id uint64, err error, retry bool) {
	select {
	case <-cl.done:
	case <-ctx.Done():
		if cl.state.CompareAndSwap(callPending, callAbandoned) {
			return 0, noReply(ctx), false // the reader recycles cl
		}
		<-cl.done
	}
	id, err, retry = cl.id, cl.err, cl.retry
	putCall(cl)
	return id, err, retry
}

// complete hands cl its outcome and frees its in-flight slot.
func (c *Client) complete(cl *call, id uint64, err error, retry bool) {
	c.release()
	cl.id, cl.err, cl.retry = id, err, retry
	if cl.state.CompareAndSwap(callPending, callAnswered) {
		cl.done <- struct{}{}
		return
	}
	putCall(cl) // its publisher stopped waiting
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, fmt.Errorf("connect to ingest socket %s: %w", c.path, err)
	}
	return nc, nil
}

// install makes nc the live connection and wakes publishers waiting for one.
func (c *Client) install(nc net.Conn) {
	cn := &conn{c: c, nc: nc}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		nc.Close()
		return
	}
	c.cur.Store(cn)
	c.dialErr = nil
	close(c.up)
	c.wg.Add(1)
	go cn.readReplies()
}

// lost retires cn and starts reconnecting.
func (c *Client) lost(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur.Load() != cn {
		return
	}
	c.cur.Store(nil)
	c.up = make(chan struct{})
	if c.closed {
		return
	}
	if cn.replied.Load() {
		c.flaps = 0
	} else {
		c.flaps++ // a server that accepts and hangs up must not be redialled in a tight loop
	}
	c.wg.Add(1)
	go c.reconnect(c.flaps)
}

func (c *Client) reconnect(attempt int) {
	defer c.wg.Done()
	for ; ; attempt++ {
		if d := c.backoff(attempt); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-c.ctx.Done():
				t.Stop()
				return
			}
		}
		nc, err := c.dial(c.ctx)
		if err == nil {
			c.install(nc)
			return
		}
		c.mu.Lock()
		c.dialErr = err
		c.mu.Unlock()
		if c.ctx.Err() != nil {
			return
		}
	}
}

// backoff is the wait before reconnection attempt n (0: none).
func (c *Client) backoff(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := c.maxBackoff
	if n <= 30 {
		d = min(c.minBackoff<<(n-1), c.maxBackoff)
	}
	return d/2 + rand.N(d/2+1)
}

// conn is one connection to the ingest socket. Lines are appended to out
// under mu; whichever publisher finds no write in progress writes out
// everything queued, so concurrent publishers share write calls.
type conn struct {
	c       *Client
	nc      net.Conn
	replied atomic.Bool

	mu       sync.Mutex
	out      []byte // lines not yet handed to a write
	spare    []byte // the other write buffer, reused
	flushing bool
	q        []*call // awaiting replies, in wire order, from q[head]
	head     int
	unsent   int   // the last unsent calls of q have their lines in out
	err      error // set once broken
}

// enqueue queues line and registers cl for its reply; false when cn broke.
func (cn *conn) enqueue(cl *call, line []byte) bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.err != nil {
		return false
	}
	cn.out = append(append(cn.out, line...), '\n')
	cn.q = append(cn.q, cl)
	cn.unsent++
	return true
}

// flush writes the queued lines unless another goroutine is writing, in
// which case that one will write them too.
func (cn *conn) flush() {
	cn.mu.Lock()
	if cn.flushing {
		cn.mu.Unlock()
		return
	}
	cn.flushing = true
	for len(cn.out) > 0 && cn.err == nil {
		buf, lines := cn.out, cn.unsent
		cn.out, cn.spare = cn.spare[:0], nil
		cn.unsent = 0 // from here on they count as sent
		cn.mu.Unlock()
		n, err := cn.nc.Write(buf)
		if err != nil {
			// The server drops a partial last line: only complete lines
			// may have been accepted, the others can go on the next
			// connection.
			written := bytes.Count(buf[:n], newline)
			cn.fail(errConnLost, lines-written)
		}
		cn.mu.Lock()
		if cap(buf) <= maxSpareBuffer {
			cn.spare = buf[:0]
		}
	}
	cn.flushing = false
	cn.mu.Unlock()
}

// pop takes the oldest call awaiting a reply, or nil.
func (cn *conn) pop() *call {
	if cn.head == len(cn.q) {
		return nil
	}
	cl := cn.q[cn.head]
	cn.q[cn.head] = nil
	cn.head++
	switch {
	case cn.head == len(cn.q):
		cn.q, cn.head = cn.q[:0], 0
	case cn.head >= 1024 && cn.head*2 >= len(cn.q): // a queue that never empties must not grow forever
		n := copy(cn.q, cn.q[cn.head:])
		clear(cn.q[n:])
		cn.q, cn.head = cn.q[:n], 0
	}
	return cl
}

// fail breaks cn once: events written get sentErr, events not yet written
// are handed back to their publishers to send on the next connection.
// unwritten counts the events of a failed write that never left whole,
// which precede the ones still queued in out.
func (cn *conn) fail(sentErr error, unwritten int) {
	cn.mu.Lock()
	if cn.err != nil {
		cn.mu.Unlock()
		return
	}
	cn.err = sentErr
	calls := cn.q[cn.head:]
	sent := max(len(calls)-cn.unsent-unwritten, 0)
	cn.q, cn.head, cn.unsent, cn.out = nil, 0, 0, nil
	cn.mu.Unlock()
	cn.nc.Close()
	cn.c.lost(cn)
	for i, cl := range calls {
		if i < sent {
			cn.c.complete(cl, 0, sentErr, false)
		} else {
			cn.c.complete(cl, 0, nil, true)
		}
	}
}

func (cn *conn) readReplies() {
	defer cn.c.wg.Done()
	r := bufio.NewReaderSize(cn.nc, 32<<10)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			cn.fail(errConnLost, 0)
			return
		}
		id, rerr := parseReply(line)
		cn.mu.Lock()
		cl := cn.pop()
		cn.mu.Unlock()
		if cl == nil { // a reply to no event: nothing after it can be matched
			cn.fail(errConnLost, 0)
			return
		}
		if !cn.replied.Load() {
			cn.replied.Store(true)
		}
		cn.c.complete(cl, id, rerr, false)
	}
}

var (
	okPrefix = []byte(`{"ok":true,"message_id":`)
	newline  = []byte{'\n'}
)

// parseReply reads one reply line. The server's acceptance is parsed by
// hand, allocation-free; refusals go through encoding/json.
func parseReply(line []byte) (uint64, error) {
	if rest, ok := bytes.CutPrefix(line, okPrefix); ok {
		var id uint64
		n := 0
		for n < len(rest) && n < 20 && '0' <= rest[n] && rest[n] <= '9' {
			id = id*10 + uint64(rest[n]-'0')
			n++
		}
		if n > 0 && n < len(rest) && rest[n] == '}' {
			return id, nil
		}
	}
	var rep struct {
		OK        bool   `json:"ok"`
		MessageID uint64 `json:"message_id"`
		Code      string `json:"code"`
		Message   string `json:"message"`
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		return 0, fmt.Errorf("%w: unreadable reply %q", ErrNoReply, bytes.TrimSpace(line))
	}
	if rep.OK {
		return rep.MessageID, nil
	}
	return 0, &Error{Code: rep.Code, Message: rep.Message}
}

// oneLine compacts a pretty-printed event onto one line: on the wire one
// line is one event, and a stray newline would desynchronise the replies.
func oneLine(ev []byte) []byte {
	if bytes.IndexByte(ev, '\n') < 0 {
		return ev
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, ev); err != nil {
		return bytes.ReplaceAll(ev, []byte("\n"), []byte(" "))
	}
	return buf.Bytes()
}

// call is one event awaiting its reply. Calls are pooled: a publish
// allocates nothing once the pool is warm.
type call struct {
	done  chan struct{} // capacity 1: the answer never blocks the reader
	state atomic.Uint32
	id    uint64
	err   error
	retry bool
}

const (
	callPending uint32 = iota
	callAnswered
	callAbandoned
)

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func getCall() *call {
	cl := callPool.Get().(*call)
	cl.state.Store(callPending)
	return cl
}

func putCall(cl *call) {
	cl.id, cl.err, cl.retry = 0, nil, false
	callPool.Put(cl)
}
