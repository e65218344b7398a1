package client_test

import (
	"context"
	"fmt"
	"log"

	"github.com/flarecast/flarecast/client"
)

// A bot that prints P0/P1 escalations until the context ends; acks,
// resumes, re-subscription and de-duplication are the client's business.
func ExampleDial() {
	ctx := context.Background()
	c, err := client.Dial(ctx, "ws://127.0.0.1:8080/ws", &client.Options{
		OnState: func(s client.StateChange) { log.Printf("flarecast: %s", s.State) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	sub, err := c.Subscribe(ctx, "escalations", client.Filters{
		EventTypes: []client.EventType{client.Escalated},
		Severities: []client.Severity{client.P0, client.P1},
	}, client.Since(0)) // first what the server still holds
	if err != nil {
		log.Fatal(err)
	}
	for ev, err := range sub.All() {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(ev.MessageID, ev.Severity, ev.IncidentID, ev.Title)
	}
}
