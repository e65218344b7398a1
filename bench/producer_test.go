package bench

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flarecast/flarecast/producer"
)

// producerEvent is the README's example event; producerIncident encodes to
// the same fields through the typed handlers.
var producerEvent = []byte(`{"event_type":"incident_created","incident_id":"INC-1042","severity":"P1","state":"Detected","source":"llm-sentinel","affected_resources":["api-service"],"labels":{"env":"production"},"title":"Error rate above 5%"}`)

var producerIncident = producer.Incident{
	ID: "INC-1042", Severity: producer.P1, State: producer.StateDetected, Source: "llm-sentinel",
	AffectedResources: []string{"api-service"}, Labels: map[string]string{"env": "production"},
	Title: "Error rate above 5%",
}

// BenchmarkProducer measures publishing over the ingest socket: raw NDJSON
// written straight to a net.Conn and replies counted (the ceiling: no
// matching, no waiting), against the producer package — batched,
// from many goroutines at once, one at a time, and through the typed
// handlers. The server is the flarecast binary in a separate process, so
// allocs/op are the client's alone; one op is one event.
func BenchmarkProducer(b *testing.B) {
	socket := startFlarecast(b)
	// The first events fill the server's history window and warm it up;
	// that cost belongs to no variant.
	warmUp(b, socket)
	b.Run("raw-ndjson", func(b *testing.B) { benchRaw(b, socket) })
	b.Run("client-batch256", func(b *testing.B) {
		c := dialProducer(b, socket)
		batch := make([][]byte, 256)
		for i := range batch {
			batch[i] = producerEvent
		}
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for sent := 0; sent < b.N; sent += len(batch) {
			for _, r := range c.PublishBatch(ctx, batch[:min(len(batch), b.N-sent)]) {
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
		}
		reportRate(b)
	})
	b.Run("client-parallel64", func(b *testing.B) {
		c := dialProducer(b, socket)
		benchParallel(b, func(ctx context.Context) error {
			_, err := c.PublishJSON(ctx, producerEvent)
			return err
		})
	})
	b.Run("handlers-parallel64", func(b *testing.B) {
		h := producer.NewHandlers(dialProducer(b, socket))
		benchParallel(b, func(ctx context.Context) error {
			_, err := h.Incidents.OnIncidentCreated(ctx, producerIncident)
			return err
		})
	})
	b.Run("client-serial", func(b *testing.B) {
		c := dialProducer(b, socket)
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := c.PublishJSON(ctx, producerEvent); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b)
	})
}

// warmUp publishes enough events to fill the default history window.
func warmUp(b *testing.B, socket string) {
	c := dialProducer(b, socket)
	batch := make([][]byte, 1000)
	for i := range batch {
		batch[i] = producerEvent
	}
	for range 120 {
		for _, r := range c.PublishBatch(context.Background(), batch) {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
	}
}

// benchParallel publishes from 64 goroutines (32 per CPU on 2 cores).
func benchParallel(b *testing.B, publish func(context.Context) error) {
	ctx := context.Background()
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := publish(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b)
}

// benchRaw writes b.N lines through a bufio.Writer while another goroutine
// reads and counts the replies.
func benchRaw(b *testing.B, socket string) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	line := append(append([]byte(nil), producerEvent...), '\n')
	b.ReportAllocs()
	b.ResetTimer()
	done := make(chan error, 1)
	go func() {
		r := bufio.NewReaderSize(conn, 64<<10)
		for n := 0; n < b.N; n++ {
			reply, err := r.ReadSlice('\n')
			if err != nil {
				done <- err
				return
			}
			if !bytes.HasPrefix(reply, []byte(`{"ok":true`)) {
				done <- &net.OpError{Op: "reply", Err: os.ErrInvalid}
				return
			}
		}
		done <- nil
	}()
	w := bufio.NewWriterSize(conn, 64<<10)
	for range b.N {
		if _, err := w.Write(line); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	reportRate(b)
}

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func dialProducer(b *testing.B, socket string) *producer.Client {
	c, err := producer.Dial(context.Background(), socket)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

var (
	flarecastBinOnce sync.Once
	flarecastBin     string
	flarecastBinErr  error
)

// startFlarecast builds cmd/flarecast once per test binary and runs it with
// its ingest socket in a temporary directory, until the benchmark ends.
func startFlarecast(b *testing.B) string {
	return startFlarecastWith(b)
}

// startFlarecastWith is startFlarecast with extra serve flags.
func startFlarecastWith(b *testing.B, extra ...string) string {
	flarecastBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "flarecast-bench")
		if err != nil {
			flarecastBinErr = err
			return
		}
		flarecastBin = filepath.Join(dir, "flarecast")
		out, err := exec.Command(goCommand(), "build", "-o", flarecastBin, "github.com/flarecast/flarecast/cmd/flarecast").CombinedOutput()
		if err != nil {
			flarecastBinErr = &exec.Error{Name: "go build: " + string(out), Err: err}
		}
	})
	if flarecastBinErr != nil {
		b.Fatal(flarecastBinErr)
	}
	socket := filepath.Join(b.TempDir(), "ingest.sock")
	cmd := exec.Command(flarecastBin, append([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "",
		"--ingest-socket", socket, "--log-level", "error"}, extra...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
			return socket
		}
		if time.Now().After(deadline) {
			b.Fatalf("flarecast did not open %s: %v", socket, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func goCommand() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}
