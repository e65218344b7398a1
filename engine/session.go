package engine

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/event"
	"github.com/flarecast/flarecast/filterindex"
)

// session is what the server remembers about one client across its
// connections: its subscriptions and how far it has read. A session
// outlives its connection for the session timeout, so a client that
// reconnects with its session id resumes where it was. Sessions are owned
// by the dispatcher goroutine; nothing else touches them.
type session struct {
	id   string
	slot uint32 // owner number in the filter index
	subs []subscription

	// auth is the token that created the session: its scope bounds every
	// subscription, and only the same holder may resume it. nil without auth.
	auth *auth.Claims

	conn       *conn // the attached connection; nil while detached
	detachedAt int64 // when conn went away (unix ns), for expiry

	// acked is the client's cumulative ack; everAcked tells a client that
	// acks (resume after its ack) from one that never does (resume after
	// what the server wrote).
	acked     uint64
	everAcked bool
	// resumeAfter is where a resume starts when the client never acked:
	// every event up to it was written to the client's last connection.
	resumeAfter uint64

	// replayNext is the next message_id the replay pump looks at; zero when
	// the session is live. While it replays, live dispatch skips the
	// session: the pump walks the history up to the newest event, which
	// keeps the session's events in order with no gap and no duplicate.
	replayNext uint64
}

// subscription is one named filter of a session. The filter itself lives
// in the index only (Index.MatchesOne evaluates it for replays): an idle
// connection's memory is mostly its subscriptions.
type subscription struct {
	id  string
	sub filterindex.SubID
	// from: the subscription wants events with a message_id above it (the
	// moment it was made, or its `since`).
	from uint64
	// covered: events up to it that the subscription wants have already
	// been queued for the session, so a replay skips them. It only matters
	// while the session replays.
	covered uint64
}

func (s *session) find(id string) int {
	for i := range s.subs {
		if s.subs[i].id == id {
			return i
		}
	}
	return -1
}

// replayDecision tells the pump whether event ev (message_id id) is owed to
// the session: some subscription wants it and none has covered it yet.
func (s *session) owed(ix *filterindex.Index, id uint64, ev *event.Event) bool {
	wanted := false
	for i := range s.subs {
		sub := &s.subs[i]
		if id <= sub.from || !ix.MatchesOne(sub.sub, ev) {
			continue
		}
		if id <= sub.covered {
			return false // already queued through this subscription
		}
		wanted = true
	}
	return wanted
}

// coverUpTo records that everything up to id that the subscriptions want
// has been queued: called when a replay starts or rewinds.
func (s *session) coverUpTo(id uint64) {
	for i := range s.subs {
		s.subs[i].covered = max(s.subs[i].covered, id)
	}
}

// newSessionID returns 128 random bits as hex: unguessable, so a session id
// is as good as a bearer capability for resuming that session.
func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}
