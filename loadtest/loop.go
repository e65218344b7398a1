package loadtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/flarecast/flarecast/internal/uring"
)

// The loop engine (Config.ClientEngine "loop") receives on a handful of
// epoll loops, GOMAXPROCS of them, instead of one goroutine per connection.
//
// A goroutine per connection pays, per delivery, a read that finds the
// message, a read that finds nothing (EAGAIN), a park and, when the process
// was idle, a wake-up through the netpoller; a loop pays one read per ready
// socket, and one wake-up for all the sockets one epoll poll reports.
// Frames are parsed in the loop's buffer and handed to the same handle as
// the goroutine engine's, so the accounting is the same code. On the 2-core
// development VM this is about 1.2–1.5× less CPU per delivery, not more:
// the read itself costs 3–4.5 µs there (the ACK it sends on loopback
// included), and waking the process costs more than the rest (see the
// README's Performance section).
//
// Connection set-up stays blocking (connect: dial, handshake, welcome,
// subscribe, in its own goroutine); once subscribed, the connection's
// descriptor is duplicated, the net.Conn closed (leaving Go's netpoller)
// and the duplicate enrolled in a loop. The chaos and soak sessions need
// resume and ack logic around reconnects, so they keep the goroutine engine.

// loopReadBuf is each loop's read buffer: every ready socket is read into it
// in turn, so its size bounds one read, not memory per connection.
const loopReadBuf = 64 << 10

// loopEngine is the set of event loops of one run.
type loopEngine struct {
	r        *runner
	loops    []*eventLoop
	next     atomic.Uint32
	wg       sync.WaitGroup
	stopOnce sync.Once
	// procs: the GOMAXPROCS to restore at stop, when the uring engine
	// raised it (loop_uring.go); 0 otherwise. coalesce: the uring loops'
	// pause after each batch (--client-coalesce).
	procs    int
	coalesce time.Duration
}

// eventLoop is one epoll loop and the connections enrolled in it. Only its
// goroutine touches conns, free, buf and plain, and the clients it holds,
// until it has exited.
type eventLoop struct {
	e      *loopEngine
	idx    int
	epfd   int
	wakefd int // an eventfd: connections enrolled, or stop
	stop   atomic.Bool

	mu       sync.Mutex
	incoming []loopConn // enrolled, not yet registered by the loop

	conns  []loopConn // by slot (the epoll event's data)
	free   []int32
	epf    *os.File        // epfd, for Go's netpoller: run waits on it
	rc     syscall.RawConn // of epf
	events []unix.EpollEvent
	buf    []byte
	plain  []byte // an inflated message that is not a cached event

	full bool // a read filled its buffer: the socket may hold more

	// ring: the uring engine's receive ring (loop_uring.go), in place of
	// epfd; nil with the epoll loop. gen tells a connection's completions
	// from those of the slot's previous occupant.
	ring   *uring.RecvRing
	gen    uint32
	rearms int // multishot receives that ended and were armed again
}

// loopConn is one enrolled connection.
type loopConn struct {
	c    *client
	fd   int
	pend []byte // the start of a frame the last read ended inside of
	// frag: inside a fragmented message, whose start is in c.msg.
	frag, fragCompressed bool
	// gen and armed: the uring engine's multishot receive, its user data's
	// generation and whether it is armed (loop_uring.go).
	gen   uint32
	armed bool
}

// wakeSlot marks the eventfd's epoll events.
const wakeSlot = -1

// loopOpts: ring selects io_uring loops (loop_uring.go) instead of epoll
// loops; coalesce is their --client-coalesce.
type loopOpts struct {
	ring     bool
	coalesce time.Duration
}

// newLoopEngine starts n loops: epoll loops, or with opts.ring io_uring
// loops, whose error then wraps errRingRefused when the kernel would not
// set up a ring.
func newLoopEngine(r *runner, n int, opts loopOpts) (*loopEngine, error) {
	e := &loopEngine{r: r, coalesce: opts.coalesce}
	if opts.ring {
		e.reserveProcs(n)
	}
	for i := range n {
		l := &eventLoop{e: e, idx: i, epfd: -1, wakefd: -1}
		if opts.ring {
			if err := l.startRing(); err != nil {
				l.closeFDs()
				e.stop()
				return nil, err
			}
			e.loops = append(e.loops, l)
			continue
		}
		l.events, l.buf = make([]unix.EpollEvent, 256), make([]byte, loopReadBuf)
		var err error
		if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err == nil {
			if l.wakefd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err == nil {
				err = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, l.wakefd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeSlot})
			}
		}
		if err == nil {
			// Non-blocking, so that os.NewFile puts it in the netpoller.
			if err = unix.SetNonblock(l.epfd, true); err == nil {
				l.epf = os.NewFile(uintptr(l.epfd), "epoll")
				l.rc, err = l.epf.SyscallConn()
			}
		}
		if err != nil {
			l.closeFDs()
			e.stop()
			return nil, fmt.Errorf("event loop: %w", err)
		}
		e.loops = append(e.loops, l)
		e.wg.Add(1)
		go l.run()
	}
	return e, nil
}

// loopCount is how many loops a run uses: one per CPU the process may run on.
func loopCount() int { return runtime.GOMAXPROCS(0) }

// enroll hands a subscribed client's connection to a loop. The client's
// goroutine is done with it afterwards.
func (e *loopEngine) enroll(c *client) error {
	fd, rest, err := c.detach()
	if err != nil {
		return err
	}
	l := e.loops[int(e.next.Add(1))%len(e.loops)]
	// Under mu, so that no wake-up is written once the loop has stopped.
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop.Load() {
		unix.Close(fd)
		return errors.New("the run is over")
	}
	l.incoming = append(l.incoming, loopConn{c: c, fd: fd, pend: rest})
	l.wake()
	return nil
}

// stop ends every loop, closing its connections, and waits for them.
func (e *loopEngine) stop() {
	e.stopOnce.Do(func() {
		for _, l := range e.loops {
			l.mu.Lock()
			if !l.stop.Load() {
				l.stop.Store(true)
				l.wake()
			}
			l.mu.Unlock()
		}
		e.wg.Wait()
		// Only now: nothing writes to the eventfds any more.
		for _, l := range e.loops {
			l.closeFDs()
		}
		e.restoreProcs()
	})
}

func (l *eventLoop) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(l.wakefd, one[:])
}

// detach takes the client's connection out of Go's netpoller: it returns a
// duplicate of its (non-blocking) descriptor and the bytes already read
// past the subscribed reply, and closes the net.Conn.
func (c *client) detach() (int, []byte, error) {
	c.mu.Lock()
	conn := c.conn
	c.conn = nil // end() has nothing to close: the loop owns the socket
	c.mu.Unlock()
	if conn == nil {
		return -1, nil, errors.New("no connection")
	}
	defer conn.Close()
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, nil, fmt.Errorf("%T has no descriptor", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, nil, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, nil, err
	}
	if derr != nil {
		return -1, nil, fmt.Errorf("dup: %w", derr)
	}
	var rest []byte
	if n := c.r.Buffered(); n > 0 {
		b, _ := c.r.Peek(n)
		rest = append(rest, b...)
	}
	if c.pre != nil {
		rest = append(rest, c.pre.prefix...)
	}
	c.r, c.pre = nil, nil
	return fd, rest, nil
}

// run waits for ready sockets through Go's own netpoller: the loop's epoll
// descriptor is itself pollable, so instead of blocking in epoll_wait (a
// blocking system call: the runtime hands the P to another thread, and
// sysmon wakes every 20 µs to do so, which in a profile cost more than the
// reads) the goroutine polls its epoll without waiting and parks like any
// reader when nothing is ready.
func (l *eventLoop) run() {
	defer l.e.wg.Done()
	defer l.closeAll()
	var err error
	poll := func(uintptr) bool {
		for !l.stop.Load() {
			var n int
			n, err = epollPoll(l.epfd, l.events)
			if err != nil {
				if err == unix.EINTR {
					continue
				}
				return true
			}
			if n == 0 {
				return false // park until the epoll descriptor is readable
			}
			l.full = false
			for _, ev := range l.events[:n] {
				if ev.Fd == wakeSlot {
					l.register()
					continue
				}
				l.read(ev.Fd)
			}
			if n < len(l.events) && !l.full {
				// Every ready socket was read dry: park now rather than
				// poll again to hear "nothing" (a system call per wake-up).
				// Go's netpoller watches the epoll descriptor edge-
				// triggered, but any data arriving after those reads wakes
				// this epoll's pollers again, so nothing is missed.
				return false
			}
			// More may be waiting: poll again, but let the publisher and
			// the other goroutines run first. On one P, a loop that never
			// parks would hold them off until preempted (10 ms), and an
			// event stamped but not yet written counts that as latency.
			runtime.Gosched()
		}
		return true
	}
	if rerr := l.rc.Read(poll); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil && !l.stop.Load() {
		l.e.r.warn("event loop %d: epoll_wait: %v", l.idx, err)
	}
}

// epollPoll returns the ready events without waiting. A raw system call:
// it cannot block.
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// register adds the connections enrolled since the last wake-up.
func (l *eventLoop) register() {
	var b [8]byte
	_, _ = unix.Read(l.wakefd, b[:])
	l.mu.Lock()
	in := l.incoming
	l.incoming = nil
	l.mu.Unlock()
	for _, lc := range in {
		var slot int32
		if k := len(l.free); k > 0 {
			slot, l.free = l.free[k-1], l.free[:k-1]
			l.conns[slot] = lc
		} else {
			slot = int32(len(l.conns))
			l.conns = append(l.conns, lc)
		}
		if l.ring != nil {
			l.gen++
			l.conns[slot].gen = l.gen
			l.arm(slot)
		} else if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, lc.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: slot}); err != nil {
			l.close(slot, "epoll_ctl: "+err.Error())
			continue
		}
		if len(lc.pend) > 0 {
			// Frames the handshake read ahead: parse them now, the socket
			// may have nothing more to say for a while.
			l.parse(slot, l.conns[slot].pend, true, l.e.r.now())
		}
	}
}

// read takes what one ready socket has and accounts for its complete
// frames. In the steady state (whole frames in one read) it allocates
// nothing: the frames are parsed in the loop's buffer.
func (l *eventLoop) read(slot int32) {
	lc := &l.conns[slot]
	if lc.c == nil {
		return
	}
	var data []byte
	inPend := len(lc.pend) > 0
	if !inPend {
		n, err := readNB(lc.fd, l.buf)
		if n <= 0 {
			l.readFailed(slot, err)
			return
		}
		l.full = l.full || n == len(l.buf)
		data = l.buf[:n]
	} else {
		// A frame straddles reads: append to its start.
		if cap(lc.pend)-len(lc.pend) < 16<<10 {
			lc.pend = append(lc.pend, make([]byte, 32<<10)...)[:len(lc.pend)]
		}
		n, err := readNB(lc.fd, lc.pend[len(lc.pend):cap(lc.pend)])
		if n <= 0 {
			l.readFailed(slot, err)
			return
		}
		l.full = l.full || n == cap(lc.pend)-len(lc.pend)
		data = lc.pend[:len(lc.pend)+n]
	}
	l.parse(slot, data, inPend, l.e.r.now())
}

func (l *eventLoop) readFailed(slot int32, err error) {
	switch {
	case err == nil:
		l.close(slot, "EOF")
	case err == unix.EAGAIN:
		// Spurious: nothing to read.
	case err == unix.EINTR:
		l.full = true // not read dry: poll again before parking
	default:
		l.close(slot, err.Error())
	}
}

// readNB reads a non-blocking socket. A raw system call: it cannot block,
// so the runtime's entering and leaving a blocking call would only cost.
func readNB(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

// parse accounts for the complete frames in data (the loop's buffer, or the
// connection's pend when inPend), received at now, and keeps an incomplete
// last frame in pend.
func (l *eventLoop) parse(slot int32, data []byte, inPend bool, now int64) {
	lc := &l.conns[slot]
	off, err := l.frames(lc, data, now)
	if err != nil {
		l.close(slot, err.Error())
		return
	}
	rest := data[off:]
	switch {
	case len(rest) == 0:
		lc.pend = lc.pend[:0]
	case inPend:
		lc.pend = lc.pend[:copy(lc.pend[:cap(lc.pend)], rest)] // shift the rest down
	default:
		lc.pend = append(lc.pend[:0], rest...)
	}
}

// frames handles the complete frames at the start of data and returns how
// many bytes they took. Server frames are never masked.
func (l *eventLoop) frames(lc *loopConn, data []byte, now int64) (int, error) {
	c, r := lc.c, l.e.r
	off := 0
	for {
		b := data[off:]
		if len(b) < 2 {
			return off, nil
		}
		fin, rsv1, op := b[0]&0x80 != 0, b[0]&0x40 != 0, ws.OpCode(b[0]&0x0f)
		if b[1]&0x80 != 0 {
			return off, errors.New("protocol error: masked server frame")
		}
		size, hdr := uint64(b[1]&0x7f), 2
		switch size {
		case 126:
			if len(b) < 4 {
				return off, nil
			}
			size, hdr = uint64(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				return off, nil
			}
			size, hdr = binary.BigEndian.Uint64(b[2:]), 10
		}
		if size > maxMessage {
			return off, fmt.Errorf("frame of %d bytes", size)
		}
		end := hdr + int(size)
		if len(b) < end {
			return off, nil
		}
		payload := b[hdr:end]
		off += end
		if op.IsControl() {
			if !fin || size > 125 {
				return off, errors.New("protocol error: malformed control frame")
			}
			switch op {
			case ws.OpPing:
				c.out = appendClientFrame(c.out[:0], true, ws.OpPong, payload)
				// A pong is a few bytes on a socket the server is writing
				// to, not reading from: it fits, or the socket is gone.
				if _, err := unix.Write(lc.fd, c.out); err != nil && err != unix.EAGAIN {
					return off, err
				}
			case ws.OpClose:
				code, reason := ws.ParseCloseFrameData(payload)
				return off, &errClosed{code: code, reason: reason}
			}
			continue
		}
		if !lc.frag {
			if op == ws.OpContinuation {
				return off, errors.New("protocol error: continuation without a message")
			}
			if fin {
				c.handle(r, payload, rsv1, now, &l.plain, l.idx)
				continue
			}
			lc.frag, lc.fragCompressed = true, rsv1
			c.msg = append(c.msg[:0], payload...)
			continue
		}
		if op != ws.OpContinuation {
			return off, errors.New("protocol error: new message inside a fragmented one")
		}
		if len(c.msg)+len(payload) > maxMessage {
			return off, fmt.Errorf("message over %d bytes", maxMessage)
		}
		c.msg = append(c.msg, payload...)
		if fin {
			lc.frag = false
			c.handle(r, c.msg, lc.fragCompressed, now, &l.plain, l.idx)
		}
	}
}

// close ends one connection; before the run's end it counts as dropped,
// as in the goroutine engine.
func (l *eventLoop) close(slot int32, why string) {
	lc := &l.conns[slot]
	r := l.e.r
	if !r.closing.Load() && !l.stop.Load() {
		if lc.c.closeNote == "" {
			lc.c.closeNote = why
		}
		r.dropped.Add(1)
	}
	if l.ring != nil {
		l.disarm(slot)
	} else {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, lc.fd, nil)
	}
	unix.Close(lc.fd)
	*lc = loopConn{fd: -1}
	l.free = append(l.free, slot)
}

func (l *eventLoop) closeAll() {
	l.mu.Lock()
	l.stop.Store(true)
	in := l.incoming
	l.incoming = nil
	l.mu.Unlock()
	for _, lc := range in {
		unix.Close(lc.fd)
	}
	for i := range l.conns {
		if l.conns[i].c != nil {
			unix.Close(l.conns[i].fd)
			l.conns[i] = loopConn{fd: -1}
		}
	}
}

func (l *eventLoop) closeFDs() {
	switch {
	case l.epf != nil:
		l.epf.Close()
		l.epf, l.epfd = nil, -1
	case l.epfd >= 0:
		unix.Close(l.epfd)
		l.epfd = -1
	}
	if l.wakefd >= 0 {
		unix.Close(l.wakefd)
		l.wakefd = -1
	}
}
