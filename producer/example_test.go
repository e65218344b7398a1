package producer_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/producer"
)

// runServer starts a flarecast server for the examples, as `flarecast
// serve` would, with its ingest socket in a temporary directory.
func runServer() (eng *engine.Engine, socket string, stop func()) {
	dir, err := os.MkdirTemp("", "flarecast-example")
	if err != nil {
		panic(err)
	}
	cfg := engine.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.IngestSocket = filepath.Join(dir, "flarecast.sock")
	eng, err = engine.New(cfg)
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	<-eng.Ready()
	return eng, cfg.IngestSocket, func() {
		cancel()
		<-done
		os.RemoveAll(dir)
	}
}

// Publishing over the ingest socket with the typed handlers: each event
// gets its message_id, or an error saying what happened to it.
func Example() {
	_, socket, stop := runServer()
	defer stop()
	ctx := context.Background()

	client, err := producer.Dial(ctx, socket)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	h := producer.NewHandlers(client)

	inc := producer.Incident{
		ID:                "INC-1042",
		Title:             "Error rate above 5%",
		Severity:          producer.P1,
		State:             producer.StateDetected,
		Source:            "llm-sentinel",
		AffectedResources: []string{"api-service"},
		Labels:            map[string]string{"env": "production"},
	}
	id, err := h.Incidents.OnIncidentCreated(ctx, inc)
	fmt.Println("incident_created:", id, err)

	inc.Severity = producer.P0
	id, err = h.Escalations.OnEscalated(ctx, inc, producer.Escalation{Level: 2, FromSeverity: producer.P1, Reason: "error budget exhausted"})
	fmt.Println("escalated:", id, err)

	_, err = h.Comments.OnCommentAdded(ctx, producer.Incident{}, producer.Comment{Text: "on it"})
	fmt.Println("invalid event:", errors.Is(err, producer.ErrInvalidEvent))

	// Output:
	// incident_created: 1 <nil>
	// escalated: 2 <nil>
	// invalid event: true
}

// The same handlers publish in-process to a server embedded in the
// program: *engine.Engine is a Publisher too, with the same validation
// and the same message_ids as the socket.
func ExampleNewHandlers_embedded() {
	eng, _, stop := runServer()
	defer stop()
	ctx := context.Background()

	h := producer.NewHandlers(eng)
	inc := producer.Incident{ID: "INC-7", Severity: producer.P3, State: producer.StateTriaged}
	id, err := h.Incidents.OnIncidentCreated(ctx, inc)
	fmt.Println(id, err)
	id, err = h.Incidents.OnIncidentResolved(ctx, inc)
	fmt.Println(id, err)

	// Raw JSON goes through the same validation as an ingest line.
	_, err = eng.PublishJSON(ctx, []byte(`{"event_type":"incident_created","severity":"P7"}`))
	fmt.Println(err)

	// Output:
	// 1 <nil>
	// 2 <nil>
	// invalid event: severity "P7" is not one of P0, P1, P2, P3, P4
}

// Raw NDJSON events, pipelined: one Result per event, in order.
func ExampleClient_PublishBatch() {
	_, socket, stop := runServer()
	defer stop()
	ctx := context.Background()

	client, err := producer.Dial(ctx, socket)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	results := client.PublishBatch(ctx, [][]byte{
		[]byte(`{"event_type":"alert_received","severity":"P2","source":"prometheus"}`),
		[]byte(`{"event_type":"alert_received","severity":"P9"}`),
		[]byte(`{"event_type":"system_event","message":"maintenance at 02:00"}`),
	})
	for _, r := range results {
		switch {
		case r.Err == nil:
			fmt.Println("accepted", r.MessageID)
		case errors.Is(r.Err, producer.ErrInvalidEvent):
			fmt.Println("refused:", r.Err)
		default:
			fmt.Println("not accepted, retry later:", r.Err)
		}
	}

	// Output:
	// accepted 1
	// refused: INVALID_EVENT: severity "P9" is not one of P0, P1, P2, P3, P4
	// accepted 2
}

// Severities and states come from the package's values or from parsing
// text; there is no way to make one the server would refuse.
func ExampleParseSeverity() {
	s, err := producer.ParseSeverity("P1")
	fmt.Println(s, err, s == producer.P1)
	_, err = producer.ParseSeverity("critical")
	fmt.Println(err)

	// Output:
	// P1 <nil> true
	// severity "critical" is not one of P0, P1, P2, P3, P4
}
