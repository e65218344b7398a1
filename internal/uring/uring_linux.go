//go:build linux

package uring

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel ABI constants (include/uapi/linux/io_uring.h); x/sys/unix has the
// syscall numbers but none of these.
const (
	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	opWrite = 23 // IORING_OP_WRITE

	enterGetEvents = 1 << 0 // IORING_ENTER_GETEVENTS

	// SUBMIT_ALL keeps one bad SQE from stopping the rest of a flush's batch;
	// COOP_TASKRUN spares an IPI per completion. Both are 5.18/5.19: New
	// retries without them so older kernels still work.
	setupSubmitAll   = 1 << 7
	setupCoopTaskrun = 1 << 8

	rwfNowait = 0x8 // RWF_NOWAIT: -EAGAIN instead of parking the request

	maxEntries = 32768 // IORING_MAX_ENTRIES
)

type sqOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqOffsets
	cqOff                                                                  cqOffsets
}

type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	rwFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	pad         uint64
}

type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// The kernel reads these layouts byte for byte; a field added or reordered
// by mistake must fail the build, not corrupt a write.
var (
	_ [120 - unsafe.Sizeof(params{})]struct{}
	_ [unsafe.Sizeof(params{}) - 120]struct{}
	_ [64 - unsafe.Sizeof(sqe{})]struct{}
	_ [unsafe.Sizeof(sqe{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(cqe{})]struct{}
	_ [unsafe.Sizeof(cqe{}) - 16]struct{}
)

// notDone is the result of a request the kernel never completed (Submit
// returned an error): the caller should treat it as not written.
var notDone = -int32(unix.ECANCELED)

// Ring is one io_uring instance with no SQPOLL thread: nothing happens until
// Submit calls io_uring_enter. It is not safe for concurrent use; one event
// loop owns one Ring.
type Ring struct {
	fd int

	sqMem, cqMem, sqeMem []byte

	sqTail    *uint32
	sqHead    *uint32
	sqMask    uint32
	sqEntries int
	sqes      []sqe

	cqHead *uint32
	cqTail *uint32
	cqMask uint32
	cqes   []cqe

	unsubmitted int
	// bufs holds every queued buffer until its completion has been reaped:
	// the kernel reads it by address, which the GC cannot see.
	bufs    [][]byte
	results []int32
	enters  uint64
	err     error
}

// New sets up a ring whose submission queue holds at least entries writes
// (rounded up to a power of two by the kernel). A flush of more writes than
// that costs one io_uring_enter per entries writes. The error wraps the
// errno, so errors.Is(err, unix.EPERM) or unix.ENOSYS tells a caller that
// io_uring is refused or missing and it should keep using write(2).
func New(entries int) (*Ring, error) {
	if entries < 1 {
		return nil, fmt.Errorf("uring: entries %d: %w", entries, unix.EINVAL)
	}
	if entries > maxEntries {
		// The kernel would say EINVAL too; saying it here keeps the
		// uint32 conversion below honest.
		return nil, fmt.Errorf("uring: entries %d above %d: %w", entries, maxEntries, unix.EINVAL)
	}
	var p params
	fd, err := setup(uint32(entries), &p, setupSubmitAll|setupCoopTaskrun)
	if errors.Is(err, unix.EINVAL) {
		p = params{}
		fd, err = setup(uint32(entries), &p, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("uring: io_uring_setup: %w", err)
	}
	r := &Ring{fd: fd}
	if err := r.mapRings(&p); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func setup(entries uint32, p *params, flags uint32) (int, error) {
	p.flags = flags
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

func (r *Ring) mapRings(p *params) error {
	var err error
	mmap := func(off int64, size int) []byte {
		if err != nil {
			return nil
		}
		var b []byte
		b, err = unix.Mmap(r.fd, off, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			err = fmt.Errorf("uring: mmap ring at %#x: %w", off, err)
		}
		return b
	}
	// With IORING_FEAT_SINGLE_MMAP the two rings share pages, but mapping
	// them separately works on every kernel and costs only at New.
	r.sqMem = mmap(offSQRing, int(p.sqOff.array)+int(p.sqEntries)*4)
	r.cqMem = mmap(offCQRing, int(p.cqOff.cqes)+int(p.cqEntries)*int(unsafe.Sizeof(cqe{})))
	r.sqeMem = mmap(offSQEs, int(p.sqEntries)*int(unsafe.Sizeof(sqe{})))
	if err != nil {
		return err
	}
	u32 := func(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }
	r.sqHead = u32(r.sqMem, p.sqOff.head)
	r.sqTail = u32(r.sqMem, p.sqOff.tail)
	r.sqMask = *u32(r.sqMem, p.sqOff.ringMask)
	r.sqEntries = int(p.sqEntries)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	// SQE slot i is always array index i, so the indirection array is
	// filled once here and never touched on the hot path.
	array := unsafe.Slice(u32(r.sqMem, p.sqOff.array), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.cqHead = u32(r.cqMem, p.cqOff.head)
	r.cqTail = u32(r.cqMem, p.cqOff.tail)
	r.cqMask = *u32(r.cqMem, p.cqOff.ringMask)
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&r.cqMem[p.cqOff.cqes])), p.cqEntries)
	return nil
}

// QueueWrite queues a write of p to fd and returns its index in the slice
// Submit will return. p must not be modified until Submit returns. If the
// submission queue is full, the writes queued so far are submitted first
// (one extra io_uring_enter); their results are still reported by Submit.
func (r *Ring) QueueWrite(fd int, p []byte) int {
	idx := len(r.results)
	r.results = append(r.results, notDone)
	if r.err != nil {
		// A closed or failed ring has no SQ to write into; the request
		// reads -ECANCELED and Submit reports the error.
		return idx
	}
	if r.unsubmitted == r.sqEntries {
		r.flush()
		if r.err != nil {
			return idx
		}
	}
	r.bufs = append(r.bufs, p)
	tail := atomic.LoadUint32(r.sqTail)
	s := &r.sqes[tail&r.sqMask]
	n := len(p)
	if n > 1<<31-1 {
		n = 1<<31 - 1 // the kernel caps a write at MAX_RW_COUNT anyway
	}
	*s = sqe{
		opcode:   opWrite,
		fd:       int32(fd),
		off:      ^uint64(0), // -1: the fd's own position; sockets and pipes have none
		len:      uint32(n),
		rwFlags:  rwfNowait,
		userData: uint64(idx),
	}
	if n > 0 {
		s.addr = uint64(uintptr(unsafe.Pointer(&p[0])))
	}
	// The kernel reads the SQE only after it sees the new tail; the atomic
	// store orders the SQE's plain stores before it.
	atomic.StoreUint32(r.sqTail, tail+1)
	r.unsubmitted++
	return idx
}

// Submit submits every queued write with one io_uring_enter (more only if
// more were queued than the ring holds, or a signal interrupted the wait)
// and waits for all their completions. It returns, for each QueueWrite in
// order, the bytes written or a negated errno (-EAGAIN for a full socket
// buffer, -EPIPE for a closed peer); the slice is valid until the next
// QueueWrite. On error, requests the kernel did not complete read
// -ECANCELED and the Ring must be closed.
func (r *Ring) Submit() ([]int32, error) {
	if r.fd < 0 {
		return nil, ErrClosed
	}
	if r.err == nil {
		r.flush()
	}
	res, err := r.results, r.err
	if err != nil {
		// Some buffers may still be in the kernel's hands: keep them
		// referenced for the Ring's lifetime rather than risk reuse.
		return res, err
	}
	clear(r.bufs)
	r.bufs = r.bufs[:0]
	r.results = r.results[:0]
	return res, nil
}

// flush enters the kernel until every unsubmitted SQE is submitted and
// completed. Writes are issued inline with RWF_NOWAIT, so completion comes
// in the same call unless the kernel chose to punt one to a worker.
func (r *Ring) flush() {
	k := r.unsubmitted
	if k == 0 || r.err != nil {
		return
	}
	submitted, completed := 0, 0
	for completed < k {
		n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd),
			uintptr(k-submitted), uintptr(k-completed), enterGetEvents, 0, 0)
		r.enters++
		if errno == 0 {
			submitted += int(n)
		}
		completed += r.reap()
		switch errno {
		case 0, unix.EINTR:
		case unix.EAGAIN, unix.EBUSY:
			// Transient kernel shortage: the unconsumed SQEs are still in
			// the ring and the next enter picks them up. Yield so that the
			// retry is not a hot spin.
			runtime.Gosched()
		default:
			r.err = fmt.Errorf("uring: io_uring_enter: %w", errno)
			r.unsubmitted = 0
			return
		}
	}
	r.unsubmitted = 0
	runtime.KeepAlive(r.bufs)
}

func (r *Ring) reap() int {
	head := atomic.LoadUint32(r.cqHead)
	// Acquire the tail before reading the CQEs it publishes.
	tail := atomic.LoadUint32(r.cqTail)
	n := 0
	for ; head != tail; head++ {
		c := &r.cqes[head&r.cqMask]
		if c.userData < uint64(len(r.results)) {
			r.results[c.userData] = c.res
		}
		n++
	}
	// Release the slots only after the CQEs have been read.
	atomic.StoreUint32(r.cqHead, head)
	return n
}

// Enters reports how many io_uring_enter calls the Ring has made, for
// benchmarks that count syscalls per flush.
func (r *Ring) Enters() uint64 { return r.enters }

// Close unmaps the rings and closes the ring fd. Closing the fd also
// cancels anything the kernel still held after a failed Submit.
func (r *Ring) Close() error {
	if r.fd < 0 {
		return nil
	}
	for _, m := range [][]byte{r.sqMem, r.cqMem, r.sqeMem} {
		if m != nil {
			_ = unix.Munmap(m)
		}
	}
	r.sqMem, r.cqMem, r.sqeMem, r.sqes, r.cqes = nil, nil, nil, nil, nil
	err := unix.Close(r.fd)
	r.fd = -1
	if r.err == nil {
		r.err = ErrClosed
	}
	return err
}
