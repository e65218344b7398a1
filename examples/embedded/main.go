// Command embedded is a Go service with flarecast inside it: no separate
// server process, no ingest socket. It keeps incidents in memory behind a
// small HTTP API and publishes every change in-process, through the typed
// handlers, to the WebSocket clients of the flarecast engine it runs.
//
//	go run ./examples/embedded                       # API on :8000, WebSocket on :8080/ws
//	curl -d '{"title":"Error rate above 5%","severity":"P1","source":"llm-sentinel",
//	          "affected_resources":["api-service"],"labels":{"env":"production"}}' localhost:8000/incidents
//	curl -d '{"severity":"P0","reason":"error budget exhausted"}' localhost:8000/incidents/INC-1/escalate
//	curl -d '{"author":"alice","text":"rolling back"}' localhost:8000/incidents/INC-1/comments
//	curl -d '{"resolution":"rolled back v2.3"}' localhost:8000/incidents/INC-1/resolve
//
// flarecast's /metrics, /healthz and /readyz are mounted on the service's
// own HTTP server under /flarecast/.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/flarecast/flarecast/engine"
	"github.com/flarecast/flarecast/producer"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	cfg := engine.DefaultConfig() // the configuration of `flarecast serve`
	cfg.AdminListen = ""          // mounted on the service's HTTP server instead
	cfg.IngestSocket = ""         // events come from this process only
	flag.StringVar(&cfg.Listen, "listen", cfg.Listen, "flarecast WebSocket address (clients connect to ws://ADDR/ws)")
	apiAddr := flag.String("http", ":8000", "the service's HTTP API address")
	flag.Parse()

	eng, err := engine.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	engDone := make(chan error, 1)
	go func() { engDone <- eng.Run(ctx) }()
	select {
	case <-eng.Ready():
	case err := <-engDone:
		return err
	}

	svc := &service{events: producer.NewHandlers(eng), incidents: map[string]*producer.Incident{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /incidents", svc.create)
	mux.HandleFunc("POST /incidents/{id}/escalate", svc.escalate)
	mux.HandleFunc("POST /incidents/{id}/comments", svc.comment)
	mux.HandleFunc("POST /incidents/{id}/resolve", svc.resolve)
	mux.Handle("/flarecast/", http.StripPrefix("/flarecast", eng.AdminHandler()))
	ln, err := net.Listen("tcp", *apiAddr)
	if err != nil {
		stop()
		<-engDone
		return err
	}
	api := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = api.Serve(ln) }()
	fmt.Printf("flarecast ws://%s%s\n", eng.Addr(), cfg.Path)
	fmt.Printf("service http://%s\n", ln.Addr())

	<-ctx.Done()
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = api.Shutdown(shutCtx) // no new incidents, then the engine drains and says goodbye
	return <-engDone
}

// service is the incident store of a Go service; each change is published
// to flarecast as it is made.
type service struct {
	events *producer.Handlers

	mu        sync.Mutex
	incidents map[string]*producer.Incident
	nextID    int
}

type createRequest struct {
	Title             string            `json:"title"`
	Severity          producer.Severity `json:"severity"` // "P0"…"P4": anything else is refused while decoding
	Source            string            `json:"source"`
	AffectedResources []string          `json:"affected_resources"`
	Labels            map[string]string `json:"labels"`
}

func (s *service) create(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Severity.IsZero() {
		http.Error(w, "severity is required", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.nextID++
	now := time.Now()
	inc := &producer.Incident{
		ID: "INC-" + strconv.Itoa(s.nextID), Title: req.Title, Severity: req.Severity,
		State: producer.StateDetected, Source: req.Source, AffectedResources: req.AffectedResources,
		Labels: req.Labels, CreatedAt: now, UpdatedAt: now,
	}
	s.incidents[inc.ID] = inc
	snapshot := *inc
	s.mu.Unlock()
	id, err := s.events.Incidents.OnIncidentCreated(r.Context(), snapshot)
	reply(w, http.StatusCreated, snapshot.ID, id, err)
}

func (s *service) escalate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Severity producer.Severity `json:"severity"`
		Reason   string            `json:"reason"`
	}
	if !decode(w, r, &req) {
		return
	}
	var esc producer.Escalation
	inc, ok := s.update(w, r, func(inc *producer.Incident) {
		esc = producer.Escalation{Level: 1, Reason: req.Reason}
		if !req.Severity.IsZero() && req.Severity != inc.Severity {
			esc.FromSeverity, inc.Severity = inc.Severity, req.Severity
		}
	})
	if ok {
		id, err := s.events.Escalations.OnEscalated(r.Context(), inc, esc)
		reply(w, http.StatusOK, inc.ID, id, err)
	}
}

func (s *service) comment(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Author string `json:"author"`
		Text   string `json:"text"`
	}
	if !decode(w, r, &req) {
		return
	}
	inc, ok := s.update(w, r, func(*producer.Incident) {})
	if ok {
		id, err := s.events.Comments.OnCommentAdded(r.Context(), inc, producer.Comment{Author: req.Author, Text: req.Text, CreatedAt: time.Now()})
		reply(w, http.StatusOK, inc.ID, id, err)
	}
}

func (s *service) resolve(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Resolution string `json:"resolution"`
	}
	if !decode(w, r, &req) {
		return
	}
	inc, ok := s.update(w, r, func(inc *producer.Incident) {
		inc.State, inc.Resolution = producer.StateResolved, req.Resolution
	})
	if ok {
		id, err := s.events.Incidents.OnIncidentResolved(r.Context(), inc)
		reply(w, http.StatusOK, inc.ID, id, err)
	}
}

// update applies change to the incident named in the path and returns a
// copy to publish.
func (s *service) update(w http.ResponseWriter, r *http.Request, change func(*producer.Incident)) (producer.Incident, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inc, ok := s.incidents[r.PathValue("id")]
	if !ok {
		http.Error(w, "no such incident", http.StatusNotFound)
		return producer.Incident{}, false
	}
	change(inc)
	inc.UpdatedAt = time.Now()
	return *inc, true
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(v); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

// reply reports the published event's message_id, or why it was not published.
func reply(w http.ResponseWriter, status int, incidentID string, messageID uint64, err error) {
	switch {
	case errors.Is(err, producer.ErrInvalidEvent):
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"incident_id": incidentID, "message_id": messageID})
}
