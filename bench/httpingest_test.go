package bench

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/flarecast/flarecast/producer"
)

// BenchmarkIngestTransports compares the two ways in for producers on one
// server in the same run: the Unix socket and HTTP ingest (POST
// /v1/events with a bearer token, over loopback TCP), both through the
// producer package in batches of 100 events — one PublishBatch call each,
// which over HTTP is one request. "serial" is one producer waiting for each
// batch; "parallel8" eight producers at once. One op is one event.
func BenchmarkIngestTransports(b *testing.B) {
	tokens := filepath.Join(b.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("bench-token\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	addr := freeAddr(b)
	socket := startFlarecastWith(b, "--ingest-listen", addr, "--ingest-token-file", tokens)
	url := "http://" + addr
	waitHTTP(b, url)
	warmUp(b, socket)
	const batchSize = 100
	batch := make([][]byte, batchSize)
	for i := range batch {
		batch[i] = producerEvent
	}
	type batcher interface {
		PublishBatch(context.Context, [][]byte) []producer.Result
	}
	socketClient := func(b *testing.B) batcher { return dialProducer(b, socket) }
	httpClient := func(b *testing.B) batcher {
		c, err := producer.DialHTTP(url, "bench-token")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	run := func(b *testing.B, c batcher, producers int) {
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		var wg sync.WaitGroup
		per := (b.N + producers - 1) / producers
		for p := range producers {
			n := min(per, b.N-p*per)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for sent := 0; sent < n; sent += batchSize {
					for _, r := range c.PublishBatch(ctx, batch[:min(batchSize, n-sent)]) {
						if r.Err != nil {
							b.Error(r.Err)
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		reportRate(b)
	}
	for _, t := range []struct {
		name string
		dial func(*testing.B) batcher
	}{{"socket", socketClient}, {"http", httpClient}} {
		b.Run(t.name+"-serial-batch100", func(b *testing.B) { run(b, t.dial(b), 1) })
		b.Run(t.name+"-parallel8-batch100", func(b *testing.B) { run(b, t.dial(b), 8) })
	}
}

func freeAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitHTTP waits for the HTTP ingest listener (a GET gets 405 once it serves).
func waitHTTP(b *testing.B, url string) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url + "/v1/events")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("HTTP ingest at %s did not answer: %v", url, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
