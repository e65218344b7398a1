package redistest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// MasterName is the name the Sentinels of a Topology monitor.
const MasterName = "flarecast"

// Topology is the reference high-availability setup: a primary, two
// replicas and three Sentinels (quorum 2), on loopback.
type Topology struct {
	Servers   []*Server // Servers[0] is the first primary
	Sentinels []*Server
	t         testing.TB
}

// StartTopology starts a primary, two replicas replicating from it, and
// three Sentinels that notice a dead primary after DownAfter and promote a
// replica. It returns once the replicas are in sync and every Sentinel
// knows the two others and both replicas, so that a failover can happen.
// Without redis-server or redis-sentinel the test is skipped loudly,
// unless CI=true, where their absence is a failure.
func StartTopology(t testing.TB) *Topology {
	t.Helper()
	for _, bin := range []string{"redis-server", "redis-sentinel"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not installed: .ci/run must install it (apt-get install -y redis-server redis-sentinel)", bin)
			}
			t.Skipf("SKIPPING: %s not found; install it (apt-get install -y redis-server redis-sentinel) to run the Sentinel tests", bin)
		}
	}
	tp := &Topology{t: t}
	primary := &Server{Port: freePort(t), dir: t.TempDir(), t: t, args: haArgs()}
	primary.start()
	t.Cleanup(primary.Stop)
	tp.Servers = append(tp.Servers, primary)
	for range 2 {
		r := &Server{Port: freePort(t), dir: t.TempDir(), t: t,
			args: append(haArgs(), "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port))}
		r.start()
		t.Cleanup(r.Stop)
		tp.Servers = append(tp.Servers, r)
	}
	for range 3 {
		dir := t.TempDir()
		port := freePort(t)
		conf := filepath.Join(dir, "sentinel.conf")
		// down-after 1 s and a short failover-timeout keep a test's
		// failover to a few seconds; production keeps the defaults or so.
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n"+
			"sentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %s 1000\n"+
			"sentinel failover-timeout %s 5000\n"+
			"sentinel parallel-syncs %s 2\n",
			port, dir, filepath.Join(dir, "redis.log"), MasterName, primary.Port, MasterName, MasterName, MasterName)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatalf("write sentinel.conf: %v", err)
		}
		s := &Server{Port: port, dir: dir, t: t, bin: "redis-sentinel", conf: conf}
		s.start()
		t.Cleanup(s.Stop)
		tp.Sentinels = append(tp.Sentinels, s)
	}
	tp.waitSynced()
	return tp
}

// haArgs are the data servers' settings: append-only, fsynced every second
// as the deployment files have it.
func haArgs() []string {
	return []string{"--appendonly", "yes", "--appendfsync", "everysec"}
}

// URL is the go-redis failover URL naming the three Sentinels, with
// extra query parameters (e.g. "stream=x") appended.
func (tp *Topology) URL(extra ...string) string {
	q := url.Values{}
	q.Set("master_name", MasterName)
	for _, s := range tp.Sentinels[1:] {
		q.Add("addr", s.addr())
	}
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		q.Add(k, v)
	}
	return "redis://" + tp.Sentinels[0].addr() + "?" + q.Encode()
}

// Primary is the server the Sentinels currently name as primary.
func (tp *Topology) Primary() *Server {
	tp.t.Helper()
	addr := tp.primaryAddr()
	for _, s := range tp.Servers {
		if s.addr() == addr {
			return s
		}
	}
	tp.t.Fatalf("Sentinel names %s as primary, not one of the topology's servers", addr)
	return nil
}

func (tp *Topology) primaryAddr() string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var lastErr error
	for _, s := range tp.Sentinels {
		if s.cmd == nil {
			continue
		}
		c := redis.NewSentinelClient(&redis.Options{Addr: s.addr()})
		hp, err := c.GetMasterAddrByName(ctx, MasterName).Result()
		c.Close()
		if err == nil && len(hp) == 2 {
			return hp[0] + ":" + hp[1]
		}
		lastErr = err
	}
	tp.t.Fatalf("no Sentinel names a primary: %v", lastErr)
	return ""
}

// Client is a plain client of one server (the test's own checks).
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.addr()})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// waitSynced waits until both replicas are online and every Sentinel
// knows both replicas and the two other Sentinels: before that, a failover
// could not get a majority or a replica to promote.
func (tp *Topology) waitSynced() {
	tp.t.Helper()
	ctx := context.Background()
	primary := tp.Servers[0].Client()
	deadline := time.Now().Add(30 * time.Second)
	var state string
	for time.Now().Before(deadline) {
		ready := true
		info, err := primary.Info(ctx, "replication").Result()
		if err != nil || strings.Count(info, "state=online") < 2 {
			ready, state = false, "replicas: "+info
		}
		for _, s := range tp.Sentinels {
			if !ready {
				break
			}
			c := redis.NewSentinelClient(&redis.Options{Addr: s.addr()})
			m, err := c.Master(ctx, MasterName).Result()
			c.Close()
			if err != nil || m["num-slaves"] != "2" || m["num-other-sentinels"] != "2" {
				ready, state = false, fmt.Sprintf("sentinel %s: %v %v", s.addr(), m, err)
			}
		}
		if ready {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	tp.t.Fatalf("the Sentinel topology did not settle in 30 s: %s", state)
}
