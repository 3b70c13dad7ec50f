//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// child is a server process that printed its address.
type child struct {
	cmd        *exec.Cmd
	pid        int
	host, port string
	done       chan struct{}
}

// startChild starts argv and waits for its first stdout line, the address
// it serves on. The child gets SIGKILL if this process dies first.
func startChild(argv []string) (*child, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		for sc.Scan() {
		}
	}()
	go func() { cmd.Wait(); close(c.done) }()
	select {
	case l, ok := <-lines:
		if !ok {
			c.stop()
			return nil, errors.New("exited before listening")
		}
		c.host, c.port, err = net.SplitHostPort(strings.TrimSpace(l))
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("address line %q: %w", l, err)
		}
		// The pid to read CPU time from is the server's, not taskset's:
		// taskset execs the command, so they are the same process.
		return c, nil
	case <-time.After(30 * time.Second):
		c.stop()
		return nil, errors.New("no address within 30s")
	}
}

// stop sends SIGTERM, then SIGKILL after 5 s.
func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
