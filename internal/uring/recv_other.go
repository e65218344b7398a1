//go:build !linux

package uring

// RecvConfig sizes a RecvRing (unused off Linux).
type RecvConfig struct {
	Entries, CQEntries, BufSize, Bufs int
}

// RecvRing is a stub off Linux: NewRecv always fails, so callers keep their
// read(2) path.
type RecvRing struct{}

// Completion is one completion Reap hands over.
type Completion struct {
	UserData uint64
	Res      int32
	More     bool
	Buf      []byte
}

// NewRecv always fails off Linux.
func NewRecv(cfg RecvConfig) (*RecvRing, error) { return nil, ErrUnsupported }

// Fd is never reached: NewRecv never returns a RecvRing here.
func (rr *RecvRing) Fd() int { return -1 }

// BufSize is never reached.
func (rr *RecvRing) BufSize() int { return 0 }

// Recv is never reached.
func (rr *RecvRing) Recv(fd int, userData uint64) error { return ErrUnsupported }

// PollIn is never reached.
func (rr *RecvRing) PollIn(fd int, userData uint64) error { return ErrUnsupported }

// Cancel is never reached.
func (rr *RecvRing) Cancel(target, userData uint64) error { return ErrUnsupported }

// Work is never reached.
func (rr *RecvRing) Work() bool { return false }

// Ready is never reached.
func (rr *RecvRing) Ready() bool { return false }

// Enter is never reached.
func (rr *RecvRing) Enter(wait bool) error { return ErrUnsupported }

// Reap is never reached.
func (rr *RecvRing) Reap(fn func(*Completion)) int { return 0 }

// Enters is never reached.
func (rr *RecvRing) Enters() uint64 { return 0 }

// Close is never reached.
func (rr *RecvRing) Close() error { return nil }
