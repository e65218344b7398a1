package engine

import (
	"context"
	"math"
	"slices"
	"time"
)

// How a connection's frames reach its socket.
//
// The dispatcher appends frames to the connection's queue (enqueue), in
// the order it produces them: message_id order. The event loop's flush
// writes them with as few writev calls as the socket allows, and only as
// far as the socket drains: once gnet's outbound buffer holds highWater
// bytes (the kernel's buffers are full), the rest stays queued as shared
// pointers instead of being copied. So:
//
//   - a connection whose socket drains gets every frame in message_id
//     order, however many arrive at once;
//   - frames that wait because the socket does not drain form the
//     backlog, and only the backlog is written by priority lane (critical,
//     then high, then normal; message_id order within a lane): a P0 does not
//     wait behind thousands of comments on a struggling link;
//   - the pending bounds (max-pending-messages, max-pending-bytes) count the
//     backlog and gnet's buffer, never frames that merely wait for the next
//     flush: a reader that keeps up survives any burst, and one that stops
//     reading is closed as a slow consumer, its memory bounded.

// highWater is how many bytes may sit in gnet's outbound buffer for one
// connection before its frames stay in its own queue instead.
const highWater = 64 << 10

// maxIovecs bounds one writev: the kernel refuses more than IOV_MAX (1024).
const maxIovecs = 512

// retryInterval is how often a loop looks again at connections that wait
// (a backlog, paused input, a lingering close): gnet does not report when
// a socket drained.
const retryInterval = 10 * time.Millisecond

// lingerTimeout bounds how long a connection closed after a takeover waits
// for its client to read what was already buffered for it.
const lingerTimeout = 5 * time.Second

// flushWork is one connection's part of a flush.
type flushWork struct {
	c            *conn
	start, end   int // its frames in loop.taken, in the order they are written
	written      int // how many of them were written
	writtenBytes int
}

// enqueue is called by the dispatcher: it appends frames to connection
// queues under the loop's lock and schedules one flush.
func (l *loop) enqueue(ds []delivery) {
	cfg := &l.eng.cfg
	l.mu.Lock()
	for _, d := range ds {
		c := d.c
		if c.gone || c.slow {
			continue
		}
		size := len(d.f.bytesFor(c.deflate))
		if c.backlog && (len(c.queue) >= cfg.MaxPendingMessages || int(c.outbound)+c.queuedBytes+size > cfg.MaxPendingBytes) {
			// The socket does not drain and the backlog is full. What the
			// connection misses is replayed if its client resumes.
			c.slow = true
		} else {
			c.queue = append(c.queue, d.f)
			c.queuedBytes += size
		}
		if !c.dirty {
			c.dirty = true
			l.dirty = append(l.dirty, c)
		}
	}
	l.scheduleLocked()
	l.mu.Unlock()
}

// scheduleLocked queues one flush on the loop unless one is queued already.
func (l *loop) scheduleLocked() {
	if l.scheduled || len(l.dirty) == 0 {
		return
	}
	l.scheduled = true
	if err := l.el.Execute(context.Background(), l.flushFn); err != nil {
		l.scheduled = false // the engine is shutting down
	}
}

// flush runs on the loop. It takes the dirty connections' queues under the
// lock, writes them outside it, then puts back under the lock what the
// sockets did not take. force writes everything, draining or not (at
// shutdown, when nothing else will).
func (l *loop) flush(force bool) {
	cfg := &l.eng.cfg
	l.mu.Lock()
	l.scheduled = false
	dirty := l.dirty
	l.dirty = l.spare[:0]
	for _, c := range dirty {
		c.dirty = false
		switch {
		case c.gone:
		case c.slow:
			l.slow = append(l.slow, c)
		case !force && c.gc.OutboundBuffered() >= highWater:
			// Not draining: what is queued is a backlog, held to the
			// pending bounds from now on, and looked at again on the
			// retry tick.
			c.backlog = true
			l.wait(c)
		default:
			start := len(l.taken)
			if c.backlog {
				l.taken = appendByLane(l.taken, c.queue)
			} else {
				l.taken = append(l.taken, c.queue...)
			}
			clear(c.queue)
			c.queue = c.queue[:0]
			l.work = append(l.work, flushWork{c: c, start: start, end: len(l.taken)})
		}
	}
	l.mu.Unlock()
	l.spare = dirty[:0]

	now := time.Now().UnixNano()
	var sent, events int
	if l.ring != nil {
		sent, events = l.writeBatched(now)
	}
	for i := range l.work {
		s, e := l.write(&l.work[i], force, now)
		sent += s
		events += e
	}

	wake := false
	l.mu.Lock()
	for i := range l.work {
		w := &l.work[i]
		c := w.c
		if c.gone {
			continue
		}
		frames := l.taken[w.start:w.end]
		rest := frames[w.written:]
		l.noteWrites(c, frames[:w.written], rest)
		c.queuedBytes -= w.writtenBytes
		c.backlog = len(rest) > 0
		if c.backlog {
			c.queue = slices.Insert(c.queue, 0, rest...)
		} else if len(c.queue) == 0 {
			c.queue = shrink(c.queue)
		}
		c.outbound = int32(min(c.gc.OutboundBuffered(), math.MaxInt32))
		if c.backlog {
			if len(c.queue) > cfg.MaxPendingMessages || int(c.outbound)+c.queuedBytes > cfg.MaxPendingBytes {
				c.slow = true
				l.slow = append(l.slow, c)
			} else {
				l.wait(c)
			}
		}
		wake = wake || c.replaying
		welcomed := w.written > 0 && !c.welcomed // the welcome is the first frame queued
		if welcomed {
			c.welcomed = true
		}
		if welcomed || c.readPaused {
			l.resumed = append(l.resumed, c) // input may wait for this
		}
	}
	l.mu.Unlock()

	if wake {
		// A replaying session's queue has room again: let its pump go on.
		l.eng.disp.cmds.push(command{kind: cmdWake})
	}
	for _, c := range l.slow {
		c.closeSlow()
	}
	for _, c := range l.resumed {
		c.readInbound()
	}
	clear(l.taken)
	l.taken = l.taken[:0]
	clear(l.work)
	l.work = l.work[:0]
	clear(l.slow)
	l.slow = l.slow[:0]
	clear(l.resumed)
	l.resumed = l.resumed[:0]
	clear(l.iov)
	m := l.eng.metrics
	m.messagesSent.Add(sent)
	m.eventsDelivered.Add(events)
}

// write writes w's frames, in order, while the socket drains: one writev
// of up to maxIovecs frames and about highWater bytes at a time, as long as
// gnet's outbound buffer stays under highWater.
func (l *loop) write(w *flushWork, force bool, now int64) (sent, events int) {
	c := w.c
	frames := l.taken[w.start:w.end]
	budget := highWater - c.gc.OutboundBuffered()
	for w.written < len(frames) && !c.closed && (force || budget > 0) {
		l.iov = l.iov[:0]
		size := 0
		for _, f := range frames[w.written:] {
			if len(l.iov) == maxIovecs || (len(l.iov) > 0 && !force && size >= budget) {
				break
			}
			b := f.bytesFor(c.deflate)
			l.iov = append(l.iov, b)
			size += len(b)
		}
		if len(l.iov) == 1 {
			_, _ = c.gc.Write(l.iov[0])
		} else {
			_, _ = c.gc.Writev(l.iov)
		}
		s, e := l.wrote(w, len(l.iov), size, now)
		sent += s
		events += e
		if c.closed {
			break // the write failed and gnet closed the connection
		}
		budget = highWater - c.gc.OutboundBuffered()
	}
	return sent, events
}

// wrote accounts for the next n frames of w, size bytes, handed to the
// socket (or to gnet's buffer for it).
func (l *loop) wrote(w *flushWork, n, size int, now int64) (sent, events int) {
	for _, f := range l.taken[w.start+w.written : w.start+w.written+n] {
		if f.id != 0 {
			events++
			l.latency.observe(now - f.accepted)
		}
	}
	w.written += n
	w.writtenBytes += size
	return n, events
}

// noteWrites tells c's ack ledger the order its frames were written in.
// The owed ids still unwritten when a frame went out are the frames
// written after it and those left queued (rest); frames the dispatcher
// queues later are newer, but for backfills, which the ledger covers
// itself (ackLedger.backfill).
func (l *loop) noteWrites(c *conn, written, rest []*outFrame) {
	if len(rest) == 0 {
		// The common case, a socket that drains: everything went out in
		// message_id order, so no frame overtook another.
		var last uint64
		for _, f := range written {
			if f.id != 0 {
				if f.id < last {
					last = 0
					break
				}
				last = f.id
			}
		}
		if last != 0 {
			c.acks.maxWritten = max(c.acks.maxWritten, last)
			return
		}
	}
	var low uint64 // 0: none
	for _, f := range rest {
		if f.id != 0 && (low == 0 || f.id < low) {
			low = f.id
		}
	}
	lows := slices.Grow(l.lows[:0], len(written))[:len(written)]
	for i := len(written) - 1; i >= 0; i-- {
		lows[i] = low
		if id := written[i].id; id != 0 && (low == 0 || id < low) {
			low = id
		}
	}
	for i, f := range written {
		if f.id != 0 {
			c.acks.wrote(f.id, lows[i])
		}
	}
	l.lows = lows
}

// appendByLane appends q's frames to dst by lane, most urgent first,
// keeping their order within a lane.
func appendByLane(dst, q []*outFrame) []*outFrame {
	for lane := uint8(laneCritical); lane <= laneNormal; lane++ {
		for _, f := range q {
			if f.lane == lane {
				dst = append(dst, f)
			}
		}
	}
	return dst
}

// shrink lets a queue that grew large during a burst go back to the GC, so
// an idle connection does not keep the capacity of its busiest moment.
func shrink(q []*outFrame) []*outFrame {
	if cap(q) > dispatchBatch { // a busy connection keeps one batch's worth
		return nil
	}
	return q[:0]
}
