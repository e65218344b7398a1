package bench

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/flarecast/flarecast/ring"
)

// ringCapacity is the server's default --broadcast-capacity. ring.New rounds
// it up to a power of two; the channel it is compared with gets the same
// effective capacity so the two hold the same number of events when full.
const ringCapacity = 10_000

// ringBatch is how many entries the dispatcher takes per Consume call.
const ringBatch = 256

// ringEvent stands in for *event.Event: the ring carries pointers, so the
// size of the pointee does not matter, only that it is a pointer.
type ringEvent struct {
	id       uint64
	typ      string
	severity string
	payload  []byte
}

// BenchmarkRing measures the ingest→dispatcher hand-off: P producer
// goroutines publish b.N events in total into a ring (or a buffered
// channel) while one consumer, the benchmark goroutine, drains them.
// The events are preallocated so allocs/op is the queue's own.
func BenchmarkRing(b *testing.B) {
	for _, producers := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("ring/producers=%d", producers), func(b *testing.B) {
			benchRingQueue(b, producers)
		})
		b.Run(fmt.Sprintf("chan/producers=%d", producers), func(b *testing.B) {
			benchRingChan(b, producers)
		})
	}
}

// ringShare is producer i's share of n events split among p producers.
func ringShare(n, p, i int) int {
	s := n / p
	if i < n%p {
		s++
	}
	return s
}

func benchRingQueue(b *testing.B, producers int) {
	r := ring.New[*ringEvent](ringCapacity, 1)
	ev := &ringEvent{typ: "incident_created", severity: "P1"}
	ctx := context.Background()
	var sink *ringEvent
	consume := func(_ uint64, v *ringEvent) { sink = v }
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()

	for i := range producers {
		n := ringShare(b.N, producers, i)
		wg.Go(func() {
			for range n {
				if _, err := r.Publish(ctx, ev); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	for got := 0; got < b.N; {
		n := r.Consume(ringBatch, consume)
		if n == 0 {
			if err := r.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
		got += n
	}
	wg.Wait()

	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	_ = sink
}

func benchRingChan(b *testing.B, producers int) {
	ch := make(chan *ringEvent, ring.New[*ringEvent](ringCapacity, 1).Cap())
	ev := &ringEvent{typ: "incident_created", severity: "P1"}
	var sink *ringEvent
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()

	for i := range producers {
		n := ringShare(b.N, producers, i)
		wg.Go(func() {
			for range n {
				ch <- ev
			}
		})
	}
	for range b.N {
		sink = <-ch
	}
	wg.Wait()

	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	_ = sink
}
