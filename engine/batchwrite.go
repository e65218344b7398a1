package engine

import (
	"github.com/flarecast/flarecast/internal/uring"
)

// Batched writes (--io-uring). At fan-out a loop's flush is one write(2)
// per connection, each a trip into the kernel; with io_uring the flush
// hands the kernel every connection's frame at once, in one
// io_uring_enter. Only the common case goes this way: a connection with
// one frame to write and nothing in gnet's outbound buffer (so that a
// direct write to its socket cannot overtake bytes gnet holds). What the
// kernel does not take (a short write, -EAGAIN, an error) goes to gnet's
// Write as if the ring had not been there: gnet buffers the rest, or sees
// the error and closes the connection. Connections with several frames
// keep writev, which already amortises the trip.

// openRing gives loop l its ring when --io-uring asks for one; where
// io_uring is missing or refused (old kernels, Docker's default seccomp
// profile), the loop keeps write(2) and says so once.
func (l *loop) openRing() {
	if !l.eng.cfg.IOURing {
		return
	}
	r, err := uring.New(4096)
	if err != nil {
		l.eng.sayRingRefused(err)
		return
	}
	l.ring = r
	l.eng.metrics.uringLoops.Add(1)
}

// probeRing tells at start, not at the first connection (a loop is made
// with its first), whether io_uring is refused here.
func (e *Engine) probeRing() {
	if !e.cfg.IOURing {
		return
	}
	r, err := uring.New(1)
	if err != nil {
		e.sayRingRefused(err)
		return
	}
	_ = r.Close()
}

func (e *Engine) sayRingRefused(err error) {
	e.ringRefused.Do(func() {
		// Info, not a warning: in containers this is the usual case.
		e.log.Info("io_uring is not available here (seccomp, kernel.io_uring_disabled or an old kernel); the event loops write with write(2), flarecast_io_uring_loops stays 0", "err", err)
	})
}

// closeRing releases the loop's ring once the loop has stopped.
func (l *loop) closeRing() {
	if l.ring != nil {
		_ = l.ring.Close()
		l.ring = nil
		l.eng.metrics.uringLoops.Add(-1)
	}
}

// writeBatched writes, through the ring, the flush's single frames to
// connections whose gnet buffer is empty, and accounts for them as write
// does; l.write then finds them done.
func (l *loop) writeBatched(now int64) (sent, events int) {
	picked := l.picked[:0]
	for i := range l.work {
		w := &l.work[i]
		c := w.c
		if w.end-w.start != 1 || c.closed || c.gc.OutboundBuffered() != 0 {
			continue
		}
		l.ring.QueueWrite(c.gc.Fd(), l.taken[w.start].bytesFor(c.deflate))
		picked = append(picked, i)
	}
	l.picked = picked
	if len(picked) == 0 {
		return 0, 0
	}
	res, err := l.ring.Submit()
	if err != nil {
		// The ring is unusable; later flushes use write(2).
		l.eng.log.Error("--io-uring: submitting a flush failed; writing with write(2) from now on", "err", err)
		defer l.closeRing()
	}
	for k, i := range picked {
		w := &l.work[i]
		c := w.c
		b := l.taken[w.start].bytesFor(c.deflate)
		switch n := int(res[k]); {
		case err != nil && n < 0:
			// Written or not, nobody knows: writing it again could put
			// the frame on the wire twice, mid-stream. Close instead; the
			// session resumes from what its acks prove.
			_ = c.gc.Close()
		case n < len(b):
			_, _ = c.gc.Write(b[max(n, 0):])
		}
		s, e := l.wrote(w, 1, len(b), now)
		sent += s
		events += e
	}
	return sent, events
}
