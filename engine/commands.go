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

// mailbox is a mutex-guarded slice its one consumer swaps out whole, and a
// signal that holds a token while items may be waiting: producers never
// block on the consumer, whatever it is doing. The dispatcher's commands
// (bounded by the connections times maxCommandsInFlight, plus one attach
// and one detach each) and the fleet's resume claims go through one.
type mailbox[T any] struct {
	mu     sync.Mutex
	items  []T
	signal chan struct{} // buffered, 1: make it before the first push
}

func (q *mailbox[T]) push(item T) {
	q.mu.Lock()
	q.items = append(q.items, item)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// take swaps the waiting items for spare and returns them.
func (q *mailbox[T]) take(spare []T) []T {
	q.mu.Lock()
	items := q.items
	q.items = spare[:0]
	q.mu.Unlock()
	return items
}
