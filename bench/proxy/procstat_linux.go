package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// countSyscalls starts counting the system calls of procs (all their
// threads) with perf; stop ends the count and returns it.
func countSyscalls(dir string, procs []*child) (stop func() (int64, error), err error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, fmt.Errorf("-syscalls needs perf (Debian: linux-perf): %w", err)
	}
	pids := make([]string, len(procs))
	for i, c := range procs {
		pids[i] = strconv.Itoa(c.pid())
	}
	out := filepath.Join(dir, "perf-syscalls.csv")
	c, err := startChild(dir, "perf", perf, "stat", "-x", ",", "-o", out, "-e", "raw_syscalls:sys_enter", "-p", strings.Join(pids, ","))
	if err != nil {
		return nil, err
	}
	// perf attaches within milliseconds: the count misses that much of a
	// window of seconds.
	return func() (int64, error) {
		c.cmd.Process.Signal(os.Interrupt)
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			c.stop()
		}
		b, err := os.ReadFile(out)
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Split(line, ",")
			if len(f) > 2 && f[2] == "raw_syscalls:sys_enter" {
				n, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("perf stat: %q: %v (%s)", line, err, c.tail())
				}
				return n, nil
			}
		}
		return 0, fmt.Errorf("perf stat counted nothing: %s", c.tail())
	}, nil
}
