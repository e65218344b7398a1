package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The abusers run in a process of their own, not beside the healthy
// clients: a Go process whose cores are kept busy (the ack-ahead client's
// 200 Hz ticker is enough on one core) notices network readiness late, up
// to sysmon's 10 ms netpoll, and that delay would be measured as the
// server's latency. The load tester (runOne) starts itself again with
// --abusers-only and the abusers' settings, optionally under taskset
// (--abuser-cpus), waits for its "abusers running" line on stderr before
// publishing, and when the run has drained sends it one line on stdin —
// the events the server accepted, which the ack-ahead client needs to know
// what it is owed — and reads the abusers' []AbuserStats, as JSON, from
// its stdout. The child's other stderr lines are passed through to the
// progress output; its warnings become the run's warnings.

// abusersReady starts the line the abusers' process prints on stderr once
// each abuser has set up its first connection.
const abusersReady = "flarecast-loadtest: abusers running: "

// warningPrefix starts a warning line (runner.warn).
const warningPrefix = "flarecast-loadtest: warning: "

// abusersProgram returns the program to start as the abusers' process, and
// environment to add: by default this executable, which must dispatch
// Config.AbusersOnly to RunAbusersOnly as cmd/flarecast-loadtest does.
// The package's tests replace it (the test binary is not the load tester).
var abusersProgram = func() (prog string, env []string, err error) {
	prog, err = os.Executable()
	return prog, nil, err
}

// abusersStop is the line the load tester sends the abusers' process to
// stop it: what was published and which of it the server accepted.
type abusersStop struct {
	Published int64  `json:"published"`
	Accepted  bitset `json:"accepted"`
}

// abusersArgs are the abusers' process's flags for this run.
func (c *Config) abusersArgs() []string {
	args := []string{"--abusers-only", "--url", c.URL, "--duration", c.Duration.String(), "--drain-timeout", c.DrainTimeout.String()}
	if c.AbuserKinds != "" {
		args = append(args, "--abuser-kinds", c.AbuserKinds)
	}
	return args
}

// abuserProcess is the abusers' process of one run, seen from the load tester.
type abuserProcess struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout bytes.Buffer
	ready  chan struct{} // closed on the "abusers running" line
	exited chan struct{} // closed once it exited and its output was read
	// tail keeps its last stderr lines, for an error message.
	tail    []string
	waitErr error
	// err is set when the abusers did not run or did not report: the
	// comparison is then not one, and the run is not OK.
	err error
}

// startAbuserProcess starts the abusers' process and waits until it says
// every abuser is running. A failure is a warning and p.err.
func (r *runner) startAbuserProcess(ctx context.Context) *abuserProcess {
	p := &abuserProcess{ready: make(chan struct{}), exited: make(chan struct{})}
	if err := p.start(r); err != nil {
		p.err = err
		r.warn("abusers not started: %v", err)
		return p
	}
	wait := time.NewTimer(30 * time.Second)
	defer wait.Stop()
	select {
	case <-p.ready:
	case <-p.exited:
		p.err = fmt.Errorf("the abusers' process exited before its abusers were running (%s)", p.status())
		r.warn("%v", p.err)
	case <-wait.C:
		p.err = errors.New("the abusers' process did not report its abusers running within 30 s")
		r.warn("%v; stopping it", p.err)
		p.kill()
	case <-ctx.Done():
	}
	return p
}

func (p *abuserProcess) start(r *runner) error {
	prog, env, err := abusersProgram()
	if err != nil {
		return fmt.Errorf("own executable: %w", err)
	}
	p.cmd = pinnedCommand(r.cfg.AbuserCPUs, prog, r.cfg.abusersArgs()...)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	// It must not outlive the load tester, even one killed hard; and the
	// terminal's ^C reaches it too: it stops its abusers and still reports.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return err
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", strings.Join(p.cmd.Args[:min(len(p.cmd.Args), 4)], " "), err)
	}
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		_, _ = io.Copy(&p.stdout, stdout)
	}()
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		readyOnce := false
		for sc.Scan() {
			line := strings.TrimLeft(sc.Text(), "\r")
			p.tail = append(p.tail, line)
			if len(p.tail) > 8 {
				p.tail = p.tail[1:]
			}
			switch {
			case strings.HasPrefix(line, abusersReady) && !readyOnce:
				readyOnce = true
				fmt.Fprintf(r.progress, "%s%s\n", r.clearLine(), line)
				close(p.ready)
			case strings.HasPrefix(line, warningPrefix):
				r.warn("%s", strings.TrimPrefix(line, warningPrefix))
			default:
				fmt.Fprintf(r.progress, "%s%s\n", r.clearLine(), line)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		<-outDone
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	return nil
}

// status says how the process ended, with its last stderr lines.
func (p *abuserProcess) status() string {
	s := "exit status 0"
	if p.waitErr != nil {
		s = p.waitErr.Error()
	}
	if len(p.tail) > 0 {
		s += "; last said: " + strings.Join(p.tail, " | ")
	}
	return s
}

func (p *abuserProcess) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// finish tells the abusers' process to stop, with the events the server
// accepted, waits for it to exit, and returns its abusers' stats (nil, a
// warning and p.err when it reported none).
func (p *abuserProcess) finish(r *runner) []AbuserStats {
	if p.cmd == nil || p.cmd.Process == nil {
		return nil
	}
	r.accMu.Lock()
	stop := abusersStop{Published: r.published.Load(), Accepted: slices.Clone(r.accepted)}
	r.accMu.Unlock()
	b, err := json.Marshal(stop)
	if err == nil {
		_, err = p.stdin.Write(append(b, '\n'))
	}
	_ = p.stdin.Close()
	wait := time.NewTimer(time.Minute)
	defer wait.Stop()
	select {
	case <-p.exited:
	case <-wait.C:
		r.warn("the abusers' process did not stop within a minute; killed")
		p.kill()
	}
	var out []AbuserStats
	if jerr := json.Unmarshal(p.stdout.Bytes(), &out); jerr != nil || p.waitErr != nil {
		if p.err == nil {
			p.err = fmt.Errorf("the abusers' process did not report (%s; stop sent: %v; stdout: %v)", p.status(), err, jerr)
			r.warn("%v", p.err)
		}
		if jerr != nil {
			return nil
		}
	}
	return out
}

// cpu is the CPU time the process used, once it has exited.
func (p *abuserProcess) cpu() time.Duration {
	if p.cmd == nil || p.cmd.ProcessState == nil {
		return 0
	}
	return p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
}

// RunAbusersOnly is the abusers' process (Config.AbusersOnly): it runs the
// abusers of cfg.AbuserKinds against cfg.URL, says "abusers running" on
// progress (stderr) once each has set up its first connection, and runs
// them until a stop line arrives on stdin (abusersStop, from the load
// tester that started it) or, if stdin ends without one, for cfg.Duration;
// at most cfg.Duration + 2 × cfg.DrainTimeout + 1 min. It then stops them
// as a run does (the ack-ahead client waits for what it is owed) and
// writes their []AbuserStats as JSON on stdout, and nothing else there.
func RunAbusersOnly(ctx context.Context, cfg Config, stdin io.Reader, stdout, progress io.Writer) error {
	cfg.AbusersOnly = true
	if err := cfg.Validate(); err != nil {
		return err
	}
	start := time.Now()
	r := &runner{cfg: cfg, urls: cfg.URLs(), progress: &lockedWriter{w: progress}, base: start}
	r.phase.Store("abusers")
	stopLine := make(chan *abusersStop, 1)
	go func() {
		line, err := bufio.NewReader(stdin).ReadBytes('\n')
		if len(bytes.TrimSpace(line)) == 0 {
			stopLine <- nil // stdin ended (or broke) without a stop line
			return
		}
		st := new(abusersStop)
		if jerr := json.Unmarshal(line, st); jerr != nil {
			r.warn("abusers' process: unreadable stop line (%v, %v): the ack-ahead client cannot tell what it is owed", jerr, err)
			st = nil
		}
		stopLine <- st
	}()
	as := r.startAbusers(ctx)
	deadline := time.NewTimer(time.Until(start.Add(cfg.Duration + 2*cfg.DrainTimeout + time.Minute)))
	defer deadline.Stop()
	var stop *abusersStop
wait:
	for lines := stopLine; ; {
		select {
		case st := <-lines:
			if st != nil {
				stop = st
				break wait
			}
			lines = nil // no stop line will come: run for the duration
			deadline.Reset(time.Until(start.Add(cfg.Duration)))
		case <-deadline.C:
			break wait
		case <-ctx.Done():
			// Interrupted (^C reaches the whole process group): the load
			// tester, if there is one, sends its stop line at once.
			if lines != nil {
				select {
				case stop = <-lines:
				case <-time.After(5 * time.Second):
				}
			}
			break wait
		}
	}
	if stop != nil {
		r.accMu.Lock()
		r.accepted = stop.Accepted
		r.accMu.Unlock()
		r.published.Store(stop.Published)
	}
	stats := as.finish(r)
	return json.NewEncoder(stdout).Encode(stats)
}
