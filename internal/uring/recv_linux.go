//go:build linux

package uring

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// More kernel ABI (include/uapi/linux/io_uring.h), for RecvRing.
const (
	opPollAdd     = 6  // IORING_OP_POLL_ADD
	opAsyncCancel = 14 // IORING_OP_ASYNC_CANCEL
	opRecv        = 27 // IORING_OP_RECV

	sqeBufferSelect = 1 << 5 // IOSQE_BUFFER_SELECT
	recvMultishot   = 1 << 1 // IORING_RECV_MULTISHOT, in sqe.ioprio
	pollAddMulti    = 1 << 0 // IORING_POLL_ADD_MULTI, in sqe.len

	setupCQSize       = 1 << 3  // IORING_SETUP_CQSIZE
	setupTaskrunFlag  = 1 << 9  // IORING_SETUP_TASKRUN_FLAG
	setupSingleIssuer = 1 << 12 // IORING_SETUP_SINGLE_ISSUER
	setupDeferTaskrun = 1 << 13 // IORING_SETUP_DEFER_TASKRUN

	sqCQOverflow = 1 << 1 // IORING_SQ_CQ_OVERFLOW
	sqTaskrun    = 1 << 2 // IORING_SQ_TASKRUN

	cqeFBuffer     = 1 << 0 // IORING_CQE_F_BUFFER
	cqeFMore       = 1 << 1 // IORING_CQE_F_MORE
	cqeBufferShift = 16     // IORING_CQE_BUFFER_SHIFT

	registerPbufRing = 22 // IORING_REGISTER_PBUF_RING

	maxBufs = 1 << 15 // a provided buffer ring holds at most 32768 entries
)

// bufReg is struct io_uring_buf_reg.
type bufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid        uint16
	flags       uint16
	resv        [3]uint64
}

var (
	_ [40 - unsafe.Sizeof(bufReg{})]struct{}
	_ [unsafe.Sizeof(bufReg{}) - 40]struct{}
)

// RecvConfig sizes a RecvRing.
type RecvConfig struct {
	// Entries is the submission queue's size: how many requests (receives
	// armed, cancels) can be queued between two Enters before Queue*
	// submits on its own. Default 256.
	Entries int
	// CQEntries is the completion queue's size; a multishot receive that
	// finds it full ends (a completion without More), and the caller arms
	// it again. Default 8 × Entries, at least 4096.
	CQEntries int
	// BufSize and Bufs are the provided buffers one completion's bytes are
	// received into: Bufs (a power of two, at most 32768) buffers of
	// BufSize bytes. Defaults 4096 and 4096. When all are in use until the
	// next Reap, receives end with -ENOBUFS.
	BufSize, Bufs int
}

// RecvRing receives from many sockets with one multishot receive each and a
// ring of provided buffers: one Enter runs every pending receive and one
// Reap hands over their bytes, with no read(2) or readiness poll per socket.
//
// The ring is set up with IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN: the
// kernel does the receives' work only inside Enter, in the thread that
// created the ring. NewRecv, and every method after it, must therefore be
// called from one OS thread (runtime.LockOSThread); Enter from another
// fails with EEXIST. It is not safe for concurrent use.
type RecvRing struct {
	r       *Ring // the mapped rings (its write API is unused)
	sqFlags *uint32
	pending int // SQEs queued since the last Enter

	bufRing []byte // the provided buffer ring: Bufs struct io_uring_buf
	bufMem  []byte // the buffers themselves
	bufSize int
	bufMask uint16
	bufTail uint16
	bgid    uint16

	enters uint64
}

// NewRecv sets up a RecvRing. The error wraps the errno: EPERM or ENOSYS
// when io_uring is refused or missing, EINVAL when the kernel lacks a
// feature (SINGLE_ISSUER and DEFER_TASKRUN are 6.1, multishot receive 6.0,
// provided buffer rings 5.19).
func NewRecv(cfg RecvConfig) (*RecvRing, error) {
	if cfg.Entries <= 0 {
		cfg.Entries = 256
	}
	if cfg.CQEntries <= 0 {
		cfg.CQEntries = max(8*cfg.Entries, 4096)
	}
	if cfg.BufSize <= 0 {
		cfg.BufSize = 4096
	}
	if cfg.Bufs <= 0 {
		cfg.Bufs = 4096
	}
	if cfg.Entries > maxEntries || cfg.CQEntries > 2*maxEntries || cfg.CQEntries < cfg.Entries {
		return nil, fmt.Errorf("uring: %d entries, %d completion entries: %w", cfg.Entries, cfg.CQEntries, unix.EINVAL)
	}
	if cfg.Bufs > maxBufs || cfg.Bufs&(cfg.Bufs-1) != 0 || cfg.BufSize > 1<<30 || cfg.Bufs*cfg.BufSize > 1<<34 {
		return nil, fmt.Errorf("uring: %d buffers of %d bytes: %w", cfg.Bufs, cfg.BufSize, unix.EINVAL)
	}
	p := params{cqEntries: uint32(cfg.CQEntries)}
	fd, err := setup(uint32(cfg.Entries), &p, setupCQSize|setupSubmitAll|setupSingleIssuer|setupDeferTaskrun|setupTaskrunFlag)
	if err != nil {
		return nil, fmt.Errorf("uring: io_uring_setup: %w", err)
	}
	rr := &RecvRing{r: &Ring{fd: fd}, bufSize: cfg.BufSize, bufMask: uint16(cfg.Bufs - 1)}
	if err := rr.r.mapRings(&p); err != nil {
		rr.Close()
		return nil, err
	}
	rr.sqFlags = (*uint32)(unsafe.Pointer(&rr.r.sqMem[p.sqOff.flags]))

	// The buffer ring must be page-aligned: an anonymous mapping is. The
	// buffers too live outside Go's heap, where the collector cannot move
	// or free them under the kernel.
	anon := func(size int) ([]byte, error) {
		return unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	}
	if rr.bufRing, err = anon(cfg.Bufs * 16); err == nil {
		rr.bufMem, err = anon(cfg.Bufs * cfg.BufSize)
	}
	if err != nil {
		rr.Close()
		return nil, fmt.Errorf("uring: buffers: %w", err)
	}
	reg := bufReg{ringAddr: uint64(uintptr(unsafe.Pointer(&rr.bufRing[0]))), ringEntries: uint32(cfg.Bufs), bgid: rr.bgid}
	if err := rr.register(registerPbufRing, unsafe.Pointer(&reg), 1); err != nil {
		rr.Close()
		return nil, fmt.Errorf("uring: IORING_REGISTER_PBUF_RING: %w", err)
	}
	for bid := range cfg.Bufs {
		rr.putBuf(uint16(bid))
	}
	rr.publishBufs()
	return rr, nil
}

func (rr *RecvRing) register(op uintptr, arg unsafe.Pointer, n uintptr) error {
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(rr.r.fd), op, uintptr(arg), n, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// Fd is the ring's descriptor. It polls readable when completions are
// ready or a receive's deferred work is pending, but (6.18) a receive that
// wakes up wakes no poller: with deferred task running only a waiter
// inside Enter is woken, so an epoll or Go's netpoller waiting on Fd
// sleeps on. Wait with Enter(true).
func (rr *RecvRing) Fd() int { return rr.r.fd }

// BufSize is the size of each provided buffer: at most what one
// completion delivers.
func (rr *RecvRing) BufSize() int { return rr.bufSize }

// putBuf queues buffer bid at the buffer ring's tail; publishBufs hands the
// queued ones to the kernel.
func (rr *RecvRing) putBuf(bid uint16) {
	e := unsafe.Pointer(&rr.bufRing[int(rr.bufTail&rr.bufMask)*16])
	*(*uint64)(e) = uint64(uintptr(unsafe.Pointer(&rr.bufMem[int(bid)*rr.bufSize])))
	*(*uint32)(unsafe.Add(e, 8)) = uint32(rr.bufSize)
	*(*uint16)(unsafe.Add(e, 12)) = bid
	rr.bufTail++
}

// publishBufs stores the buffer ring's tail (a uint16 at byte 14, over the
// first entry's resv) with release semantics. Go has no 16-bit atomic, so
// the 32-bit word at byte 12 is stored whole: its other half is the first
// entry's bid, which only this process writes.
func (rr *RecvRing) publishBufs() {
	w := (*uint32)(unsafe.Pointer(&rr.bufRing[12]))
	bid := uint32(*(*uint16)(unsafe.Pointer(&rr.bufRing[12])))
	var v uint32
	if littleEndian {
		v = bid | uint32(rr.bufTail)<<16
	} else {
		v = bid<<16 | uint32(rr.bufTail)
	}
	atomic.StoreUint32(w, v)
}

var littleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

// next returns the next free SQE, submitting the queued ones first if the
// submission queue is full.
func (rr *RecvRing) next() (*sqe, error) {
	if rr.pending == rr.r.sqEntries {
		if err := rr.Enter(false); err != nil {
			return nil, err
		}
	}
	tail := atomic.LoadUint32(rr.r.sqTail)
	s := &rr.r.sqes[tail&rr.r.sqMask]
	*s = sqe{}
	return s, nil
}

func (rr *RecvRing) push() {
	atomic.StoreUint32(rr.r.sqTail, atomic.LoadUint32(rr.r.sqTail)+1)
	rr.pending++
}

// Recv queues a multishot receive on socket fd into the provided buffers:
// every arrival of bytes completes with userData, More set while the
// receive stays armed. It is submitted by the next Enter (or at once if the
// submission queue is full, which is the only way it fails).
func (rr *RecvRing) Recv(fd int, userData uint64) error {
	s, err := rr.next()
	if err != nil {
		return err
	}
	s.opcode, s.flags, s.ioprio = opRecv, sqeBufferSelect, recvMultishot
	s.fd, s.bufIndex, s.userData = int32(fd), rr.bgid, userData
	rr.push()
	return nil
}

// PollIn queues a multishot poll for fd readable (e.g. an eventfd another
// goroutine writes to wake the ring's owner): it completes with userData,
// More set, each time fd becomes readable.
func (rr *RecvRing) PollIn(fd int, userData uint64) error {
	s, err := rr.next()
	if err != nil {
		return err
	}
	s.opcode, s.fd, s.len, s.userData = opPollAdd, int32(fd), pollAddMulti, userData
	s.rwFlags = unix.POLLIN
	rr.push()
	return nil
}

// Cancel queues the cancellation of the request(s) armed with target. The
// cancelled request completes with -ECANCELED (or whatever it was already
// completing with) and the cancel itself with userData. Closing a socket
// does not end a receive armed on it: the request holds the socket open
// until cancelled.
func (rr *RecvRing) Cancel(target, userData uint64) error {
	s, err := rr.next()
	if err != nil {
		return err
	}
	s.opcode, s.fd, s.addr, s.userData = opAsyncCancel, -1, target, userData
	rr.push()
	return nil
}

// Work reports whether Enter has something to do: queued requests,
// deferred work (receives that woke up), or completions that overflowed
// the completion queue.
func (rr *RecvRing) Work() bool {
	return rr.pending > 0 || atomic.LoadUint32(rr.sqFlags)&(sqTaskrun|sqCQOverflow) != 0
}

// Ready reports whether completions wait to be reaped.
func (rr *RecvRing) Ready() bool {
	return atomic.LoadUint32(rr.r.cqHead) != atomic.LoadUint32(rr.r.cqTail)
}

// Enter submits the queued requests and runs the deferred work, which
// posts completions. With wait, and nothing ready or pending, it blocks
// until at least one completion is ready (a blocking system call: the Go
// runtime may hand the thread's P to another goroutine meanwhile);
// without, it never blocks. One Enter runs at most 20 receives' deferred
// work (6.18's IO_LOCAL_TW_DEFAULT_MAX): while Work reports more, Enter
// again. EINTR is not an error: the caller loops anyway.
func (rr *RecvRing) Enter(wait bool) error {
	for {
		var minComplete uintptr
		if wait && !rr.Ready() && !rr.Work() {
			minComplete = 1
		}
		var n uintptr
		var errno unix.Errno
		if minComplete > 0 {
			n, _, errno = unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(rr.r.fd), uintptr(rr.pending), minComplete, enterGetEvents, 0, 0)
		} else {
			n, _, errno = unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(rr.r.fd), uintptr(rr.pending), 0, enterGetEvents, 0, 0)
		}
		rr.enters++
		if errno == 0 {
			rr.pending -= int(n)
			return nil
		}
		switch errno {
		case unix.EINTR:
			return nil
		case unix.EAGAIN, unix.EBUSY:
			// Short of memory, or the completion queue is full: reaping
			// makes room; the queued requests stay queued.
			if rr.Ready() {
				return nil
			}
			runtime.Gosched()
		default:
			return fmt.Errorf("uring: io_uring_enter: %w", errno)
		}
	}
}

// Completion is one completion Reap hands over.
type Completion struct {
	UserData uint64
	// Res is the byte count of a receive (0: the peer closed), or a
	// negated errno: -ENOBUFS when no provided buffer was left, -ECANCELED.
	Res int32
	// More: the multishot request stays armed. Without it the request has
	// ended and must be armed again to go on receiving.
	More bool
	// Buf holds the received bytes, in a provided buffer that goes back to
	// the kernel when the callback returns: it must not be kept.
	Buf []byte
}

// Reap calls fn for each ready completion, in order, then gives their
// buffers back to the kernel. fn may queue requests (Recv, Cancel); they
// are submitted by the next Enter. It returns how many completions it took.
func (rr *RecvRing) Reap(fn func(*Completion)) int {
	r := rr.r
	head := atomic.LoadUint32(r.cqHead)
	tail := atomic.LoadUint32(r.cqTail)
	n, bufs := 0, 0
	var c Completion
	for ; head != tail; head++ {
		e := &r.cqes[head&r.cqMask]
		c = Completion{UserData: e.userData, Res: e.res, More: e.flags&cqeFMore != 0}
		bid := -1
		if e.flags&cqeFBuffer != 0 {
			bid = int(e.flags >> cqeBufferShift)
			if e.res > 0 && int(bid) <= int(rr.bufMask) {
				off := bid * rr.bufSize
				c.Buf = rr.bufMem[off : off+min(int(e.res), rr.bufSize) : off+rr.bufSize]
			}
		}
		// The CQE's slot may be reused once the head passes it: it was
		// copied above.
		fn(&c)
		if bid >= 0 && bid <= int(rr.bufMask) {
			rr.putBuf(uint16(bid))
			bufs++
		}
		n++
	}
	atomic.StoreUint32(r.cqHead, head)
	if bufs > 0 {
		rr.publishBufs()
	}
	return n
}

// Enters reports how many io_uring_enter calls the ring has made.
func (rr *RecvRing) Enters() uint64 { return rr.enters }

// Close tears the ring down: closing its descriptor cancels every request
// still armed and releases the sockets they held. It must be called from
// the ring's thread. The buffers are unmapped afterwards: with deferred
// task running, a receive copies into them only inside that thread's
// Enter, and the teardown cancels rather than runs what was left pending.
func (rr *RecvRing) Close() error {
	if rr.r == nil {
		return nil
	}
	err := rr.r.Close()
	for _, m := range [][]byte{rr.bufRing, rr.bufMem} {
		if m != nil {
			_ = unix.Munmap(m)
		}
	}
	rr.bufRing, rr.bufMem, rr.r = nil, nil, nil
	return err
}
