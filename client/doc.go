// Package client is the Go client of flarecast's WebSocket protocol
// (docs/protocol.md), correct by default: an application that takes its
// events from a Subscription gets every matching event once, without
// writing any recovery code.
//
//	c, err := client.Dial(ctx, "ws://127.0.0.1:8080/ws", &client.Options{
//		GetToken: fetchToken, // --auth jwt: a token per connection, refreshed before it expires
//		OnState:  func(s client.StateChange) { log.Println("flarecast:", s.State) },
//		OnGap:    func(g client.Gap) { log.Println("events lost before", g.FirstAvailable) },
//	})
//	if err != nil { … }           // a *HandshakeError when the server refused the upgrade
//	defer c.Close()
//	sub, err := c.Subscribe(ctx, "critical", client.Filters{Severities: []client.Severity{client.P0, client.P1}})
//	if err != nil { … }           // a *ServerError: LIMIT_EXCEEDED, INVALID_MESSAGE, UNAUTHORIZED…
//	for ev, err := range sub.All() { // or: for ev := range sub.Events()
//		if err != nil { … }       // the client gave up: a *ClosedError (token_expired…) or the last dial error
//		handle(ev)                // once this returns the event is processed, and will be acked
//	}
//
// What the client does for the application:
//
//   - Acks after processing. An event counts as processed once the
//     application has received it from the subscription's channel (the
//     channel is unbuffered); the client acks the highest message_id
//     processed on the current connection at most every AckInterval
//     (200ms) and on Close. The server's resume point therefore never
//     passes an event the application has not taken.
//   - Reconnects after a drop with exponential backoff and jitter
//     (MinBackoff 250ms doubling to MaxBackoff 5s, up to +50%), resuming the
//     session with ?session_id=; the server replays from the resume point.
//   - De-duplicates by message_id across resumes with a bounded sliding
//     bitmap (DedupWindow ids, 128 KiB by default), not by "highest id
//     seen": after an overtake a lower id can legitimately arrive later.
//   - Falls back to since: when the server answers with a new session
//     (expired, restarted, another fleet instance), every subscription is
//     made again with since = the highest message_id processed. If the
//     new session's first event (on whichever of its connections, should
//     it be cut before one arrives) is at or below that id, the numbering
//     started again (a restarted single server): the client forgets the
//     old ids and backfills the new server's window with since 0. HISTORY_GAP
//     answers are reported to OnGap.
//   - Heartbeats: answers the server's pings; a connection that receives
//     nothing for three HeartbeatIntervals is taken for dead and replaced.
//   - Tokens: GetToken is called for each connection and again before the
//     token's exp, and the new token is sent in an `auth` message, so the
//     server never closes the connection with token_expired.
//   - Typed errors: *ServerError (the protocol's error codes), *ClosedError
//     (the closing reasons: slow_consumer, session_taken_over,
//     token_expired, server_shutdown, policy_violation…), *HandshakeError
//     (an HTTP refusal of the upgrade). A refused upgrade (4xx but 429) or
//     policy_violation ends the client; token_expired ends it unless
//     GetToken can supply a new token; everything else is reconnected.
//
// Events reach the subscriptions in the order the server sent them, which
// is message_id order while the connection keeps up. An event matching
// several subscriptions of the client is handed to each of them in turn
// (event messages carry no subscription id: the client applies each
// subscription's filters), so consume every subscription in its own
// goroutine. A consumer that stops reading holds the others back and,
// after 1024 frames, the socket: the server then closes the connection as
// a slow_consumer and the client resumes when it reads again.
//
// Limits: after a single server restarts, events it accepted before the
// client reconnected are recovered only once the first live event reveals
// the restart, and those whose new ids exceed the old ones cannot be told
// apart from events already delivered by id alone; a fleet (--broker)
// keeps message_ids across restarts and has neither problem.
package client
