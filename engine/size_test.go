package engine

import (
	"testing"
	"unsafe"
)

// TestIdleConnectionSizes keeps what an idle subscribed connection
// allocates in the size classes it was fitted to (README, Density): a
// field added to one of these structs costs every connection the next
// class up. Move what few connections need to conn.rare or session.rare.
func TestIdleConnectionSizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		size, max uintptr
	}{
		{"conn", unsafe.Sizeof(conn{}), 176},
		{"session", unsafe.Sizeof(session{}), 64},
		{"subscription", unsafe.Sizeof(subscription{}), 32},
	} {
		if c.size > c.max {
			t.Errorf("%s is %d bytes, more than its %d-byte size class", c.name, c.size, c.max)
		}
	}
}
