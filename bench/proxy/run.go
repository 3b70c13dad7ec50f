package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tether-mesh/tether/internal/procstat"
)

// measurement is one setup in one round.
type measurement struct {
	KeepAlive, NewConns, ResetConns, Bulk loadResult
	// HasProcs is false for direct: no CPU or RSS figures.
	HasProcs bool
	// RSSIdle and RSSPeak are the larger of the two proxies' VmRSS after
	// start (before load) and VmHWM after all workloads, in bytes;
	// AnonIdle is the RssAnon part of RSSIdle (the rest is mostly the
	// mapped binary).
	RSSIdle, RSSPeak, AnonIdle int64
	// HWMAfter is the larger VmHWM after each workload, in order: which
	// workload set the peak.
	HWMAfter [4]int64
	// Syscalls is the proxies' system calls in the keep-alive window
	// (-syscalls), 0 if not counted.
	Syscalls int64
	// Retries counts workloads measured again because other processes
	// used more than -max-others CPUs; Noisy those still over it after
	// -retries.
	Retries, Noisy int
	// Note is what the setup reports about itself (tether: streams and
	// handshakes from sidecar A's metrics).
	Note string
}

func run(ctx context.Context, cfg Config, stdout, stderr io.Writer) error {
	start := time.Now()
	if cfg.JSON != "" {
		// Fail now, not after the run, if the file's directory is missing.
		if _, err := os.Stat(filepath.Dir(cfg.JSON)); err != nil {
			return fmt.Errorf("-json: %w", err)
		}
	}
	e, done, err := newEnv(ctx, cfg.WorkDir, "proxybench-", cfg.BinDir, cfg.BaseBinDir)
	if err != nil {
		return err
	}
	defer done()
	for _, s := range cfg.Setups {
		if st := setupByName[s]; st.needsCA || st.needsCerts {
			if err := e.startTetherCA(ctx); err != nil {
				return fmt.Errorf("tether-ca: %w", err)
			}
			break
		}
	}
	results := map[string][]measurement{}
	for r := range cfg.Rounds {
		// Rotate the order so no setup always runs first or last.
		order := slices.Concat(cfg.Setups[r%len(cfg.Setups):], cfg.Setups[:r%len(cfg.Setups)])
		for _, name := range order {
			m, err := measureSetup(ctx, e, cfg, name, filepath.Join(e.dir, fmt.Sprintf("r%d-%s", r+1, name)))
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, name, err)
			}
			results[name] = append(results[name], m)
			fmt.Fprintf(stderr, "round %d  %-16s %s\n", r+1, name, m.summary())
		}
	}
	if err := writeReport(stdout, cfg, results); err != nil {
		return err
	}
	if cfg.JSON != "" {
		return writeJSON(cfg.JSON, jsonReport(cfg, start, time.Now(), results))
	}
	return nil
}

// measureSetup starts the pair, reads its idle RSS, runs the four
// workloads and reads its peak RSS, then stops it.
func measureSetup(ctx context.Context, e *env, cfg Config, name, dir string) (measurement, error) {
	var m measurement
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return m, err
	}
	p, err := setupByName[name].start(ctx, e, dir)
	if err != nil {
		return m, err
	}
	defer stopAll(p.procs)
	m.HasProcs = len(p.procs) > 0
	sleepCtx(ctx, cfg.Settle)
	idle, err := memOf(p.procs)
	if err != nil {
		return m, err
	}
	m.RSSIdle, m.AnonIdle = idle.RSS, idle.Anon
	cpuOf := func(pids []int) time.Duration {
		var sum time.Duration
		for _, pid := range pids {
			d, _ := procstat.CPU(pid)
			sum += d
		}
		return sum
	}
	var proxies, ours []int
	for _, c := range p.procs {
		proxies = append(proxies, c.pid())
	}
	ours = append(ours, os.Getpid())
	for _, c := range e.children {
		ours = append(ours, c.pid())
	}
	ours = append(ours, proxies...)
	l := load{addr: p.entry, conns: cfg.Conns, size: cfg.Size, warmup: cfg.Warmup, dur: cfg.Duration,
		cpu: func() time.Duration { return cpuOf(proxies) },
		others: func() time.Duration {
			busy, err := procstat.SystemBusy()
			if err != nil {
				return 0
			}
			return busy - cpuOf(ours)
		},
	}
	for i, w := range []struct {
		res *loadResult
		fn  func(context.Context, load) (loadResult, error)
	}{{&m.KeepAlive, keepAlive}, {&m.NewConns, newConns}, {&m.ResetConns, resetConns}, {&m.Bulk, bulk}} {
		l.window = nil
		var perfErr error
		if cfg.Syscalls && m.HasProcs && w.res == &m.KeepAlive {
			l.window = func() func() {
				stop, err := countSyscalls(dir, p.procs)
				if err != nil {
					perfErr = err
					return func() {}
				}
				return func() { m.Syscalls, perfErr = stop() }
			}
		}
		// Measure again if the rest of the machine was busy meanwhile.
		for try := 0; ; try++ {
			if *w.res, err = w.fn(ctx, l); err != nil {
				return m, err
			}
			if perfErr != nil {
				return m, perfErr
			}
			busy := w.res.Others.Seconds() / w.res.Elapsed.Seconds()
			if busy <= cfg.MaxOthers {
				break
			}
			if try == cfg.Retries {
				m.Noisy++
				break
			}
			m.Retries++
			waitQuiet(ctx, l.others, cfg.MaxOthers, 2*time.Minute)
		}
		for _, c := range p.procs {
			if err := c.exited(); err != nil {
				return m, err
			}
		}
		if m.HasProcs {
			mem, err := memOf(p.procs)
			if err != nil {
				return m, err
			}
			m.HWMAfter[i] = mem.HWM
		}
	}
	peak, err := memOf(p.procs)
	if err != nil {
		return m, err
	}
	m.RSSPeak = peak.HWM
	if p.note != nil {
		m.Note = p.note()
	}
	return m, nil
}

// memOf returns the procstat.Mem of the proc with the largest VmRSS, with the
// largest VmHWM among procs.
func memOf(procs []*child) (procstat.Mem, error) {
	var out procstat.Mem
	for _, c := range procs {
		m, err := procstat.Memory(c.pid())
		if err != nil {
			return out, fmt.Errorf("%s: %w", c.name, err)
		}
		if m.RSS > out.RSS {
			out.RSS, out.Anon = m.RSS, m.Anon
		}
		out.HWM = max(out.HWM, m.HWM)
	}
	return out, nil
}

func (m measurement) summary() string {
	s := fmt.Sprintf("%6.0f req/s p50 %5.0fµs p99 %5.0fµs | %5.0f conn/s p50 %6.0fµs | %5.0f RST conn/s | %6.1f MB/s",
		m.KeepAlive.Rate(), us(m.KeepAlive.P50), us(m.KeepAlive.P99), m.NewConns.Rate(), us(m.NewConns.P50), m.ResetConns.Rate(), m.Bulk.Rate()/1e6)
	if m.HasProcs {
		s += fmt.Sprintf(" | CPU s/1k: %.3f req %.3f conn %.3f RST conn | RSS %.1f MiB idle (%.1f anon), peak after each workload %.1f/%.1f/%.1f/%.1f",
			cpuPerK(m.KeepAlive), cpuPerK(m.NewConns), cpuPerK(m.ResetConns), mib(m.RSSIdle), mib(m.AnonIdle),
			mib(m.HWMAfter[0]), mib(m.HWMAfter[1]), mib(m.HWMAfter[2]), mib(m.HWMAfter[3]))
	}
	var others []string
	for _, r := range []loadResult{m.KeepAlive, m.NewConns, m.ResetConns, m.Bulk} {
		others = append(others, fmt.Sprintf("%.2f", r.Others.Seconds()/r.Elapsed.Seconds()))
	}
	s += " | other processes: " + strings.Join(others, "/") + " CPUs"
	if m.Retries > 0 || m.Noisy > 0 {
		s += fmt.Sprintf(" (%d workloads measured again, %d still over)", m.Retries, m.Noisy)
	}
	if m.Syscalls > 0 {
		s += fmt.Sprintf(" | %.1f syscalls/req", float64(m.Syscalls)/float64(m.KeepAlive.Ops))
	}
	if m.Note != "" {
		s += " | " + m.Note
	}
	for _, r := range []struct {
		name string
		res  loadResult
	}{{"keep-alive", m.KeepAlive}, {"new-conn", m.NewConns}, {"new-conn-rst", m.ResetConns}, {"bulk", m.Bulk}} {
		if r.res.Errors > 0 {
			s += fmt.Sprintf(" | %s: %d errors, first: %v", r.name, r.res.Errors, r.res.FirstErr)
		}
	}
	return s
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func mib(b int64) float64        { return float64(b) / (1 << 20) }

// cpuPerK is the CPU seconds per 1,000 operations.
func cpuPerK(r loadResult) float64 {
	if r.Ops == 0 {
		return 0
	}
	return r.CPU.Seconds() / float64(r.Ops) * 1000
}

// waitQuiet waits, up to limit, until the rest of the machine has used at
// most max CPUs over two seconds.
func waitQuiet(ctx context.Context, others func() time.Duration, max float64, limit time.Duration) {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline) && ctx.Err() == nil; {
		o0, t0 := others(), time.Now()
		sleepCtx(ctx, 2*time.Second)
		if (others()-o0).Seconds()/time.Since(t0).Seconds() <= max {
			return
		}
	}
}
