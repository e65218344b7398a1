package engine_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/flarecast/flarecast/engine"
)

type ingestReply struct {
	OK        bool   `json:"ok"`
	MessageID uint64 `json:"message_id"`
	Code      string `json:"code"`
	Message   string `json:"message"`
	raw       string
}

// rawIngest is a producer speaking the ingest protocol directly over the
// Unix socket.
type rawIngest struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func (s *testServer) dialIngest(t testing.TB) *rawIngest {
	t.Helper()
	c, err := net.DialTimeout("unix", s.socket, 5*time.Second)
	if err != nil {
		t.Fatalf("dial ingest socket: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawIngest{t: t, c: c, br: bufio.NewReader(c)}
}

func (p *rawIngest) write(data string) {
	p.t.Helper()
	_ = p.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := p.c.Write([]byte(data)); err != nil {
		p.t.Fatalf("write to ingest socket: %v", err)
	}
}

func (p *rawIngest) reply() ingestReply {
	p.t.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := p.br.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read ingest reply: %v (partial %q)", err, line)
	}
	var r ingestReply
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		p.t.Fatalf("ingest reply %q: %v", line, err)
	}
	r.raw = line
	if r.OK && (r.MessageID == 0 || r.Code != "" || r.Message != "") {
		p.t.Fatalf("ok reply %q: want exactly ok and a positive message_id", line)
	}
	if !r.OK && (r.MessageID != 0 || r.Code == "" || r.Message == "") {
		p.t.Fatalf("error reply %q: want exactly ok=false, code, message", line)
	}
	return r
}

// TestIngestPipelinedReplies writes good and bad lines in one write on one
// connection and checks one reply per line, in order, with message_ids
// strictly increasing, and the connection still usable afterwards.
func TestIngestPipelinedReplies(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	lines := []struct {
		line    string
		ok      bool
		mention string
	}{
		{evUpdated(`"n":1`), true, ""},
		{`{"event_type":"incident_updated",`, false, ""},
		{evUpdated(`"n":2`), true, ""},
		{`{"severity":"P1"}`, false, "event_type"},
		{`{"event_type":"incident_exploded"}`, false, "incident_exploded"},
		{evUpdated(`"severity":"P7"`), false, "P7"},
		{evUpdated(`"state":"Open"`), false, "Open"},
		{evUpdated(`"severity":1`), false, "severity"},
		{evUpdated(`"affected_resources":"api"`), false, "affected_resources"},
		{evUpdated(`"labels":{"env":1}`), false, "labels"},
		{`[{"event_type":"incident_updated"}]`, false, ""},
		{`"incident_updated"`, false, ""},
		{evUpdated(`"n":3`) + "\r", true, ""}, // CRLF line ending
		{evUpdated(`"n":4`), true, ""},
	}
	var batch strings.Builder
	for _, l := range lines {
		batch.WriteString(l.line)
		batch.WriteByte('\n')
	}
	p := s.dialIngest(t)
	p.write(batch.String())
	var last uint64
	var accepted []uint64
	rejected := 0
	for i, l := range lines {
		r := p.reply()
		if r.OK != l.ok {
			t.Fatalf("line %d %q: reply %s, want ok=%v", i+1, l.line, r.raw, l.ok)
		}
		if r.OK {
			if r.MessageID <= last {
				t.Fatalf("line %d: message_id %d after %d: not strictly increasing", i+1, r.MessageID, last)
			}
			last = r.MessageID
			accepted = append(accepted, r.MessageID)
			continue
		}
		rejected++
		if r.Code != "INVALID_EVENT" {
			t.Errorf("line %d %q: code %s, want INVALID_EVENT", i+1, l.line, r.Code)
		}
		if !strings.Contains(r.Message, l.mention) || strings.Contains(r.Message, "\n") {
			t.Errorf("line %d %q: message %q should be one line mentioning %q", i+1, l.line, r.Message, l.mention)
		}
	}
	// The same connection goes on working after the bad lines.
	p.write(evUpdated(`"n":5`) + "\n")
	r := p.reply()
	if !r.OK || r.MessageID <= last {
		t.Fatalf("after the batch: reply %s, want ok with message_id > %d", r.raw, last)
	}
	accepted = append(accepted, r.MessageID)

	if got := c.events(len(accepted)); !reflect.DeepEqual(got, accepted) {
		t.Fatalf("client got %v, want %v", got, accepted)
	}
	s.waitMetric(t, "flarecast_ingest_events_accepted_total", float64(len(accepted)))
	s.waitMetric(t, "flarecast_ingest_events_rejected_total", float64(rejected))
}

// TestIngestMessageIDsAcrossProducers checks ids keep increasing across
// connections and through the producer client.
func TestIngestMessageIDsAcrossProducers(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	a := s.mustPublish(t, evUpdated(""), evUpdated(""))
	res := s.publish(t, evUpdated(""), `{"bad"}`, evUpdated(""))
	if res[0].Err != nil || res[1].Err == nil || res[2].Err != nil {
		t.Fatalf("results %+v: want ok, error, ok", res)
	}
	if !strings.Contains(res[1].Err.Error(), "INVALID_EVENT") {
		t.Errorf("rejection %v does not carry INVALID_EVENT", res[1].Err)
	}
	all := []uint64{a[0], a[1], res[0].MessageID, res[2].MessageID}
	for i := 1; i < len(all); i++ {
		if all[i] <= all[i-1] {
			t.Fatalf("message_ids %v are not strictly increasing", all)
		}
	}
	if a[0] != 1 {
		t.Errorf("first message_id is %d, want 1", a[0])
	}
}

func TestIngestLongLines(t *testing.T) {
	t.Parallel()
	const max = 1024
	s := startServer(t, func(c *engine.Config) { c.MaxMessageSize = max })
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	p := s.dialIngest(t)

	// A line of exactly max bytes (newline not counted) is accepted.
	exact := padTo(`{"event_type":"incident_updated","pad":"`, `"}`, max)
	p.write(exact + "\n")
	r1 := p.reply()
	if !r1.OK {
		t.Fatalf("line of exactly %d bytes: %s", max, r1.raw)
	}
	// One byte more is refused, and the next line still works.
	over := padTo(`{"event_type":"incident_updated","pad":"`, `"}`, max+1)
	p.write(over + "\n" + evUpdated(`"after":"over"`) + "\n")
	r2 := p.reply()
	if r2.OK || r2.Code != "INVALID_EVENT" || !strings.Contains(r2.Message, "max") {
		t.Fatalf("line of %d bytes: reply %s, want INVALID_EVENT about the size", max+1, r2.raw)
	}
	r3 := p.reply()
	if !r3.OK {
		t.Fatalf("line after the long one: %s", r3.raw)
	}
	// Far longer than the reader's buffer, written in pieces, then a good line.
	huge := padTo(`{"event_type":"incident_updated","pad":"`, `"}`, 300*max)
	go func() {
		for i := 0; i < len(huge); i += 4096 {
			_, _ = p.c.Write([]byte(huge[i:min(i+4096, len(huge))]))
		}
		_, _ = p.c.Write([]byte("\n" + evUpdated(`"after":"huge"`) + "\n"))
	}()
	r4 := p.reply()
	if r4.OK || r4.Code != "INVALID_EVENT" {
		t.Fatalf("line of %d bytes: reply %s, want INVALID_EVENT", len(huge), r4.raw)
	}
	r5 := p.reply()
	if !r5.OK || r5.MessageID <= r3.MessageID {
		t.Fatalf("line after the huge one: %s", r5.raw)
	}
	got := c.events(3)
	if want := []uint64{r1.MessageID, r3.MessageID, r5.MessageID}; !reflect.DeepEqual(got, want) {
		t.Fatalf("client got %v, want %v", got, want)
	}
	s.waitMetric(t, "flarecast_ingest_events_rejected_total", 2)
}

// TestIngestLongLineDefaultLimit uses the default 64KiB limit.
func TestIngestLongLineDefaultLimit(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	p := s.dialIngest(t)
	big := padTo(`{"event_type":"incident_updated","pad":"`, `"}`, 64<<10+1)
	ok := padTo(`{"event_type":"incident_updated","pad":"`, `"}`, 64<<10)
	p.write(big + "\n" + ok + "\n")
	if r := p.reply(); r.OK || r.Code != "INVALID_EVENT" {
		t.Fatalf("65537-byte line: %s", r.raw)
	}
	if r := p.reply(); !r.OK {
		t.Fatalf("65536-byte line: %s", r.raw)
	}
}

// padTo returns prefix + 'x'… + suffix, exactly n bytes long.
func padTo(prefix, suffix string, n int) string {
	return prefix + strings.Repeat("x", n-len(prefix)-len(suffix)) + suffix
}

// TestEventMessageFormatAndPriority checks the event message clients get:
// its envelope, the producer's fields passed through untouched (unknown
// ones included), and the priority the server assigns whatever the
// producer said.
func TestEventMessageFormatAndPriority(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	cases := []struct {
		line, priority string
	}{
		{`{"event_type":"escalated","severity":"P0"}`, "critical"},
		{`{"event_type":"escalated","severity":"P1","priority":"low"}`, "critical"},
		{`{"event_type":"escalated","severity":"P2"}`, "high"},
		{`{"event_type":"escalated"}`, "high"},
		{`{"event_type":"incident_created","severity":"P0"}`, "high"},
		{`{"event_type":"incident_created","severity":"P1","priority":"critical"}`, "high"},
		{`{"event_type":"alert_received","severity":"P1"}`, "high"},
		{`{"event_type":"alert_received","severity":"P0","priority":null}`, "high"},
		{`{"event_type":"incident_created","severity":"P2","priority":"critical"}`, "normal"},
		{`{"event_type":"incident_created"}`, "normal"},
		{`{"event_type":"alert_received","severity":"P4"}`, "normal"},
		{`{"event_type":"incident_updated","severity":"P0","priority":{"nested":true}}`, "normal"},
		{`{"event_type":"playbook_completed","severity":"P1"}`, "normal"},
		{`{"event_type":"incident_resolved","incident_id":"INC-1042","severity":"P1","state":"Resolved","source":"llm-sentinel",` +
			`"affected_resources":["api-service","db"],"labels":{"env":"production","team":"core"},"title":"Error rate \u00e9 \"quoted\"",` +
			`"custom":{"deep":[1,2.5,{"x":null,"y":[true,false]}]},"count":12345678901234,"empty":{},"list":[]}`, "normal"},
	}
	lines := make([]string, len(cases))
	for i, tc := range cases {
		lines[i] = tc.line
	}
	ids := s.mustPublish(t, append(lines, fenceEvent)...)
	byID := map[uint64]int{}
	for i, id := range ids[:len(cases)] {
		byID[id] = i
	}
	before := time.Now().Add(-time.Minute)
	seen := map[uint64]bool{}
	// Critical and high events may overtake normal ones, so match by id;
	// the fence (normal, published last) arrives last.
	for len(seen) < len(cases)+1 {
		raw := c.readRaw(5 * time.Second)
		env := decodeObject(t, raw)
		if len(env) != 4 || env["type"] != "event" {
			t.Fatalf("event message %s: want exactly type=event, message_id, timestamp, event", raw)
		}
		num, _ := env["message_id"].(json.Number)
		n, err := num.Int64()
		if err != nil || n < 1 {
			t.Fatalf("message_id in %s is not a positive integer", raw)
		}
		id := uint64(n)
		if seen[id] {
			t.Fatalf("event %d received twice", id)
		}
		seen[id] = true
		ts, _ := env["timestamp"].(string)
		if at, err := time.Parse(time.RFC3339Nano, ts); err != nil || at.Before(before) || at.After(time.Now().Add(time.Minute)) {
			t.Errorf("event %d timestamp %q is not a current RFC3339Nano time (%v)", id, ts, err)
		}
		if id == ids[len(ids)-1] {
			if len(seen) != len(cases)+1 {
				t.Fatalf("the fence (normal, published last) arrived before %d other events", len(cases)+1-len(seen))
			}
			continue
		}
		i, ok := byID[id]
		if !ok {
			t.Fatalf("unexpected event %s", raw)
		}
		// The event object is the producer's, minus its priority, plus the server's.
		want := decodeObject(t, []byte(cases[i].line))
		want["priority"] = cases[i].priority
		gotEvent, _ := env["event"].(map[string]any)
		if !reflect.DeepEqual(gotEvent, want) {
			t.Errorf("event %d:\n got %v\nwant %v", id, gotEvent, want)
		}
		if n := strings.Count(string(raw), `"priority"`); n != 1 {
			t.Errorf("event %d has %d priority keys: %s", id, n, raw)
		}
	}
}

func TestIngestStaleSocketReplaced(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("setup: no stale socket file at %s (%v)", path, err)
	}
	s := startServer(t, func(c *engine.Config) { c.IngestSocket = path })
	s.mustPublish(t, evUpdated(""))
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o660 {
		t.Errorf("ingest socket mode %o, want 660", perm)
	}
	s.stop(t)
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("ingest socket still exists after shutdown (%v)", err)
	}
}

func TestIngestSocketInUse(t *testing.T) {
	t.Parallel()
	a := startServer(t, nil)
	cfg := engine.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	cfg.IngestSocket = a.socket
	cfg.EventLoops = 1
	b, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), a.socket) || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("second server on a live socket: Run returned %v, want an error naming %s as in use", err, a.socket)
		}
	case <-time.After(10 * time.Second):
		cancel()
		<-done
		t.Fatal("second server on a live socket is running instead of failing")
	}
	// The first server's socket is untouched.
	a.mustPublish(t, evUpdated(""))
}

func TestIngestPathNotASocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "regular-file")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := engine.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.IngestSocket = path
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := eng.Run(ctx); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Run on a regular file: %v, want an error saying it is not a socket", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Fatalf("the regular file was damaged: %q, %v", b, err)
	}
}

// TestIngestNeverForwardsWhatClientsCannotRead: every line is either
// refused, or reaches clients as a valid JSON text message (valid UTF-8).
func TestIngestNeverForwardsWhatClientsCannotRead(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	c := s.dial(t, "")
	c.subscribe("all", map[string]any{})
	lines := []string{
		`{"event_type":"incident_updated"} trailing`,
		`{"event_type":"incident_updated"}{"event_type":"system_event"}`,
		`{"event_type":"incident_updated"},`,
		"{\"event_type\":\"incident_updated\",\"title\":\"bad \xff\xfe utf-8\"}",
		"{\"event_type\":\"incident_updated\",\"title\":\"raw \x01 control\"}",
		"{\"event_type\":\"incident_updated\",\"title\":\"lone surrogate \\ud800\"}",
		`{"event_type":"incident_updated","n":1e999}`,
		`{"event_type":"incident_updated","n":01}`,
		`{"event_type":"incident_updated",}`,
		`{"event_type":"incident_updated","a":[1,2,]}`,
		`{"event_type":"incident_updated","a":NaN}`,
		`{"event_type":"incident_updated","a":'single'}`,
	}
	p := s.dialIngest(t)
	for _, line := range lines {
		p.write(line + "\n")
		r := p.reply()
		if !r.OK {
			if r.Code != "INVALID_EVENT" {
				t.Errorf("line %q: refused with %s, want INVALID_EVENT", line, r.Code)
			}
			continue
		}
		raw := c.readRaw(5 * time.Second)
		if !utf8.Valid(raw) || !json.Valid(raw) {
			t.Errorf("line %q was accepted (message_id %d) and clients got %q: not valid UTF-8 JSON", line, r.MessageID, raw)
			continue
		}
		if m := decodeObject(t, raw); msgID(t, m) != r.MessageID {
			t.Errorf("line %q: client got %s, want message_id %d", line, raw, r.MessageID)
		}
	}
}
