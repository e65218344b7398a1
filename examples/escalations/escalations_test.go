package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/flarecast/flarecast/engine"
)

// TestEscalationsBot builds the example, runs it against a real engine on
// loopback, publishes a mix of events and checks that it prints exactly
// the P0/P1 escalations, in order, then exits cleanly on SIGTERM.
func TestEscalationsBot(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "escalations")
	if out, err := exec.Command(goTool(), "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfg := engine.DefaultConfig()
	cfg.Listen, cfg.AdminListen, cfg.IngestSocket = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.EventLoops, cfg.Board = 1, false
	eng, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine.Run: %v", err)
		}
	})
	<-eng.Ready()

	cmd := exec.Command(bin, "-url", "ws://"+eng.Addr().String()+"/ws")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	next := func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the bot exited: %v", <-exited)
			}
			return l
		case <-time.After(20 * time.Second):
			t.Fatal("no line from the bot")
		}
		return ""
	}
	if l := next(); l != "ready" {
		t.Fatalf("first line %q, want ready", l)
	}
	var want []string
	for i, e := range []struct{ typ, sev string }{
		{"escalated", "P0"}, {"escalated", "P3"}, {"incident_created", "P0"}, {"escalated", "P1"}, {"comment_added", "P1"}, {"escalated", "P0"},
	} {
		line := fmt.Sprintf(`{"event_type":%q,"severity":%q,"incident_id":"INC-%d","title":"db down","affected_resources":["db","api"]}`, e.typ, e.sev, i)
		id, err := eng.PublishJSON(context.Background(), []byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if e.typ == "escalated" && (e.sev == "P0" || e.sev == "P1") {
			want = append(want, fmt.Sprintf("#%d %s INC-%d escalated: db down [db,api]", id, e.sev, i))
		}
	}
	for _, w := range want {
		if got := next(); got != w {
			t.Fatalf("printed %q, want %q", got, w)
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	for l := range lines {
		t.Errorf("unexpected line %q", l)
	}
	if err := <-exited; err != nil {
		t.Fatalf("exit: %v", err)
	}
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}
