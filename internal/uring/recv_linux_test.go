//go:build linux

package uring

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newRecvRing locks the test's goroutine to its thread (the ring is
// single-issuer) and skips where io_uring or one of the features is refused.
func newRecvRing(t *testing.T, cfg RecvConfig) *RecvRing {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	rr, err := NewRecv(cfg)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) {
		t.Skipf("io_uring multishot receive unavailable here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rr.Close() })
	return rr
}

// tcpPair returns a connected loopback TCP pair: the client side as a raw
// non-blocking descriptor (as the load tester's loops hold it), the server
// side as a net.Conn.
func tcpPair(t *testing.T) (int, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	var derr error
	raw.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) })
	c.Close()
	if derr != nil {
		t.Fatal(derr)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, s
}

// drain enters and reaps until done says so or the deadline passes.
func drain(t *testing.T, rr *RecvRing, fn func(*Completion), done func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for completions")
		}
		if err := rr.Enter(false); err != nil {
			t.Fatal(err)
		}
		if rr.Reap(fn) == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

// TestRecvMultishot: one multishot receive per socket delivers everything
// each peer sends, in order, across several arrivals, and ends with a
// completion of 0 bytes and no More when the peer closes.
func TestRecvMultishot(t *testing.T) {
	rr := newRecvRing(t, RecvConfig{Entries: 8, BufSize: 4096, Bufs: 64})
	const conns = 4
	fds := make([]int, conns)
	peers := make([]net.Conn, conns)
	for i := range conns {
		fds[i], peers[i] = tcpPair(t)
		if err := rr.Recv(fds[i], uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := rr.Enter(false); err != nil {
		t.Fatal(err)
	}
	got := make([]bytes.Buffer, conns)
	eof := make([]bool, conns)
	want := make([]bytes.Buffer, conns)
	for round := range 3 {
		for i, p := range peers {
			msg := fmt.Sprintf("round %d to %d %s|", round, i, bytes.Repeat([]byte{'y'}, 300))
			want[i].WriteString(msg)
			if _, err := p.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
		drain(t, rr, func(c *Completion) {
			if c.Res <= 0 || !c.More {
				t.Errorf("conn %d: res %d, more %v", c.UserData, c.Res, c.More)
				return
			}
			got[c.UserData].Write(c.Buf)
		}, func() bool {
			for i := range got {
				if got[i].Len() < want[i].Len() {
					return false
				}
			}
			return true
		})
	}
	for _, p := range peers {
		p.Close()
	}
	drain(t, rr, func(c *Completion) {
		if c.Res != 0 || c.More {
			t.Errorf("conn %d after close: res %d, more %v", c.UserData, c.Res, c.More)
		}
		eof[c.UserData] = true
	}, func() bool {
		for _, e := range eof {
			if !e {
				return false
			}
		}
		return true
	})
	for i := range got {
		if got[i].String() != want[i].String() {
			t.Errorf("conn %d: got %q, want %q", i, got[i].String(), want[i].String())
		}
	}
}

// TestRecvNoBuffers: with every provided buffer in use the receive ends
// with -ENOBUFS and no More; armed again once buffers are back, it
// receives what waited in the socket, nothing lost.
func TestRecvNoBuffers(t *testing.T) {
	rr := newRecvRing(t, RecvConfig{Entries: 8, BufSize: 64, Bufs: 2})
	fd, peer := tcpPair(t)
	if err := rr.Recv(fd, 7); err != nil {
		t.Fatal(err)
	}
	if err := rr.Enter(false); err != nil {
		t.Fatal(err)
	}
	var want, got bytes.Buffer
	for i := range 20 {
		msg := fmt.Sprintf("message %02d %s|", i, bytes.Repeat([]byte{'z'}, 40))
		want.WriteString(msg)
		if _, err := peer.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // separate arrivals
	}
	nobufs, rearms := 0, 0
	drain(t, rr, func(c *Completion) {
		switch {
		case c.Res == -int32(unix.ENOBUFS):
			nobufs++
		case c.Res > 0:
			got.Write(c.Buf)
		default:
			t.Errorf("res %d", c.Res)
		}
		if !c.More {
			rearms++
			if err := rr.Recv(fd, 7); err != nil {
				t.Error(err)
			}
		}
	}, func() bool { return got.Len() >= want.Len() })
	if got.String() != want.String() {
		t.Errorf("got %q\nwant %q", got.String(), want.String())
	}
	if nobufs == 0 || rearms == 0 {
		t.Errorf("%d ENOBUFS, %d re-arms: 2 buffers of 64 bytes should have run out", nobufs, rearms)
	}
}

// TestRecvCancel: a cancelled receive completes with -ECANCELED, the
// cancel with its own user data; PollIn reports an eventfd's wake-ups.
func TestRecvCancelAndPollIn(t *testing.T) {
	rr := newRecvRing(t, RecvConfig{Entries: 4})
	fd, _ := tcpPair(t)
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	if err := rr.Recv(fd, 1); err != nil {
		t.Fatal(err)
	}
	if err := rr.PollIn(efd, 2); err != nil {
		t.Fatal(err)
	}
	if err := rr.Enter(false); err != nil {
		t.Fatal(err)
	}
	unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	polled := false
	drain(t, rr, func(c *Completion) {
		if c.UserData != 2 || c.Res <= 0 || !c.More {
			t.Errorf("poll: %+v", *c)
		}
		polled = true
	}, func() bool { return polled })
	if err := rr.Cancel(1, 3); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]int32{}
	drain(t, rr, func(c *Completion) { seen[c.UserData] = c.Res }, func() bool { return len(seen) == 2 })
	if seen[1] != -int32(unix.ECANCELED) || seen[3] != 0 {
		t.Errorf("receive ended with %d (want -ECANCELED), cancel with %d (want 0)", seen[1], seen[3])
	}
}

// TestRecvPendingWork: bytes arriving on a socket while nobody is in Enter
// leave deferred work that Work reports without a system call (and the
// ring's descriptor polls readable); the next Enter posts the completion.
func TestRecvPendingWork(t *testing.T) {
	rr := newRecvRing(t, RecvConfig{Entries: 4})
	fd, peer := tcpPair(t)
	if err := rr.Recv(fd, 1); err != nil {
		t.Fatal(err)
	}
	if err := rr.Enter(false); err != nil {
		t.Fatal(err)
	}
	if rr.Work() || rr.Ready() {
		t.Fatal("work pending before anything was sent")
	}
	pfd := []unix.PollFd{{Fd: int32(rr.Fd()), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 0); err != nil || n != 0 {
		t.Fatalf("ring readable before anything was sent: n %d, %v, revents %#x", n, err, pfd[0].Revents)
	}
	if _, err := peer.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if n, err := unix.Poll(pfd, 2000); err != nil || n == 0 || pfd[0].Revents&unix.POLLIN == 0 {
		t.Fatalf("ring not readable after a receive woke up: n %d, %v, revents %#x", n, err, pfd[0].Revents)
	}
	if !rr.Work() {
		t.Error("Work: false with a receive pending")
	}
	if rr.Ready() {
		t.Error("a completion posted before Enter ran the deferred work")
	}
	var got []byte
	drain(t, rr, func(c *Completion) { got = append(got, c.Buf...) }, func() bool { return len(got) >= 5 })
	if string(got) != "hello" {
		t.Errorf("got %q", got)
	}
}

// TestRecvOtherThread: the ring refuses Enter from another thread (the
// single-issuer contract the callers lock their goroutine for).
func TestRecvOtherThread(t *testing.T) {
	rr := newRecvRing(t, RecvConfig{Entries: 4})
	errc := make(chan error)
	go func() {
		runtime.LockOSThread() // a thread of its own, never the test's
		defer runtime.UnlockOSThread()
		errc <- rr.Enter(false)
	}()
	if err := <-errc; !errors.Is(err, unix.EEXIST) {
		t.Errorf("Enter from another thread: %v, want EEXIST", err)
	}
}
