// Package producer is the Go client of flarecast's ingest socket: it sends
// events as NDJSON lines and matches each reply line to its event, so many
// goroutines can publish over one connection with their events pipelined.
package producer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/bytedance/sonic"
)

// Error is a refusal by the server: Code is INVALID_EVENT or UNAVAILABLE.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrClosed is returned for events whose reply was lost because the
// connection closed; such an event may or may not have been accepted.
var ErrClosed = errors.New("producer: connection closed before the reply")

// Result is the outcome of one event: its message_id, or an error.
type Result struct {
	MessageID uint64
	Err       error
}

// Client is one connection to the ingest socket. It is safe for concurrent
// use: writes are serialised, and replies are matched to events in order.
type Client struct {
	conn net.Conn

	writeMu sync.Mutex // serialises writes, so waiters queue in wire order
	w       *bufio.Writer

	waitMu  sync.Mutex
	waiters []chan Result // one per event sent and not yet answered, in order
	err     error         // set once the connection is broken

	done chan struct{}
}

// Dial connects to the ingest socket at path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to ingest socket %s: %w", path, err)
	}
	c := &Client{
		conn: conn,
		w:    bufio.NewWriterSize(conn, 32<<10),
		done: make(chan struct{}),
	}
	go c.readReplies()
	return c, nil
}

// Close closes the connection; events still waiting for a reply get ErrClosed.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

// Publish sends one event (a JSON object, without newline) and waits for
// its reply.
func (c *Client) Publish(ctx context.Context, event []byte) (uint64, error) {
	ch, err := c.send([][]byte{event})
	if err != nil {
		return 0, err
	}
	select {
	case r := <-ch[0]:
		return r.MessageID, r.Err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// PublishBatch sends events back to back and returns one Result per event,
// in order. Nothing is dropped silently: each Result has an id or an error.
func (c *Client) PublishBatch(ctx context.Context, events [][]byte) []Result {
	out := make([]Result, len(events))
	chans, err := c.send(events)
	for i := range out {
		if i >= len(chans) {
			out[i].Err = err
			continue
		}
		select {
		case out[i] = <-chans[i]:
		case <-ctx.Done():
			out[i].Err = ctx.Err()
		}
	}
	return out
}

// send writes events and registers their waiters in the same order.
func (c *Client) send(events [][]byte) ([]chan Result, error) {
	chans := make([]chan Result, 0, len(events))
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	for _, ev := range events {
		if bytes.IndexByte(ev, '\n') >= 0 {
			ev = compactLine(ev)
		}
		ch := make(chan Result, 1)
		c.waitMu.Lock()
		err := c.err
		if err == nil {
			c.waiters = append(c.waiters, ch)
		}
		c.waitMu.Unlock()
		if err != nil {
			return chans, err
		}
		chans = append(chans, ch)
		_, _ = c.w.Write(ev)
		if err := c.w.WriteByte('\n'); err != nil {
			return chans, c.broken(fmt.Errorf("write to ingest socket: %w", err))
		}
	}
	if err := c.w.Flush(); err != nil {
		return chans, c.broken(fmt.Errorf("write to ingest socket: %w", err))
	}
	return chans, nil
}

// broken records that the connection is unusable and fails every event
// still waiting for a reply. It returns the recorded error.
func (c *Client) broken(err error) error {
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	if c.err == nil {
		c.err = err
	}
	for _, ch := range c.waiters {
		ch <- Result{Err: ErrClosed}
	}
	c.waiters = nil
	return c.err
}

// compactLine removes the newlines a pretty-printed event would carry, since
// one line is one event on the wire.
func compactLine(ev []byte) []byte {
	var buf bytes.Buffer
	if err := json.Compact(&buf, ev); err != nil {
		return bytes.ReplaceAll(ev, []byte("\n"), []byte(" "))
	}
	return buf.Bytes()
}

type reply struct {
	OK        bool   `json:"ok"`
	MessageID uint64 `json:"message_id"`
	Code      string `json:"code"`
	Message   string `json:"message"`
}

func (c *Client) readReplies() {
	defer close(c.done)
	r := bufio.NewReader(c.conn)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			c.broken(ErrClosed)
			return
		}
		var rep reply
		res := Result{}
		if err := sonic.Unmarshal(line, &rep); err != nil {
			res.Err = fmt.Errorf("unreadable reply %q: %w", line, err)
		} else if rep.OK {
			res.MessageID = rep.MessageID
		} else {
			res.Err = &Error{Code: rep.Code, Message: rep.Message}
		}
		c.waitMu.Lock()
		if len(c.waiters) > 0 {
			c.waiters[0] <- res
			c.waiters[0] = nil
			c.waiters = c.waiters[1:]
		}
		c.waitMu.Unlock()
	}
}
