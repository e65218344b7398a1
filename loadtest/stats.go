package loadtest

import (
	"sync"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds, from 1 µs to 60 s, to three
// significant figures.
const (
	latencyMinUS  = 1
	latencyMaxUS  = 60_000_000
	latencySigFig = 3
	latencyShards = 16
)

func newLatencyHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(latencyMinUS, latencyMaxUS, latencySigFig)
}

// recorder takes latencies from every client reader goroutine. An HDR
// histogram is not safe for concurrent use, so readers record into one of
// several shards, each behind its own mutex; the sampler moves each shard's
// interval into the run's totals once per progress interval.
type recorder struct {
	shards [latencyShards]shard
}

type shard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram // since the last drain
	n  int64                   // deliveries recorded since the start
	_  [32]byte                // keep shards' mutexes on separate cache lines
}

func newRecorder() *recorder {
	r := &recorder{}
	for i := range r.shards {
		r.shards[i].h = newLatencyHistogram()
	}
	return r
}

// record adds one delivery with latency us (clamped to the histogram's range).
func (r *recorder) record(shardIndex int, us int64) {
	us = max(us, latencyMinUS)
	us = min(us, latencyMaxUS)
	s := &r.shards[shardIndex%latencyShards]
	s.mu.Lock()
	_ = s.h.RecordValue(us) // in range: cannot fail
	s.n++
	s.mu.Unlock()
}

// count is how many deliveries have been recorded since the start.
func (r *recorder) count() int64 {
	var n int64
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		n += s.n
		s.mu.Unlock()
	}
	return n
}

// drain merges every shard's deliveries since the last drain into into and
// empties the shards.
func (r *recorder) drain(into *hdrhistogram.Histogram) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		if s.h.TotalCount() > 0 {
			into.Merge(s.h)
			s.h.Reset()
		}
		s.mu.Unlock()
	}
}

// bitset remembers which events of its group a connection has received,
// indexed by seq div groups. It grows on demand; only the connection's
// reader goroutine touches it until the reader has exited.
type bitset []uint64

// set marks i and reports whether it was already marked.
func (b *bitset) set(i uint64) bool {
	w := i / 64
	if w >= uint64(len(*b)) {
		grown := make(bitset, max(w+1, uint64(2*len(*b))))
		copy(grown, *b)
		*b = grown
	}
	m := uint64(1) << (i % 64)
	was := (*b)[w]&m != 0
	(*b)[w] |= m
	return was
}

func (b bitset) has(i uint64) bool {
	w := i / 64
	return w < uint64(len(b)) && b[w]&(1<<(i%64)) != 0
}

// quantilesMS are the percentiles reported, from a histogram in µs.
type quantilesMS struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
	Mean  float64 `json:"mean_ms"`
}

func quantilesOf(h *hdrhistogram.Histogram) quantilesMS {
	if h.TotalCount() == 0 {
		return quantilesMS{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return quantilesMS{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P95:   ms(h.ValueAtQuantile(95)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
		Mean:  h.Mean() / 1000,
	}
}
