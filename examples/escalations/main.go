// Command escalations is a small on-call bot built on package client: it
// prints every P0/P1 escalation a flarecast server streams, one line each,
// and never misses or repeats one across drops, server restarts and token
// refreshes (the client resumes, re-subscribes with since, de-duplicates
// and acks what was printed).
//
//	go run ./examples/escalations -url ws://127.0.0.1:8080/ws
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/flarecast/flarecast/client"
)

func main() {
	url := flag.String("url", "ws://127.0.0.1:8080/ws", "the flarecast WebSocket endpoint")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	c, err := client.Dial(ctx, *url, &client.Options{
		Token: os.Getenv("FLARECAST_TOKEN"), // for a server run with --auth jwt
		OnState: func(s client.StateChange) {
			log.Printf("flarecast: %s %s", s.State, s.SessionID)
		},
		OnGap: func(g client.Gap) {
			log.Printf("flarecast: events before message_id %d are no longer held", g.FirstAvailable)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	sub, err := c.Subscribe(ctx, "escalations", client.Filters{
		EventTypes: []client.EventType{client.Escalated},
		Severities: []client.Severity{client.P0, client.P1},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready")
	go func() { <-ctx.Done(); c.Close() }() // ends the loop below
	for ev, err := range sub.All() {
		if err != nil {
			log.Fatal(err) // the client gave up (a refused token, say)
		}
		// Once this iteration returns, the event counts as processed and is acked.
		fmt.Printf("#%d %s %s escalated: %s [%s]\n", ev.MessageID, ev.Severity, ev.IncidentID, ev.Title,
			strings.Join(ev.AffectedResources, ","))
	}
}
