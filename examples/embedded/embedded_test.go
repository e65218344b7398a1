package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestEmbeddedService builds the example, runs it, and drives it as its
// users would: a WebSocket client subscribes, the service's HTTP API
// changes incidents, and each change arrives as an event under the
// message_id the API returned. SIGTERM then shuts it down gracefully.
func TestEmbeddedService(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "embedded")
	build := exec.Command(goTool(), "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-listen", "127.0.0.1:0", "-http", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	// The program prints its two addresses once it serves.
	addrs := map[string]string{}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for len(addrs) < 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("program exited: %v", <-exited)
			}
			if name, addr, ok := strings.Cut(l, " "); ok {
				addrs[name] = addr
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the program did not print its addresses")
		}
	}
	wsURL, api := addrs["flarecast"], addrs["service"]

	ws, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", wsURL, err)
	}
	defer ws.Close()
	read := func() map[string]any {
		t.Helper()
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		var m map[string]any
		if err := ws.ReadJSON(&m); err != nil {
			t.Fatalf("read: %v", err)
		}
		return m
	}
	if m := read(); m["type"] != "welcome" {
		t.Fatalf("want welcome, got %v", m)
	}
	_ = ws.WriteJSON(map[string]any{"type": "subscribe", "subscription_id": "prod",
		"filters": map[string]any{"labels": map[string]string{"env": "production"}}})
	if m := read(); m["type"] != "subscribed" {
		t.Fatalf("want subscribed, got %v", m)
	}

	post := func(path, body string, wantStatus int) uint64 {
		t.Helper()
		resp, err := http.Post(api+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantStatus {
			t.Fatalf("POST %s: %d %s, want %d", path, resp.StatusCode, data, wantStatus)
		}
		var r struct {
			MessageID uint64 `json:"message_id"`
		}
		_ = json.Unmarshal(data, &r)
		return r.MessageID
	}
	expect := func(id uint64, fields map[string]any) {
		t.Helper()
		m := read()
		if m["type"] != "event" || uint64(m["message_id"].(float64)) != id {
			t.Fatalf("want event %d, got %v", id, m)
		}
		ev := m["event"].(map[string]any)
		for k, v := range fields {
			if fmt.Sprint(ev[k]) != fmt.Sprint(v) {
				t.Errorf("event %d: %s = %v, want %v (%v)", id, k, ev[k], v, ev)
			}
		}
	}

	// Refused by the service's own typed decoding: nothing is published.
	post("/incidents", `{"title":"x","severity":"P9"}`, http.StatusBadRequest)

	id := post("/incidents", `{"title":"Error rate above 5%","severity":"P1","source":"llm-sentinel",
		"affected_resources":["api-service"],"labels":{"env":"production"}}`, http.StatusCreated)
	expect(id, map[string]any{"event_type": "incident_created", "incident_id": "INC-1", "severity": "P1",
		"state": "Detected", "priority": "high", "title": "Error rate above 5%"})
	post("/incidents", `{"title":"staging only","severity":"P1","labels":{"env":"staging"}}`, http.StatusCreated) // filtered out
	id = post("/incidents/INC-1/escalate", `{"severity":"P0","reason":"error budget exhausted"}`, http.StatusOK)
	expect(id, map[string]any{"event_type": "escalated", "severity": "P0", "previous_severity": "P1", "priority": "critical"})
	id = post("/incidents/INC-1/comments", `{"author":"alice","text":"rolling back"}`, http.StatusOK)
	expect(id, map[string]any{"event_type": "comment_added", "author": "alice", "text": "rolling back"})
	id = post("/incidents/INC-1/resolve", `{"resolution":"rolled back v2.3"}`, http.StatusOK)
	expect(id, map[string]any{"event_type": "incident_resolved", "state": "Resolved", "resolution": "rolled back v2.3"})

	// flarecast's metrics, mounted on the service's own HTTP server.
	resp, err := http.Get(api + "/flarecast/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "flarecast_ingest_events_accepted_total 5\n") {
		t.Errorf("metrics do not count 5 accepted events:\n%s", body)
	}

	// Graceful shutdown: the client is told, the program exits cleanly.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if m := read(); m["type"] != "closing" || m["reason"] != "server_shutdown" {
		t.Fatalf("want closing (server_shutdown), got %v", m)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("program exited with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("program did not exit after SIGTERM")
	}
}

// goTool is the go command of the toolchain running the test.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}
