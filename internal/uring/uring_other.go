//go:build !linux

package uring

// Ring is a stub off Linux, so that callers compile everywhere and take
// their write(2) path when New fails.
type Ring struct{}

// New always fails off Linux.
func New(entries int) (*Ring, error) { return nil, ErrUnsupported }

// QueueWrite is never reached: New never returns a Ring here.
func (r *Ring) QueueWrite(fd int, p []byte) int { panic("uring: unsupported") }

// Submit is never reached: New never returns a Ring here.
func (r *Ring) Submit() ([]int32, error) { return nil, ErrUnsupported }

// Enters is never reached: New never returns a Ring here.
func (r *Ring) Enters() uint64 { return 0 }

// Close is never reached: New never returns a Ring here.
func (r *Ring) Close() error { return nil }
