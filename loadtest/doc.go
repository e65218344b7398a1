// Package loadtest is flarecast's load tester, the engine of the
// flarecast-loadtest command.
//
// It opens N WebSocket connections to a flarecast server on loopback,
// subscribes each with one filter from a configurable mix, publishes events
// over the ingest socket at a fixed rate with a send timestamp inside each
// event, and measures what the issue calls the server's class: connections
// held and connect rate, deliveries per second, end-to-end latency (ingest
// write → client read) in an HDR histogram, events lost and duplicated, and
// the server's RSS and Go heap per connection.
//
// Exact accounting is the design constraint. Connections are split into G
// groups; every event targets one group (event seq s targets group s mod G)
// and carries the incident id, source, resource and label value of that
// group, while each connection subscribes to its group through one filter
// kind of the mix (incident_ids, sources, labels, affected_resources, or a
// combination AND-ed with event_types and severities). So the set of
// connections an event must reach is its group, known without evaluating any
// filter, and each connection remembers which events of its group arrived in
// a bitset indexed by s div G: lost, duplicate and unexpected deliveries are
// counted exactly, not estimated.
//
// Once subscribed, the clients receive on a few loops with io_uring
// multishot receives (loop_uring.go, Config.ClientEngine "uring", the
// default of every preset but chaos, soak and abuse, and the cheapest per
// delivery), on the same loops with epoll and read ("loop", loop.go, where
// io_uring is refused), or each on a goroutine of its own ("goroutine",
// which the sessions of chaos and soak need to reconnect and ack); all
// account through the same code. The report gives the load tester's own CPU per
// delivery (getrusage, user + system, while events flow), to compare them.
//
// Everything it talks to is on loopback: it refuses any other host. Client
// sockets are spread over several loopback source addresses so that 100,000
// connections do not exhaust one address's ephemeral ports, and it raises its
// own RLIMIT_NOFILE to the hard limit, capping N (and saying so) when that
// limit binds.
//
// Two presets test at-least-once delivery under failure (chaos.go). In
// chaos (issue 5: 2,000 connections, 500 events/s matching 10, 60 s), 2% of
// the connections per second are reset at random (SetLinger(0), Close: an
// RST) and reconnect after 0–500 ms with ?session_id=, expecting
// welcome{"resumed":true}. Every client follows the plain ack rule of
// docs/protocol.md: it acks the highest message_id it has received on the
// current connection, every 200 ms or 50 events. A client is a session: its
// bitset outlives its connections, so an event is lost only if none of the
// session's connections received it. A duplicate is allowed only when it
// was received before the reset at or above the resume point the server
// made of the last ack it surely took (one written at least a second before
// the reset: an ack written just before may still be unread on the old
// connection when the resume arrives, and the server then ignores it); a
// session with no ack taken may replay everything since it began. All
// load-test events are normal priority, so that resume point is just above
// the ack unless events arrived out of order, which lowers it (chaos.go).
// Any other duplicate is a bug. The run fails on a loss or an illegal
// duplicate, and reports resumes, HISTORY_GAP errors and events out of
// message_id order on one connection.
//
// soak (issue 10: 10 minutes by default, 60 s in CI) adds churn: 1% of the
// connections per second close cleanly and a new session takes each one's
// place, subscribing with since = the last message_id it processed, on top
// of 1%/s resets. It reads the server's RSS and Go heap (after a forced GC)
// every progress interval while publishing and fails unless memory is flat:
// the median of the last quarter at most 15% + 4 MiB above the median of
// the second quarter, for both. A spawned server is started with a 10 s
// session timeout and a 5,000-event history so that what it legitimately
// holds is full within the first quarter; against a server of your own,
// give it similar settings or a run long enough to fill its windows.
//
// abuse (issue 13: 5,000 connections, 200 events/s matching 100, 30 s)
// runs the same workload twice in one invocation (Config.Abusers "both"):
// without, then with one abusive client of each kind beside the healthy
// ones while events are published (abuse.go): one that subscribes to
// everything and never reads; a ping flood that never reads; re-subscribe
// loops with a 64 KiB filter and with 999 values; garbage frames with
// reconnects; acks of message_id 1e15 with periodic resumes, counting the
// events it was owed and never got. It reports the healthy clients'
// latency, loss and duplicates and the server's RSS for both runs and their
// ratio, and what each abuser sent and was answered. Every abuser is
// bounded in rate and stops with the run. The abusers run in a child
// process (abuseproc.go: the load tester started again with
// --abusers-only), so that they do not delay the measuring process's own
// network polling; --abuser-cpus and --server-cpus pin that child and a
// spawned server with taskset.
package loadtest
