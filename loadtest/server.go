package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// spawnedServer is a `flarecast serve` the load tester started itself, on
// kernel-chosen loopback ports and a temporary ingest socket.
type spawnedServer struct {
	cmd      *exec.Cmd
	dir      string // temporary directory holding the ingest socket
	url      string
	adminURL string
	socket   string
	logPath  string
	exited   chan struct{}
	waitErr  error
}

// servingLine is the server's startup log line, which names the ports it got.
var servingLine = regexp.MustCompile(`msg="flarecast serving" websocket=(\S+) admin=(\S*)`)

// spawnServer starts bin serve (or bin lead..., with env added, for the
// baseline server) and waits for its "flarecast serving" line.
// The server's stderr goes to logPath (or a file in the temporary directory).
// With cpus set, it runs under taskset -c cpus (which execs it: the pid is
// the server's).
func spawnServer(ctx context.Context, bin string, lead, extra, env []string, cpus, logPath string) (*spawnedServer, error) {
	if lead == nil {
		lead = []string{"serve"}
	}
	dir, err := os.MkdirTemp("", "flarecast-lt-")
	if err != nil {
		return nil, fmt.Errorf("temporary directory for the ingest socket: %w", err)
	}
	if logPath == "" {
		logPath = filepath.Join(dir, "server.log")
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("server log: %w", err)
	}
	s := &spawnedServer{dir: dir, socket: filepath.Join(dir, "ingest.sock"), logPath: logPath, exited: make(chan struct{})}
	args := append(append(lead[:len(lead):len(lead)],
		"--listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0",
		"--ingest-socket", s.socket,
	), extra...)
	s.cmd = pinnedCommand(cpus, bin, args...)
	if len(env) > 0 {
		s.cmd.Env = append(os.Environ(), env...)
	}
	// The server must not outlive the load tester, even one killed hard.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	s.cmd.Stdout = logFile
	if err := s.cmd.Start(); err != nil {
		logFile.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	found := make(chan [2]string, 1)
	go func() {
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			logFile.Write(line)
			logFile.Write([]byte{'\n'})
			if m := servingLine.FindSubmatch(line); m != nil {
				select {
				case found <- [2]string{string(m[1]), string(m[2])}:
				default:
				}
			}
		}
		_, _ = io.Copy(logFile, stderr)
	}()
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	select {
	case addrs := <-found:
		ws, admin := addrs[0], addrs[1]
		s.url = "ws://" + ws // host:port/path
		if admin != "" {
			s.adminURL = "http://" + admin
		}
		return s, nil
	case <-s.exited:
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%s serve exited before serving (%v); see %s: %s", bin, s.waitErr, logPath, tail(logPath))
	case <-time.After(15 * time.Second):
		s.stop()
		return nil, fmt.Errorf("%s serve did not log \"flarecast serving\" within 15s; see %s", bin, logPath)
	case <-ctx.Done():
		s.stop()
		return nil, ctx.Err()
	}
}

// pinnedCommand is prog args, under taskset -c cpus when cpus is set.
// taskset execs prog: the process is prog's, and its exit status too.
func pinnedCommand(cpus, prog string, args ...string) *exec.Cmd {
	if cpus == "" {
		return exec.Command(prog, args...)
	}
	return exec.Command("taskset", append([]string{"-c", cpus, prog}, args...)...)
}

func (s *spawnedServer) pid() int { return s.cmd.Process.Pid }

// stop asks the server to shut down gracefully, kills it after 20 s, and
// removes the temporary directory.
func (s *spawnedServer) stop() error {
	defer os.RemoveAll(s.dir)
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return errors.New("server did not stop within 20s of SIGTERM; killed")
	}
	var exit *exec.ExitError
	if s.waitErr != nil && !errors.As(s.waitErr, &exit) {
		return s.waitErr
	}
	if exit != nil && !exit.Exited() {
		return nil // ended by our signal
	}
	return s.waitErr
}

// tail returns the last lines of a file, for an error message.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return strings.TrimSpace(string(b))
}

// findListenerPID returns the pid of the process with a TCP socket
// listening on port, from /proc/net/tcp{,6} and every process's fds.
func findListenerPID(port int) (int, error) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 10 || fields[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); ok && err == nil && int(p) == port {
				inodes["socket:["+fields[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("no socket listens on port %d", port)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, fdDir := range procs {
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && inodes[link] {
				return strconv.Atoi(filepath.Base(filepath.Dir(fdDir)))
			}
		}
	}
	return 0, fmt.Errorf("no process of ours holds the socket listening on port %d", port)
}

// urlPort is the TCP port of a ws:// or http:// URL.
func urlPort(raw string) (int, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return 0, err
	}
	p := u.Port()
	if p == "" {
		if u.Scheme == "wss" || u.Scheme == "https" {
			return 443, nil
		}
		return 80, nil
	}
	return strconv.Atoi(p)
}

// procStatus reads VmRSS of pid from /proc/<pid>/status, in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procCPU is the CPU time (user+system) pid has used, from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; fields start after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("malformed /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // utime: field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // stime: field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// selfCPU is this process's CPU time, user plus system.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineCPU returns the busy and total jiffies of all CPUs, from /proc/stat,
// to tell how loaded the machine was by everyone (the other tenants too).
func machineCPU() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// machineCores is the number of the machine's online CPUs (the cpuN lines
// of /proc/stat), which machineCPU's figures cover: runtime.NumCPU counts
// only the CPUs this process may run on, one when it runs under taskset -c 1.
func machineCores() int {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if len(line) > 3 && strings.HasPrefix(line, "cpu") && line[3] >= '0' && line[3] <= '9' {
			n++
		}
	}
	if n == 0 {
		return runtime.NumCPU()
	}
	return n
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// metricsClient reads the server's /metrics and asks it for garbage
// collections.
type metricsClient struct {
	base string
	http *http.Client
}

func newMetricsClient(base string) *metricsClient {
	if base == "" {
		return nil
	}
	return &metricsClient{base: strings.TrimRight(base, "/"), http: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 2,
		},
	}}
}

// scrape returns the series of /metrics, by name with labels, as floats.
func (m *metricsClient) scrape(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := m.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", m.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s/metrics: %s", m.base, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// gc asks the server's runtime for a garbage collection: the pprof heap
// handler runs one before profiling when given gc=1.
func (m *metricsClient) gc(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := m.http.Do(req)
	if err != nil {
		return fmt.Errorf("force GC: %w", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("force GC: %s", resp.Status)
	}
	return nil
}

// cpuProfile fetches a CPU profile of seconds from the server's pprof
// endpoint into path.
func (m *metricsClient) cpuProfile(ctx context.Context, seconds int, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", m.base, seconds), nil)
	if err != nil {
		return err
	}
	client := &http.Client{Transport: m.http.Transport, Timeout: time.Duration(seconds+30) * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("server CPU profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("server CPU profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("server CPU profile: %w", err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("server CPU profile: %w", err)
	}
	return f.Close()
}
