package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tether-mesh/tether/internal/procstat"
)

// The attackers run in -workers child processes of cabench, because one
// process may not hold more connections than its open-file limit (20,000
// in this container, whose hard limit cannot be raised). Each worker
// holds slots [first, first+conns) and prints "open attempts" every
// 250 ms; it stops when its standard input closes.

// attackerMain is a worker's main.
func attackerMain(c config, sources string) error {
	n, err := strconv.Atoi(sources)
	if err != nil || n < 1 || n > 250 {
		return fmt.Errorf("-worker -sources %q: want one number from 1 to 250", sources)
	}
	if err := raiseNofile(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	var open, attempts atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(1, c.dialers))
	for i := c.first; i < c.first+c.conns; i++ {
		src := net.IPv4(127, 0, 0, byte(2+i%n))
		wg.Add(1)
		go func() {
			defer wg.Done()
			attacker(ctx, c.addr, src, i%2 == 0, c.reconnect, sem, &open, &attempts)
		}()
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for ctx.Err() == nil {
		fmt.Printf("%d %d\n", open.Load(), attempts.Load())
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	wg.Wait()
	return nil
}

// attackers are the running worker processes.
type attackers struct {
	cmds  []*exec.Cmd
	stdin []io.Closer
	// last reported open and attempts, per worker
	openN, attemptsN []atomic.Int64
	wg               sync.WaitGroup
	once             sync.Once
}

func startAttackers(c config, addr string, sources int) (*attackers, error) {
	a := &attackers{openN: make([]atomic.Int64, c.workers), attemptsN: make([]atomic.Int64, c.workers)}
	per := (c.conns + c.workers - 1) / c.workers
	for w := range c.workers {
		first := w * per
		n := min(per, c.conns-first)
		if n <= 0 {
			break
		}
		cmd := exec.Command(os.Args[0], "-worker", "-addr", addr, "-first", strconv.Itoa(first), "-conns", strconv.Itoa(n),
			"-sources", strconv.Itoa(sources), "-reconnect", c.reconnect.String(), "-dialers", strconv.Itoa(c.dialers/c.workers))
		cmd.Stderr = os.Stderr
		procstat.DieWithParent(cmd)
		in, err := cmd.StdinPipe()
		if err != nil {
			a.stop()
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			a.stop()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			a.stop()
			return nil, fmt.Errorf("start attacker process: %w", err)
		}
		a.cmds, a.stdin = append(a.cmds, cmd), append(a.stdin, in)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			s := bufio.NewScanner(out)
			for s.Scan() {
				f := strings.Fields(s.Text())
				if len(f) != 2 {
					continue
				}
				o, _ := strconv.ParseInt(f[0], 10, 64)
				at, _ := strconv.ParseInt(f[1], 10, 64)
				a.openN[w].Store(o)
				a.attemptsN[w].Store(at)
			}
		}()
	}
	return a, nil
}

func (a *attackers) open() (n int64) {
	for i := range a.openN {
		n += a.openN[i].Load()
	}
	return n
}

func (a *attackers) attempts() (n int64) {
	for i := range a.attemptsN {
		n += a.attemptsN[i].Load()
	}
	return n
}

// stop ends the workers (closing their stdin, SIGKILL after 10 s) and
// waits for them.
func (a *attackers) stop() {
	a.once.Do(func() {
		for _, in := range a.stdin {
			in.Close()
		}
		for _, cmd := range a.cmds {
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Signal(syscall.SIGKILL)
				<-done
			}
		}
		a.wg.Wait()
	})
}
