package ingest_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/ingest"
)

// startEngine runs a real engine with a small max-message-size.
func startEngine(t *testing.T) (*engine.Engine, string) {
	t.Helper()
	cfg := engine.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.IngestSocket = filepath.Join(t.TempDir(), "ingest.sock")
	cfg.EventLoops = 1
	cfg.MaxMessageSize = 1024
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine.Run: %v", err)
		}
	})
	select {
	case <-eng.Ready():
	case err := <-done:
		t.Fatalf("engine.Run: %v", err)
	}
	return eng, cfg.IngestSocket
}

// rawConn speaks the ingest protocol by hand: one line out, one line back.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, path string) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawConn) roundTrip(line string) string {
	rc.t.Helper()
	if _, err := rc.c.Write([]byte(line)); err != nil {
		rc.t.Fatal(err)
	}
	reply, err := rc.r.ReadString('\n')
	if err != nil {
		rc.t.Fatalf("reply to %.40q: %v", line, err)
	}
	return reply
}

func metric(t *testing.T, eng *engine.Engine, name string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	eng.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return ""
}

// TestSocketAndInProcessAreOnePath: the socket answers every line exactly
// as engine.PublishJSON answers the same bytes in-process — the same
// refusal message, the next message_id — and both count alike.
func TestSocketAndInProcessAreOnePath(t *testing.T) {
	eng, path := startEngine(t)
	rc := dialRaw(t, path)
	ctx := context.Background()
	lines := []string{
		`{"event_type":"incident_created","severity":"P1"}`,
		`{"event_type":"incident_created","severity":"P9"}`,
		`{"event_type":"incident_created","state":"Done"}`,
		`{"event_type":"incident_created","labels":{"env":1}}`,
		`{"severity":"P1"}`,
		`not json`,
		`{"event_type":"system_event","message":"` + strings.Repeat("x", 1100) + `"}`,
	}
	for _, line := range lines {
		socketReply := rc.roundTrip(line + "\n")
		id, err := eng.PublishJSON(ctx, []byte(line))
		var want []byte
		if perr, ok := errors.AsType[*event.Error](err); ok {
			want = codec.AppendIngestError(nil, codec.CodeInvalidEvent, perr.Message)
		} else if err != nil {
			t.Fatalf("in-process %.40q: %v", line, err)
		} else {
			want = codec.AppendIngestOK(nil, id-1) // the socket's event came just before
		}
		if socketReply != string(want) {
			t.Errorf("%.40q: socket replied %q, in-process gives %q", line, socketReply, want)
		}
	}
	if got := metric(t, eng, "flarecast_ingest_events_rejected_total"); got != "12" {
		t.Errorf("rejected_total = %q, want 12 (6 over the socket, 6 in-process)", got)
	}
	if got := metric(t, eng, "flarecast_ingest_events_accepted_total"); got != "2" {
		t.Errorf("accepted_total = %q, want 2", got)
	}
}

// TestLineFraming: CRLF endings, blank lines, a line far beyond the
// reader's buffer, and a partial last line.
func TestLineFraming(t *testing.T) {
	eng, path := startEngine(t)
	rc := dialRaw(t, path)
	if r := rc.roundTrip("{\"event_type\":\"system_event\"}\r\n"); r != `{"ok":true,"message_id":1}`+"\n" {
		t.Fatalf("CRLF line: %q", r)
	}
	if r := rc.roundTrip("\n"); !strings.Contains(r, codec.CodeInvalidEvent) {
		t.Fatalf("blank line: %q", r)
	}
	huge := `{"event_type":"system_event","x":"` + strings.Repeat("y", 200<<10) + `"}` + "\n"
	if r := rc.roundTrip(huge); !strings.Contains(r, "exceeds max-message-size (1024)") {
		t.Fatalf("200KiB line: %q", r)
	}
	if r := rc.roundTrip("{\"event_type\":\"system_event\"}\n"); r != `{"ok":true,"message_id":2}`+"\n" {
		t.Fatalf("after the long line: %q", r)
	}
	// A last line without its newline is not an event.
	if _, err := rc.c.Write([]byte(`{"event_type":"system_event"}`)); err != nil {
		t.Fatal(err)
	}
	rc.c.(*net.UnixConn).CloseWrite()
	if rest, err := rc.r.ReadString('\n'); err == nil {
		t.Fatalf("partial line answered: %q", rest)
	}
	if got := metric(t, eng, "flarecast_ingest_events_accepted_total"); got != "2" {
		t.Errorf("accepted_total = %q, want 2", got)
	}
}

// refusing is a Publisher whose events are never accepted, as an engine's
// while it stops.
type refusing struct{}

func (refusing) PublishJSONBatch(_ context.Context, lines [][]byte, _ []uint64, errs []error) {
	for i := range lines {
		errs[i] = engine.ErrStopped
	}
}
func (refusing) Rejected() {}

func TestUnavailable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ingest.sock")
	ln, err := ingest.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&ingest.Server{Publisher: refusing{}, MaxLineSize: 1024}).Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	rc := dialRaw(t, path)
	want := string(codec.AppendIngestError(nil, codec.CodeUnavailable, "event not accepted: "+engine.ErrStopped.Error()))
	if r := rc.roundTrip(`{"event_type":"system_event"}` + "\n"); r != want {
		t.Fatalf("got %q, want %q", r, want)
	}
}
