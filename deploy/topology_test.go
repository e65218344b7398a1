package deploy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flarecast/flarecast/internal/nginxtest"
	"github.com/flarecast/flarecast/internal/redistest"
)

// TestComposeTopology runs docker-compose.yml's topology without Docker,
// which CI does not have: real redis-server and redis-sentinel processes
// as a primary, two replicas and three Sentinels, one flarecast process
// per compose instance started with that service's own command and
// environment (only addresses moved to loopback), nginx running
// deploy/nginx/compose.conf in front of them, and the compose producer's
// events published through both instances' ingest sockets with
// `flarecast publish`. Every client — behind nginx, or on either instance —
// gets every event once, under the same message_ids. It also checks what
// the Kubernetes manifests rely on: the probe paths answer, the HPA metric
// counts the connections, /readyz turns 503 while the primary is away and
// back after the Sentinels promoted a replica, and SIGTERM drains an
// instance within drainBound.
func TestComposeTopology(t *testing.T) {
	ngx := findNginx(t)
	tp := redistest.StartTopology(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil { // nginx workers may run as another user
		t.Fatal(err)
	}
	compose := loadCompose(t)
	m := loadManifests(t)
	probes := m.deployments["flarecast"].Spec.Template.Spec.Containers[0]
	readyz, healthz := probes.ReadinessProbe.HTTPGet.Path, probes.LivenessProbe.HTTPGet.Path
	hpaMetric := m.hpas["flarecast"].Spec.Metrics[0].Pods.Metric.Name

	type instance struct {
		name, ws, admin, sock string
		proc                  *process
	}
	var fleet []*instance
	for _, name := range compose.flarecastServices() {
		s := compose.Services[name]
		in := &instance{
			name:  name,
			ws:    "127.0.0.1:" + strconv.Itoa(freePort(t)),
			admin: "127.0.0.1:" + strconv.Itoa(freePort(t)),
			sock:  filepath.Join(dir, name+".sock"),
		}
		args := setFlag(t, s.Command[1:], "broker", tp.URL())
		args = setFlag(t, args, "listen", in.ws)
		args = setFlag(t, args, "admin-listen", in.admin)
		env := map[string]string{}
		for k, v := range s.Environment {
			env[k] = v
		}
		if _, ok := env["FLARECAST_INGEST_SOCKET"]; !ok {
			t.Fatalf("service %s sets no FLARECAST_INGEST_SOCKET", name)
		}
		env["FLARECAST_INGEST_SOCKET"] = in.sock
		in.proc = startProcess(t, dir, name, env, flarecastBin, append([]string{"serve"}, args...)...)
		fleet = append(fleet, in)
	}
	for _, in := range fleet {
		waitStatus(t, in.proc, "http://"+in.admin+readyz, http.StatusOK)
		if code := httpStatus("http://" + in.admin + healthz); code != http.StatusOK {
			t.Fatalf("%s: GET %s = %d", in.name, healthz, code)
		}
	}

	var upstreams []string
	for _, in := range fleet {
		upstreams = append(upstreams, in.name+":8080", in.ws)
	}
	nginxAddr := startNginx(t, ngx, dir, upstreams)

	// One client behind nginx (ip_hash puts it on one instance), one on each instance.
	clients := map[string]*wsClient{"nginx": dialWS(t, "ws://"+nginxAddr+"/ws")}
	for _, in := range fleet {
		clients[in.name] = dialWS(t, "ws://"+in.ws+"/ws")
	}
	var total float64
	waitFor(t, 10*time.Second, func() bool {
		total = 0
		for _, in := range fleet {
			total += metricValue(t, "http://"+in.admin+"/metrics", hpaMetric)
		}
		return total == float64(len(clients))
	}, func() string {
		return fmt.Sprintf("%s summed over the instances is %v, want %d (the clients)", hpaMetric, total, len(clients))
	})

	// The producer's events, published on every instance.
	events := deployPath("producer", "incidents.ndjson")
	var ids []uint64
	for _, in := range fleet {
		got, out, err := publish(in.sock, events, "30s")
		if err != nil {
			t.Fatalf("flarecast publish %s on %s: %v\n%s", rel(events), in.name, err, out)
		}
		ids = append(ids, got...)
	}
	if n := countLines(t, events); len(ids) != n*len(fleet) {
		t.Fatalf("%d events accepted, want %d", len(ids), n*len(fleet))
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			t.Fatalf("message_ids not increasing across instances: %v", ids)
		}
	}
	for name, c := range clients {
		// The file mixes priorities, and critical and high events may
		// overtake normal ones queued for the same client: compare the
		// sets (the engine's own tests check the order within a priority).
		got := c.events(t, len(ids))
		slices.Sort(got)
		if !slices.Equal(got, ids) {
			t.Fatalf("client %s got message_ids %v, want %v", name, got, ids)
		}
	}

	// The primary dies: not ready until the Sentinels have promoted a
	// replica (a second or more), producers hear UNAVAILABLE meanwhile,
	// sessions stay.
	tp.Primary().Kill()
	for _, in := range fleet {
		waitStatus(t, in.proc, "http://"+in.admin+readyz, http.StatusServiceUnavailable)
	}
	one := filepath.Join(dir, "one.ndjson")
	if err := os.WriteFile(one, []byte(`{"event_type":"system_event","source":"deploy-test"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, out, err := publish(fleet[0].sock, one, "10s"); err == nil || !strings.Contains(out, "UNAVAILABLE") {
		t.Fatalf("publish while the primary is down: %v, want an UNAVAILABLE refusal:\n%s", err, out)
	}
	for _, in := range fleet {
		waitStatus(t, in.proc, "http://"+in.admin+readyz, http.StatusOK)
	}
	after, out, err := publish(fleet[len(fleet)-1].sock, events, "30s")
	if err != nil {
		t.Fatalf("publish after the failover: %v\n%s", err, out)
	}
	if after[0] <= ids[len(ids)-1] {
		t.Fatalf("message_ids after the failover %v do not follow %v", after, ids)
	}
	for name, c := range clients {
		got := c.events(t, len(after))
		slices.Sort(got) // mixed priorities: compare sets, as above
		if !slices.Equal(got, after) {
			t.Fatalf("client %s (connected through the outage) got %v, want %v", name, got, after)
		}
	}

	// SIGTERM: the instance says goodbye to its clients and exits within
	// the drain bound the Deployment's grace period is sized for.
	first := fleet[0]
	start := time.Now()
	first.proc.signal(syscall.SIGTERM)
	c := clients[first.name]
	if msg := c.read(t, 10*time.Second); msg["type"] != "closing" || msg["reason"] != "server_shutdown" {
		t.Fatalf("after SIGTERM %s sent %v, want closing/server_shutdown", first.name, msg)
	}
	select {
	case <-first.proc.exited:
		if took := time.Since(start); took > drainBound*time.Second {
			t.Errorf("%s took %s to stop, more than the %d s the Deployment allows", first.name, took, drainBound)
		}
		if code := first.proc.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("%s exited with status %d after SIGTERM:\n%s", first.name, code, first.proc.log())
		}
	case <-time.After(drainBound * time.Second):
		t.Fatalf("%s still running %d s after SIGTERM:\n%s", first.name, drainBound, first.proc.log())
	}
}

// setFlag sets --name to value in args, replacing the value given there.
func setFlag(t *testing.T, args []string, name, value string) []string {
	t.Helper()
	out := slices.Clone(args)
	for i, a := range out {
		switch strings.TrimLeft(a, "-") {
		case name:
			if i+1 >= len(out) {
				t.Fatalf("--%s lacks its value in %v", name, args)
			}
			out[i+1] = value
			return out
		}
		if strings.HasPrefix(strings.TrimLeft(a, "-"), name+"=") {
			out[i] = "--" + name + "=" + value
			return out
		}
	}
	return append(out, "--"+name, value)
}

// ---- processes ----

// process is a child process whose output goes to a file in the test's dir.
type process struct {
	t       *testing.T
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
}

func startProcess(t *testing.T, dir, name string, env map[string]string, bin string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{t: t, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func (p *process) signal(sig os.Signal) {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

func (p *process) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// publish runs `flarecast publish` on a file and returns the accepted ids.
func publish(sock, file, timeout string) ([]uint64, string, error) {
	out, err := exec.Command(flarecastBin, "publish", "--ingest-socket", sock, "--timeout", timeout, file).CombinedOutput()
	var ids []uint64
	for _, m := range regexp.MustCompile(`accepted message_id=(\d+)`).FindAllSubmatch(out, -1) {
		id, _ := strconv.ParseUint(string(m[1]), 10, 64)
		ids = append(ids, id)
	}
	return ids, string(out), err
}

func countLines(t *testing.T, file string) int {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		if strings.TrimSpace(sc.Text()) != "" {
			n++
		}
	}
	return n
}

// ---- HTTP ----

func httpStatus(url string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// waitStatus polls url until it answers want, or fails the test after 15 s.
func waitStatus(t *testing.T, p *process, url string, want int) {
	t.Helper()
	var got int
	waitFor(t, 15*time.Second, func() bool {
		select {
		case <-p.exited:
			t.Fatalf("the instance exited:\n%s", p.log())
		default:
		}
		got = httpStatus(url)
		return got == want
	}, func() string { return fmt.Sprintf("GET %s = %d, want %d\n%s", url, got, want, p.log()) })
}

// metricValue reads one unlabelled series from a Prometheus text page.
func metricValue(t *testing.T, url, name string) float64 {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %s %q: %v", url, name, v, err)
			}
			return f
		}
	}
	t.Fatalf("%s has no series %s", url, name)
	return 0
}

func waitFor(t *testing.T, d time.Duration, cond func() bool, why func() string) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(why())
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ---- WebSocket ----

type wsClient struct{ ws *websocket.Conn }

// dialWS connects, and subscribes to every event.
func dialWS(t *testing.T, url string) *wsClient {
	t.Helper()
	c := dialRaw(t, url)
	if err := c.ws.WriteJSON(map[string]any{"type": "subscribe", "subscription_id": "all", "filters": map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	if m := c.read(t, 5*time.Second); m["type"] != "subscribed" {
		t.Fatalf("%s: subscribe answered %v", url, m)
	}
	return c
}

func (c *wsClient) read(t *testing.T, timeout time.Duration) map[string]any {
	t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(timeout))
	_, data, err := c.ws.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("server sent invalid JSON %q: %v", data, err)
	}
	return m
}

// events reads n event messages and returns their message_ids.
func (c *wsClient) events(t *testing.T, n int) []uint64 {
	t.Helper()
	var ids []uint64
	for len(ids) < n {
		m := c.read(t, 10*time.Second)
		if m["type"] != "event" {
			t.Fatalf("want an event, got %v", m)
		}
		ids = append(ids, uint64(m["message_id"].(float64)))
	}
	return ids
}

// ---- nginx ----

// findNginx returns the nginx binary: skipped loudly without one, except
// in CI (CI=true), whose .ci/run installs it.
func findNginx(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("nginx is not installed: .ci/run must install it (apt-get install -y nginx)")
	}
	t.Skip("SKIPPED: nginx not found, so deploy/nginx/compose.conf and the compose topology are NOT tested " +
		"(apt-get install nginx to run it; CI fails without it)")
	return ""
}

// startNginx runs deploy/nginx/compose.conf as shipped except for its
// addresses: upstreams are old/new pairs ("flarecast-1:8080",
// "127.0.0.1:PORT"), the listener moves to a loopback port and the access
// log into dir. It returns the address nginx listens on.
func startNginx(t *testing.T, nginx, dir string, upstreams []string) string {
	t.Helper()
	shipped, err := os.ReadFile(deployPath("nginx", "compose.conf"))
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	site := string(shipped)
	repl := []string{"listen 80;", "listen " + addr + ";", "/var/log/nginx/access.log", filepath.Join(dir, "access.log")}
	for i := 0; i < len(upstreams); i += 2 {
		repl = append(repl, "server "+upstreams[i]+";", "server "+upstreams[i+1]+";")
	}
	for i := 0; i < len(repl); i += 2 {
		if strings.Count(site, repl[i]) != 1 {
			t.Fatalf("deploy/nginx/compose.conf no longer has exactly one %q: update this test with it", repl[i])
		}
		site = strings.Replace(site, repl[i], repl[i+1], 1)
	}
	args := nginxtest.Prepare(t, nginx, dir, "compose.conf", site)
	p := startProcess(t, dir, "nginx", nil, nginx, append(args, "-g", "daemon off;")...)
	waitFor(t, 10*time.Second, func() bool {
		select {
		case <-p.exited:
			t.Fatalf("nginx exited:\n%s\n%s", p.log(), readFile(filepath.Join(dir, "error.log")))
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, func() string {
		return "nginx does not listen on " + addr + ":\n" + readFile(filepath.Join(dir, "error.log"))
	})
	return addr
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
