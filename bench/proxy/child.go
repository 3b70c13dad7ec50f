package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tether-mesh/tether/internal/procstat"
)

// child is a process the run started. Every child is stopped by its PID
// (stop), and gets SIGKILL if the run dies first.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set when done is closed
}

// startChild starts bin with args, its output going to dir/name.log.
func startChild(dir, name, bin string, args ...string) (*child, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "GOTRACEBACK=all")
	procstat.DieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended, with why.
func (c *child) exited() error {
	select {
	case <-c.done:
		if c.err == nil {
			return fmt.Errorf("%s exited: %s", c.name, c.tail())
		}
		return fmt.Errorf("%s exited (%v): %s", c.name, c.err, c.tail())
	default:
		return nil
	}
}

// stop sends SIGTERM, then SIGKILL after a grace period, and waits.
func (c *child) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(3 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// tail is the end of the child's log, for error messages.
func (c *child) tail() string {
	b, _ := os.ReadFile(c.log)
	s := strings.TrimSpace(string(b))
	if len(s) > 600 {
		s = "…" + s[len(s)-600:]
	}
	if s == "" {
		return "(no output; log " + c.log + ")"
	}
	return s + " (log " + c.log + ")"
}

func stopAll(cs []*child) {
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i].stop()
	}
}

// waitEcho waits until one request echoes through addr, or a child dies,
// or timeout passes.
func waitEcho(ctx context.Context, addr string, timeout time.Duration, cs []*child) error {
	req := make([]byte, 1+1024)
	fill(req)
	req[0] = modeEcho
	resp := make([]byte, 1024)
	deadline := time.Now().Add(timeout)
	var last error
	for {
		for _, c := range cs {
			if err := c.exited(); err != nil {
				return err
			}
		}
		last = oneShot(ctx, addr, req, resp, 2*time.Second, false)
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no echo through %s after %s: %w", addr, timeout, last)
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
}

// handedOut holds every address freeAddr returned: the kernel may give a
// port just closed to the next bind, and two processes of a run must not
// get the same one.
var handedOut sync.Map

// freeAddr returns a 127.0.0.1 address with a port free right now, one it
// has not returned before.
func freeAddr() (string, error) {
	for range 100 {
		l, err := listenTCP("127.0.0.1:0")
		if err != nil {
			return "", err
		}
		a := l.Addr().String()
		l.Close()
		if _, dup := handedOut.LoadOrStore(a, true); !dup {
			return a, nil
		}
	}
	return "", fmt.Errorf("no loopback port free that was not handed out before, in 100 tries")
}

func freeAddrs(n int) ([]string, error) {
	out := make([]string, n)
	for i := range out {
		a, err := freeAddr()
		if err != nil {
			return nil, err
		}
		out[i] = a
	}
	return out, nil
}
