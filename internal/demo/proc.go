package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// proc is a component the demo runs as a child process, in its own
// process group so that stopping it stops everything it started.
type proc struct {
	name string // as the story names it: "tether-ca", "web's sidecar"
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // Wait's result, set before done closes
	// stopping is set before the demo stops it, so its exit is expected.
	stopping atomic.Bool
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// demoEnv is the environment of the children: the user's, without the
// Tether and SPIFFE variables that would change what the flags say.
func demoEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TETHER_") || strings.HasPrefix(kv, "SPIFFE_ENDPOINT_SOCKET=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// start runs bin with args, its output appended to logName in the log
// directory. If it exits before the demo stops it, the run fails.
func (d *demo) start(name, logName, bin string, args, env []string) (*proc, error) {
	if err := errDemoUnsupported(); err != nil {
		return nil, err
	}
	logPath := d.logDir + string(os.PathSeparator) + logName
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log of %s: %w", name, err)
	}
	defer f.Close() // the child has its own copy once started
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	cmd.Dir = d.dir
	cmd.SysProcAttr = childProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	d.procsMu.Lock()
	d.procs = append(d.procs, p)
	d.procsMu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		if !p.stopping.Load() && d.failed != nil {
			d.failed(fmt.Errorf("%s (pid %d) exited on its own: %v%s", p.name, p.pid(), exitText(p.err), logTail(p.log)))
		}
	}()
	return p, nil
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// logTail returns the last lines of a log, indented, to explain a failure.
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 12 {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return fmt.Sprintf("\n(its log, %s, is empty)", path)
	}
	return fmt.Sprintf("\nlast lines of its log, %s:\n    %s", path, strings.Join(lines, "\n    "))
}

// stop ends p's process group: SIGTERM (the components drain and exit),
// then SIGKILL after grace. It returns an error if anything of the group
// is still there afterwards.
func (p *proc) stop(grace time.Duration) error {
	p.stopping.Store(true)
	if !p.exited() {
		signalGroup(p.pid(), syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			signalGroup(p.pid(), syscall.SIGKILL)
			<-p.done
		}
	}
	// Anything the component started in its group goes with it.
	signalGroup(p.pid(), syscall.SIGKILL)
	for deadline := time.Now().Add(2 * time.Second); groupAlive(p.pid()); {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: process group %d still has processes after SIGKILL", p.name, p.pid())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// stopAll stops every component, the last started first, each tier
// (sidecars, apps, discovery, CA) at once.
func (d *demo) stopAll() (int, error) {
	d.procsMu.Lock()
	procs := append([]*proc(nil), d.procs...)
	d.procsMu.Unlock()
	for _, p := range procs {
		p.stopping.Store(true)
	}
	tier := func(p *proc) int {
		switch {
		case strings.HasSuffix(p.name, "sidecar"):
			return 0
		case strings.HasSuffix(p.name, "app"):
			return 1
		case strings.HasPrefix(p.name, "tether-discovery"):
			return 2
		default:
			return 3
		}
	}
	var errs []error
	for t := 0; t <= 3; t++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, p := range procs {
			if tier(p) != t {
				continue
			}
			wg.Go(func() {
				if err := p.stop(5 * time.Second); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	return len(procs), errors.Join(errs...)
}

// waitUntil polls check every 100ms until it succeeds, p exits, ctx ends
// or timeout passes; the error says which, with the end of p's log.
func waitUntil(ctx context.Context, p *proc, what string, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before %s: %v%s", p.name, what, exitText(p.err), logTail(p.log))
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not %s within %s: %v%s", p.name, what, timeout, err, logTail(p.log))
		}
	}
}

var demoHTTP = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// httpOK gets url and returns its body if the status is 200.
func httpOK(url string) (string, error) {
	resp, err := demoHTTP.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	if resp.StatusCode != http.StatusOK {
		return b.String(), fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(b.String()))
	}
	return b.String(), nil
}

func dialOK(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}
