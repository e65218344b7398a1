package engine

import (
	"context"
	"strconv"

	"github.com/flarecast/flarecast/codec"
	"github.com/flarecast/flarecast/event"
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
	gi := d.gapIndex(s.replayNext)
	d.history.After(s.replayNext-1, func(id uint64, f *outFrame) bool {
		if queued >= room || byteRoom <= 0 || scanned >= *budget {
			return false
		}
		scanned++
		for ; gi < len(d.gaps) && id >= d.gaps[gi].next; gi++ {
			d.noteGap(c, d.gaps[gi])
		}
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
		// Gaps not crossed yet lie at the very end, before events that
		// have not arrived: the session is owed them all the same.
		for ; gi < len(d.gaps); gi++ {
			d.noteGap(c, d.gaps[gi])
		}
		s.replayNext = 0 // caught up: live from the next event
		d.setReplaying(s, false)
	}
	return scanned > 0
}

// A fleet's tailer reports the events of the shared stream it cannot
// deliver: trimmed before this instance read them, or appended, after a
// failover, under message_ids it had already passed. Sessions must hear of
// them (HISTORY_GAP) rather than miss them silently, in their place in the
// event order: the report travels through the ring as a marker event.

// gapMark is a marker on its way through the ring.
type gapMark struct {
	ev   *event.Event
	from uint64
}

// gapRange: events with message_ids from `from` to next-1 were not
// delivered here; a replay that passes next reports it.
type gapRange struct{ from, next uint64 }

// publishGap queues, behind the events published before it, the report
// that the events from `from` to next-1 will not be delivered.
func (d *dispatcher) publishGap(ctx context.Context, from, next uint64) error {
	ev := &event.Event{ID: next} // no JSON: no accepted event looks like it
	d.gapMu.Lock()
	d.gapMarks = append(d.gapMarks, gapMark{ev: ev, from: from})
	d.gapMu.Unlock()
	_, err := d.ring.Publish(ctx, ev)
	return err
}

// ringEvent dispatches an event from the ring, or applies a gap marker.
func (d *dispatcher) ringEvent(seq uint64, ev *event.Event) {
	if ev.JSON == nil {
		d.gapMu.Lock()
		var mark gapMark
		if len(d.gapMarks) > 0 && d.gapMarks[0].ev == ev {
			mark = d.gapMarks[0]
			d.gapMarks = d.gapMarks[1:]
		}
		d.gapMu.Unlock()
		if mark.ev != nil {
			d.gap(gapRange{from: mark.from, next: ev.ID})
			return
		}
	}
	d.dispatchEvent(seq, ev)
}

// gap tells every live session of the gap now, and keeps it for the
// replays (resumes, backfills) that will pass it later.
func (d *dispatcher) gap(g gapRange) {
	keep := d.gaps[:0]
	first, _ := d.history.First()
	for _, old := range d.gaps {
		if old.next > first { // older ones: the window's own gap covers them
			keep = append(keep, old)
		}
	}
	d.gaps = keep
	i := len(d.gaps)
	for i > 0 && d.gaps[i-1].next > g.next {
		i--
	}
	d.gaps = append(d.gaps, gapRange{})
	copy(d.gaps[i+1:], d.gaps[i:])
	d.gaps[i] = g
	for _, s := range d.slots {
		// A replaying session hears of it from its pump, in order.
		if s != nil && s.conn != nil && s.replayNext == 0 {
			d.noteGap(s.conn, g)
		}
	}
}

// gapIndex is the index of the first gap a replay at next has not passed.
func (d *dispatcher) gapIndex(next uint64) int {
	i := len(d.gaps)
	for i > 0 && d.gaps[i-1].next > next {
		i--
	}
	return i
}

func (d *dispatcher) noteGap(c *conn, g gapRange) {
	d.eng.metrics.errorSent(codec.CodeHistoryGap)
	d.reply(c, codec.AppendHistoryGap(d.payload[:0],
		"events from message_id "+strconv.FormatUint(g.from, 10)+" to "+strconv.FormatUint(g.next-1, 10)+
			" did not reach this server (trimmed from the fleet's stream before it read them, or lost in a broker failover); continuing from "+
			strconv.FormatUint(g.next, 10),
		g.next))
}
