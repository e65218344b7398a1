package engine

import (
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/flarecast/flarecast/filterindex"
)

// session is what the server remembers about one client across its
// connections: its subscriptions and how far it has read. Sessions are
// owned by the dispatcher goroutine; nothing else touches them.
type session struct {
	id   string
	slot uint32 // owner number in the filter index
	subs []subscription

	conn       *conn     // the attached connection; nil while detached
	detachedAt time.Time // when conn went away, for expiry
	startedAt  time.Time
}

// subscription is one named filter of a session.
type subscription struct {
	id     string
	filter filterindex.Filter
	sub    filterindex.SubID
}

func (s *session) find(id string) int {
	for i := range s.subs {
		if s.subs[i].id == id {
			return i
		}
	}
	return -1
}

// newSessionID returns 128 random bits as hex: unguessable, so a session id
// is as good as a bearer capability for resuming that session.
func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}
