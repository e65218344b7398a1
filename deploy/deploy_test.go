// Package deploy holds no code: its tests check the deployment files in
// this directory against the flarecast binary they deploy. Every YAML file
// is parsed (all documents), Kubernetes objects and the compose file are
// decoded strictly (an unknown field is a typo until the schema here says
// otherwise), and every flag, environment variable, port, probe path and
// metric name the files use is checked against the binary built from this
// tree: `flarecast serve -h` lists the flags, and `flarecast serve ARGS -h`
// with the files' environment makes the binary itself parse their values.
package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// flarecastBin is the binary built from this tree by TestMain.
var flarecastBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flarecast-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	flarecastBin = filepath.Join(dir, "flarecast")
	cmd := exec.Command(goTool(), "build", "-o", flarecastBin, "./cmd/flarecast")
	cmd.Dir = repoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build flarecast: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// repoRoot is the module root: this file's directory's parent.
func repoRoot() string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(self))
}

func deployPath(parts ...string) string {
	return filepath.Join(append([]string{repoRoot(), "deploy"}, parts...)...)
}

// ---- the binary's flags ----

// serveFlag is one flag of `flarecast serve`, as its -h output shows it.
type serveFlag struct {
	takesValue bool
	def        string // the default value, "" when none is shown
}

var flagLine = regexp.MustCompile(`^  -([a-z0-9-]+)(?: (\S+))?$`)
var defaultSuffix = regexp.MustCompile(`\(default "?(.*?)"?\)$`)

// serveFlags runs `flarecast serve -h` and returns its flags by name.
func serveFlags(t *testing.T) map[string]serveFlag {
	t.Helper()
	out, err := exec.Command(flarecastBin, "serve", "-h").Output()
	if err != nil {
		t.Fatalf("flarecast serve -h: %v", err)
	}
	flags := map[string]serveFlag{}
	lines := strings.Split(string(out), "\n")
	for i, line := range lines {
		m := flagLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		f := serveFlag{takesValue: m[2] != ""}
		if i+1 < len(lines) {
			if d := defaultSuffix.FindStringSubmatch(strings.TrimSpace(lines[i+1])); d != nil {
				f.def = d[1]
			}
		}
		flags[m[1]] = f
	}
	for _, must := range []string{"listen", "admin-listen", "ingest-socket", "broker"} {
		if _, ok := flags[must]; !ok {
			t.Fatalf("flarecast serve -h lists no --%s; output:\n%s", must, out)
		}
	}
	return flags
}

// envFlag maps FLARECAST_MAX_CONNECTIONS to max-connections, as
// cmd/flarecast's parseFlags does the other way round.
func envFlag(env string) (string, bool) {
	name, ok := strings.CutPrefix(env, "FLARECAST_")
	return strings.ReplaceAll(strings.ToLower(name), "_", "-"), ok
}

// otherEnv are the variables besides FLARECAST_* a deployment may set.
var otherEnv = []string{"GOMEMLIMIT", "GOGC", "GOMAXPROCS", "GODEBUG", "TZ"}

// serveConfig is the effective setting of every flag for one invocation.
type serveConfig map[string]string

// checkServe checks one `flarecast serve` invocation: args after "serve"
// name only real flags, every FLARECAST_* variable names a real flag, and
// the binary accepts all their values. It returns the effective settings
// (command line over environment over default).
func checkServe(t *testing.T, where string, flags map[string]serveFlag, args []string, env map[string]string) serveConfig {
	t.Helper()
	cfg := serveConfig{}
	for name, f := range flags {
		cfg[name] = f.def
	}
	for k, v := range env {
		name, ok := envFlag(k)
		if !ok {
			if !slices.Contains(otherEnv, k) {
				t.Errorf("%s: environment variable %s is neither FLARECAST_<FLAG> nor one of %v", where, k, otherEnv)
			}
			continue
		}
		if _, ok := flags[name]; !ok {
			t.Errorf("%s: %s names no flag of flarecast serve (--%s)", where, k, name)
			continue
		}
		cfg[name] = v
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			t.Errorf("%s: argument %q is not a flag (serve takes no arguments)", where, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f, ok := flags[name]
		if !ok {
			t.Errorf("%s: --%s is not a flag of flarecast serve", where, name)
			continue
		}
		if f.takesValue && !hasVal {
			if i+1 >= len(args) {
				t.Errorf("%s: --%s lacks its value", where, name)
				break
			}
			i++
			val = args[i]
		}
		cfg[name] = val
	}
	// The binary parses the environment, then the arguments, then stops at
	// -h with status 0: so status 0 means it took every value.
	cmd := exec.Command(flarecastBin, append(append([]string{"serve"}, args...), "-h")...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Errorf("%s: flarecast serve %s refuses this configuration (%v): %s", where, strings.Join(args, " "), err, stderr.String())
	}
	return cfg
}

// port returns the port of a listen address such as ":8080".
func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return n
}

// ---- what the server source defines ----

// adminPaths are the paths the admin server routes (engine/admin.go).
func adminPaths(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot(), "engine", "admin.go"))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, m := range regexp.MustCompile(`mux\.Handle(?:Func)?\("(?:[A-Z]+ )?(/[^"{]*)`).FindAllStringSubmatch(string(src), -1) {
		paths = append(paths, m[1])
	}
	if len(paths) == 0 {
		t.Fatal("found no route in engine/admin.go: update adminPaths")
	}
	return paths
}

// exportedMetric reports whether the server source registers a metric of
// that name (engine/metrics.go and the broker gauges in engine/engine.go).
func exportedMetric(t *testing.T, name string) bool {
	t.Helper()
	for _, f := range []string{"metrics.go", "engine.go"} {
		src, err := os.ReadFile(filepath.Join(repoRoot(), "engine", f))
		if err != nil {
			t.Fatal(err)
		}
		if regexp.MustCompile(`New(?:Counter|Gauge|Histogram|PrometheusHistogramExt|Summary)\("` + regexp.QuoteMeta(name) + `[{"]`).Match(src) {
			return true
		}
	}
	return false
}

// ---- YAML ----

// yamlFiles are every YAML file under deploy/.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(deployPath(), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(p); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// documents parses every document of a YAML file.
func documents(t *testing.T, file string) []*yaml.Node {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", rel(file), len(docs)+1, err)
		}
		if len(n.Content) > 0 && !(n.Content[0].Kind == yaml.ScalarNode && n.Content[0].Tag == "!!null") {
			docs = append(docs, &n)
		}
	}
	if len(docs) == 0 {
		t.Fatalf("%s holds no YAML document", rel(file))
	}
	return docs
}

// strict decodes a document into v, refusing fields v does not declare.
func strict(t *testing.T, where string, doc *yaml.Node, v any) {
	t.Helper()
	raw, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v\n(a typo? if the field is right, add it to the schema in deploy_test.go)", where, err)
	}
}

func rel(p string) string {
	r, err := filepath.Rel(repoRoot(), p)
	if err != nil {
		return p
	}
	return r
}

func TestEveryYAMLFileParses(t *testing.T) {
	files := yamlFiles(t)
	for _, want := range []string{"docker-compose.yml", "k8s/deployment.yaml", "k8s/service.yaml", "k8s/hpa.yaml"} {
		if !slices.Contains(files, deployPath(want)) {
			t.Errorf("deploy/%s is missing", want)
		}
	}
	for _, f := range files {
		docs := documents(t, f)
		for i, d := range docs {
			if d.Content[0].Kind != yaml.MappingNode {
				t.Errorf("%s: document %d is not a mapping", rel(f), i+1)
			}
		}
	}
}

// ---- nginx ----

func TestNginxConfigsProxyWebSockets(t *testing.T) {
	for _, name := range []string{"flarecast.conf", "compose.conf"} {
		src, err := os.ReadFile(deployPath("nginx", name))
		if err != nil {
			t.Fatal(err)
		}
		conf := stripComments(string(src))
		for _, d := range []string{
			"map $http_upgrade $connection_upgrade",
			"ip_hash;",
			"location = /ws",
			"proxy_http_version 1.1;",
			"proxy_set_header Upgrade $http_upgrade;",
			"proxy_set_header Connection $connection_upgrade;",
			"proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
			"proxy_read_timeout 7d;",
		} {
			if !strings.Contains(conf, d) {
				t.Errorf("deploy/nginx/%s lacks %q", name, d)
			}
		}
	}
}

func stripComments(conf string) string {
	var b strings.Builder
	for _, line := range strings.Split(conf, "\n") {
		line, _, _ = strings.Cut(line, "#")
		b.WriteString(strings.Join(strings.Fields(line), " "))
		b.WriteByte('\n')
	}
	return b.String()
}

// upstreamServers returns the server addresses of the flarecast upstream.
func upstreamServers(t *testing.T, conf string) []string {
	t.Helper()
	block := regexp.MustCompile(`(?s)upstream flarecast \{(.*?)\}`).FindStringSubmatch(stripComments(conf))
	if block == nil {
		t.Fatal("no `upstream flarecast` block")
	}
	var servers []string
	for _, m := range regexp.MustCompile(`(?m)^ ?server (\S+?);`).FindAllStringSubmatch(block[1], -1) {
		servers = append(servers, m[1])
	}
	return servers
}

// ---- docker compose ----

// composeFile is the part of the Compose specification the file uses.
type composeFile struct {
	Name       string                    `yaml:"name"`
	XFlarecast map[string]any            `yaml:"x-flarecast"`
	XRedis     map[string]any            `yaml:"x-redis"`
	XSentinel  map[string]any            `yaml:"x-sentinel"`
	Services   map[string]composeService `yaml:"services"`
	Volumes    map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image    string `yaml:"image"`
	Hostname string `yaml:"hostname"`
	Build    *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
		Target     string `yaml:"target"`
	} `yaml:"build"`
	User            string            `yaml:"user"`
	Entrypoint      []string          `yaml:"entrypoint"`
	Command         []string          `yaml:"command"`
	Environment     map[string]string `yaml:"environment"`
	Volumes         []yaml.Node       `yaml:"volumes"`
	Ports           []string          `yaml:"ports"`
	DependsOn       yaml.Node         `yaml:"depends_on"`
	Healthcheck     map[string]any    `yaml:"healthcheck"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
	Restart         string            `yaml:"restart"`
}

// mount is one entry of a service's volumes, short or long syntax.
type mount struct{ source, target string }

func (s composeService) mounts(t *testing.T) []mount {
	t.Helper()
	var ms []mount
	for _, n := range s.Volumes {
		switch n.Kind {
		case yaml.ScalarNode:
			parts := strings.Split(n.Value, ":")
			if len(parts) < 2 {
				t.Fatalf("volume %q has no target", n.Value)
			}
			ms = append(ms, mount{parts[0], parts[1]})
		case yaml.MappingNode:
			var long struct {
				Type, Source, Target string
				ReadOnly             bool           `yaml:"read_only"`
				Volume               map[string]any `yaml:"volume"`
			}
			if err := n.Decode(&long); err != nil {
				t.Fatal(err)
			}
			ms = append(ms, mount{long.Source, long.Target})
		}
	}
	return ms
}

func (s composeService) dependsOn(t *testing.T) []string {
	t.Helper()
	switch s.DependsOn.Kind {
	case 0:
		return nil
	case yaml.SequenceNode:
		var l []string
		if err := s.DependsOn.Decode(&l); err != nil {
			t.Fatal(err)
		}
		return l
	default:
		var m map[string]struct {
			Condition string `yaml:"condition"`
		}
		if err := s.DependsOn.Decode(&m); err != nil {
			t.Fatal(err)
		}
		var l []string
		for k := range m {
			l = append(l, k)
		}
		return l
	}
}

// published maps a container port to the host side of a "host:container" entry.
func (s composeService) published(t *testing.T) map[int]string {
	t.Helper()
	out := map[int]string{}
	for _, p := range s.Ports {
		i := strings.LastIndex(p, ":")
		if i < 0 {
			t.Fatalf("port %q: want HOST:CONTAINER", p)
		}
		c, err := strconv.Atoi(p[i+1:])
		if err != nil {
			t.Fatalf("port %q: %v", p, err)
		}
		out[c] = p[:i]
	}
	return out
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	docs := documents(t, deployPath("docker-compose.yml"))
	if len(docs) != 1 {
		t.Fatalf("docker-compose.yml holds %d documents, want 1", len(docs))
	}
	strict(t, "docker-compose.yml", docs[0], &c)
	return c
}

// flarecastServices are the compose services running `flarecast serve`.
func (c composeFile) flarecastServices() []string {
	var names []string
	for name, s := range c.Services {
		if len(s.Command) > 0 && s.Command[0] == "serve" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

func TestComposeFile(t *testing.T) {
	flags := serveFlags(t)
	c := loadCompose(t)
	// `docker compose config` needs the compose plugin, which CI does not
	// install; these checks cover what it would, and more.
	for _, want := range []string{"redis", "flarecast-1", "flarecast-2", "nginx", "producer"} {
		if _, ok := c.Services[want]; !ok {
			t.Fatalf("docker-compose.yml has no service %q", want)
		}
	}
	redis := c.Services["redis"]
	if !strings.HasPrefix(redis.Image, "redis:") {
		t.Errorf("service redis runs %q, want a redis image", redis.Image)
	}
	// Every data node persists: each may become the primary.
	for name, s := range c.Services {
		if len(s.Command) > 0 && s.Command[0] == "redis-server" && !slices.Contains(s.Command, "--appendonly") {
			t.Errorf("%s must persist (--appendonly yes): an empty Redis restarts message_ids at 1", name)
		}
	}
	for name, s := range c.Services {
		for _, dep := range s.dependsOn(t) {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("service %s depends on %q, which is not a service", name, dep)
			}
		}
		for _, m := range s.mounts(t) {
			if strings.HasPrefix(m.source, ".") {
				if _, err := os.Stat(deployPath(m.source)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, m.source, err)
				}
			} else if _, ok := c.Volumes[m.source]; !ok {
				t.Errorf("service %s mounts volume %q, not declared under volumes:", name, m.source)
			}
		}
		if s.Build != nil {
			df := s.Build.Dockerfile
			if df == "" {
				df = "Dockerfile"
			}
			dockerfile, err := os.ReadFile(deployPath(s.Build.Context, df))
			if err != nil {
				t.Errorf("service %s builds from %s: %v", name, filepath.Join(s.Build.Context, df), err)
			} else if s.Build.Target != "" && !regexp.MustCompile(`(?mi)^FROM .* AS `+regexp.QuoteMeta(s.Build.Target)+`$`).Match(dockerfile) {
				t.Errorf("service %s builds target %q, which the Dockerfile lacks", name, s.Build.Target)
			}
		}
	}

	fleet := c.flarecastServices()
	if len(fleet) < 2 {
		t.Fatalf("want two flarecast instances, compose runs `serve` in %v", fleet)
	}
	var wsPort int
	sockets := map[string]string{} // volume name → socket file name
	owner := map[string]string{}   // volume name → the instance that creates its socket
	for _, name := range fleet {
		s := c.Services[name]
		cfg := checkServe(t, "docker-compose.yml service "+name, flags, s.Command[1:], s.Environment)
		u, err := url.Parse(cfg["broker"])
		if err != nil || u.Scheme != "redis" {
			t.Fatalf("service %s: --broker %q is not a redis:// URL", name, cfg["broker"])
		}
		if master := u.Query().Get("master_name"); master != "" {
			c.checkSentinels(t, name, s, master, sentinelAddrs(u))
		} else {
			if _, ok := c.Services[u.Hostname()]; !ok || u.Port() != "6379" {
				t.Errorf("service %s: --broker %s does not name the redis service on 6379", name, cfg["broker"])
			}
			if !slices.Contains(s.dependsOn(t), u.Hostname()) {
				t.Errorf("service %s does not depend on %s", name, u.Hostname())
			}
		}
		wsPort = port(t, cfg["listen"])
		admin := port(t, cfg["admin-listen"])
		if host, ok := s.published(t)[admin]; !ok || !strings.HasPrefix(host, "127.0.0.1:") {
			t.Errorf("service %s: publish the admin port %d on loopback (it serves pprof): ports %v", name, admin, s.Ports)
		}
		// The ingest socket must be on the volume the producer can share.
		sock := cfg["ingest-socket"]
		found := false
		for _, m := range s.mounts(t) {
			if path.Dir(sock) == m.target {
				sockets[m.source], owner[m.source], found = path.Base(sock), name, true
			}
		}
		if !found {
			t.Errorf("service %s: the ingest socket %s is on no volume", name, sock)
		}
	}

	// nginx: the compose config, upstream every instance on its --listen port.
	ngx := c.Services["nginx"]
	var confMounted bool
	for _, m := range ngx.mounts(t) {
		if m.source == "./nginx/compose.conf" && strings.HasPrefix(m.target, "/etc/nginx/conf.d/") {
			confMounted = true
		}
	}
	if !confMounted {
		t.Error("service nginx does not mount ./nginx/compose.conf into /etc/nginx/conf.d/")
	}
	conf, err := os.ReadFile(deployPath("nginx", "compose.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, name := range fleet {
		want = append(want, name+":"+strconv.Itoa(wsPort))
	}
	if got := upstreamServers(t, string(conf)); !slices.Equal(got, want) {
		t.Errorf("compose.conf upstream servers %v, want %v (every flarecast service on its --listen port)", got, want)
	}
	listen := regexp.MustCompile(`(?m)^\s*listen (\d+);`).FindSubmatch(conf)
	if listen == nil {
		t.Fatal("compose.conf has no `listen PORT;`")
	}
	lp, _ := strconv.Atoi(string(listen[1]))
	if _, ok := ngx.published(t)[lp]; !ok {
		t.Errorf("service nginx publishes %v, not its listen port %d", ngx.Ports, lp)
	}

	// The producer publishes through an instance's ingest socket, on the
	// same volume, as the same uid.
	prod := c.Services["producer"]
	if !strings.Contains(strings.Join(prod.Command, " "), "flarecast publish ") {
		t.Errorf("producer command %q does not run flarecast publish", prod.Command)
	}
	if prod.User != "65532:65532" {
		t.Errorf("producer runs as %q: the socket is mode 0660, owned by the image's nonroot user 65532", prod.User)
	}
	sock := prod.Environment["FLARECAST_INGEST_SOCKET"]
	shared := false
	for _, m := range prod.mounts(t) {
		if name, ok := sockets[m.source]; ok && sock == path.Join(m.target, name) {
			shared = true
			// The instance must create the volume first: Docker fills a new
			// volume from the first container's image, and only the
			// flarecast image gives it to the nonroot user.
			if !slices.Contains(prod.dependsOn(t), owner[m.source]) {
				t.Errorf("producer uses %s's socket but does not depend on %s", owner[m.source], owner[m.source])
			}
		}
	}
	if !shared {
		t.Errorf("producer's FLARECAST_INGEST_SOCKET=%s is not an instance's socket on a shared volume", sock)
	}
}

// sentinelAddrs are the Sentinels of a go-redis failover URL: its host and
// each addr parameter.
func sentinelAddrs(u *url.URL) []string {
	return append([]string{u.Host}, u.Query()["addr"]...)
}

// sentinelMonitor finds `sentinel monitor NAME HOST PORT QUORUM` in a
// Sentinel's start script.
var sentinelMonitor = regexp.MustCompile(`sentinel monitor (\S+) (\S+) (\d+) (\d+)`)

// checkSentinels checks the reference topology behind a failover URL: at
// least three Sentinels, each a service running redis-sentinel on the
// URL's port that monitors master_name with quorum 2 of them, on a primary
// that persists and has two replicas.
func (c composeFile) checkSentinels(t *testing.T, name string, s composeService, master string, addrs []string) {
	t.Helper()
	if len(addrs) < 3 {
		t.Errorf("service %s: --broker names %d Sentinels, want 3 (a quorum of 2 must survive one)", name, len(addrs))
	}
	for _, addr := range addrs {
		host, port, _ := strings.Cut(addr, ":")
		sen, ok := c.Services[host]
		script := strings.Join(append(slices.Clone(sen.Entrypoint), sen.Command...), " ")
		if !ok || port != "26379" || !strings.Contains(script, "redis-sentinel") {
			t.Errorf("service %s: Sentinel %s is not a redis-sentinel service on 26379", name, addr)
			continue
		}
		if !slices.Contains(s.dependsOn(t), host) {
			t.Errorf("service %s does not depend on %s", name, host)
		}
		m := sentinelMonitor.FindStringSubmatch(script)
		if m == nil || m[1] != master || m[4] != "2" {
			t.Errorf("Sentinel %s does not monitor %q with quorum 2: %v", host, master, m)
			continue
		}
		primary, ok := c.Services[m[2]]
		if !ok || m[3] != "6379" || !slices.Contains(primary.Command, "--appendonly") {
			t.Errorf("Sentinel %s monitors %s:%s, not a persistent redis service", host, m[2], m[3])
		}
		replicas := 0
		for _, r := range c.Services {
			if i := slices.Index(r.Command, "--replicaof"); i >= 0 && i+2 < len(r.Command) && r.Command[i+1] == m[2] && r.Command[i+2] == m[3] {
				replicas++
			}
		}
		if replicas < 2 {
			t.Errorf("the primary %s has %d replicas, want 2", m[2], replicas)
		}
	}
}

// ---- Kubernetes ----

type objectMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type typeMeta struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type httpGetAction struct {
	Path string `yaml:"path"`
	Port string `yaml:"port"` // a number or a container port's name
}

type probe struct {
	HTTPGet             *httpGetAction              `yaml:"httpGet"`
	Exec                *struct{ Command []string } `yaml:"exec"`
	TCPSocket           *struct{ Port string }      `yaml:"tcpSocket"`
	InitialDelaySeconds int                         `yaml:"initialDelaySeconds"`
	PeriodSeconds       int                         `yaml:"periodSeconds"`
	TimeoutSeconds      int                         `yaml:"timeoutSeconds"`
	FailureThreshold    int                         `yaml:"failureThreshold"`
	SuccessThreshold    int                         `yaml:"successThreshold"`
}

type container struct {
	Name            string   `yaml:"name"`
	Image           string   `yaml:"image"`
	ImagePullPolicy string   `yaml:"imagePullPolicy"`
	Command         []string `yaml:"command"`
	Args            []string `yaml:"args"`
	EnvFrom         []struct {
		ConfigMapRef *struct{ Name string } `yaml:"configMapRef"`
		SecretRef    *struct{ Name string } `yaml:"secretRef"`
	} `yaml:"envFrom"`
	Env []struct {
		Name      string         `yaml:"name"`
		Value     string         `yaml:"value"`
		ValueFrom map[string]any `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	StartupProbe   *probe `yaml:"startupProbe"`
	Lifecycle      *struct {
		PreStop *struct {
			Sleep   *struct{ Seconds int }      `yaml:"sleep"`
			Exec    *struct{ Command []string } `yaml:"exec"`
			HTTPGet *httpGetAction              `yaml:"httpGet"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext map[string]any `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type podTemplate struct {
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		TerminationGracePeriodSeconds int            `yaml:"terminationGracePeriodSeconds"`
		SecurityContext               map[string]any `yaml:"securityContext"`
		Containers                    []container    `yaml:"containers"`
		Volumes                       []volume       `yaml:"volumes"`
	} `yaml:"spec"`
}

type volume struct {
	Name      string         `yaml:"name"`
	EmptyDir  map[string]any `yaml:"emptyDir"`
	ConfigMap map[string]any `yaml:"configMap"`
	Secret    map[string]any `yaml:"secret"`
}

type servicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"` // a number or a container port's name
	Protocol   string `yaml:"protocol"`
}

type deployment struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		Replicas             int           `yaml:"replicas"`
		RevisionHistoryLimit int           `yaml:"revisionHistoryLimit"`
		Selector             labelSelector `yaml:"selector"`
		Strategy             struct {
			Type          string `yaml:"type"`
			RollingUpdate struct {
				MaxSurge       string `yaml:"maxSurge"`
				MaxUnavailable string `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"strategy"`
		Template podTemplate `yaml:"template"`
	} `yaml:"spec"`
}

type statefulSet struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		ServiceName          string           `yaml:"serviceName"`
		Replicas             int              `yaml:"replicas"`
		Selector             labelSelector    `yaml:"selector"`
		Template             podTemplate      `yaml:"template"`
		VolumeClaimTemplates []map[string]any `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type service struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		Type                     string            `yaml:"type"`
		ClusterIP                string            `yaml:"clusterIP"`
		PublishNotReadyAddresses bool              `yaml:"publishNotReadyAddresses"`
		Selector                 map[string]string `yaml:"selector"`
		SessionAffinity          string            `yaml:"sessionAffinity"`
		SessionAffinityConfig    map[string]any    `yaml:"sessionAffinityConfig"`
		Ports                    []servicePort     `yaml:"ports"`
	} `yaml:"spec"`
}

type hpa struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		ScaleTargetRef struct {
			APIVersion string `yaml:"apiVersion"`
			Kind       string `yaml:"kind"`
			Name       string `yaml:"name"`
		} `yaml:"scaleTargetRef"`
		MinReplicas int `yaml:"minReplicas"`
		MaxReplicas int `yaml:"maxReplicas"`
		Metrics     []struct {
			Type string `yaml:"type"`
			Pods *struct {
				Metric struct {
					Name string `yaml:"name"`
				} `yaml:"metric"`
				Target struct {
					Type         string `yaml:"type"`
					AverageValue string `yaml:"averageValue"`
				} `yaml:"target"`
			} `yaml:"pods"`
			Resource map[string]any `yaml:"resource"`
		} `yaml:"metrics"`
		Behavior map[string]any `yaml:"behavior"`
	} `yaml:"spec"`
}

type pdb struct {
	typeMeta `yaml:",inline"`
	Spec     struct {
		MaxUnavailable string        `yaml:"maxUnavailable"`
		MinAvailable   string        `yaml:"minAvailable"`
		Selector       labelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

type configMap struct {
	typeMeta `yaml:",inline"`
	Data     map[string]string `yaml:"data"`
}

type kustomization struct {
	APIVersion string           `yaml:"apiVersion"`
	Kind       string           `yaml:"kind"`
	Labels     []map[string]any `yaml:"labels"`
	Resources  []string         `yaml:"resources"`
}

// manifests are the Kubernetes objects of deploy/k8s, decoded strictly.
type manifests struct {
	deployments  map[string]deployment
	statefulSets map[string]statefulSet
	services     map[string]service
	hpas         map[string]hpa
	pdbs         map[string]pdb
	configMaps   map[string]configMap
	files        []string // the files holding objects, relative to deploy/k8s
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	m := manifests{
		deployments: map[string]deployment{}, statefulSets: map[string]statefulSet{},
		services: map[string]service{}, hpas: map[string]hpa{}, pdbs: map[string]pdb{},
		configMaps: map[string]configMap{},
	}
	files, err := filepath.Glob(deployPath("k8s", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		m.files = append(m.files, filepath.Base(f))
		for i, doc := range documents(t, f) {
			where := fmt.Sprintf("%s document %d", rel(f), i+1)
			var tm struct {
				typeMeta `yaml:",inline"`
				Rest     map[string]any `yaml:",inline"`
			}
			if err := doc.Decode(&tm); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if tm.APIVersion == "" || tm.Kind == "" || tm.Metadata.Name == "" {
				t.Fatalf("%s: apiVersion, kind and metadata.name are required", where)
			}
			where += " (" + tm.Kind + " " + tm.Metadata.Name + ")"
			add := func(apiVersion string, v any, store func()) {
				if tm.APIVersion != apiVersion {
					t.Errorf("%s: apiVersion %s, want %s", where, tm.APIVersion, apiVersion)
				}
				strict(t, where, doc, v)
				store()
			}
			switch tm.Kind {
			case "Deployment":
				var v deployment
				add("apps/v1", &v, func() { m.deployments[v.Metadata.Name] = v })
			case "StatefulSet":
				var v statefulSet
				add("apps/v1", &v, func() { m.statefulSets[v.Metadata.Name] = v })
			case "Service":
				var v service
				add("v1", &v, func() { m.services[v.Metadata.Name] = v })
			case "HorizontalPodAutoscaler":
				var v hpa
				add("autoscaling/v2", &v, func() { m.hpas[v.Metadata.Name] = v })
			case "PodDisruptionBudget":
				var v pdb
				add("policy/v1", &v, func() { m.pdbs[v.Metadata.Name] = v })
			case "ConfigMap":
				var v configMap
				add("v1", &v, func() { m.configMaps[v.Metadata.Name] = v })
			default:
				t.Errorf("%s: kind %s has no schema in deploy_test.go", where, tm.Kind)
			}
		}
	}
	return m
}

// checkSentinels checks the reference topology behind a failover URL:
// each address is <pod>.<headless Service> of a StatefulSet of at least
// three Sentinels on the URL's port, monitoring master_name with quorum 2,
// on a persistent StatefulSet of three Redis nodes.
func (m manifests) checkSentinels(t *testing.T, master string, addrs []string) {
	t.Helper()
	if len(addrs) < 3 {
		t.Errorf("FLARECAST_BROKER names %d Sentinels, want 3 (a quorum of 2 must survive one)", len(addrs))
	}
	for _, addr := range addrs {
		host, port, _ := strings.Cut(addr, ":")
		pod, svcName, _ := strings.Cut(host, ".")
		svc, ok := m.services[svcName]
		if !ok || svc.Spec.ClusterIP != "None" {
			t.Errorf("Sentinel %s: %q is not a headless Service of deploy/k8s (one name per pod)", addr, svcName)
			continue
		}
		if !slices.ContainsFunc(svc.Spec.Ports, func(p servicePort) bool { return strconv.Itoa(p.Port) == port }) {
			t.Errorf("Service %s has no port %s for Sentinel %s", svcName, port, addr)
		}
		var ss *statefulSet
		for _, s := range m.statefulSets {
			if s.Spec.ServiceName == svcName && selects(svc.Spec.Selector, s.Spec.Template.Metadata.Labels) {
				ss = &s
			}
		}
		if ss == nil {
			t.Errorf("Sentinel %s: no StatefulSet governed by Service %s", addr, svcName)
			continue
		}
		idx, err := strconv.Atoi(strings.TrimPrefix(pod, ss.Metadata.Name+"-"))
		if err != nil || idx >= ss.Spec.Replicas || ss.Spec.Replicas < 3 {
			t.Errorf("Sentinel %s is not one of StatefulSet %s's %d pods (want 3 or more)", addr, ss.Metadata.Name, ss.Spec.Replicas)
		}
		sc := ss.Spec.Template.Spec.Containers[0]
		script := strings.Join(append(slices.Clone(sc.Command), sc.Args...), " ")
		mon := sentinelMonitor.FindStringSubmatch(script)
		if !strings.Contains(script, "redis-sentinel") || mon == nil || mon[1] != master || mon[4] != "2" {
			t.Errorf("StatefulSet %s does not run Sentinels monitoring %q with quorum 2", ss.Metadata.Name, master)
		}
	}
	var data int
	for _, s := range m.statefulSets {
		c := s.Spec.Template.Spec.Containers[0]
		script := strings.Join(append(slices.Clone(c.Command), c.Args...), " ")
		if strings.Contains(script, "redis-server") {
			data++
			if !strings.Contains(script, "--appendonly yes") {
				t.Errorf("StatefulSet %s: every Redis node must persist (--appendonly yes)", s.Metadata.Name)
			}
			if s.Spec.Replicas != 3 {
				t.Errorf("StatefulSet %s runs %d Redis nodes, want a primary and two replicas", s.Metadata.Name, s.Spec.Replicas)
			}
		}
	}
	if data != 1 {
		t.Errorf("want one StatefulSet of Redis nodes, found %d", data)
	}
}

// selects reports whether a selector picks pods carrying labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// drainBound is the longest flarecast's graceful shutdown takes once
// SIGTERM arrives (engine.Run: 3 s of goodbyes, a 5 s drain, 5 s to stop
// the loops, 2 s for the admin server). TestComposeTopology checks a real
// instance stops within it.
const drainBound = 15

func TestKubernetesManifests(t *testing.T) {
	flags := serveFlags(t)
	m := loadManifests(t)

	var kz kustomization
	kdocs := documents(t, deployPath("k8s", "kustomization.yaml"))
	strict(t, "k8s/kustomization.yaml", kdocs[0], &kz)
	if got, want := slices.Sorted(slices.Values(kz.Resources)), slices.Sorted(slices.Values(m.files)); !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml resources %v, want every manifest %v", got, want)
	}

	d, ok := m.deployments["flarecast"]
	if !ok {
		t.Fatal("no Deployment flarecast")
	}
	pod := d.Spec.Template
	if !selects(d.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
		t.Errorf("Deployment selector %v does not match its pod labels %v", d.Spec.Selector.MatchLabels, pod.Metadata.Labels)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	if len(c.Command) != 0 || len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("container runs command %v args %v: want the image's entrypoint with args [serve ...]", c.Command, c.Args)
	}

	// The environment: the ConfigMap(s) loaded with envFrom, then env.
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			continue
		}
		cm, ok := m.configMaps[ef.ConfigMapRef.Name]
		if !ok {
			t.Fatalf("envFrom names ConfigMap %q, which deploy/k8s does not define", ef.ConfigMapRef.Name)
		}
		for k, v := range cm.Data {
			env[k] = v
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	if env["FLARECAST_BROKER"] == "" {
		t.Error("the pods set no FLARECAST_BROKER: they would not form a fleet")
	}
	cfg := checkServe(t, "k8s Deployment flarecast", flags, c.Args[1:], env)

	// The broker is the Redis Service, on its port, or the Sentinels.
	u, err := url.Parse(cfg["broker"])
	if err != nil || u.Scheme != "redis" {
		t.Fatalf("FLARECAST_BROKER %q is not a redis:// URL", cfg["broker"])
	}
	if master := u.Query().Get("master_name"); master != "" {
		m.checkSentinels(t, master, sentinelAddrs(u))
	} else if rs, ok := m.services[u.Hostname()]; ok {
		if !slices.ContainsFunc(rs.Spec.Ports, func(p servicePort) bool {
			return strconv.Itoa(p.Port) == u.Port()
		}) {
			t.Errorf("Service %s has no port %s for FLARECAST_BROKER", u.Hostname(), u.Port())
		}
		var backed bool
		for _, ss := range m.statefulSets {
			if selects(rs.Spec.Selector, ss.Spec.Template.Metadata.Labels) {
				backed = true
				if !slices.Contains(ss.Spec.Template.Spec.Containers[0].Args, "--appendonly") {
					t.Errorf("StatefulSet %s: redis must persist (--appendonly yes)", ss.Metadata.Name)
				}
			}
		}
		if !backed {
			t.Errorf("Service %s selects no pods of deploy/k8s", u.Hostname())
		}
	}

	// Container ports are the flags' ports.
	portNamed := map[string]int{}
	for _, p := range c.Ports {
		portNamed[p.Name] = p.ContainerPort
	}
	wsPort, adminPort := port(t, cfg["listen"]), port(t, cfg["admin-listen"])
	if portNamed["ws"] != wsPort {
		t.Errorf("container port ws is %d, --listen is %s", portNamed["ws"], cfg["listen"])
	}
	if portNamed["metrics"] != adminPort {
		t.Errorf("container port metrics is %d, --admin-listen is %s", portNamed["metrics"], cfg["admin-listen"])
	}
	if a := pod.Metadata.Annotations; a["prometheus.io/port"] != strconv.Itoa(adminPort) || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("prometheus.io annotations %v do not point at the admin port's /metrics", a)
	}
	resolve := func(p string) int {
		if n, err := strconv.Atoi(p); err == nil {
			return n
		}
		return portNamed[p]
	}

	// Probes: on the admin port, at paths the admin server routes.
	routes := adminPaths(t)
	for name, want := range map[string]struct {
		p    *probe
		path string
	}{"readinessProbe": {c.ReadinessProbe, "/readyz"}, "livenessProbe": {c.LivenessProbe, "/healthz"}} {
		if want.p == nil || want.p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe on %s", name, want.path)
			continue
		}
		g := want.p.HTTPGet
		if g.Path != want.path || !slices.Contains(routes, g.Path) {
			t.Errorf("%s: path %q, want %s (routed in engine/admin.go: %v)", name, g.Path, want.path, routes)
		}
		if resolve(g.Port) != adminPort {
			t.Errorf("%s: port %q is not the admin port %d", name, g.Port, adminPort)
		}
	}

	// The drain: the pod leaves the endpoints during the preStop sleep, then
	// SIGTERM starts flarecast's drain; the grace period covers both. The
	// image is distroless, so an exec hook (sleep, sh) cannot run.
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Fatal("want a preStop sleep action (the distroless image has no sleep binary for exec)")
	}
	if c.Lifecycle.PreStop.Exec != nil {
		t.Error("preStop exec cannot run in the distroless image")
	}
	sleep := c.Lifecycle.PreStop.Sleep.Seconds
	if sleep < 5 {
		t.Errorf("preStop sleeps %d s: endpoint removal needs a few seconds to reach kube-proxy and load balancers", sleep)
	}
	if grace := pod.Spec.TerminationGracePeriodSeconds; grace < sleep+drainBound {
		t.Errorf("terminationGracePeriodSeconds %d < preStop %d s + drain %d s: pods would be killed mid-drain", grace, sleep, drainBound)
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}

	// The ingest socket must be on a writable volume (the root is read-only).
	sockDir := path.Dir(cfg["ingest-socket"])
	var onVolume bool
	for _, vm := range c.VolumeMounts {
		if vm.MountPath == sockDir && !vm.ReadOnly {
			onVolume = slices.ContainsFunc(pod.Spec.Volumes, func(v volume) bool {
				return v.Name == vm.Name && v.EmptyDir != nil
			})
		}
	}
	if !onVolume {
		t.Errorf("the ingest socket %s is on no writable emptyDir mount", cfg["ingest-socket"])
	}

	// The Service: selects the pods, 8080 ws and 9090 metrics onto the
	// container's ports.
	svc, ok := m.services["flarecast"]
	if !ok {
		t.Fatal("no Service flarecast")
	}
	if !selects(svc.Spec.Selector, pod.Metadata.Labels) {
		t.Errorf("Service selector %v does not match the pod labels %v", svc.Spec.Selector, pod.Metadata.Labels)
	}
	svcPorts := map[string]int{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = p.Port
		if resolve(p.TargetPort) == 0 {
			t.Errorf("Service port %s targets %q, no port of the container", p.Name, p.TargetPort)
		}
	}
	if svcPorts["ws"] != wsPort || svcPorts["metrics"] != adminPort {
		t.Errorf("Service ports %v, want ws %d and metrics %d", svcPorts, wsPort, adminPort)
	}
	for _, p := range svc.Spec.Ports {
		if want := map[string]int{"ws": wsPort, "metrics": adminPort}[p.Name]; resolve(p.TargetPort) != want {
			t.Errorf("Service port %s targets %q (%d), want %d", p.Name, p.TargetPort, resolve(p.TargetPort), want)
		}
	}

	// The seed's HPA: Pods metric websocket_active_connections, 8000 per pod, 3..10.
	h, ok := m.hpas["flarecast"]
	if !ok {
		t.Fatal("no HorizontalPodAutoscaler flarecast")
	}
	if r := h.Spec.ScaleTargetRef; r.Kind != "Deployment" || r.Name != d.Metadata.Name || r.APIVersion != "apps/v1" {
		t.Errorf("HPA scales %+v, want the Deployment %s", r, d.Metadata.Name)
	}
	if h.Spec.MinReplicas != 3 || h.Spec.MaxReplicas != 10 {
		t.Errorf("HPA replicas %d..%d, want the seed's 3..10", h.Spec.MinReplicas, h.Spec.MaxReplicas)
	}
	if len(h.Spec.Metrics) != 1 || h.Spec.Metrics[0].Type != "Pods" || h.Spec.Metrics[0].Pods == nil {
		t.Fatalf("HPA metrics %+v: want one Pods metric", h.Spec.Metrics)
	}
	pm := h.Spec.Metrics[0].Pods
	if !exportedMetric(t, pm.Metric.Name) {
		t.Errorf("HPA scales on %q, which the server does not export", pm.Metric.Name)
	}
	if pm.Metric.Name != "websocket_active_connections" || pm.Target.Type != "AverageValue" || pm.Target.AverageValue != "8000" {
		t.Errorf("HPA target %+v on %s, want AverageValue 8000 of websocket_active_connections", pm.Target, pm.Metric.Name)
	}
	if mc, err := strconv.Atoi(cfg["max-connections"]); err == nil && mc != 0 && mc < 8000 {
		t.Errorf("--max-connections %d is below the HPA's 8000 per pod: pods would refuse before scaling", mc)
	}

	// The flarecast pods' budget, and the Redis StatefulSets' own.
	for name, b := range m.pdbs {
		if name == "flarecast" {
			if !selects(b.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
				t.Errorf("PodDisruptionBudget %s selects %v, not the flarecast pods %v", name, b.Spec.Selector.MatchLabels, pod.Metadata.Labels)
			}
			continue
		}
		if !slices.ContainsFunc(slices.Collect(maps.Values(m.statefulSets)), func(ss statefulSet) bool {
			return selects(b.Spec.Selector.MatchLabels, ss.Spec.Template.Metadata.Labels)
		}) {
			t.Errorf("PodDisruptionBudget %s selects %v: no pods of deploy/k8s", name, b.Spec.Selector.MatchLabels)
		}
	}
	if _, ok := m.pdbs["flarecast"]; !ok {
		t.Error("no PodDisruptionBudget flarecast")
	}
}
