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
// Everything it talks to is on loopback: it refuses any other host. Client
// sockets are spread over several loopback source addresses so that 100,000
// connections do not exhaust one address's ephemeral ports, and it raises its
// own RLIMIT_NOFILE to the hard limit, capping N (and saying so) when that
// limit binds.
package loadtest
