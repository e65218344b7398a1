package engine

import (
	"sync"
	"time"

	"github.com/flarecast/flarecast/auth"
	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/filterindex"
)

type commandKind uint8

const (
	cmdAttach commandKind = iota
	cmdDetach
	cmdSubscribe
	cmdUnsubscribe
	cmdSweep
	cmdWake
	cmdRestore  // the session store answered a resume's claim (fleetsessions.go)
	cmdReleased // another instance claimed a session
	cmdSyncAcks // queue moved ack positions for the session store
)

// maxCommandsInFlight bounds the subscribe and unsubscribe messages of one
// connection that wait for the dispatcher. Past it the connection's input
// is not read until the dispatcher has caught up: a client pipelining
// commands holds at most this many in the queue, and its socket buffers
// hold the rest (the inbound bound then closes it).
const maxCommandsInFlight = 8

// commandBudget bounds the work the dispatcher does on commands between two
// batches of events, counted in filter values (an index update costs about
// one map operation per value). One client's large subscriptions are
// spread over several batches instead of delaying everyone's events.
const commandBudget = 2048

// command is a request from an event loop (or the housekeeper) to the dispatcher.
type command struct {
	kind     commandKind
	c        *conn
	msg      *codec.ClientMessage
	resumeID string
	claims   *auth.Claims // attach: the connection's token; nil without auth
	now      time.Time
	claim    *claimRequest // restore: the store's answer
}

// cost estimates the dispatcher time cmd takes, in commandBudget units.
func (cmd *command) cost() int {
	if cmd.kind == cmdSubscribe {
		// Replacing a subscription removes the old filter too: count
		// the new one twice rather than look the old one up here.
		return 1 + 2*filterValues(&cmd.msg.Filter)
	}
	return 1
}

// filterValues counts the values a filter lists, labels included.
func filterValues(f *filterindex.Filter) int {
	return len(f.EventTypes) + len(f.Severities) + len(f.States) + len(f.Sources) +
		len(f.Resources) + len(f.IncidentIDs) + len(f.Labels)
}

// commandQueue is a mutex-guarded slice the dispatcher swaps out whole: the
// event loops never block on the dispatcher, whatever it is doing. Its
// length is bounded by the connections times maxCommandsInFlight (plus one
// attach and one detach each).
type commandQueue struct {
	mu     sync.Mutex
	items  []command
	signal chan struct{} // holds a token while items may be non-empty
}

func (q *commandQueue) push(cmd command) {
	q.mu.Lock()
	q.items = append(q.items, cmd)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// take swaps the pending commands for spare and returns them.
func (q *commandQueue) take(spare []command) []command {
	q.mu.Lock()
	items := q.items
	q.items = spare[:0]
	q.mu.Unlock()
	return items
}
