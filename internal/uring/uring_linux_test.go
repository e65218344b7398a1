//go:build linux

package uring

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// newRing skips rather than fails where io_uring is refused (a seccomp'd CI
// container): that is the environment the callers' fallback exists for.
func newRing(t *testing.T, entries int) *Ring {
	t.Helper()
	r, err := New(entries)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func socketpair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

func TestWritesArriveIntact(t *testing.T) {
	r := newRing(t, 8)
	const conns = 5
	var send, recv [conns]int
	for i := range conns {
		send[i], recv[i] = socketpair(t)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()

	// Two rounds on the same ring: the second checks that heads, tails and
	// the result slice are reset properly between flushes.
	for round := range 2 {
		want := make([][]byte, conns)
		for i := range conns {
			want[i] = []byte(fmt.Sprintf("round %d frame for socket %d %s", round, i, bytes.Repeat([]byte{'x'}, i*100)))
			if got := r.QueueWrite(send[i], want[i]); got != i {
				t.Fatalf("index %d, want %d", got, i)
			}
		}
		pipeMsg := []byte(fmt.Sprintf("pipe %d", round))
		r.QueueWrite(int(pw.Fd()), pipeMsg)
		enters := r.Enters()
		res, err := r.Submit()
		if err != nil {
			t.Fatal(err)
		}
		if d := r.Enters() - enters; d != 1 {
			t.Errorf("round %d: %d io_uring_enter calls for one batch, want 1", round, d)
		}
		if len(res) != conns+1 {
			t.Fatalf("%d results, want %d", len(res), conns+1)
		}
		for i := range conns {
			if int(res[i]) != len(want[i]) {
				t.Fatalf("socket %d: result %d, want %d", i, res[i], len(want[i]))
			}
			got := make([]byte, len(want[i]))
			if _, err := io.ReadFull(fdReader(recv[i]), got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want[i]) {
				t.Fatalf("socket %d: got %q, want %q", i, got, want[i])
			}
		}
		got := make([]byte, len(pipeMsg))
		if _, err := io.ReadFull(pr, got); err != nil || !bytes.Equal(got, pipeMsg) {
			t.Fatalf("pipe: got %q (%v), want %q", got, err, pipeMsg)
		}
	}
}

// More writes than the ring holds must still all be reported, in order.
func TestMoreWritesThanEntries(t *testing.T) {
	r := newRing(t, 4)
	a, b := socketpair(t)
	const n = 11
	var want []byte
	for i := range n {
		msg := []byte{byte('a' + i)}
		want = append(want, msg...)
		r.QueueWrite(a, msg)
	}
	res, err := r.Submit()
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range res {
		if v != 1 {
			t.Fatalf("request %d: result %d, want 1", i, v)
		}
	}
	got := make([]byte, n)
	if _, err := io.ReadFull(fdReader(b), got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("got %q (%v), want %q", got, err, want)
	}
}

// A closed peer fails one request with -EPIPE without disturbing the others
// in the same batch.
func TestPerRequestErrors(t *testing.T) {
	r := newRing(t, 8)
	good, goodPeer := socketpair(t)
	dead, deadPeer := socketpair(t)
	unix.Close(deadPeer)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pr.Close()
	defer pw.Close()

	r.QueueWrite(good, []byte("one"))
	r.QueueWrite(dead, []byte("lost"))
	r.QueueWrite(int(pw.Fd()), []byte("lost too"))
	r.QueueWrite(-1, []byte("bad fd"))
	r.QueueWrite(good, []byte("two"))
	res, err := r.Submit()
	if err != nil {
		t.Fatal(err)
	}
	want := []int32{3, -int32(unix.EPIPE), -int32(unix.EPIPE), -int32(unix.EBADF), 3}
	for i := range want {
		if res[i] != want[i] {
			t.Errorf("request %d: result %d (%v), want %d", i, res[i], errnoOf(res[i]), want[i])
		}
	}
	got := make([]byte, 6)
	if _, err := io.ReadFull(fdReader(goodPeer), got); err != nil || string(got) != "onetwo" {
		t.Fatalf("got %q (%v), want onetwo", got, err)
	}
}

// A full socket buffer must come back as -EAGAIN or a short count, as
// write(2) on a nonblocking socket would, and never park the flush.
func TestFullBufferIsReportedNotWaitedFor(t *testing.T) {
	r := newRing(t, 8)
	a, b := socketpair(t)
	if err := unix.SetNonblock(a, true); err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptInt(a, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
	chunk := bytes.Repeat([]byte{'z'}, 64<<10)
	var written int
	sawShort, sawEAGAIN := false, false
	for range 64 {
		r.QueueWrite(a, chunk)
		res, err := r.Submit()
		if err != nil {
			t.Fatal(err)
		}
		switch v := res[0]; {
		case v == -int32(unix.EAGAIN):
			sawEAGAIN = true
		case v >= 0 && int(v) < len(chunk):
			sawShort = true
			written += int(v)
		case v == int32(len(chunk)):
			written += int(v)
		default:
			t.Fatalf("result %d (%v)", v, errnoOf(v))
		}
		if sawEAGAIN {
			break
		}
	}
	if !sawEAGAIN {
		t.Fatalf("64 × 64 KiB into a socket nobody reads never returned EAGAIN (short: %v)", sawShort)
	}
	// Whatever was reported as written is exactly what the peer can read.
	if err := unix.SetNonblock(b, true); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	read := 0
	for {
		n, err := unix.Read(b, buf)
		if err == unix.EAGAIN || n == 0 {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		read += n
	}
	if read != written {
		t.Fatalf("peer read %d bytes, results reported %d", read, written)
	}
	t.Logf("written %d before EAGAIN, short write seen: %v", written, sawShort)
}

func TestNewRefusesAbsurdSizes(t *testing.T) {
	for _, n := range []int{0, -1, 1 << 20} {
		r, err := New(n)
		if err == nil {
			r.Close()
			t.Fatalf("New(%d) succeeded", n)
		}
		if !errors.Is(err, unix.EINVAL) {
			t.Errorf("New(%d): %v, want EINVAL", n, err)
		}
	}
	// The largest size the kernel accepts must be accepted, or the bound
	// checked above is wrong.
	r, err := New(maxEntries)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	if err != nil {
		// Large rings can fail for lack of locked memory on old kernels.
		if errors.Is(err, unix.ENOMEM) {
			t.Skipf("New(%d): %v", maxEntries, err)
		}
		t.Fatalf("New(%d): %v", maxEntries, err)
	}
	r.Close()
}

// The kernel's own refusal (not just our range check) must surface as an
// error wrapping its errno, with nothing left open.
func TestSetupErrorPath(t *testing.T) {
	var p params
	fd, err := setup(1<<20, &p, 0)
	if err == nil {
		unix.Close(fd)
		t.Fatal("io_uring_setup(1<<20) succeeded")
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		t.Fatalf("io_uring_setup(1<<20): %v", err)
	}
}

func TestClosed(t *testing.T) {
	r := newRing(t, 2)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if i := r.QueueWrite(1, []byte("x")); i != 0 {
		t.Fatalf("QueueWrite after Close: index %d", i)
	}
	if _, err := r.Submit(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

type fdReader int

func (f fdReader) Read(p []byte) (int, error) {
	n, err := unix.Read(int(f), p)
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	if n < 0 {
		n = 0
	}
	return n, err
}

func errnoOf(v int32) error {
	if v >= 0 {
		return nil
	}
	return unix.Errno(-v)
}
