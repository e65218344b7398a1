// Package redistest starts real redis-server processes for tests: on a
// loopback port, with its data in a temporary directory, stopped when the
// test ends. No fake Redis: the fleet's guarantees are about Redis itself.
package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Server is one redis-server process.
type Server struct {
	Port int
	dir  string
	cmd  *exec.Cmd
	t    testing.TB
	bin  string   // redis-server unless set
	conf string   // a config file to start with, if any
	args []string // the data settings; nil: Start's
}

// URL is the broker URL of the server.
func (s *Server) URL() string { return "redis://127.0.0.1:" + strconv.Itoa(s.Port) }

// Start runs redis-server with an append-only file fsynced on every write,
// so a restart loses nothing it acknowledged. Without redis-server the test
// is skipped loudly, unless CI=true, where its absence is a failure.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not installed: .ci/run must install it (apt-get install -y redis-server)")
		}
		t.Skip("SKIPPING: redis-server not found; install it (apt-get install -y redis-server) to run the fleet tests")
	}
	s := &Server{Port: freePort(t), dir: t.TempDir(), t: t}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	bin, args := s.bin, s.args
	if bin == "" {
		bin = "redis-server"
	}
	if s.conf != "" {
		args = []string{s.conf}
	} else {
		if args == nil {
			args = []string{"--appendonly", "yes", "--appendfsync", "always"}
		}
		args = append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(s.Port), "--dir", s.dir,
			"--save", "", "--logfile", filepath.Join(s.dir, "redis.log")}, args...)
	}
	s.cmd = exec.Command(bin, args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", bin, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", s.addr(), 200*time.Millisecond); err == nil {
			_, _ = c.Write([]byte("PING\r\n"))
			buf := make([]byte, 16)
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := c.Read(buf)
			c.Close()
			if string(buf[:n]) == "+PONG\r\n" {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	s.t.Fatalf("%s did not answer on %s:\n%s", bin, s.addr(), log)
}

func (s *Server) addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// Stop stops the server (SIGTERM, then waits); calling it twice is fine.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

// Restart stops the server and starts it again on the same port and data.
func (s *Server) Restart() {
	s.Stop()
	s.start()
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(fmt.Errorf("find a free port: %w", err))
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Kill stops the server with SIGKILL, as a crash would: nothing is flushed
// and no client is told.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr() }

// Freeze stops the server with SIGSTOP: connections stay open and nothing
// answers, as with a network partition or a stalled host. Thaw resumes it.
func (s *Server) Freeze() { _ = s.cmd.Process.Signal(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (s *Server) Thaw() { _ = s.cmd.Process.Signal(syscall.SIGCONT) }
