package engine

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
	"github.com/flarecast/flarecast/ring"
)

// The end-to-end benchmark of issue 3: events per second from the ingest
// line to frames queued for 10,000 sessions, with the cost of each stage.
//
//	go test -run '^$' -bench Pipeline -benchmem ./engine/
//
// BenchmarkPipeline runs the real path in one goroutine: PublishJSON (line
// → event.Parse → ring.Publish), then the dispatcher's own Consume →
// dispatchEvent (encode once, history, index match, collect deliveries) →
// handOff → loop.enqueue. The event loops are stubs: their Execute only
// records the flush the dispatcher asked for, and the benchmark runs it,
// with the timer stopped, after every batch of 256 events (the dispatcher's
// batch), writing to connections that accept everything. So the queues
// never reach --max-pending-messages, and the figure is the server's cost
// up to "frame queued" (the loop's writev is BenchmarkPipelineStages/Flush).
//
// BenchmarkPipelineStages times each stage alone on the same data, one
// event per op, so that their ns/op add up to about the whole: Parse, Ring
// (publish + consume, amortised over a batch), Match (the filter index at
// 10K sessions), Encode (the event message and its frame, made once; and
// Encode+Compress, which adds the one permessage-deflate compression an
// event gets when some connection negotiated it), Enqueue (collecting the
// event's ~100 deliveries and queueing them under each loop's lock). What
// the stages leave out is small: the history append, counters, and the
// ring's slot bookkeeping inside Consume.

var pipelineMatches = flag.Int("flarecast.pipeline-matches", 100,
	"BenchmarkPipeline: about how many of the 10,000 sessions each event matches")

const pipelineSessions = 10_000

// ---- stub event loops and connections ----

// stubLoop is a gnet.EventLoop that runs nothing by itself: Execute keeps
// the runnable (the dispatcher's flush request) and run executes the kept
// ones, as the event loop's goroutine would. Other methods are not
// implemented (the embedded nil interface panics if one is called).
type stubLoop struct {
	gnet.EventLoop
	queued []gnet.Runnable
}

func (s *stubLoop) Execute(_ context.Context, r gnet.Runnable) error {
	s.queued = append(s.queued, r)
	return nil
}

func (s *stubLoop) run() {
	rs := s.queued
	s.queued = s.queued[len(s.queued):]
	for _, r := range rs {
		_ = r.Run(context.Background())
	}
	s.queued = rs[:0]
}

// stubConn is a gnet.Conn whose socket takes everything at once: what the
// loop's flush calls on it, and nothing else.
type stubConn struct {
	gnet.Conn
	written int64
}

func (c *stubConn) OutboundBuffered() int { return 0 }
func (c *stubConn) InboundBuffered() int  { return 0 }

func (c *stubConn) Write(b []byte) (int, error) {
	c.written += int64(len(b))
	return len(b), nil
}

func (c *stubConn) Writev(bs [][]byte) (int, error) {
	n := 0
	for _, b := range bs {
		n += len(b)
	}
	c.written += int64(n)
	return n, nil
}

// ---- the workload ----

// pipelineFixture is an engine whose dispatcher holds 10,000 sessions, each
// on a connection of one of two stub loops, and the ingest lines to feed it.
type pipelineFixture struct {
	eng     *Engine
	d       *dispatcher
	loops   []*loop
	stubs   []*stubLoop
	lines   [][]byte       // ingest lines, as producers send them
	events  []*event.Event // the same, parsed
	owners  [][]uint32     // per event: the sessions it matches
	matches float64        // sessions matched per event, on average
}

var (
	fixturesMu sync.Mutex
	fixtures   = map[string]*pipelineFixture{}
)

// getPipelineFixture builds (once per configuration) the fixture with the
// given share of connections that negotiated permessage-deflate.
func getPipelineFixture(b *testing.B, deflateShare float64) *pipelineFixture {
	b.Helper()
	key := fmt.Sprint(deflateShare, *pipelineMatches)
	fixturesMu.Lock()
	defer fixturesMu.Unlock()
	if fx := fixtures[key]; fx != nil {
		return fx
	}
	fx := newPipelineFixture(b, deflateShare)
	fixtures[key] = fx
	return fx
}

func newPipelineFixture(b testing.TB, deflateShare float64) *pipelineFixture {
	cfg := DefaultConfig()
	cfg.IngestSocket, cfg.AdminListen = "", ""
	cfg.EventLoops = 2
	cfg.IOURing = false // stub connections have no socket to hand the kernel
	eng, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	fx := &pipelineFixture{eng: eng, d: eng.disp}
	for range cfg.EventLoops {
		st := &stubLoop{}
		fx.stubs = append(fx.stubs, st)
		fx.loops = append(fx.loops, newLoop(eng, st))
	}
	r := rand.New(rand.NewPCG(3, 0xf1a7ec))
	filters, lines := pipelineWorkload(r, pipelineSessions, *pipelineMatches)
	now := time.Now()
	deflateEvery := 0
	if deflateShare > 0 {
		deflateEvery = int(1 / deflateShare)
	}
	for i := range filters {
		c := &conn{gc: &stubConn{}, loop: fx.loops[i%len(fx.loops)], state: stateOpen, upgraded: true, welcomed: true}
		c.deflate = deflateEvery > 0 && i%deflateEvery == 0
		s := fx.d.newSession()
		s.conn, c.sess = c, s
		fx.d.subscribe(c, &codec.ClientMessage{Type: codec.TypeSubscribe, SubscriptionID: "s", Filter: filters[i]})
	}
	fx.d.handOff()
	fx.drain() // the subscribed replies
	total := 0
	for _, line := range lines {
		ev, err := event.Parse(line)
		if err != nil {
			b.Fatalf("workload line %s: %v", line, err)
		}
		ev.Accepted = now
		owners := fx.d.index.Match(ev, nil)
		fx.lines = append(fx.lines, line)
		fx.events = append(fx.events, ev)
		fx.owners = append(fx.owners, owners)
		total += len(owners)
	}
	fx.matches = float64(total) / float64(len(lines))
	return fx
}

// drain runs the flushes the dispatcher asked the loops for.
func (fx *pipelineFixture) drain() {
	for _, st := range fx.stubs {
		st.run()
	}
}

// pipelineWorkload returns one subscription filter per session and the
// ingest lines of 4,096 events, such that each event matches about
// matches sessions. It is the mix of bench/filterindex_test.go: a fixed
// number of broad subscriptions (dashboards: everything, some severities,
// some types at some severities, production P0s) and narrow ones whose
// vocabularies grow with the deployment (a service's owners, an
// incident's viewers, a team), each value listed by a set number of
// subscriptions, scaled so that the total per event is about matches.
func pipelineWorkload(r *rand.Rand, n, matches int) ([]filterindex.Filter, [][]byte) {
	const (
		matchAll, severityOnly, typeSeverity, prodUrgent = 3, 25, 140, 20
		broad                                            = matchAll + severityOnly + typeSeverity + prodUrgent
	)
	// The broad ones match about 18 per event; the narrow ones the rest,
	// 72 per event at scale 1 (measured: TestPipelineFixture logs it).
	scale := max(float64(matches-18), 1) / 72
	per := func(base float64) float64 { return max(base*scale, 0.5) }
	narrow := n - broad
	nRes, nResSev, nInc := narrow*35/100, narrow*10/100, narrow*35/100
	nLab := narrow - nRes - nResSev - nInc
	resources := max(int(float64(nRes*2+nResSev*3/2)/per(30)), 1)
	incidents := max(int(float64(nInc)/per(20)), 1)
	teams := max(int(float64(nLab)/per(10)), 1)
	services := max(nLab/4, 1)

	name := func(prefix string, k int) string { return prefix + strconv.Itoa(k) }
	typ := func() string { return string(event.Types[r.IntN(len(event.Types))]) }
	sev := func() string { return event.Severities[r.IntN(len(event.Severities))] }
	res := func() string { return name("svc-", r.IntN(resources)) }
	some := func(k int, gen func() string) []string {
		out := make([]string, k)
		for i := range out {
			out[i] = gen()
		}
		return out
	}
	var filters []filterindex.Filter
	add := func(f filterindex.Filter) {
		f.Normalize()
		filters = append(filters, f)
	}
	for i := range broad {
		switch {
		case i < matchAll:
			add(filterindex.Filter{})
		case i < matchAll+severityOnly:
			add(filterindex.Filter{Severities: some(1+r.IntN(2), sev)})
		case i < matchAll+severityOnly+typeSeverity:
			add(filterindex.Filter{EventTypes: some(1+r.IntN(3), typ), Severities: some(1+r.IntN(2), sev)})
		default:
			add(filterindex.Filter{Severities: []string{"P0"}, Labels: []event.Label{{Key: "env", Value: "prod"}}})
		}
	}
	for range nRes {
		add(filterindex.Filter{Resources: some(1+r.IntN(3), res)})
	}
	for range nResSev {
		add(filterindex.Filter{Resources: some(1+r.IntN(2), res), Severities: []string{"P0", "P1"}})
	}
	for range nInc {
		f := filterindex.Filter{IncidentIDs: []string{name("INC-", r.IntN(incidents))}}
		if r.IntN(3) == 0 {
			f.EventTypes = []string{"incident_updated", "escalated", "comment_added", "incident_resolved"}
		}
		add(f)
	}
	for range nLab {
		f := filterindex.Filter{Labels: []event.Label{{Key: "team", Value: name("team-", r.IntN(teams))}}}
		if r.IntN(2) == 0 {
			f.Labels = append(f.Labels, event.Label{Key: "service", Value: name("service-", r.IntN(services))})
		}
		add(f)
	}

	lines := make([][]byte, 4096)
	for i := range lines {
		line, err := json.Marshal(map[string]any{
			"event_type":         typ(),
			"incident_id":        name("INC-", r.IntN(incidents)),
			"severity":           sev(),
			"state":              event.States[r.IntN(len(event.States))],
			"source":             []string{"pagerduty", "datadog", "grafana", "prometheus", "sentry"}[r.IntN(5)],
			"affected_resources": some(1+r.IntN(3), res),
			"labels": map[string]string{
				"env":     []string{"prod", "staging"}[r.IntN(2)],
				"service": name("service-", r.IntN(services)),
				"team":    name("team-", r.IntN(teams)),
			},
			"title":       "Error rate above 5% on " + res(),
			"description": "p99 latency 2.3s over the last 5 minutes; 4,210 requests failed with 502 from the upstream pool",
			"timestamp":   "2026-11-26T01:00:00Z",
		})
		if err != nil {
			panic(err)
		}
		lines[i] = line
	}
	return filters, lines
}

// ---- benchmarks ----

// BenchmarkPipeline: ingest line to frames queued for 10K sessions, one
// event per op. "plain": no connection compresses; "deflate-half": every
// other connection negotiated permessage-deflate, so each event is also
// compressed (once).
func BenchmarkPipeline(b *testing.B) {
	for _, tc := range []struct {
		name  string
		share float64
	}{{"plain", 0}, {"deflate-half", 0.5}} {
		b.Run(tc.name, func(b *testing.B) {
			fx := getPipelineFixture(b, tc.share)
			ctx := context.Background()
			queuedBefore := fx.queued()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; {
				n := min(dispatchBatch, b.N-i)
				for j := range n {
					if _, err := fx.eng.PublishJSON(ctx, fx.lines[(i+j)%len(fx.lines)]); err != nil {
						b.Fatal(err)
					}
				}
				if got := fx.d.ring.Consume(dispatchBatch, fx.d.onEvent); got != n {
					b.Fatalf("consumed %d events, published %d", got, n)
				}
				fx.d.handOff()
				i += n
				b.StopTimer()
				fx.drain()
				b.StartTimer()
			}
			b.StopTimer()
			queued := fx.queued() - queuedBefore
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)/sec, "events/s")
			b.ReportMetric(float64(queued)/sec, "deliveries/s")
			b.ReportMetric(float64(queued)/float64(b.N), "matches/event")
		})
	}
}

// queued returns the event frames written so far to the stub connections
// (each event frame queued is written by the drain).
func (fx *pipelineFixture) queued() int64 {
	return int64(fx.eng.metrics.eventsDelivered.Get())
}

// BenchmarkPipelineStages times each stage of BenchmarkPipeline alone, one
// event per op.
func BenchmarkPipelineStages(b *testing.B) {
	b.Run("Parse", func(b *testing.B) {
		fx := getPipelineFixture(b, 0)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if _, err := event.Parse(fx.lines[i%len(fx.lines)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Ring", func(b *testing.B) {
		fx := getPipelineFixture(b, 0)
		rg := ring.New[*event.Event](fx.eng.cfg.BroadcastCapacity, 1)
		ctx := context.Background()
		sink := 0
		consume := func(_ uint64, ev *event.Event) { sink += len(ev.JSON) }
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; {
			n := min(dispatchBatch, b.N-i)
			for j := range n {
				if _, err := rg.Publish(ctx, fx.events[(i+j)%len(fx.events)]); err != nil {
					b.Fatal(err)
				}
			}
			rg.Consume(dispatchBatch, consume)
			i += n
		}
	})
	b.Run("Match10K", func(b *testing.B) {
		fx := getPipelineFixture(b, 0)
		var owners []uint32
		total := 0
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			owners = fx.d.index.Match(fx.events[i%len(fx.events)], owners[:0])
			total += len(owners)
		}
		b.ReportMetric(float64(total)/float64(b.N), "matches/event")
	})
	for _, compress := range []bool{false, true} {
		name := "Encode"
		if compress {
			name = "Encode+Compress"
		}
		b.Run(name, func(b *testing.B) {
			fx := getPipelineFixture(b, 0)
			var scratch []byte
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				f := fx.d.encode(uint64(i+1), fx.events[i%len(fx.events)])
				if compress {
					f.deflated, scratch = codec.AppendCompressedFrame(make([]byte, 0, len(f.plain)), scratch, f.payload())
				}
			}
		})
	}
	b.Run("Enqueue", func(b *testing.B) {
		// Collecting one event's deliveries (the session lookups of
		// dispatchEvent, deliver) and handing them to the loops' queues.
		fx := getPipelineFixture(b, 0)
		frames := make([]*outFrame, len(fx.events))
		for i, ev := range fx.events {
			frames[i] = fx.d.encode(uint64(i+1), ev)
		}
		deliveries := 0
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; {
			n := min(dispatchBatch, b.N-i)
			for j := range n {
				k := (i + j) % len(frames)
				for _, owner := range fx.owners[k] {
					if s := fx.d.slots[owner]; s != nil && s.conn != nil && s.replayNext == 0 {
						fx.d.deliver(s.conn, frames[k])
						deliveries++
					}
				}
			}
			fx.d.handOff()
			i += n
			b.StopTimer()
			fx.drain()
			b.StartTimer()
		}
		b.ReportMetric(float64(deliveries)/float64(b.N), "deliveries/event")
	})
	b.Run("Flush", func(b *testing.B) {
		// Not part of "queued": the event loop writing each connection's
		// queued frames with one writev, here to connections that take all.
		fx := getPipelineFixture(b, 0)
		frames := make([]*outFrame, len(fx.events))
		for i, ev := range fx.events {
			frames[i] = fx.d.encode(uint64(i+1), ev)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; {
			n := min(dispatchBatch, b.N-i)
			b.StopTimer()
			for j := range n {
				k := (i + j) % len(frames)
				for _, owner := range fx.owners[k] {
					if s := fx.d.slots[owner]; s != nil && s.conn != nil {
						fx.d.deliver(s.conn, frames[k])
					}
				}
			}
			fx.d.handOff()
			b.StartTimer()
			fx.drain()
			i += n
		}
	})
}

// TestPipelineFixture checks the benchmark's set-up: the stub loops carry
// every queued frame to the stub connections, and the workload matches
// about the number of sessions it claims.
func TestPipelineFixture(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 10,000 sessions")
	}
	fx := newPipelineFixture(t, 0.5)
	if want := float64(*pipelineMatches); fx.matches < want/2 || fx.matches > want*2 {
		t.Fatalf("the workload matches %.1f sessions per event, want about %d", fx.matches, *pipelineMatches)
	}
	ctx := context.Background()
	want := 0
	for i := range 300 {
		if _, err := fx.eng.PublishJSON(ctx, fx.lines[i]); err != nil {
			t.Fatal(err)
		}
		want += len(fx.owners[i])
	}
	for fx.d.ring.Consume(dispatchBatch, fx.d.onEvent) > 0 {
		fx.d.handOff()
		fx.drain()
	}
	if got := fx.queued(); got != int64(want) {
		t.Fatalf("%d event frames reached the connections, want %d (the matches of the 300 events)", got, want)
	}
	var written int64
	for _, s := range fx.d.slots {
		written += s.conn.gc.(*stubConn).written
	}
	if written == 0 {
		t.Fatal("nothing was written to the stub connections")
	}
	t.Logf("%.1f sessions matched per event; %d bytes written", fx.matches, written)
}
