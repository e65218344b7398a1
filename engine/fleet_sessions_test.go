package engine_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/internal/redistest"
)

// storedResume polls the fleet's session store until session id's resume
// point is want: acks reach Redis within about a second.
func storedResume(t *testing.T, rs *redistest.Server, id string, want uint64) {
	t.Helper()
	opts, _ := redis.ParseURL(rs.URL())
	rc := redis.NewClient(opts)
	defer rc.Close()
	key := "flarecast:events:session:" + id
	var got string
	ok := pollUntil(5*time.Second, func() bool {
		got, _ = rc.HGet(context.Background(), key, "resume").Result()
		return got == strconv.FormatUint(want, 10)
	})
	if !ok {
		t.Fatalf("stored resume point of session %s = %q, want %d", id, got, want)
	}
}

// A session resumes on another instance with its subscriptions, from the
// last event it acknowledged: nothing it had not acked is lost, nothing
// before is sent again.
func TestFleetSessionResumesOnAnotherInstance(t *testing.T) {
	rs := redistest.Start(t)
	fleet := startFleet(t, rs, 2)
	a, b := fleet[0], fleet[1]

	onA := a.dial(t, "")
	onA.subscribe("pay", map[string]any{"sources": []string{"pay"}})
	onA.subscribe("p1", map[string]any{"severities": []string{"P1"}})
	first := a.mustPublish(t, normalEv(`"source":"pay"`), normalEv(`"source":"db","severity":"P1"`),
		normalEv(`"source":"db","severity":"P2"`), normalEv(`"source":"pay"`))
	got := onA.events(3)
	assertIDs(t, "on A", got, []uint64{first[0], first[1], first[3]})
	onA.send(map[string]any{"type": "ack", "message_id": got[1]})
	storedResume(t, rs, onA.sessionID, got[1])
	onA.ws.Close() // the client loses A, and reconnects to B

	more := b.mustPublish(t, normalEv(`"source":"pay"`), normalEv(`"source":"db","severity":"P2"`),
		normalEv(`"source":"db","severity":"P1"`))
	onB := b.resume(t, onA.sessionID, nil)
	// Unacknowledged on A, then what came meanwhile: in message_id order.
	assertIDs(t, "resumed on B", onB.events(3), []uint64{first[3], more[0], more[2]})
	onB.expectSilence(200 * time.Millisecond)
	if n := b.metric(t, `flarecast_session_resumes_total{result="moved"}`); n != 1 {
		t.Errorf("moved resumes on B = %v, want 1", n)
	}
}

// A session live on one instance and resumed on another is taken over
// there: the old connection is closed with session_taken_over.
func TestFleetSessionTakeoverAcrossInstances(t *testing.T) {
	rs := redistest.Start(t)
	fleet := startFleet(t, rs, 2)
	a, b := fleet[0], fleet[1]

	onA := a.dial(t, "")
	onA.subscribe("all", map[string]any{})
	ids := a.mustPublish(t, normalEv(`"source":"x"`))
	assertIDs(t, "on A", onA.events(1), ids)
	onA.send(map[string]any{"type": "ack", "message_id": ids[0]})
	storedResume(t, rs, onA.sessionID, ids[0])

	onB := b.resume(t, onA.sessionID, nil)
	expectTakenOver(t, onA)
	more := a.mustPublish(t, normalEv(`"source":"x"`))
	assertIDs(t, "on B", onB.events(1), more)

	// Back on A: the session comes back from B, not from A's stale copy.
	onB.send(map[string]any{"type": "ack", "message_id": more[0]})
	storedResume(t, rs, onA.sessionID, more[0])
	again := a.resume(t, onA.sessionID, nil)
	expectTakenOver(t, onB)
	last := b.mustPublish(t, normalEv(`"source":"x"`))
	assertIDs(t, "back on A", again.events(1), last)
}

// A session id that Redis does not know (or that expired) gives a fresh
// session, as on a single instance.
func TestFleetSessionUnknownIsFresh(t *testing.T) {
	rs := redistest.Start(t)
	a := startFleet(t, rs, 1)[0]
	c, w := a.dialWelcome(t, "session_id=0123456789abcdef0123456789abcdef", nil)
	if w["resumed"] != false || c.sessionID == "0123456789abcdef0123456789abcdef" {
		t.Fatalf("unknown session: welcome %v, want a fresh session", w)
	}
}

// expectTakenOver reads c's last messages: a closing/session_taken_over,
// then a normal close.
func expectTakenOver(t *testing.T, c *client) {
	t.Helper()
	msgs := c.expectClose(websocket.CloseNormalClosure)
	if n := len(msgs); n == 0 || msgs[n-1]["type"] != "closing" || msgs[n-1]["reason"] != "session_taken_over" {
		t.Fatalf("taken over connection read %v before its close, want closing/session_taken_over last", msgs)
	}
}

// Only the token holder that made a session may resume it on another
// instance; a refused attempt takes nothing from the holder.
func TestFleetSessionHolderOnly(t *testing.T) {
	rs := redistest.Start(t)
	var fleet [2]*testServer
	for i := range fleet {
		fleet[i] = startServer(t, func(c *engine.Config) { c.Broker, c.Auth = rs.URL(), secAuth(t) })
		waitReady(t, fleet[i])
	}
	a, b := fleet[0], fleet[1]
	aliceToken := secToken(t, "alice", time.Hour, secTenant("acme"))
	alice := secClient(t, a, "token="+aliceToken, nil, "")
	alice.subscribe("all", map[string]any{})
	storedResume(t, rs, alice.sessionID, 0)

	for name, token := range map[string]string{
		"other subject":         secToken(t, "bob", time.Hour, secTenant("acme")),
		"same subject, scope B": secToken(t, "alice", time.Hour, secTenant("globex")),
	} {
		ws, status, body, _ := secDial(t, b, "session_id="+alice.sessionID+"&token="+token, nil, "")
		if ws == nil {
			t.Fatalf("%s: upgrade refused (%d %s); the refusal comes after it", name, status, body)
		}
		msgs, code := secReadClose(t, &client{t: t, ws: ws})
		if code != websocket.ClosePolicyViolation || len(msgs) == 0 || msgs[0]["code"] != "UNAUTHORIZED" {
			t.Fatalf("%s resuming alice's session on B: %v, close %d; want UNAUTHORIZED and 1008", name, msgs, code)
		}
	}
	// Alice still holds her session on A, and can move it to B herself.
	ids := a.mustPublish(t, secTenantEvent("acme", 1))
	assertIDs(t, "alice on A", alice.events(1), ids)
	moved := secClient(t, b, "session_id="+alice.sessionID+"&token="+aliceToken, nil, "")
	if moved.sessionID != alice.sessionID {
		t.Fatalf("alice resumed session %s on B, want %s", moved.sessionID, alice.sessionID)
	}
	expectTakenOver(t, alice)
}
