// Package ingest is the producers' side of flarecast: a Unix socket on which
// each line is one JSON event (NDJSON) and each line gets one reply line, in
// order. Producers may pipeline; a bad line is answered and forgotten, it
// never closes the connection or affects other lines. HTTPServer is the
// same for producers on other hosts: POST /v1/events with an NDJSON body,
// one reply line per body line, through the same code; on the same
// listener, Adapters maps the webhooks of Alertmanager, Grafana and
// PagerDuty to events (package adapter) published through that code too.
package ingest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
)

// Publisher is where lines go: the engine, whose PublishJSONBatch is the
// one path for events from the socket and from an embedding program.
type Publisher interface {
	// PublishJSONBatch validates event lines (without their newlines) and
	// publishes the valid ones, in order, setting ids[i] or errs[i] for
	// each: an *event.Error for an invalid line (counted as rejected), any
	// other error for an event that was not accepted. It waits while the
	// server is saturated. A batch lets a fleet append many events to its
	// broker in one round trip.
	PublishJSONBatch(ctx context.Context, lines [][]byte, ids []uint64, errs []error)
	// Rejected counts a line refused before it reached PublishJSONBatch:
	// one longer than MaxLineSize, which is never held in memory whole.
	Rejected()
}

// maxBatch bounds the lines handed to the publisher at once.
const maxBatch = 256

// Listen opens the ingest socket at path with mode 0660. A socket file left
// by a crashed server is replaced; one a live server still answers on is
// an error.
func Listen(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("ingest socket %s: file exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("ingest socket %s is in use by a running server", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("ingest socket %s: probing existing socket: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale ingest socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on ingest socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod ingest socket: %w", err)
	}
	return ln, nil
}

// Server serves producers on a listener.
type Server struct {
	Publisher Publisher
	// MaxLineSize bounds one event line in bytes.
	MaxLineSize int
	Logger      *slog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// Serve accepts producers until ctx is done, then closes the listener and
// every producer connection and waits for their goroutines. Lines already
// accepted have been replied to or will be; a line in progress is not
// accepted.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	s.conns = make(map[net.Conn]struct{})
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept producer: %w", err)
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// serveConn reads lines and answers each, in order. The lines a producer
// has already sent (what the reader holds) are published as one batch, and
// their replies flushed together, so a pipelining producer costs one
// publisher call and one write per batch.
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	r := bufio.NewReaderSize(c, min(s.MaxLineSize+1, 64<<10))
	w := bufio.NewWriterSize(c, 16<<10)
	var b batch
	// A line longer than the reader's buffer arrives in pieces: it is
	// assembled in long while it fits MaxLineSize, and only measured after.
	var long []byte
	longLen := 0
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			longLen += len(line)
			if longLen <= s.MaxLineSize {
				long = append(long, line...)
			} else {
				long = nil
			}
			continue
		}
		if err != nil {
			// EOF or a broken connection: a partial last line is not an
			// event; the complete ones before it are answered.
			if !errors.Is(err, io.EOF) && ctx.Err() == nil && s.Logger != nil {
				s.Logger.Debug("producer connection ended", "err", err)
			}
			if s.answer(ctx, w, &b) == nil {
				_ = w.Flush()
			}
			return
		}
		if longLen > 0 {
			line = append(long, line...)
			longLen += len(line) - len(long)
			long = nil
		}
		b.add(trimEOL(line), max(longLen, len(line))-1, s.MaxLineSize)
		longLen = 0
		more := lineBuffered(r)
		if more && b.len() < maxBatch {
			continue // more lines are already here: take them along
		}
		if err := s.answer(ctx, w, &b); err != nil {
			return
		}
		if !more {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// batch is the lines read but not yet answered, copied out of the reader's
// buffer (ReadSlice reuses it).
type batch struct {
	arena   []byte
	bounds  []int    // end of each line in arena
	tooLong []int    // the size of a line refused unread, or 0
	lines   [][]byte // the lines passed to the publisher
	ids     []uint64
	errs    []error
	reply   []byte
}

func (b *batch) add(line []byte, size, max int) {
	if size > max {
		line = nil
	} else {
		size = 0
	}
	b.arena = append(b.arena, line...)
	b.bounds = append(b.bounds, len(b.arena))
	b.tooLong = append(b.tooLong, size)
}

// len is the number of lines waiting for an answer.
func (b *batch) len() int { return len(b.bounds) }

// answer publishes the batch and writes one reply per line, in order.
func (s *Server) answer(ctx context.Context, w *bufio.Writer, b *batch) error {
	return answer(ctx, s.Publisher, s.MaxLineSize, w, b)
}

// answer publishes the batch and writes one reply per line, in order: the
// one path of both transports, the socket and HTTP.
func answer(ctx context.Context, p Publisher, maxLineSize int, w *bufio.Writer, b *batch) error {
	if b.len() == 0 {
		return nil
	}
	start := 0
	b.lines = b.lines[:0]
	for i, end := range b.bounds {
		if b.tooLong[i] == 0 {
			b.lines = append(b.lines, b.arena[start:end])
		}
		start = end
	}
	valid := b.lines
	n := len(valid)
	b.ids = slices.Grow(b.ids[:0], n)[:n]
	b.errs = slices.Grow(b.errs[:0], n)[:n]
	if n > 0 {
		p.PublishJSONBatch(ctx, valid, b.ids, b.errs)
	}
	j := 0
	var err error
	for _, size := range b.tooLong {
		if size > 0 {
			p.Rejected()
			b.reply = codec.AppendIngestError(b.reply[:0], codec.CodeInvalidEvent,
				fmt.Sprintf("line of %d bytes exceeds max-message-size (%d)", size, maxLineSize))
		} else {
			b.reply = appendReply(b.reply[:0], b.ids[j], b.errs[j])
			j++
		}
		if _, werr := w.Write(b.reply); werr != nil && err == nil {
			err = werr
		}
	}
	clear(b.lines) // the arena is reused: drop the views into it
	clear(b.errs)
	b.arena, b.bounds, b.tooLong, b.lines = b.arena[:0], b.bounds[:0], b.tooLong[:0], b.lines[:0]
	return err
}

// lineBuffered reports whether the reader already holds a whole next line:
// a partial one must not hold back the replies to the lines before it.
func lineBuffered(r *bufio.Reader) bool {
	buffered, _ := r.Peek(r.Buffered())
	return bytes.IndexByte(buffered, '\n') >= 0
}

func trimEOL(line []byte) []byte {
	line = line[:len(line)-1] // the newline
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line
}

func appendReply(dst []byte, id uint64, err error) []byte {
	if err != nil {
		if perr, ok := errors.AsType[*event.Error](err); ok {
			return codec.AppendIngestError(dst, codec.CodeInvalidEvent, perr.Message)
		}
		return codec.AppendIngestError(dst, codec.CodeUnavailable, "event not accepted: "+err.Error())
	}
	return codec.AppendIngestOK(dst, id)
}
