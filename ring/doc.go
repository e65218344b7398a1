// Package ring holds the two sequence-ordered buffers at the centre of
// flarecast: Ring, the bounded lock-free hand-off from the ingest goroutines
// to the single dispatcher, and History, the dispatcher's replay window.
//
// Who calls what:
//
//   - Each ingest goroutine calls [Ring.Publish] for a validated event and
//     replies to its producer with the returned sequence number, which is the
//     event's message_id. Publish blocks while the ring is full; it never drops
//     an accepted event.
//   - The dispatcher goroutine (the only consumer) loops on [Ring.Wait] and
//     [Ring.Consume], receiving events in strictly increasing, gap-free
//     sequence order no matter in which order concurrent producers finished
//     writing them. It appends each event to a [History] it owns, and answers
//     replay/resume requests from it.
//   - Shutdown calls [Ring.Close]: later Publish calls fail with [ErrClosed],
//     and Wait reports ErrClosed once every accepted event has been consumed.
package ring
