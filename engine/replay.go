package engine

import (
	"strconv"

	"github.com/flarecast/flarecast/codec"
)

// startReplay makes the session's pump deliver, in order, every event from
// message_id next on that it is owed, before it goes live again.
func (d *dispatcher) startReplay(s *session, next uint64) {
	if next > d.lastID {
		return // nothing dispatched since: live already
	}
	if s.replayNext == 0 {
		d.replaying = append(d.replaying, s)
	}
	s.replayNext = next
	d.setReplaying(s, true)
}

func (d *dispatcher) setReplaying(s *session, on bool) {
	if c := s.conn; c != nil {
		c.loop.mu.Lock()
		c.replaying = on
		c.loop.mu.Unlock()
	}
}

// replayScanBudget bounds the history entries the replay pumps look at in
// one round of the dispatcher, across all sessions: a backfill over the
// whole window with a narrow filter would otherwise hold the dispatcher,
// and everybody's live events, for the whole walk (100,000 entries are
// about 10 ms). What is left goes on in the next rounds, between batches.
const replayScanBudget = 4096

// pumpReplays moves replaying sessions forward as far as their connection
// queues have room and replayScanBudget allows, so a replay of the whole
// window never overflows a queue nor delays live dispatch by more than a
// round's budget. Sessions take turns at the front of the budget. It
// reports whether it made progress.
func (d *dispatcher) pumpReplays() bool {
	if len(d.replaying) == 0 {
		return false
	}
	n := len(d.replaying)
	d.replayTurn = (d.replayTurn + 1) % n
	budget := replayScanBudget
	worked := false
	for i := range n {
		s := d.replaying[(d.replayTurn+i)%n]
		if s.replayNext != 0 && s.conn != nil && budget > 0 && d.pump(s, &budget) {
			worked = true
		}
	}
	keep := d.replaying[:0]
	for _, s := range d.replaying {
		// A detached session resumes its replay when a connection attaches.
		if s.replayNext != 0 {
			keep = append(keep, s)
		}
	}
	clear(d.replaying[len(keep):])
	d.replaying = keep
	return worked
}

// pump queues the next events of s's replay, as many as its connection's
// queue has room for: half the pending bounds, in frames and in bytes, so
// that a replay never trips them even when the socket does not drain. It
// looks at *budget history entries at most, takes them from the budget,
// and reports whether it moved.
func (d *dispatcher) pump(s *session, budget *int) bool {
	c := s.conn
	frames, bytes := c.loop.pendingOf(c)
	room := max(1, d.cfg.MaxPendingMessages/2) - frames
	byteRoom := d.cfg.MaxPendingBytes/2 - bytes
	if room <= 0 || byteRoom <= 0 {
		return false
	}
	m := d.eng.metrics
	if first, ok := d.history.First(); !ok || first > s.replayNext {
		if !ok {
			first = d.lastID + 1
		}
		m.resumesGap.Inc()
		d.eng.metrics.errorSent(codec.CodeHistoryGap)
		d.reply(c, codec.AppendHistoryGap(d.payload[:0],
			"events from message_id "+strconv.FormatUint(s.replayNext, 10)+" are no longer held; continuing from "+strconv.FormatUint(first, 10),
			first))
		s.replayNext = first
	}
	queued, scanned := 0, 0
	d.history.After(s.replayNext-1, func(id uint64, f *outFrame) bool {
		if queued >= room || byteRoom <= 0 || scanned >= *budget {
			return false
		}
		scanned++
		s.replayNext = id + 1
		if s.owed(d.index, id, f.ev) {
			d.deliver(c, f)
			queued++
			byteRoom -= len(f.bytesFor(c.deflate))
		}
		return true
	})
	*budget -= scanned
	m.replayed.Add(queued)
	if s.replayNext > d.lastID {
		s.replayNext = 0 // caught up: live from the next event
		d.setReplaying(s, false)
	}
	return scanned > 0
}
