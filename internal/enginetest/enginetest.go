// Package enginetest runs a real flarecast engine inside a test process, on
// loopback ports the kernel picks, for the tests of packages that talk to
// it (client, producer, the CLI): one harness instead of a copy in each.
package enginetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
)

// Server is one running engine.
type Server struct {
	Eng   *engine.Engine
	Addr  string // host:port of the WebSocket listener
	WS    string // ws://Addr/ws (the configured path)
	Admin string // http://host:port of the admin listener; "" without one

	cancel context.CancelFunc
	done   chan error
}

// Config is engine.DefaultConfig on loopback ports chosen by the kernel,
// with no ingest socket and no board: what most tests start from.
func Config() engine.Config {
	cfg := engine.DefaultConfig()
	cfg.Listen, cfg.AdminListen, cfg.IngestSocket = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.Board = false
	return cfg
}

// Start runs an engine with cfg until the test ends (Stop, registered with
// t.Cleanup), once it accepts connections; or says why it could not.
func Start(t testing.TB, cfg engine.Config) (*Server, error) {
	t.Helper()
	eng, err := engine.New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Eng: eng, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- eng.Run(ctx) }()
	select {
	case <-eng.Ready():
	case err := <-s.done:
		cancel()
		return nil, fmt.Errorf("engine.Run: %w", err)
	case <-time.After(10 * time.Second):
		cancel()
		return nil, errors.New("engine did not start within 10s")
	}
	s.Addr = eng.Addr().String()
	s.WS = "ws://" + s.Addr + cfg.Path
	if a := eng.AdminAddr(); a != nil {
		s.Admin = "http://" + a.String()
	}
	t.Cleanup(func() { s.Stop(t) })
	return s, nil
}

// MustStart is Start, failing the test on an error.
func MustStart(t testing.TB, cfg engine.Config) *Server {
	t.Helper()
	s, err := Start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Stop shuts the engine down gracefully; calling it twice is fine.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("engine.Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("engine did not stop within 15s")
	}
}

// Metric reads one series (name with its labels, as /metrics writes it)
// from the admin listener; -1 when the engine does not export it.
func (s *Server) Metric(t testing.TB, series string) float64 {
	t.Helper()
	resp, err := http.Get(s.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(body)) {
		if name, val, ok := strings.Cut(strings.TrimSpace(line), " "); ok && name == series {
			f, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
}

// WaitMetric polls a series until it reaches want, failing the test after
// 15 seconds.
func (s *Server) WaitMetric(t testing.TB, series string, want float64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for s.Metric(t, series) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed below %v (at %v)", series, want, s.Metric(t, series))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
