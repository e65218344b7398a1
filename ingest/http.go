package ingest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// EventsPath is the one path of the HTTP ingest endpoint.
const EventsPath = "/v1/events"

const (
	// bodyReadTimeout bounds the reading of one request body (8 MiB at
	// 140 KB/s); the reply, which backpressure may delay, is not bounded.
	bodyReadTimeout = time.Minute
	// headerReadTimeout bounds a request's header (slowloris).
	headerReadTimeout = 10 * time.Second
	// DefaultShutdownGrace is how long Serve lets requests in flight
	// finish once its context is done.
	DefaultShutdownGrace = 5 * time.Second
)

// HTTPServer is the ingest endpoint for producers on other hosts:
// POST /v1/events with an NDJSON body. The body is read whole (up to
// MaxBody; more is refused with 413 and nothing of it is published), then
// its lines go through the same batches and publisher calls as the Unix
// socket's, and the reply streams one line per body line, in order, as the
// batches are answered. A full ring delays the reply; nothing is dropped.
type HTTPServer struct {
	Publisher Publisher
	// MaxLineSize bounds one event line in bytes, as on the socket.
	MaxLineSize int
	// MaxBody bounds a request body in bytes.
	MaxBody int
	// Tokens are the SHA-256 digests of the accepted bearer tokens (see
	// LoadTokens). Empty accepts every request: Insecure must then be set.
	Tokens [][sha256.Size]byte
	// Insecure accepts requests without a token; with Tokens empty it is
	// the only way to serve.
	Insecure bool
	// Observe, if set, is told the status code of every request.
	Observe func(code int)
	// ShutdownGrace bounds how long requests in flight may finish once
	// Serve's context is done (default DefaultShutdownGrace); requests
	// still running then have their context cancelled, so events not yet
	// published are answered UNAVAILABLE.
	ShutdownGrace time.Duration
	Logger        *slog.Logger
	// Adapters, if set, serves the alert-source webhooks under
	// AdaptersPrefix (adapters.go).
	Adapters *Adapters

	mu       sync.Mutex
	draining bool
	active   sync.WaitGroup
}

// LoadTokens reads a token file: one token per line, blank lines and lines
// starting with # ignored, surrounding spaces trimmed. It returns the
// tokens' SHA-256 digests; a file holding no token is an error.
func LoadTokens(path string) ([][sha256.Size]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ingest token file: %w", err)
	}
	var out [][sha256.Size]byte
	for line := range strings.Lines(string(raw)) {
		tok := strings.TrimSpace(line)
		if tok == "" || strings.HasPrefix(tok, "#") {
			continue
		}
		if strings.ContainsAny(tok, " \t") {
			return nil, fmt.Errorf("ingest token file %s: a token must not contain spaces", path)
		}
		out = append(out, sha256.Sum256([]byte(tok)))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("ingest token file %s holds no token", path)
	}
	return out, nil
}

// IsLoopback reports whether a listen address binds only loopback
// interfaces: 127.0.0.0/8, ::1 or localhost. An empty host (every
// interface) is not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Serve serves HTTP ingest on ln until ctx is done; then it stops
// accepting, lets requests in flight finish for ShutdownGrace, cancels
// those still running and waits for them, so that no publish is in
// progress once Serve returns.
func (s *HTTPServer) Serve(ctx context.Context, ln net.Listener) error {
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: headerReadTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	if s.Logger != nil {
		srv.ErrorLog = slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("HTTP ingest: %w", err)
	}
	grace := s.ShutdownGrace
	if grace <= 0 {
		grace = DefaultShutdownGrace
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), grace)
	if serr := srv.Shutdown(shutCtx); serr != nil && s.Logger != nil {
		s.Logger.Warn("HTTP ingest: requests still running after the shutdown grace are cancelled", "grace", grace)
	}
	cancel()
	cancelBase()
	_ = srv.Close()
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	s.active.Wait()
	return err
}

// ServeHTTP answers one request (see HTTPServer).
func (s *HTTPServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		s.fail(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	s.active.Add(1)
	s.mu.Unlock()
	defer s.active.Done()

	if name, ok := strings.CutPrefix(r.URL.Path, AdaptersPrefix); ok && s.Adapters != nil {
		s.serveAdapter(w, r, name)
		return
	}
	if r.URL.Path != EventsPath {
		s.fail(w, http.StatusNotFound, "not found: events are posted to "+EventsPath)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.fail(w, http.StatusMethodNotAllowed, "method not allowed: use POST")
		return
	}
	if !s.authorized(r) {
		s.unauthorized(w, r)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		switch {
		case err != nil:
			s.fail(w, http.StatusUnsupportedMediaType, "unreadable Content-Type")
			return
		case mt != "application/x-ndjson" && mt != "application/json" && mt != "text/plain":
			s.fail(w, http.StatusUnsupportedMediaType,
				"unsupported Content-Type "+mt+": send application/x-ndjson (or application/json, text/plain)")
			return
		}
	}
	buf := bodyPool.Get().(*[]byte)
	defer func() {
		if cap(*buf) <= maxPooledBody {
			bodyPool.Put(buf)
		}
	}()
	body, ok := s.receiveBody(w, r, (*buf)[:0])
	*buf = body[:0]
	if !ok {
		return
	}
	rc := http.NewResponseController(w)

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	s.observe(http.StatusOK)
	bw := bufio.NewWriterSize(w, 16<<10)
	var b batch
	for len(body) > 0 {
		line := body
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i+1], body[i+1:]
		} else {
			line, body = append(body, '\n'), nil // a last line without its newline
		}
		b.add(trimEOL(line), len(line)-1, s.MaxLineSize)
		if b.len() < maxBatch && len(body) > 0 {
			continue
		}
		if answer(r.Context(), s.Publisher, s.MaxLineSize, bw, &b) != nil {
			return
		}
		if len(body) == 0 {
			break // the handler's return writes the rest out with the end of the reply
		}
		if bw.Flush() != nil { // stream what is answered while the rest waits
			return
		}
		_ = rc.Flush()
	}
	_ = bw.Flush()
}

// maxPooledBody is the largest body buffer kept for the next request.
const maxPooledBody = 1 << 20

var bodyPool = sync.Pool{New: func() any { return new([]byte) }}

// readBody reads r to its end into buf, sized at once when the length is known.
func readBody(r io.Reader, buf []byte, length int64) ([]byte, error) {
	if length > 0 && int64(cap(buf)) < length+1 {
		buf = make([]byte, 0, length+1) // +1: the read that finds EOF
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// receiveBody reads r's body, at most MaxBody bytes within bodyReadTimeout,
// appending to dst. When it cannot, it answers 413 or 400 itself and ok is
// false. Once the body is in, the read deadline is lifted: the reply may
// take as long as backpressure makes it, and a client that goes away
// cancels r.Context().
func (s *HTTPServer) receiveBody(w http.ResponseWriter, r *http.Request, dst []byte) (body []byte, ok bool) {
	if r.ContentLength > int64(s.MaxBody) {
		w.Header().Set("Connection", "close") // the unread body is not worth draining
		s.fail(w, http.StatusRequestEntityTooLarge, tooLarge(s.MaxBody))
		return dst, false
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(bodyReadTimeout))
	body, err := readBody(http.MaxBytesReader(w, r.Body, int64(s.MaxBody)), dst, r.ContentLength)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			s.fail(w, http.StatusRequestEntityTooLarge, tooLarge(s.MaxBody))
		} else {
			s.fail(w, http.StatusBadRequest, "reading the body: "+err.Error())
		}
		return body, false
	}
	_ = rc.SetReadDeadline(time.Time{})
	return body, true
}

// authorized checks the bearer token against every accepted token in
// constant time: the digests have one length, and every one is compared.
func (s *HTTPServer) authorized(r *http.Request) bool {
	if len(s.Tokens) == 0 {
		return s.Insecure
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	match := 0
	for i := range s.Tokens {
		match |= subtle.ConstantTimeCompare(sum[:], s.Tokens[i][:])
	}
	return match == 1
}

func (s *HTTPServer) unauthorized(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="flarecast"`)
	} else {
		w.Header().Set("WWW-Authenticate", `Bearer realm="flarecast", error="invalid_token"`)
	}
	s.fail(w, http.StatusUnauthorized, "unauthorized: send Authorization: Bearer <token>")
}

func (s *HTTPServer) fail(w http.ResponseWriter, code int, msg string) {
	s.observe(code)
	http.Error(w, msg, code)
}

func (s *HTTPServer) observe(code int) {
	if s.Observe != nil {
		s.Observe(code)
	}
}

func tooLarge(limit int) string {
	return "request body exceeds ingest-max-body (" + strconv.Itoa(limit) + " bytes); nothing of it was published"
}
