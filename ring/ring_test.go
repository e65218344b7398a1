package ring

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// consumeAll drains everything currently published.
func consumeAll[T any](r *Ring[T], fn func(uint64, T)) int {
	total := 0
	for {
		n := r.Consume(64, fn)
		if n == 0 {
			return total
		}
		total += n
	}
}

// waitParked waits until the consumer or n producers have announced they
// are parked, so a test exercises the parking path rather than the spin.
func waitParked(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("goroutine never parked")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNewCapacity(t *testing.T) {
	for _, tc := range []struct{ in, want int }{{1, 1}, {2, 2}, {3, 4}, {1000, 1024}, {10000, 16384}, {16384, 16384}} {
		if got := New[int](tc.in, 1).Cap(); got != tc.want {
			t.Errorf("New(%d).Cap() = %d, want %d", tc.in, got, tc.want)
		}
	}
	for _, bad := range []func(){
		func() { New[int](0, 1) },
		func() { New[int](8, 0) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("New with bad arguments did not panic")
				}
			}()
			bad()
		}()
	}
}

func TestSingleProducerOrder(t *testing.T) {
	const first, n = 42, 10_000
	r := New[int](128, first)
	done := make(chan error, 1)
	go func() {
		for i := range n {
			seq, err := r.Publish(context.Background(), i)
			if err != nil {
				done <- err
				return
			}
			if seq != first+uint64(i) {
				done <- errors.New("sequence out of order")
				return
			}
		}
		done <- nil
	}()
	next := 0
	for next < n {
		if err := r.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		r.Consume(17, func(seq uint64, v int) {
			if v != next || seq != first+uint64(next) {
				t.Fatalf("got seq %d value %d, want seq %d value %d", seq, v, first+uint64(next), next)
			}
			next++
		})
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r.Len() != 0 {
		t.Fatalf("Len = %d after draining", r.Len())
	}
}

// TestManyProducers hammers a small ring so that it is full most of the time
// and wraps thousands of times, and checks that the consumer sees strictly
// increasing contiguous sequences, every value exactly once, each producer's
// values in its own order, and that each value arrives under the sequence
// its producer was given.
func TestManyProducers(t *testing.T) {
	const producers, perProducer = 6, 100_000
	const first = 1
	type val struct{ producer, n uint32 }
	r := New[val](256, first)

	seqs := make([][]uint64, producers) // seqs[p][n] = sequence returned to producer p for its n-th value
	var wg sync.WaitGroup
	for p := range producers {
		seqs[p] = make([]uint64, perProducer)
		wg.Go(func() {
			for i := range perProducer {
				seq, err := r.Publish(context.Background(), val{uint32(p), uint32(i)})
				if err != nil {
					t.Errorf("producer %d: %v", p, err)
					return
				}
				seqs[p][i] = seq
			}
		})
	}

	type got struct {
		seq uint64
		v   val
	}
	received := make([]got, 0, producers*perProducer)
	next := make([]uint32, producers)
	want := uint64(first)
	for len(received) < producers*perProducer {
		if err := r.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		r.Consume(100, func(seq uint64, v val) {
			if seq != want {
				t.Fatalf("got seq %d, want %d", seq, want)
			}
			want++
			if v.n != next[v.producer] {
				t.Fatalf("producer %d: got value %d, want %d", v.producer, v.n, next[v.producer])
			}
			next[v.producer]++
			received = append(received, got{seq, v})
		})
	}
	wg.Wait()
	if n := r.Consume(1, func(uint64, val) {}); n != 0 {
		t.Fatalf("extra entry after all values were received")
	}
	for _, g := range received {
		if s := seqs[g.v.producer][g.v.n]; s != g.seq {
			t.Fatalf("producer %d value %d: Publish returned seq %d, consumer saw it as %d", g.v.producer, g.v.n, s, g.seq)
		}
	}
}

func TestConsumeZeroesSlots(t *testing.T) {
	r := New[*int](4, 1)
	for i := range 3 {
		if _, err := r.Publish(context.Background(), &i); err != nil {
			t.Fatal(err)
		}
	}
	if n := consumeAll(r, func(uint64, *int) {}); n != 3 {
		t.Fatalf("consumed %d, want 3", n)
	}
	for i := range r.slots {
		if r.slots[i].val != nil {
			t.Fatalf("slot %d still references its value after Consume", i)
		}
	}
}

func TestConsumeMax(t *testing.T) {
	r := New[int](8, 1)
	for i := range 5 {
		r.Publish(context.Background(), i)
	}
	if n := r.Consume(0, func(uint64, int) {}); n != 0 {
		t.Fatalf("Consume(0) = %d", n)
	}
	if n := r.Consume(2, func(uint64, int) {}); n != 2 {
		t.Fatalf("Consume(2) = %d", n)
	}
	if n := r.Consume(10, func(uint64, int) {}); n != 3 {
		t.Fatalf("Consume(10) = %d, want the remaining 3", n)
	}
	if n := r.Consume(10, func(uint64, int) {}); n != 0 {
		t.Fatalf("Consume on empty ring = %d", n)
	}
}

// TestConsumeStopsAtGap checks that an entry claimed but not yet published
// holds back the entries after it.
func TestConsumeStopsAtGap(t *testing.T) {
	r := New[int](8, 1)
	// Claim sequence 1 without publishing it, as a slow producer would.
	if !r.tail.CompareAndSwap(1, 2) {
		t.Fatal("claim failed")
	}
	r.Publish(context.Background(), 2)
	if n := r.Consume(10, func(uint64, int) {}); n != 0 {
		t.Fatalf("consumed %d entries past an unpublished one", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := r.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with a gap at head = %v, want deadline exceeded", err)
	}
	// Now the slow producer finishes.
	r.slots[1].val = 1
	r.slots[1].stamp.Store(1)
	var got []int
	consumeAll(r, func(_ uint64, v int) { got = append(got, v) })
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("got %v, want [1 2]", got)
	}
}

func TestFullRingBlocksAndResumes(t *testing.T) {
	r := New[int](4, 1)
	for i := range 4 {
		r.Publish(context.Background(), i)
	}
	type res struct {
		seq uint64
		err error
	}
	done := make(chan res, 2)
	for i := range 2 {
		go func() {
			seq, err := r.Publish(context.Background(), 100+i)
			done <- res{seq, err}
		}()
	}
	waitParked(t, func() bool { return r.producersParked.Load() == 2 })
	select {
	case <-done:
		t.Fatal("Publish returned while the ring was full")
	default:
	}
	if r.Len() != 4 {
		t.Fatalf("Len = %d while full", r.Len())
	}
	// Free one slot at a time: each should let exactly one producer through.
	seen := map[uint64]bool{}
	for range 2 {
		if n := r.Consume(1, func(uint64, int) {}); n != 1 {
			t.Fatalf("Consume = %d", n)
		}
		res := <-done
		if res.err != nil {
			t.Fatal(res.err)
		}
		seen[res.seq] = true
	}
	if !seen[5] || !seen[6] {
		t.Fatalf("blocked producers got sequences %v, want 5 and 6", seen)
	}
	var seqs []uint64
	consumeAll(r, func(seq uint64, _ int) { seqs = append(seqs, seq) })
	if len(seqs) != 4 || seqs[0] != 3 || seqs[3] != 6 {
		t.Fatalf("remaining sequences %v, want [3 4 5 6]", seqs)
	}
}

func TestPublishCancelWhileFull(t *testing.T) {
	r := New[int](2, 1)
	r.Publish(context.Background(), 0)
	r.Publish(context.Background(), 1)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := r.Publish(ctx, 99)
		errc <- err
	}()
	waitParked(t, func() bool { return r.producersParked.Load() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish after cancel = %v, want context.Canceled", err)
	}
	if r.Len() != 2 {
		t.Fatalf("cancelled Publish changed Len to %d", r.Len())
	}

	// Already-expired context: times out without claiming.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel2()
	if _, err := r.Publish(ctx2, 98); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish = %v, want deadline exceeded", err)
	}

	// No hole: the next publish gets the next sequence and the consumer
	// sees 1, 2, 3 contiguously.
	r.Consume(1, func(uint64, int) {})
	if seq, err := r.Publish(context.Background(), 2); err != nil || seq != 3 {
		t.Fatalf("Publish after cancel = %d, %v; want 3, nil", seq, err)
	}
	var got []int
	consumeAll(r, func(_ uint64, v int) { got = append(got, v) })
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("got %v, want [1 2]", got)
	}
}

func TestWaitParksAndWakes(t *testing.T) {
	r := New[int](8, 1)
	errc := make(chan error, 1)
	go func() { errc <- r.Wait(context.Background()) }()
	waitParked(t, func() bool { return r.consumerParked.Load() == 1 })
	r.Publish(context.Background(), 7)
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait not woken by Publish")
	}
	if n := consumeAll(r, func(uint64, int) {}); n != 1 {
		t.Fatalf("consumed %d", n)
	}
}

func TestWaitContext(t *testing.T) {
	r := New[int](8, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := r.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on empty ring = %v", err)
	}
	// A ready entry wins over a done context.
	r.Publish(context.Background(), 1)
	if err := r.Wait(ctx); err != nil {
		t.Fatalf("Wait with entry ready = %v", err)
	}
}

// TestWaitNoLostWakeup runs many rounds of a consumer that parks every time
// with a producer publishing one entry at a time, to shake out a lost
// wake-up between the consumer announcing it parks and the producer's check.
func TestWaitNoLostWakeup(t *testing.T) {
	const rounds = 20_000
	r := New[int](4, 1)
	ack := make(chan struct{})
	go func() {
		for i := range rounds {
			r.Publish(context.Background(), i)
			<-ack
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range rounds {
		if err := r.Wait(ctx); err != nil {
			t.Fatalf("Wait: %v (lost wake-up?)", err)
		}
		if n := r.Consume(1, func(uint64, int) {}); n != 1 {
			t.Fatalf("Wait returned with nothing to consume")
		}
		ack <- struct{}{}
	}
}

func TestClose(t *testing.T) {
	r := New[int](2, 1)
	r.Publish(context.Background(), 1)
	r.Publish(context.Background(), 2)

	// A producer blocked on the full ring is released with ErrClosed.
	errc := make(chan error, 1)
	go func() {
		_, err := r.Publish(context.Background(), 3)
		errc <- err
	}()
	waitParked(t, func() bool { return r.producersParked.Load() == 1 })
	r.Close()
	r.Close() // idempotent
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("blocked Publish after Close = %v, want ErrClosed", err)
	}
	if _, err := r.Publish(context.Background(), 4); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close = %v, want ErrClosed", err)
	}

	// Accepted entries are still delivered, then Wait reports ErrClosed.
	var got []int
	for {
		err := r.Wait(context.Background())
		if errors.Is(err, ErrClosed) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		r.Consume(10, func(_ uint64, v int) { got = append(got, v) })
	}
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("drained %v, want [1 2]", got)
	}
}

func TestCloseWakesParkedConsumer(t *testing.T) {
	r := New[int](8, 1)
	errc := make(chan error, 1)
	go func() { errc <- r.Wait(context.Background()) }()
	waitParked(t, func() bool { return r.consumerParked.Load() == 1 })
	r.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Wait")
	}
}

// TestCloseUnderLoad closes the ring while producers hammer it and checks
// that every Publish that returned a sequence is delivered, contiguously,
// before Wait reports ErrClosed.
func TestCloseUnderLoad(t *testing.T) {
	const producers = 4
	r := New[uint64](64, 1)
	accepted := make([][]uint64, producers)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for {
				seq, err := r.Publish(context.Background(), 0)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				accepted[p] = append(accepted[p], seq)
			}
		})
	}
	delivered := map[uint64]bool{}
	want := uint64(1)
	for {
		if want >= 5000 {
			r.Close()
		}
		err := r.Wait(context.Background())
		if errors.Is(err, ErrClosed) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		r.Consume(32, func(seq uint64, _ uint64) {
			if seq != want {
				t.Fatalf("got seq %d, want %d", seq, want)
			}
			want++
			delivered[seq] = true
		})
	}
	wg.Wait()
	n := 0
	for _, seqs := range accepted {
		for _, s := range seqs {
			n++
			if !delivered[s] {
				t.Fatalf("accepted seq %d never delivered", s)
			}
		}
	}
	if n != len(delivered) {
		t.Fatalf("accepted %d, delivered %d", n, len(delivered))
	}
}

func TestNoAllocs(t *testing.T) {
	type event struct{ id uint64 }
	r := New[*event](64, 1)
	ev := &event{}
	ctx := context.Background()
	var sink *event
	fn := func(_ uint64, v *event) { sink = v }
	allocs := testing.AllocsPerRun(1000, func() {
		r.Publish(ctx, ev)
		r.Consume(1, fn)
	})
	if allocs != 0 {
		t.Fatalf("Publish+Consume allocate %v times per event", allocs)
	}
	_ = sink
}

// TestWaitOrWakesOnSignal: the dispatcher parks on the ring and on its
// command queue at once; a token on wake must end the wait with nothing to
// consume, and a published entry must still end it with no token.
func TestWaitOrWakesOnSignal(t *testing.T) {
	r := New[int](8, 1)
	wake := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() { done <- r.WaitOr(context.Background(), wake) }()
	wake <- struct{}{}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitOr = %v after a wake token, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitOr did not return after a wake token")
	}
	if n := r.Consume(10, func(uint64, int) {}); n != 0 {
		t.Fatalf("consumed %d entries from an empty ring", n)
	}
	go func() { done <- r.WaitOr(context.Background(), wake) }()
	if _, err := r.Publish(context.Background(), 7); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitOr = %v after a publish, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitOr did not return after a publish")
	}
}
