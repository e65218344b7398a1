package main

import (
	"fmt"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/internal/redistest"
)

// testFleetInstanceKilled: two real instances share a real Redis; a client
// attached to one of them, acking as it reads, loses it to SIGKILL in the
// middle of a steady publish and resumes its session on the other with
// nothing lost. The session was never held by the survivor: what it needs
// comes from the fleet's session store.
func testFleetInstanceKilled(t *testing.T, bin string) {
	rs := redistest.Start(t)
	a := startE2EServer(t, bin, "--broker", rs.URL())
	b := startE2EServer(t, bin, "--broker", rs.URL())

	onA, _ := dialE2E(t, a, nil)
	session := onA.session
	onA.subscribe(map[string]any{"sources": []string{"pay"}})

	// A steady producer on B: 600 matching events over about 3 s, with
	// events of another source in between.
	const total = 600
	var (
		mu        sync.Mutex
		published []uint64
	)
	producerDone := make(chan error, 1)
	go func() {
		defer close(producerDone)
		for i := range total {
			id, err := e2eTryIngest(b.socket, []byte(fmt.Sprintf(`{"event_type":"incident_updated","source":"pay","title":"n%d"}`, i)))
			if err == nil {
				_, err = e2eTryIngest(b.socket, []byte(`{"event_type":"incident_updated","source":"db"}`))
			}
			if err != nil {
				producerDone <- err
				return
			}
			mu.Lock()
			published = append(published, id)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()

	// The client reads and acks on A for a while, then A is killed.
	received := make(map[uint64]bool)
	var highest uint64
	for len(received) < total/3 {
		id := onA.event()
		received[id] = true
		highest = max(highest, id)
		onA.ack(highest)
	}
	// Killed while acks flow: the store is up to a second behind them,
	// so B sends some acked events again (the client de-duplicates), and
	// nothing else.
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done
	for { // what A wrote before it died
		id, ok := onA.tryEvent()
		if !ok {
			break
		}
		received[id] = true
	}

	onB, welcome := dialE2EQuery(t, b, "session_id="+session)
	if welcome["resumed"] != true || welcome["session_id"] != session {
		t.Fatalf("resuming on B: welcome %v, want session %s resumed", welcome, session)
	}
	if err := <-producerDone; err != nil {
		t.Fatalf("publishing on B: %v", err)
	}
	mu.Lock()
	want := published
	mu.Unlock()
	var resumed []uint64
	for !containsAll(received, want) {
		id := onB.event()
		if n := len(resumed); n > 0 && id <= resumed[n-1] {
			t.Fatalf("after the resume, message_id %d came after %d", id, resumed[n-1])
		}
		resumed = append(resumed, id)
		received[id] = true
	}
	again := 0
	for _, id := range resumed {
		if id <= highest {
			again++
		}
	}
	t.Logf("%d events, A killed after the client acked %d; on B: %d events, %d of them sent again (acked on A within the last sync)",
		len(want), highest, len(resumed), again)
}

func containsAll(got map[uint64]bool, want []uint64) bool {
	for _, id := range want {
		if !got[id] {
			return false
		}
	}
	return true
}

// dialE2EQuery dials with a query string and returns the welcome.
func dialE2EQuery(t *testing.T, s *e2eServer, query string) (*e2eClient, map[string]any) {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+s.listen+"/ws?"+query, http.Header{})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	c := &e2eClient{t: t, ws: ws}
	w := c.read()
	if w["type"] != "welcome" {
		t.Fatalf("first message %v, want welcome", w)
	}
	c.session, _ = w["session_id"].(string)
	return c, w
}

// event reads the next event and returns its message_id.
func (c *e2eClient) event() uint64 {
	c.t.Helper()
	m := c.read()
	if m["type"] != "event" {
		c.t.Fatalf("want an event, got %v", m)
	}
	return uint64(m["message_id"].(float64))
}

// tryEvent reads what is left of a dead server's connection: an event, or
// false once the connection ended.
func (c *e2eClient) tryEvent() (uint64, bool) {
	_ = c.ws.SetReadDeadline(time.Now().Add(2 * time.Second))
	var m map[string]any
	if err := c.ws.ReadJSON(&m); err != nil || m["type"] != "event" {
		return 0, false
	}
	return uint64(m["message_id"].(float64)), true
}

func (c *e2eClient) ack(id uint64) {
	c.t.Helper()
	if err := c.ws.WriteJSON(map[string]any{"type": "ack", "message_id": id}); err != nil {
		c.t.Fatalf("ack: %v", err)
	}
}
