package engine_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestThousandClients: 1,000 concurrent clients, each with a filter from a
// small mix, a few hundred events; every client receives exactly the
// events its filter selects, in message_id order, each once.
func TestThousandClients(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections")
	}
	const (
		numClients = 1000
		numEvents  = 400
	)
	s := startServer(t, nil)

	mix := []testFilter{
		{Severities: []string{"P1"}},
		{Severities: []string{"P0", "P2"}},
		{Sources: []string{"src-a"}},
		{Sources: []string{"src-b", "src-c"}},
		{Labels: map[string]string{"team": "core"}},
		{Labels: map[string]string{"env": "prod", "team": "edge"}},
		{Resources: []string{"r1"}},
		{EventTypes: []string{"incident_resolved"}, Severities: []string{"P3", "P4"}},
		{},
		{IncidentIDs: []string{"INC-7", "INC-8"}, States: []string{"Investigating"}},
	}

	// Events, all of normal priority so that each client's events keep
	// message_id order.
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(vals ...string) string { return vals[rng.IntN(len(vals))] }
	corpus := make([]corpusEvent, numEvents)
	for i := range corpus {
		e := corpusEvent{
			name:       fmt.Sprint(i),
			eventType:  pick("incident_updated", "incident_resolved", "comment_added", "playbook_started", "notification_sent"),
			severity:   pick("", "P0", "P1", "P2", "P3", "P4"),
			state:      pick("", "Detected", "Investigating", "Resolved"),
			source:     pick("", "src-a", "src-b", "src-c", "src-d"),
			incidentID: pick("", "INC-1", "INC-7", "INC-8", "INC-9"),
		}
		for _, r := range []string{"r1", "r2", "r3"} {
			if rng.IntN(3) == 0 {
				e.resources = append(e.resources, r)
			}
		}
		if rng.IntN(4) > 0 {
			e.labels = map[string]string{"team": pick("core", "edge"), "env": pick("prod", "stage")}
		}
		corpus[i] = e
	}

	// Connect and subscribe, a few dozen at a time.
	clients := make([]*websocket.Conn, numClients)
	dialer := &websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	connect := func(i int) error {
		ws, _, err := dialer.DialContext(ctx, s.wsURL, http.Header{})
		if err != nil {
			return fmt.Errorf("client %d: dial: %w", i, err)
		}
		clients[i] = ws
		_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
		var m struct {
			Type           string `json:"type"`
			SubscriptionID string `json:"subscription_id"`
		}
		if err := ws.ReadJSON(&m); err != nil || m.Type != "welcome" {
			return fmt.Errorf("client %d: welcome: %+v %v", i, m, err)
		}
		for _, sub := range []struct {
			id string
			f  map[string]any
		}{{"fence", fenceFilter}, {"f", mix[i%len(mix)].wire()}} {
			if err := ws.WriteJSON(map[string]any{"type": "subscribe", "subscription_id": sub.id, "filters": sub.f}); err != nil {
				return fmt.Errorf("client %d: subscribe: %w", i, err)
			}
			if err := ws.ReadJSON(&m); err != nil || m.Type != "subscribed" || m.SubscriptionID != sub.id {
				return fmt.Errorf("client %d: subscribed: %+v %v", i, m, err)
			}
		}
		return nil
	}
	t.Cleanup(func() {
		for _, ws := range clients {
			if ws != nil {
				ws.Close()
			}
		}
	})
	sem := make(chan struct{}, 32) // a few dozen handshakes at a time
	errs := make(chan error, numClients)
	var dials sync.WaitGroup
	for i := range clients {
		sem <- struct{}{}
		dials.Add(1)
		go func() {
			defer func() { <-sem; dials.Done() }()
			if err := connect(i); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	dials.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	s.waitMetric(t, "websocket_active_connections", numClients)
	s.waitMetric(t, "websocket_active_subscriptions", 2*numClients)

	// Every client reads until the fence.
	type result struct {
		ids   []uint64
		fence uint64
		err   error
	}
	results := make([]result, numClients)
	var readers sync.WaitGroup
	for i, ws := range clients {
		readers.Add(1)
		go func() {
			defer readers.Done()
			var got []uint64
			_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
			for {
				// Parsed by hand: a million json.Unmarshal calls under the
				// race detector would dominate the test's time.
				_, data, err := ws.ReadMessage()
				if err != nil {
					results[i] = result{ids: got, err: err}
					return
				}
				id, ok := eventMessageID(data)
				if !ok {
					results[i] = result{ids: got, err: fmt.Errorf("unexpected message %s", data)}
					return
				}
				if bytes.Contains(data, []byte(`"fence":"yes"`)) {
					results[i] = result{ids: got, fence: id}
					return
				}
				got = append(got, id)
			}
		}()
	}

	lines := make([]string, 0, numEvents+1)
	for _, e := range corpus {
		lines = append(lines, e.line())
	}
	ids := s.mustPublish(t, append(lines, fenceEvent)...)
	readers.Wait()

	want := make([][]uint64, len(mix))
	var delivered int
	for k, f := range mix {
		for i, e := range corpus {
			if f.matches(e) {
				want[k] = append(want[k], ids[i])
			}
		}
		if len(want[k]) == 0 || len(want[k]) == numEvents && k != 8 {
			t.Fatalf("test setup: filter %d selects %d of %d events; the mix should discriminate", k, len(want[k]), numEvents)
		}
	}
	failures := 0
	for i, r := range results {
		k := i % len(mix)
		delivered += len(want[k]) + 1
		switch {
		case r.err != nil:
			t.Errorf("client %d (filter %v): after %d events: %v", i, mix[k].wire(), len(r.ids), r.err)
		case r.fence != ids[len(ids)-1]:
			t.Errorf("client %d: fence message_id %d, want %d", i, r.fence, ids[len(ids)-1])
		case !equalIDs(r.ids, want[k]):
			t.Errorf("client %d (filter %v): %d events, want %d: %s", i, mix[k].wire(), len(r.ids), len(want[k]), diffIDs(r.ids, want[k]))
		default:
			continue
		}
		if failures++; failures >= 10 {
			t.Fatalf("stopping after %d failing clients", failures)
		}
	}
	s.waitMetric(t, "websocket_events_broadcast_total", numEvents+1)
	s.waitMetric(t, "websocket_events_delivered_total", float64(delivered))

	for _, ws := range clients {
		ws.Close()
	}
	s.waitMetric(t, "websocket_active_connections", 0)
}

// eventMessageID returns the message_id of an event message as the server
// encodes it: {"type":"event","message_id":N,...}.
func eventMessageID(data []byte) (uint64, bool) {
	rest, ok := bytes.CutPrefix(data, []byte(`{"type":"event","message_id":`))
	if !ok {
		return 0, false
	}
	end := bytes.IndexByte(rest, ',')
	if end < 0 {
		return 0, false
	}
	id, err := strconv.ParseUint(string(rest[:end]), 10, 64)
	return id, err == nil && id > 0
}
