// Package producer publishes incident-management events to flarecast from
// Go: over the server's ingest socket with a Client, from another host over
// HTTP ingest (--ingest-listen) with an HTTPClient (DialHTTP), or
// in-process to an embedded *engine.Engine, through the same typed
// handlers.
//
// A Client sends events as NDJSON lines and matches each reply line to its
// event, so many goroutines can publish over one connection with their
// events pipelined; it redials with backoff when the connection breaks.
// Every publish ends with a message_id or an error in one of four classes
// (see ErrInvalidEvent, ErrUnavailable, ErrNoReply, ErrClosed): none is
// dropped silently.
//
// Handlers mirror the seed's handler groups (incidents, alerts,
// escalations, playbooks, notifications, assignments, comments, system)
// with one method per event type over a typed incident model: Severity and
// State admit only their valid values, so an event the server would refuse
// cannot be built (the one exception is an event larger than the server's
// max-message-size, which only the server knows).
//
//	c, err := producer.Dial(ctx, "flarecast.sock")   // or: var p producer.Publisher = eng
//	h := producer.NewHandlers(c)
//	id, err := h.Incidents.OnIncidentCreated(ctx, producer.Incident{
//		ID: "INC-1042", Severity: producer.P1, State: producer.StateDetected,
//		Source: "llm-sentinel", AffectedResources: []string{"api-service"},
//		Labels: map[string]string{"env": "production"}, Title: "Error rate above 5%",
//	})
package producer
