// Package ingest is the producers' side of flarecast: a Unix socket on which
// each line is one JSON event (NDJSON) and each line gets one reply line, in
// order. Producers may pipeline; a bad line is answered and forgotten, it
// never closes the connection or affects other lines.
package ingest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
)

// Publisher is where lines go: the engine, whose PublishJSON is the one
// path from raw JSON to an accepted event for the socket and for programs
// that embed flarecast alike.
type Publisher interface {
	// PublishJSON validates one event line (without its newline) and
	// returns its message_id, waiting while the server is saturated. An
	// invalid line returns an *event.Error and is counted as rejected; any
	// other error means the event was not accepted.
	PublishJSON(ctx context.Context, line []byte) (uint64, error)
	// Rejected counts a line refused before it reached PublishJSON: one
	// longer than MaxLineSize, which is never held in memory whole.
	Rejected()
}

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

// serveConn reads lines and answers each. Replies are flushed when no more
// input is already buffered, so a pipelining producer gets them in batches.
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	r := bufio.NewReaderSize(c, min(s.MaxLineSize+1, 64<<10))
	w := bufio.NewWriterSize(c, 16<<10)
	var reply []byte
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
			// EOF or a broken connection: a partial last line is not an event.
			if !errors.Is(err, io.EOF) && ctx.Err() == nil && s.Logger != nil {
				s.Logger.Debug("producer connection ended", "err", err)
			}
			_ = w.Flush()
			return
		}
		if longLen > 0 {
			line = append(long, line...)
			longLen += len(line) - len(long)
			long = nil
		}
		if size := max(longLen, len(line)) - 1; size > s.MaxLineSize {
			s.Publisher.Rejected()
			reply = codec.AppendIngestError(reply[:0], codec.CodeInvalidEvent,
				fmt.Sprintf("line of %d bytes exceeds max-message-size (%d)", size, s.MaxLineSize))
		} else {
			reply = s.handle(ctx, reply[:0], line)
		}
		longLen = 0
		if _, err := w.Write(reply); err != nil {
			return
		}
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

func (s *Server) handle(ctx context.Context, dst, line []byte) []byte {
	line = line[:len(line)-1] // the newline
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	id, err := s.Publisher.PublishJSON(ctx, line)
	if err != nil {
		if perr, ok := errors.AsType[*event.Error](err); ok {
			return codec.AppendIngestError(dst, codec.CodeInvalidEvent, perr.Message)
		}
		return codec.AppendIngestError(dst, codec.CodeUnavailable, "event not accepted: "+err.Error())
	}
	return codec.AppendIngestOK(dst, id)
}
