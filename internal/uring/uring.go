// Package uring submits a batch of writes to many file descriptors with one
// io_uring_enter(2), for an event loop whose flush would otherwise call
// write(2) once per connection.
//
// It is deliberately minimal: no Go io_uring library is reachable from this
// project's module proxy, and a flush needs only "write these buffers to
// these fds, tell me what each one did". Every write is issued with
// RWF_NOWAIT so that a full socket buffer completes at once with -EAGAIN (or
// a short count), exactly like write(2) on a nonblocking socket; without it
// the kernel would park the request until the socket drained, and a flush
// that waits for all its completions would block the loop.
//
// New fails where io_uring is missing or refused (ENOSYS on old or non-Linux
// kernels, EPERM under Docker's default seccomp profile or with
// kernel.io_uring_disabled=2): callers keep their write(2) path for that.
package uring

import "errors"

// ErrUnsupported is returned by New on platforms without io_uring.
var ErrUnsupported = errors.New("uring: io_uring is not supported on this platform")

// ErrClosed is returned by Submit after Close, or after an io_uring_enter
// failure that left requests in the kernel's hands.
var ErrClosed = errors.New("uring: ring closed or unusable")
