package loadtest

import (
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flarecast/flarecast/internal/uring"
)

// The uring engine (Config.ClientEngine "uring") is the loop engine with
// io_uring in place of epoll and read(2): each loop owns a ring, set up
// single-issuer with deferred task running, a ring of provided buffers, and
// one multishot receive per connection. A socket's arriving bytes queue
// work on the ring; one io_uring_enter runs the receives of every socket
// that woke up, and the loop parses the completions' buffers with the same
// frame parsing and accounting (parse, frames, handle) as the epoll loop.
//
// Deferred task running ties the ring to one thread: the loop's goroutine
// is locked to its OS thread for its whole life (and the thread exits with
// it), and it waits inside io_uring_enter (min_complete 1, a blocking
// system call). It cannot park in Go's netpoller as the epoll loop does:
// on 6.18 a receive that wakes up while nobody is in io_uring_enter makes
// the ring's descriptor poll readable but wakes no poller (an epoll
// waiting on it sleeps on), and a registered eventfd is signalled only
// after an RCU grace period (13 ms on the development VM).

// errRingRefused wraps the error of a kernel that would not set up a ring
// (io_uring missing, disabled, or lacking a feature): the run falls back
// to the epoll loop.
var errRingRefused = errors.New("io_uring refused")

// The receive ring's provided buffers: a completion takes one whole buffer
// whatever it holds (a fan-out message is a few hundred bytes), and a
// buffer is busy only from the Enter that fills it to the Reap after (one
// Enter runs at most 20 receives). Variables for the tests, which shrink
// them to split frames across buffers and run out of them.
var (
	uringBufSize = 4 << 10
	uringBufs    = 1024
)

// User data of the ring's requests: the kind in the top byte, then the
// connection's generation and slot.
const (
	udRecv   = 0
	udWake   = 1
	udCancel = 2
)

func recvUD(slot int32, gen uint32) uint64 {
	return udRecv<<56 | uint64(gen&0xffffff)<<32 | uint64(uint32(slot))
}

// reserveProcs: with the uring engine, GOMAXPROCS is raised by one per
// loop. A loop waits inside io_uring_enter, a blocking system call that
// keeps its P; with no idle P left (GOMAXPROCS 1 under taskset -c 1),
// sysmon retakes that P for the publisher every time, polling every 20 µs
// to do so (about a fifth of the load tester's samples in a profile). With
// a spare P per loop, sysmon backs off and the loop's thread mostly finds
// its P still waiting when the kernel wakes it: 7.6–8.2 µs per delivery
// against 9.2–10.0 without, alternated on the development VM.
func (e *loopEngine) reserveProcs(loops int) {
	e.procs = runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(e.procs + loops)
}

func (e *loopEngine) restoreProcs() {
	if e.procs > 0 {
		runtime.GOMAXPROCS(e.procs)
	}
}

// startRing starts the loop's goroutine, which sets up the ring on its own
// thread, and waits for the outcome.
func (l *eventLoop) startRing() error {
	var err error
	if l.wakefd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return fmt.Errorf("event loop: %w", err)
	}
	ready := make(chan error, 1)
	l.e.wg.Add(1)
	go l.runRing(ready)
	return <-ready
}

func (l *eventLoop) runRing(ready chan<- error) {
	defer l.e.wg.Done()
	// Never unlocked: the ring answers only this thread, which exits with
	// the goroutine.
	runtime.LockOSThread()
	ring, err := uring.NewRecv(uring.RecvConfig{Entries: 512, BufSize: uringBufSize, Bufs: uringBufs})
	if err != nil {
		ready <- fmt.Errorf("%w: %w", errRingRefused, err)
		return
	}
	defer ring.Close() // after closeAll: cancels what is still armed
	if err = ring.PollIn(l.wakefd, udWake<<56); err == nil {
		err = ring.Enter(false)
	}
	if err != nil {
		ready <- fmt.Errorf("event loop: %w", err)
		return
	}
	l.ring = ring
	ready <- nil
	defer l.closeAll()
	coalesce := l.e.coalesce.Nanoseconds()
	pause := unix.NsecToTimespec(coalesce)
	for !l.stop.Load() && err == nil {
		start := time.Now()
		err = ring.Enter(true)
		waited := time.Since(start).Nanoseconds()
		if err == nil {
			l.reap()
		}
		// Traffic is dense when the wait ended within the pause: then let
		// the rest of the burst arrive before waiting again (no receive
		// wakes this thread outside io_uring_enter, so the next Enter
		// takes everything that came meanwhile, one wake-up for all).
		// After a longer wait, sparse traffic, a pause would only be a
		// second wake-up per delivery.
		if coalesce > 0 && waited < coalesce && !ring.Work() {
			_ = unix.Nanosleep(&pause, nil)
		}
	}
	if err != nil && !l.stop.Load() {
		l.e.r.warn("event loop %d: %v", l.idx, err)
	}
}

// reap takes the ready completions.
func (l *eventLoop) reap() int {
	return l.ring.Reap(l.complete)
}

func (l *eventLoop) complete(c *uring.Completion) {
	switch c.UserData >> 56 {
	case udWake:
		l.register()
		if !c.More {
			if err := l.ring.PollIn(l.wakefd, udWake<<56); err != nil {
				l.e.r.warn("event loop %d: %v", l.idx, err)
			}
		}
		return
	case udCancel:
		return
	}
	slot, gen := int32(uint32(c.UserData)), uint32(c.UserData>>32)&0xffffff
	if int(slot) >= len(l.conns) {
		return
	}
	lc := &l.conns[slot]
	if lc.c == nil || lc.gen&0xffffff != gen {
		return // the slot's previous connection: closed, its receive cancelled
	}
	if !c.More {
		lc.armed = false
	}
	switch {
	case c.Res > 0:
		if len(lc.pend) == 0 {
			l.parse(slot, c.Buf, false, l.e.r.now())
		} else {
			// A frame straddles receives: append to its start.
			lc.pend = append(lc.pend, c.Buf...)
			l.parse(slot, lc.pend, true, l.e.r.now())
		}
		if lc.c == nil {
			return // parse closed it
		}
	case c.Res == 0:
		l.close(slot, "EOF")
		return
	case c.Res == -int32(unix.ENOBUFS), c.Res == -int32(unix.EINTR), c.Res == -int32(unix.EAGAIN):
		// Out of buffers (they are back once this Reap ends) or
		// interrupted: the bytes wait in the socket for the receive
		// armed again below.
	default:
		l.close(slot, syscall.Errno(-c.Res).Error())
		return
	}
	if !lc.armed {
		// The multishot receive ended (out of buffers, or the completion
		// queue was full): arm it again.
		l.rearms++
		l.arm(slot)
	}
}

// arm queues a multishot receive for the connection in slot.
func (l *eventLoop) arm(slot int32) {
	lc := &l.conns[slot]
	if err := l.ring.Recv(lc.fd, recvUD(slot, lc.gen)); err != nil {
		l.close(slot, err.Error())
		return
	}
	lc.armed = true
}

// disarm cancels the connection's receive, which otherwise keeps its
// socket open after close(2).
func (l *eventLoop) disarm(slot int32) {
	lc := &l.conns[slot]
	if !lc.armed {
		return
	}
	lc.armed = false
	if err := l.ring.Cancel(recvUD(slot, lc.gen), udCancel<<56); err != nil {
		l.e.r.warn("event loop %d: cancel: %v", l.idx, err)
	}
}
