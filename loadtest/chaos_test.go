package loadtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// runChaos runs a chaos or soak preset against a spawned server and checks
// what both must show: every connection held, resets resumed with
// resumed:true, nothing lost, no illegal duplicate, no HISTORY_GAP.
func runChaos(t *testing.T, cfg Config, timeout time.Duration) *Result {
	t.Helper()
	cfg.Spawn = true
	cfg.ServerBin = serverBinary(t)
	cfg.Out = t.TempDir()
	cfg.ProgressInterval = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var progress strings.Builder
	res, err := Run(ctx, cfg, &progress)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var table strings.Builder
	res.WriteTable(&table)
	t.Logf("\n%s", table.String())

	c, d, ch := res.Connections, res.Deliveries, res.Chaos
	if ch == nil {
		t.Fatal("no chaos figures in the result")
	}
	if c.Held != cfg.Conns || c.Failed != 0 || c.Dropped != 0 {
		t.Errorf("connections: held %d of %d, failed %d (%v), dropped %d (%v)", c.Held, cfg.Conns, c.Failed, c.Failures, c.Dropped, c.DroppedReasons)
	}
	if res.Events.Accepted == 0 || res.Events.Rejected != 0 || res.Events.Unconfirmed != 0 {
		t.Errorf("events: %d accepted, %d rejected, %d unconfirmed (%s)", res.Events.Accepted, res.Events.Rejected, res.Events.Unconfirmed, res.Events.FirstError)
	}
	if d.Lost != 0 || d.Duplicates != 0 || d.Unexpected != 0 || d.Malformed != 0 {
		t.Errorf("lost %d, illegal duplicates %d, unexpected %d, malformed %d; want none", d.Lost, d.Duplicates, d.Unexpected, d.Malformed)
	}
	if d.Received != d.Expected {
		t.Errorf("received %d of %d expected deliveries", d.Received, d.Expected)
	}
	if ch.Resets == 0 || ch.Resumed == 0 {
		t.Errorf("%d resets, %d resumed: the run dropped nothing or resumed nothing", ch.Resets, ch.Resumed)
	}
	// Every reset is followed by a resume within the session timeout, except
	// one still pausing when publishing stopped.
	if ch.NotResumed != 0 || ch.ReconnectFailures != 0 || ch.HistoryGaps != 0 {
		t.Errorf("%d reconnects not resumed, %d failed, %d HISTORY_GAP errors; want none", ch.NotResumed, ch.ReconnectFailures, ch.HistoryGaps)
	}
	if ch.Acks == 0 {
		t.Error("no ack sent")
	}
	if !res.OK {
		t.Errorf("result not OK; warnings: %v", res.Warnings)
	}
	return res
}

// TestChaosResetsLoseNothing is issue 5's chaos run, small: 200
// connections, 500 events/s matching 10, 10 s, 10% of the connections per
// second reset (RST) and resuming their sessions.
func TestChaosResetsLoseNothing(t *testing.T) {
	cfg, err := Preset("chaos")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Conns, cfg.Duration, cfg.DropRate = 200, 10*time.Second, 0.10
	cfg.Settle = 500 * time.Millisecond
	res := runChaos(t, cfg, 90*time.Second)
	if res.Chaos.Memory != nil {
		t.Errorf("chaos judged memory flatness: %+v", res.Chaos.Memory)
	}
}

// TestSoakChurnMemoryFlat is issue 10's soak as CI runs it: 500
// connections for 60 s with resets, clean closes replaced by new sessions,
// steady publishing, and the server's memory flat from the second quarter
// to the last.
func TestSoakChurnMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("60 s soak")
	}
	cfg, err := Preset("soak")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Conns, cfg.Duration = 500, 60*time.Second
	cfg.Settle = 500 * time.Millisecond
	res := runChaos(t, cfg, 3*time.Minute)
	ch := res.Chaos
	if ch.Closes == 0 || ch.Churned == 0 {
		t.Errorf("%d clean closes, %d new sessions: no churn", ch.Closes, ch.Churned)
	}
	f := ch.Memory
	if f == nil {
		t.Fatal("soak did not judge memory")
	}
	if f.Samples < 40 || !f.Flat {
		t.Errorf("memory: %d samples, flat %v: %s", f.Samples, f.Flat, f.Explanation)
	}
}

func TestFlatnessVerdict(t *testing.T) {
	const mib = 1 << 20
	series := func(grow func(i int) int64) []MemSample {
		var s []MemSample
		for i := range 100 {
			s = append(s, MemSample{T: float64(i), Phase: "soak", RSS: 50*mib + grow(i), Heap: 20*mib + grow(i)})
		}
		return s
	}
	flat := flatness(series(func(i int) int64 { return int64(i%3) * mib }), 0, 100)
	if !flat.Flat || flat.Samples != 100 {
		t.Errorf("noisy but flat memory judged %+v", flat)
	}
	// A leak of 0.5 MiB a second: 12.5 MiB more in the last quarter.
	leak := flatness(series(func(i int) int64 { return int64(i) * mib / 2 }), 0, 100)
	if leak.Flat {
		t.Errorf("leaking memory judged flat: %s", leak.Explanation)
	}
	if few := flatness(series(func(int) int64 { return 0 })[:10], 0, 100); few.Flat {
		t.Errorf("10 samples in the first tenth judged flat: %s", few.Explanation)
	}
}

func TestParseArgsChaosPresets(t *testing.T) {
	cfg, err := ParseArgs([]string{"--scenario", "soak", "--duration", "60s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Duration != time.Minute || cfg.DropRate != 0.01 || cfg.ChurnRate != 0.01 || !cfg.CheckMemoryFlat || cfg.Conns != 2000 {
		t.Errorf("soak --duration 60s: %+v", cfg)
	}
	cfg, err = ParseArgs([]string{"--scenario", "chaos", "--drop-rate", "0.1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DropRate != 0.1 || cfg.Duration != time.Minute || cfg.Rate != 500 || cfg.Match != 10 || cfg.CheckMemoryFlat {
		t.Errorf("chaos --drop-rate 0.1: %+v", cfg)
	}
	if _, err := ParseArgs([]string{"--scenario", "chaos", "--drop-rate", "1.5"}, io.Discard); err == nil {
		t.Error("--drop-rate 1.5 accepted")
	}
}

// TestDuplicateClassification feeds a resumed client events over a pipe: a
// duplicate above the replay floor (the resume point of the last ack the
// server took) is an allowed replay, one at or below it is a bug, and the
// client acks the highest id it received on this connection.
func TestDuplicateClassification(t *testing.T) {
	srv, cli := net.Pipe()
	defer srv.Close()
	r := &runner{groups: 1, chaotic: true, lat: newRecorder(), inflated: newInflateCache()}
	c := &client{conn: cli, r: bufio.NewReader(cli), reconnects: 1, replayFloor: 5, replayTop: 10, maxID: 10, sureFloor: 5}
	c.got.set(0) // seq 0 and 1 arrived on the connection before the reset
	c.got.set(1)
	acks := make(chan string, 10)
	go func() {
		for {
			hdr, err := ws.ReadHeader(srv)
			if err != nil {
				close(acks)
				return
			}
			p := make([]byte, hdr.Length)
			if _, err := io.ReadFull(srv, p); err != nil {
				close(acks)
				return
			}
			ws.Cipher(p, hdr.Mask, 0)
			acks <- string(p)
		}
	}()
	event := func(id, seq int) {
		msg := fmt.Sprintf(`{"type":"event","message_id":%d,"event":{"data":{"lt_seq":%d,"lt_sent_ns":%d}}}`, id, seq, time.Now().UnixNano())
		if err := ws.WriteFrame(srv, ws.NewTextFrame([]byte(msg))); err != nil {
			t.Error(err)
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); c.readLoop(r) }()
	event(7, 0)  // received before the reset, after the ack of 5: a replay
	event(4, 1)  // at or below the ack: the server replayed what was acked
	event(12, 2) // new
	// 10 was received on the connection before; 7 is the highest on this one.
	if ack := <-acks; ack != `{"type":"ack","message_id":7}` {
		t.Errorf("ack %s", ack)
	}
	c.killed.Store(true)
	srv.Close()
	<-done
	if c.replayDups != 1 || c.dups != 1 || r.lat.count() != 1 || c.maxID != 12 {
		t.Errorf("replay duplicates %d (want 1), illegal %d (want 1), received %d (want 1), max id %d (want 12)",
			c.replayDups, c.dups, r.lat.count(), c.maxID)
	}
	if r.dropped.Load() != 0 || c.closeNote != "" {
		t.Errorf("a killed connection counted as dropped: %q", c.closeNote)
	}
}

// TestFleetLists: comma-separated --url and --ingest-socket spread
// connections and publishing over a fleet's instances, each URL checked
// for loopback like a single one.
func TestFleetLists(t *testing.T) {
	var out strings.Builder
	cfg, err := ParseArgs([]string{"--scenario", "smoke",
		"--url", "ws://127.0.0.1:1/ws, ws://127.0.0.2:2/ws", "--ingest-socket", "a.sock,b.sock"}, &out)
	if err != nil {
		t.Fatalf("ParseArgs: %v", err)
	}
	if got := cfg.URLs(); len(got) != 2 || got[1] != "ws://127.0.0.2:2/ws" {
		t.Fatalf("URLs() = %q", got)
	}
	if got := cfg.IngestSockets(); len(got) != 2 || got[0] != "a.sock" {
		t.Fatalf("IngestSockets() = %q", got)
	}
	if _, err := ParseArgs([]string{"--url", "ws://127.0.0.1:1/ws,ws://192.0.2.1:2/ws"}, &out); err == nil {
		t.Fatal("a non-loopback instance in the list was accepted")
	}
}
