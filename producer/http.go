package producer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HTTPDialer holds an HTTPClient's options; the zero value is the defaults.
type HTTPDialer struct {
	// Token is sent as Authorization: Bearer <Token> (empty: none, for a
	// server started with --ingest-insecure).
	Token string
	// MaxBatch bounds the events of one request (default 1000);
	// PublishBatch splits larger batches into several requests, in order.
	MaxBatch int
	// MaxBatchBytes bounds the body of one request (default 1 MiB, well
	// under the server's default --ingest-max-body of 8 MiB). A request
	// the server still finds too large (413) is split in two and resent.
	MaxBatchBytes int
	// Timeout bounds one request, reply included (default 1m): an event
	// whose request outlives it gets ErrNoReply. Backpressure delays a
	// reply, so keep it generous.
	Timeout time.Duration
	// MaxConcurrent bounds the requests that concurrent PublishJSON calls
	// are coalesced into (default 4): calls made while they are in flight
	// wait and go together in the next request.
	MaxConcurrent int
	// Client is the HTTP client used (default: a dedicated one keeping
	// connections alive); its own Timeout, if any, also applies.
	Client *http.Client
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// ErrUnauthorized is the cause of the ErrUnavailable an event gets when
// the server refused the request's token (HTTP 401).
var ErrUnauthorized = errors.New("producer: ingest token refused (HTTP 401)")

// HTTPClient publishes events to flarecast's HTTP ingest endpoint
// (--ingest-listen): concurrent PublishJSON calls are coalesced into
// shared requests, and each PublishBatch is one request per MaxBatch events
// (or MaxBatchBytes). It is safe for concurrent use and a
// Publisher, with the same error classes as Client: ErrInvalidEvent,
// ErrUnavailable (not accepted: nothing was sent, or the server refused
// the whole request), ErrNoReply (the request may have been processed).
type HTTPClient struct {
	url      string
	token    string
	maxBatch int
	maxBytes int
	timeout  time.Duration
	hc       *http.Client
	own      *http.Transport // closed by Close when the client made it

	ctx    context.Context
	cancel context.CancelFunc

	// Concurrent PublishJSON calls are coalesced: they queue, and up to
	// maxSenders goroutines each take what is queued as one request.
	mu         sync.Mutex
	queue      []*httpCall
	senders    int
	maxSenders int
}

// httpCall is one PublishJSON waiting in the queue or in a request.
type httpCall struct {
	line      []byte // a copy: the caller may leave before it is sent
	res       Result
	done      chan struct{} // closed with res set
	taken     bool          // in a request (under HTTPClient.mu)
	abandoned bool          // its caller left (under HTTPClient.mu)
}

// DialHTTP returns a client of the HTTP ingest endpoint at rawURL
// (http(s)://HOST:PORT, optionally with a path prefix; /v1/events is
// appended unless the URL ends with it) sending token. Nothing is sent
// until the first publish.
func DialHTTP(rawURL, token string) (*HTTPClient, error) {
	d := HTTPDialer{Token: token}
	return d.Dial(rawURL)
}

// Dial returns a client of the HTTP ingest endpoint at rawURL.
func (d *HTTPDialer) Dial(rawURL string) (*HTTPClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("ingest URL %q: want http(s)://HOST:PORT", rawURL)
	}
	if !strings.HasSuffix(u.Path, "/v1/events") {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/events"
	}
	c := &HTTPClient{
		url:        u.String(),
		token:      d.Token,
		maxBatch:   cmp(d.MaxBatch, 1000),
		maxBytes:   cmp(d.MaxBatchBytes, 1<<20),
		timeout:    cmp(d.Timeout, time.Minute),
		hc:         d.Client,
		maxSenders: cmp(d.MaxConcurrent, 4),
	}
	if c.hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		c.own = t
		c.hc = &http.Client{Transport: t}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Close ends requests in flight (their events get ErrNoReply) and makes
// later publishes fail with ErrClosed.
func (c *HTTPClient) Close() error {
	c.cancel()
	if c.own != nil {
		c.own.CloseIdleConnections()
	}
	return nil
}

// PublishJSON sends one event and returns its message_id. Events published
// concurrently share requests: up to MaxConcurrent are in flight, and the
// events published meanwhile go together in the next one. If ctx ends
// before the event was sent it gets ErrUnavailable; after, ErrNoReply (the
// request goes on, bounded by Timeout). event is not retained.
func (c *HTTPClient) PublishJSON(ctx context.Context, event []byte) (uint64, error) {
	if c.ctx.Err() != nil {
		return 0, ErrClosed
	}
	if ctx.Err() != nil {
		return 0, &Error{Code: CodeUnavailable, Message: "not sent", Err: context.Cause(ctx)}
	}
	cl := &httpCall{line: append([]byte(nil), oneLine(event)...), done: make(chan struct{})}
	c.mu.Lock()
	c.queue = append(c.queue, cl)
	if c.senders < c.maxSenders {
		c.senders++
		go c.send()
	}
	c.mu.Unlock()
	select {
	case <-cl.done:
		return cl.res.MessageID, cl.res.Err
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-cl.done: // answered meanwhile
		return cl.res.MessageID, cl.res.Err
	default:
	}
	cl.abandoned = true
	if !cl.taken {
		return 0, &Error{Code: CodeUnavailable, Message: "not sent", Err: context.Cause(ctx)}
	}
	return 0, noReply(ctx)
}

// send posts what is queued, request after request, until the queue is empty.
func (c *HTTPClient) send() {
	var calls []*httpCall
	var lines [][]byte
	for {
		calls, lines = calls[:0], lines[:0]
		c.mu.Lock()
		size, n := 0, 0
		for n < len(c.queue) && len(calls) < c.maxBatch {
			cl := c.queue[n]
			if !cl.abandoned {
				if len(calls) > 0 && size+len(cl.line)+1 > c.maxBytes {
					break
				}
				size += len(cl.line) + 1
				cl.taken = true
				calls, lines = append(calls, cl), append(lines, cl.line)
			}
			n++
		}
		rest := copy(c.queue, c.queue[n:])
		clear(c.queue[rest:])
		c.queue = c.queue[:rest]
		if len(calls) == 0 {
			c.senders--
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		out := make([]Result, len(calls))
		c.post(c.ctx, lines, out)
		for i, cl := range calls {
			cl.res = out[i]
			close(cl.done)
		}
	}
}

// PublishBatch sends events in as few requests as MaxBatch and
// MaxBatchBytes allow, one after the other, in order, and returns one
// Result per event.
func (c *HTTPClient) PublishBatch(ctx context.Context, events [][]byte) []Result {
	out := make([]Result, len(events))
	for start := 0; start < len(events); {
		end, size := start, 0
		for end < len(events) && end-start < c.maxBatch && (end == start || size+len(events[end])+1 <= c.maxBytes) {
			size += len(events[end]) + 1
			end++
		}
		c.post(ctx, events[start:end], out[start:end])
		start = end
	}
	return out
}

// post sends events in one request and fills out. A 413 splits the
// request in two; a single event refused so is invalid (too large).
func (c *HTTPClient) post(ctx context.Context, events [][]byte, out []Result) {
	fail := func(err error) {
		for i := range out {
			out[i] = Result{Err: err}
		}
	}
	if c.ctx.Err() != nil {
		fail(ErrClosed)
		return
	}
	if ctx.Err() != nil {
		fail(&Error{Code: CodeUnavailable, Message: "not sent", Err: context.Cause(ctx)})
		return
	}
	body := bufPool.Get().(*bytes.Buffer)
	body.Reset()
	for _, ev := range events {
		body.Write(oneLine(ev))
		body.WriteByte('\n')
	}
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	var written atomic.Bool // set by the transport's goroutine
	rctx = httptrace.WithClientTrace(rctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) { written.Store(info.Err == nil) },
	})
	rb := &pooledBody{Reader: bytes.NewReader(body.Bytes()), buf: body, max: 2 * c.maxBytes}
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, c.url, rb)
	if err != nil {
		fail(&Error{Code: CodeUnavailable, Message: "not sent", Err: err})
		return
	}
	req.ContentLength = int64(body.Len())
	req.Header.Set("Content-Type", "application/x-ndjson")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		wrote := written.Load()
		switch {
		case c.ctx.Err() != nil && !wrote:
			fail(ErrClosed)
		case !wrote: // the server cannot have read the whole body: nothing was published
			fail(&Error{Code: CodeUnavailable, Message: "not sent to " + c.url, Err: err})
		default:
			fail(fmt.Errorf("%w: %w", ErrNoReply, err))
		}
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		text := fmt.Sprintf("HTTP %d from %s: %s", resp.StatusCode, c.url, bytes.TrimSpace(msg))
		switch resp.StatusCode {
		case http.StatusRequestEntityTooLarge:
			if len(events) > 1 {
				half := len(events) / 2
				c.post(ctx, events[:half], out[:half])
				c.post(ctx, events[half:], out[half:])
				return
			}
			fail(&Error{Code: CodeInvalidEvent, Message: "event larger than the server's ingest-max-body: " + text})
		case http.StatusUnauthorized:
			fail(&Error{Code: CodeUnavailable, Message: text, Err: ErrUnauthorized})
		case http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout:
			// From a proxy, the server may have processed the request.
			fail(fmt.Errorf("%w: %s", ErrNoReply, text))
		default: // flarecast refuses a request whole before publishing any of it
			fail(&Error{Code: CodeUnavailable, Message: text})
		}
		return
	}
	br := bufio.NewReaderSize(resp.Body, 32<<10)
	for i := range out {
		line, err := br.ReadSlice('\n')
		if err != nil {
			for j := i; j < len(out); j++ {
				out[j] = Result{Err: fmt.Errorf("%w: reply cut short after %d of %d events: %v", ErrNoReply, i, len(out), err)}
			}
			return
		}
		out[i].MessageID, out[i].Err = parseReply(line)
	}
	_, _ = io.Copy(io.Discard, br) // let the connection be reused
}

// pooledBody is a request body whose buffer goes back to the pool when the
// transport closes it: the transport may still be reading it after Do
// returns (a reply that came before the whole body was written).
type pooledBody struct {
	*bytes.Reader
	buf  *bytes.Buffer
	max  int
	once sync.Once
}

func (b *pooledBody) Close() error {
	b.once.Do(func() {
		if b.buf.Cap() <= b.max {
			bufPool.Put(b.buf)
		}
	})
	return nil
}
