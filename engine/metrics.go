package engine

import (
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/ingest"
)

// engineMetrics are one engine's Prometheus series. Each engine has its own
// metrics.Set, so several engines can live in one process (tests, embedders).
// Counters are atomics; the hot paths add batch totals, not one per frame.
type engineMetrics struct {
	set *metrics.Set

	activeConnections   atomic.Int64
	activeSubscriptions atomic.Int64
	historyLen          atomic.Int64
	historyFirst        atomic.Int64
	uringLoops          atomic.Int64 // event loops writing through io_uring
	lastDispatched      atomic.Uint64

	totalConnections  *metrics.Counter
	messagesSent      *metrics.Counter
	eventsBroadcast   *metrics.Counter
	eventsDelivered   *metrics.Counter
	acksReceived      *metrics.Counter
	ingestAccepted    *metrics.Counter
	ingestRejected    *metrics.Counter
	slowConsumers     *metrics.Counter
	handshakeRejected *metrics.Counter
	resumesFresh      *metrics.Counter
	resumesResumed    *metrics.Counter
	// Fleet only (addSessionStore): writes to or claims from the session
	// store that failed, and resumes of a session another instance held.
	sessionStoreFailures *metrics.Counter
	sessionsMoved        *metrics.Counter
	resumesGap           *metrics.Counter
	replayed             *metrics.Counter
	sessionDuration      *metrics.PrometheusHistogram
	latency              latencyHistogram
	brokerAppend         *metrics.PrometheusHistogram
	brokerCorrupt        *metrics.Counter // fleet only (addBroker): undecodable stream entries skipped
	brokerGaps           *metrics.Counter // fleet only: gaps reported to the sessions
	brokerUnreplicated   *metrics.Counter // fleet only: appends refused, too few replicas in time
	errors               map[string]*metrics.Counter
	closes               map[string]*metrics.Counter
	refused              map[string]*metrics.Counter
	inputWaits           [len(inputWaitReasons)]*metrics.Counter // by inputWait; [inputReady] unused
	httpIngest           map[int]*metrics.Counter                // by status code; nil without --ingest-listen
}

// httpIngestCodes are the statuses HTTP ingest answers with.
var httpIngestCodes = []int{200, 400, 401, 404, 405, 413, 415, 503}

// addHTTPIngest registers the HTTP ingest series (--ingest-listen only).
func (m *engineMetrics) addHTTPIngest() {
	m.httpIngest = make(map[int]*metrics.Counter, len(httpIngestCodes))
	for _, code := range httpIngestCodes {
		m.httpIngest[code] = m.set.NewCounter(fmt.Sprintf(`flarecast_http_ingest_requests_total{code="%d"}`, code))
	}
}

// addBroker registers the fleet's stream series (--broker only).
func (m *engineMetrics) addBroker() {
	m.brokerCorrupt = m.set.NewCounter("flarecast_broker_corrupt_entries_total")
	m.brokerGaps = m.set.NewCounter("flarecast_broker_gaps_total")
	m.brokerUnreplicated = m.set.NewCounter("flarecast_broker_unreplicated_appends_total")
}

// addSessionStore registers the fleet's session store series (--broker only).
func (m *engineMetrics) addSessionStore() {
	m.sessionStoreFailures = m.set.NewCounter("flarecast_session_store_failures_total")
	m.sessionsMoved = m.set.NewCounter(`flarecast_session_resumes_total{result="moved"}`)
}

// addAdapters registers flarecast_adapter_alerts_total{adapter,result}
// (--ingest-listen only) and returns the function that counts into it.
func (m *engineMetrics) addAdapters() func(adapter, result string, n int) {
	counters := make(map[[2]string]*metrics.Counter)
	for _, a := range ingest.AdapterNames {
		for _, r := range ingest.AdapterResults {
			counters[[2]string{a, r}] = m.set.NewCounter(`flarecast_adapter_alerts_total{adapter="` + a + `",result="` + r + `"}`)
		}
	}
	return func(adapter, result string, n int) {
		if c := counters[[2]string{adapter, result}]; c != nil {
			c.Add(n)
		}
	}
}

// httpIngestRequest counts one HTTP ingest request by its status code.
func (m *engineMetrics) httpIngestRequest(code int) {
	if c := m.httpIngest[code]; c != nil {
		c.Inc()
	}
}

var errorCodes = []string{
	codec.CodeInvalidMessage, codec.CodeUnsupported, codec.CodeNotFound, codec.CodeRateLimited,
	codec.CodeUnauthorized, codec.CodeLimitExceeded, codec.CodeHistoryGap,
}

var closeReasons = []string{
	codec.ReasonServerShutdown, codec.ReasonSessionTimeout, codec.ReasonSlowConsumer,
	codec.ReasonSessionTakenOver, codec.ReasonTokenExpired, codec.ReasonPolicyViolation,
	"protocol_error", "client_closed", "connection_lost",
}

func newEngineMetrics() *engineMetrics {
	s := metrics.NewSet()
	m := &engineMetrics{
		set:               s,
		totalConnections:  s.NewCounter("websocket_total_connections"),
		messagesSent:      s.NewCounter("websocket_messages_sent_total"),
		eventsBroadcast:   s.NewCounter("websocket_events_broadcast_total"),
		eventsDelivered:   s.NewCounter("websocket_events_delivered_total"),
		acksReceived:      s.NewCounter("websocket_acks_received_total"),
		ingestAccepted:    s.NewCounter("flarecast_ingest_events_accepted_total"),
		ingestRejected:    s.NewCounter("flarecast_ingest_events_rejected_total"),
		slowConsumers:     s.NewCounter("websocket_slow_consumer_disconnects_total"),
		handshakeRejected: s.NewCounter("websocket_handshakes_rejected_total"),
		resumesFresh:      s.NewCounter(`flarecast_session_resumes_total{result="fresh"}`),
		resumesResumed:    s.NewCounter(`flarecast_session_resumes_total{result="resumed"}`),
		resumesGap:        s.NewCounter(`flarecast_session_resumes_total{result="gap"}`),
		replayed:          s.NewCounter("flarecast_replayed_events_total"),
		sessionDuration: s.NewPrometheusHistogramExt("websocket_session_duration_seconds",
			[]float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600}),
		brokerAppend: s.NewPrometheusHistogramExt("flarecast_broker_append_seconds",
			metrics.ExponentialBuckets(0.0001, 2, 14)),
		errors:  make(map[string]*metrics.Counter, len(errorCodes)),
		closes:  make(map[string]*metrics.Counter, len(closeReasons)),
		refused: make(map[string]*metrics.Counter, len(refusalReasons)),
	}
	s.RegisterMetricsWriter(m.latency.writePrometheus)
	s.NewGauge("websocket_active_connections", func() float64 { return float64(m.activeConnections.Load()) })
	s.NewGauge("websocket_active_subscriptions", func() float64 { return float64(m.activeSubscriptions.Load()) })
	s.NewGauge("flarecast_history_events", func() float64 { return float64(m.historyLen.Load()) })
	s.NewGauge("flarecast_history_oldest_message_id", func() float64 { return float64(m.historyFirst.Load()) })
	// A loop is made with its first connection: on a server with
	// connections, 0 with --io-uring on means io_uring was refused here (or
	// a submit failed), and the loops write with write(2), at a higher CPU
	// cost.
	s.NewGauge("flarecast_io_uring_loops", func() float64 { return float64(m.uringLoops.Load()) })
	for _, code := range errorCodes {
		m.errors[code] = s.NewCounter(`websocket_errors_total{code="` + code + `"}`)
	}
	for _, reason := range closeReasons {
		m.closes[reason] = s.NewCounter(`websocket_connections_closed_total{reason="` + reason + `"}`)
	}
	for why, reason := range inputWaitReasons {
		if reason != "" {
			m.inputWaits[why] = s.NewCounter(`flarecast_input_waits_total{reason="` + reason + `"}`)
		}
	}
	for _, reason := range refusalReasons {
		m.refused[reason] = s.NewCounter(`flarecast_refused_total{reason="` + reason + `"}`)
	}
	return m
}

func (m *engineMetrics) errorSent(code string) {
	if c := m.errors[code]; c != nil {
		c.Inc()
	}
}

func (m *engineMetrics) closed(reason string) {
	if c := m.closes[reason]; c != nil {
		c.Inc()
	}
}

// refuse counts one refusal (see refusalReasons in security.go).
func (m *engineMetrics) refuse(reason string) {
	if c := m.refused[reason]; c != nil {
		c.Inc()
	}
}

// Latency buckets: 100µs doubling to 3.3s, as websocket_message_latency_seconds
// always had.
const (
	latencyFirstBucket int64 = 100 * 1000 // ns
	latencyBuckets           = 16
)

// latencyHistogram is websocket_message_latency_seconds, from each event's
// acceptance to its frame being written to a connection. It is recorded for
// every delivery, so it is sharded per event loop: a delivery costs two
// uncontended atomic adds on its loop's shard, not a process-wide lock.
// Scrapes add the shards up.
type latencyHistogram struct {
	mu     sync.Mutex
	shards []*latencyShard
}

type latencyShard struct {
	counts   [latencyBuckets + 1]atomic.Uint64 // the last one is +Inf
	sumNanos atomic.Uint64
}

// shard returns a new shard for one event loop.
func (h *latencyHistogram) shard() *latencyShard {
	s := new(latencyShard)
	h.mu.Lock()
	h.shards = append(h.shards, s)
	h.mu.Unlock()
	return s
}

// observe records one delivery that took ns nanoseconds.
func (s *latencyShard) observe(ns int64) {
	ns = max(ns, 0)
	// Bucket i holds (100µs·2^(i-1), 100µs·2^i].
	i := 0
	if ns > latencyFirstBucket {
		i = min(bits.Len64(uint64(ns-1)/uint64(latencyFirstBucket)), latencyBuckets)
	}
	s.counts[i].Add(1)
	s.sumNanos.Add(uint64(ns))
}

func (h *latencyHistogram) writePrometheus(w io.Writer) {
	const name = "websocket_message_latency_seconds"
	var counts [latencyBuckets + 1]uint64
	var sum uint64
	h.mu.Lock()
	for _, s := range h.shards {
		for i := range counts {
			counts[i] += s.counts[i].Load()
		}
		sum += s.sumNanos.Load()
	}
	h.mu.Unlock()
	var cumulative uint64
	for i := range latencyBuckets {
		cumulative += counts[i]
		fmt.Fprintf(w, "%s_bucket{le=\"%v\"} %d\n", name, float64(int64(latencyFirstBucket)<<i)/1e9, cumulative)
	}
	cumulative += counts[latencyBuckets]
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %d\n", name, cumulative)
	fmt.Fprintf(w, "%s_sum %g\n", name, float64(sum)/1e9)
	fmt.Fprintf(w, "%s_count %d\n", name, cumulative)
}
