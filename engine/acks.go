package engine

// ackLedger turns a connection's acks into its session's resume point.
//
// The contract (docs/protocol.md, "Acknowledging"): `ack N` means "I have
// every frame you sent me on this connection up to and including the one
// carrying N". A client simply acks the highest message_id it received.
// That is not the same as "I have every event up to N": a frame held back
// while the socket was not draining may have been overtaken by a more
// urgent one (priority lanes), or a `since` backfill may deliver older ids
// after newer ones. So when the loop writes a frame N while a lower owed id
// is still unwritten, the ledger records the overtake (N, the lowest such id
// minus one), and an ack of N resumes from there. Frames written in order
// need no record: a draining socket gets everything in order, so an idle or
// healthy session's ledger is a few integers and no slice.
//
// The ledger is guarded by the loop's mutex: the loop records writes and
// reads acks; the dispatcher sets it up on attach, lowers it on a backfill
// and reads the resume point on detach.
type ackLedger struct {
	// point: every owed event up to it has reached the client. It starts
	// at the session's resume point, so a session that never acks resumes
	// from where it began (at-least-once), never from a guess.
	point uint64
	// floor: acks at or below it may be stale, sent for frames of the
	// session's previous connection that this one has not written yet;
	// they are ignored. maxWritten: the highest id written on this
	// connection; an ack above it refers to nothing this connection sent.
	floor, maxWritten uint64
	// out: the records of frames written out of order; nil while every
	// frame went in order, so that the ledger of an idle or healthy
	// connection is three integers and a nil pointer (conn's size class
	// is what an idle connection costs).
	out *outOfOrder
}

// outOfOrder is what an ackLedger records of frames written out of order.
type outOfOrder struct {
	// overtakes, oldest first, at most maxOvertakes.
	overtakes []overtake
	// coarse summarises overtakes the ledger forgot and backfills: an ack
	// at or below coarseUntil resumes from coarsePoint at most. Zero
	// coarseUntil: no summary.
	coarseUntil, coarsePoint uint64
}

// overtake records that frame id was written while events after point were
// still owed and unwritten.
type overtake struct{ id, point uint64 }

// maxOvertakes bounds a ledger's records; older ones are folded into the
// coarse summary, which errs towards replaying more, never less.
const maxOvertakes = 32

// reset starts the ledger of a connection that takes over a session.
func (a *ackLedger) reset(point, floor uint64) {
	*a = ackLedger{point: point, floor: floor, maxWritten: floor}
}

// wrote records that frame id was written while low was the lowest owed id
// not yet written (0: none).
func (a *ackLedger) wrote(id, low uint64) {
	a.maxWritten = max(a.maxWritten, id)
	if low == 0 || low > id {
		return // in order: an ack of id covers everything before it
	}
	o := a.records()
	if len(o.overtakes) == maxOvertakes {
		o.coarsen(o.overtakes[0].id, o.overtakes[0].point)
		o.overtakes = append(o.overtakes[:0], o.overtakes[1:]...)
	}
	o.overtakes = append(o.overtakes, overtake{id, low - 1})
}

// records returns the ledger's out-of-order records, making them.
func (a *ackLedger) records() *outOfOrder {
	if a.out == nil {
		a.out = &outOfOrder{}
	}
	return a.out
}

func (o *outOfOrder) coarsen(until, point uint64) {
	if o.coarseUntil == 0 {
		o.coarsePoint = point
	} else {
		o.coarsePoint = min(o.coarsePoint, point)
	}
	o.coarseUntil = max(o.coarseUntil, until)
}

// ack applies the client's ack of id.
func (a *ackLedger) ack(id uint64) {
	if id <= a.floor || id > a.maxWritten {
		return // stale, or ahead of anything this connection sent
	}
	o := a.out
	if o == nil {
		a.point = max(a.point, id) // everything was written in order
		return
	}
	p := id
	if id <= o.coarseUntil {
		p = min(p, o.coarsePoint)
	}
	for _, t := range o.overtakes {
		if t.id == id {
			p = min(p, t.point)
		}
	}
	if p <= a.point {
		return
	}
	a.point = p
	// A record at or below the point can no longer raise it, whatever the
	// client acks later: forget it. (Pruning by "the client will not ack a
	// lower id again" would trust the client; this trusts nothing.)
	keep := o.overtakes[:0]
	for _, t := range o.overtakes {
		if t.id > p {
			keep = append(keep, t)
		}
	}
	clear(o.overtakes[len(keep):])
	o.overtakes = keep
	if o.coarseUntil <= p {
		o.coarseUntil, o.coarsePoint = 0, 0
	}
	if len(keep) == 0 && o.coarseUntil == 0 {
		a.out = nil // a session that caught up holds no records
	}
}

// backfill records that events after `after` are owed again (a subscribe
// with `since`): an ack of any frame up to until — everything written or
// queued so far — proves nothing about them.
func (a *ackLedger) backfill(after, until uint64) {
	a.point = min(a.point, after)
	o := a.records()
	for i := range o.overtakes {
		o.overtakes[i].point = min(o.overtakes[i].point, after)
	}
	o.coarsen(until, after)
}
