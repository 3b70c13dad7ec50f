package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tether-mesh/tether/internal/procstat"
)

// The mem subcommand measures what each extra sidecar costs in memory:
// -n processes of one setup, all started from one binary file, joined in a
// ring (process i's outbound listener → process i+1's inbound listener →
// the echo server), so that every process has an inbound and an outbound
// path. For each process it reads /proc/PID/smaps_rollup (RSS, PSS,
// private clean and dirty, anonymous) once the ring is idle, and again at
// the end of a window of keep-alive echo traffic through every process,
// then VmHWM. The relay setup (this binary's relay, one outbound and one
// inbound route per process, from a copy of this binary that nothing else
// runs) is the baseline in the same run.
//
//	proxybench mem -bin DIR [-n 10] [-rounds 3] [-baseline-bin OLD] ...

// memSetups are the setups the mem subcommand knows.
var memSetups = []string{"relay", "tether", "tether-base"}

// memConfig is one run of the mem subcommand.
type memConfig struct {
	Setups []string
	N      int // processes per setup
	Rounds int
	// Conns is the keep-alive connections through each process's
	// outbound (and so through the next one's inbound) under load.
	Conns                       int
	Size                        int
	Settle                      time.Duration // idle time before the idle reading
	Load                        time.Duration // the measured load window
	Warmup                      time.Duration // load before the window
	BinDir, BaseBinDir, WorkDir string
}

func parseMemFlags(args []string) (memConfig, error) {
	c := memConfig{}
	var setups string
	fs := flag.NewFlagSet("proxybench mem", flag.ContinueOnError)
	fs.StringVar(&setups, "setups", "relay,tether", "comma-separated setups: "+strings.Join(memSetups, ", ")+" (tether-base is added when -baseline-bin is given)")
	fs.IntVar(&c.N, "n", 10, "processes per setup, all from one binary file")
	fs.IntVar(&c.Rounds, "rounds", 3, "rounds; the report gives medians over them")
	fs.IntVar(&c.Conns, "c", 4, "keep-alive connections through each process's outbound under load")
	fs.IntVar(&c.Size, "size", 1024, "request and response size in bytes under load")
	fs.DurationVar(&c.Settle, "settle", 5*time.Second, "idle time after every path has echoed, before the idle reading")
	fs.DurationVar(&c.Load, "load", 10*time.Second, "load window; the loaded reading is taken at its end, before the load stops")
	fs.DurationVar(&c.Warmup, "warmup", time.Second, "load before the window")
	fs.StringVar(&c.BinDir, "bin", "bin", "directory holding tether-ca, tether and tether-sidecar")
	fs.StringVar(&c.BaseBinDir, "baseline-bin", "", "directory holding an older tether-sidecar, run as setup tether-base (bench/proxy/build-base.sh REV DIR builds one)")
	fs.StringVar(&c.WorkDir, "workdir", "", "keep configs, logs and sockets here (default: a temporary directory, removed at exit)")
	var err error
	if c.Setups, err = parseSetupFlags(fs, args, &setups, memSetups, true); err != nil {
		return c, err
	}
	// The same rules as the speed benchmark's -baseline-bin.
	bc := Config{Setups: c.Setups, BaseBinDir: c.BaseBinDir}
	if err := baselineSetups(&bc); err != nil {
		return c, err
	}
	c.Setups = bc.Setups
	switch {
	case len(c.Setups) == 0:
		return c, errors.New("-setups: none given")
	case c.N < 2:
		return c, errors.New("-n: want at least 2 (a ring)")
	case c.Rounds < 1:
		return c, errors.New("-rounds: want at least 1")
	case c.Conns < 1:
		return c, errors.New("-c: want at least 1")
	case c.Size < 16 || c.Size > 1<<20:
		return c, errors.New("-size: want 16 bytes to 1 MiB")
	case c.Settle < 0 || c.Warmup < 0:
		return c, errors.New("-settle, -warmup: want zero or more")
	case c.Load <= 0:
		return c, errors.New("-load: want a positive duration")
	}
	return c, nil
}

func memMain(args []string) int {
	cfg, err := parseMemFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "proxybench mem:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runMem(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench mem:", err)
		return 1
	}
	return 0
}

// procMem is one process's memory at one reading.
type procMem struct {
	procstat.Smaps
	HWM int64 // VmHWM: peak RSS so far
}

// memRound is one setup in one round.
type memRound struct {
	Idle, Loaded []procMem // per process, in ring order
	// Rate is the keep-alive requests per second through the whole ring
	// in the load window; Errors the failed ones (warmup included).
	Rate   float64
	Errors int64
	First  error
}

func runMem(ctx context.Context, cfg memConfig, stdout, stderr io.Writer) error {
	e, done, err := newEnv(ctx, cfg.WorkDir, "proxybench-mem-", cfg.BinDir, cfg.BaseBinDir)
	if err != nil {
		return err
	}
	defer done()
	r := &ring{e: e, cfg: cfg}
	if err := r.prepare(ctx); err != nil {
		return err
	}
	results := map[string][]memRound{}
	for round := range cfg.Rounds {
		order := slices.Concat(cfg.Setups[round%len(cfg.Setups):], cfg.Setups[:round%len(cfg.Setups)])
		for _, name := range order {
			m, err := r.measure(ctx, name, filepath.Join(e.dir, fmt.Sprintf("r%d-%s", round+1, name)))
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round+1, name, err)
			}
			results[name] = append(results[name], m)
			fmt.Fprintf(stderr, "round %d  %-12s %s\n", round+1, name, m.summary())
		}
	}
	return writeMemReport(stdout, cfg, r.binSizes, results)
}

// ring starts and measures the rings of one run.
type ring struct {
	e   *env
	cfg memConfig
	// ids and tokens are the sidecars' identities and join tokens, one
	// per ring position.
	ids, tokens []string
	// relayBin is the copy of this binary the relays run.
	relayBin string
	binSizes map[string]int64 // setup → size of its binary file
}

func (r *ring) prepare(ctx context.Context) error {
	r.binSizes = map[string]int64{}
	for _, s := range r.cfg.Setups {
		switch s {
		case "relay":
			// A copy only the relays run, so that their PSS shares the
			// binary among the -n relays alone, as the sidecars share
			// theirs (the echo server and this process run self).
			r.relayBin = filepath.Join(r.e.dir, "proxybench-relay")
			if err := copyFile(r.e.self, r.relayBin); err != nil {
				return fmt.Errorf("relay binary: %w", err)
			}
		default:
			if err := r.startCA(ctx); err != nil {
				return err
			}
		}
		fi, err := os.Stat(r.bin(s))
		if err != nil {
			return err
		}
		r.binSizes[s] = fi.Size()
	}
	return nil
}

// startCA starts the tether-ca, once, and makes a join token for each
// ring position: each sidecar has an identity of its own.
func (r *ring) startCA(ctx context.Context) error {
	if r.e.ca != nil {
		return nil
	}
	if err := r.e.startTetherCA(ctx); err != nil {
		return fmt.Errorf("tether-ca: %w", err)
	}
	for i := range r.cfg.N {
		id := fmt.Sprintf("spiffe://cluster.local/ns/default/sa/proxybench-mem-%d", i)
		tok, err := r.e.joinToken(ctx, id)
		if err != nil {
			return err
		}
		r.ids, r.tokens = append(r.ids, id), append(r.tokens, tok)
	}
	return nil
}

// bin is the binary file every process of setup runs.
func (r *ring) bin(setup string) string {
	switch setup {
	case "relay":
		return r.relayBin
	case "tether-base":
		return filepath.Join(r.e.baseBins, "tether-sidecar")
	}
	return filepath.Join(r.e.bins, "tether-sidecar")
}

// start starts the ring of setup and waits for an echo through every
// process's outbound (and so through every inbound). It returns the
// processes and their outbound addresses, in ring order.
func (r *ring) start(ctx context.Context, setup, dir string) ([]*child, []string, error) {
	n := r.cfg.N
	out, err := freeAddrs(n)
	if err != nil {
		return nil, nil, err
	}
	in, err := freeAddrs(n)
	if err != nil {
		return nil, nil, err
	}
	var procs []*child
	for i := range n {
		next, prev := (i+1)%n, (i+n-1)%n
		name := fmt.Sprintf("%s-%d", setup, i)
		var args []string
		if setup == "relay" {
			args = []string{"relay", "-listen", out[i] + "," + in[i], "-to", in[next] + "," + r.e.echo}
		} else {
			admin, err := freeAddr()
			if err != nil {
				stopAll(procs)
				return nil, nil, err
			}
			common, err := r.e.sidecarArgs(ctx, r.bin(setup), dir, name, r.tokens[i], admin)
			if err != nil {
				stopAll(procs)
				return nil, nil, err
			}
			args = append([]string{"--outbound", out[i] + "=" + in[next] + "@" + r.ids[next],
				"--inbound", in[i] + "=" + r.e.echo, "--allow", r.ids[prev]}, common...)
		}
		c, err := startChild(dir, name, r.bin(setup), args...)
		if err != nil {
			stopAll(procs)
			return nil, nil, err
		}
		procs = append(procs, c)
	}
	for _, addr := range out {
		if err := waitEcho(ctx, addr, 60*time.Second, procs); err != nil {
			stopAll(procs)
			return nil, nil, err
		}
	}
	return procs, out, nil
}

// measure starts the ring of setup, reads every process's memory when
// idle and under load, and stops it.
func (r *ring) measure(ctx context.Context, setup, dir string) (memRound, error) {
	var m memRound
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return m, err
	}
	procs, entries, err := r.start(ctx, setup, dir)
	if err != nil {
		return m, err
	}
	defer stopAll(procs)
	sleepCtx(ctx, r.cfg.Settle)
	if m.Idle, err = readMem(procs); err != nil {
		return m, err
	}
	// One load per process's outbound, all started together; the first
	// reads every process's memory as its window closes, while all the
	// loads still run.
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		loadErr error
		readErr error
	)
	res := make([]loadResult, len(entries))
	for i, addr := range entries {
		l := load{addr: addr, conns: r.cfg.Conns, size: r.cfg.Size, warmup: r.cfg.Warmup, dur: r.cfg.Load}
		if i == 0 {
			l.window = func() func() {
				return func() { m.Loaded, readErr = readMem(procs) }
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			lr, err := keepAlive(ctx, l)
			mu.Lock()
			defer mu.Unlock()
			res[i] = lr
			if err != nil && loadErr == nil {
				loadErr = err
			}
		}()
	}
	wg.Wait()
	if loadErr != nil {
		return m, loadErr
	}
	if readErr != nil {
		return m, readErr
	}
	for _, c := range procs {
		if err := c.exited(); err != nil {
			return m, err
		}
	}
	for i, lr := range res {
		m.Rate += lr.Rate()
		m.Errors += lr.Errors
		if m.First == nil && lr.FirstErr != nil {
			m.First = fmt.Errorf("through %s: %w", procs[i].name, lr.FirstErr)
		}
		if lr.Ops == 0 {
			return m, fmt.Errorf("no request echoed through %s's outbound under load (%d errors, first: %v)", procs[i].name, lr.Errors, lr.FirstErr)
		}
	}
	// VmHWM after the load: the peak of the whole run of the process.
	for i, c := range procs {
		mem, err := procstat.Memory(c.pid())
		if err != nil {
			return m, fmt.Errorf("%s: %w", c.name, err)
		}
		m.Loaded[i].HWM = mem.HWM
	}
	return m, nil
}

// readMem reads the smaps_rollup and VmHWM of every process.
func readMem(procs []*child) ([]procMem, error) {
	out := make([]procMem, len(procs))
	for i, c := range procs {
		s, err := procstat.SmapsRollup(c.pid())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
		mem, err := procstat.Memory(c.pid())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
		out[i] = procMem{Smaps: s, HWM: mem.HWM}
	}
	return out, nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// memFigure is one column of the memory report.
type memFigure struct {
	name string
	get  func(procMem) int64
}

var memFigures = []memFigure{
	{"RSS", func(p procMem) int64 { return p.RSS }},
	{"PSS", func(p procMem) int64 { return p.PSS }},
	{"private", func(p procMem) int64 { return p.Private() }},
	{"Private_Dirty", func(p procMem) int64 { return p.PrivateDirty }},
	{"Private_Clean", func(p procMem) int64 { return p.PrivateClean }},
	{"Anonymous", func(p procMem) int64 { return p.Anonymous }},
	{"VmHWM", func(p procMem) int64 { return p.HWM }},
}

func memFig(name string) memFigure {
	return memFigures[slices.IndexFunc(memFigures, func(f memFigure) bool { return f.name == name })]
}

// perProcess is the median of f over one reading's processes, in MiB.
func perProcess(ps []procMem, f memFigure) float64 {
	xs := make([]float64, len(ps))
	for i, p := range ps {
		xs[i] = mib(f.get(p))
	}
	return median(xs)
}

// worst is the largest f over one reading's processes, in MiB.
func worst(ps []procMem, f memFigure) float64 {
	var m float64
	for _, p := range ps {
		m = math.Max(m, mib(f.get(p)))
	}
	return m
}

// total is the sum of f over one reading's processes, in MiB.
func total(ps []procMem, f memFigure) float64 {
	var s float64
	for _, p := range ps {
		s += mib(f.get(p))
	}
	return s
}

// overRounds is the median over rounds of agg applied to each round's
// reading (idle or loaded).
func overRounds(ms []memRound, loaded bool, agg func([]procMem) float64) float64 {
	var xs []float64
	for _, m := range ms {
		ps := m.Idle
		if loaded {
			ps = m.Loaded
		}
		xs = append(xs, agg(ps))
	}
	return median(xs)
}

func (m memRound) summary() string {
	var b strings.Builder
	for _, ph := range []struct {
		name string
		ps   []procMem
	}{{"idle", m.Idle}, {"load", m.Loaded}} {
		fmt.Fprintf(&b, "%s: median RSS %.1f PSS %.1f private %.1f (max %.1f) MiB, total PSS %.1f MiB | ", ph.name,
			perProcess(ph.ps, memFig("RSS")), perProcess(ph.ps, memFig("PSS")), perProcess(ph.ps, memFig("private")),
			worst(ph.ps, memFig("private")), total(ph.ps, memFig("PSS")))
	}
	fmt.Fprintf(&b, "VmHWM median %.1f MiB | %.0f req/s through the ring", perProcess(m.Loaded, memFig("VmHWM")), m.Rate)
	if m.Errors > 0 {
		fmt.Fprintf(&b, " | %d errors, first: %v", m.Errors, m.First)
	}
	return b.String()
}

func writeMemReport(w io.Writer, cfg memConfig, binSizes map[string]int64, results map[string][]memRound) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Memory per extra sidecar: %d processes per setup, each setup's from one binary file (", cfg.N)
	for i, s := range cfg.Setups {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.1f MB", s, float64(binSizes[s])/1e6)
	}
	fmt.Fprintf(&b, "), in a ring: process i's outbound → process i+1's inbound → echo server. "+
		"idle: %s after an echo went through every process; load: %d keep-alive connections of %d-byte echoes through each process's outbound (so %d through each inbound), read at the end of a %s window after %s warmup. "+
		"Per process, from /proc/PID/smaps_rollup: the median over the %d processes, then the median over %d rounds; total: the sum over the %d processes (median over rounds); max: the largest process. "+
		"private = the larger of Private_Dirty and Anonymous, memory no other process shares: what each extra sidecar costs. VmHWM: peak RSS, read after the load. MiB.\n\n",
		cfg.Settle, cfg.Conns, cfg.Size, cfg.Conns, cfg.Load, cfg.Warmup, cfg.N, cfg.Rounds, cfg.N)
	b.WriteString("| setup | phase | RSS | PSS | private | private max | Private_Dirty | Private_Clean | Anonymous | VmHWM | total RSS | total PSS | total private | req/s | errors |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range cfg.Setups {
		ms := results[s]
		var errs int64
		var rates []float64
		for _, m := range ms {
			errs += m.Errors
			rates = append(rates, m.Rate)
		}
		for _, loaded := range []bool{false, true} {
			phase, rate, errCell := "idle", "–", "–"
			if loaded {
				phase, rate, errCell = "load", fmt.Sprintf("%.0f", median(rates)), fmt.Sprint(errs)
			}
			fmt.Fprintf(&b, "| %s | %s |", s, phase)
			for _, f := range []string{"RSS", "PSS", "private"} {
				fmt.Fprintf(&b, " %.2f |", overRounds(ms, loaded, func(ps []procMem) float64 { return perProcess(ps, memFig(f)) }))
			}
			fmt.Fprintf(&b, " %.2f |", overRounds(ms, loaded, func(ps []procMem) float64 { return worst(ps, memFig("private")) }))
			for _, f := range []string{"Private_Dirty", "Private_Clean", "Anonymous", "VmHWM"} {
				fmt.Fprintf(&b, " %.2f |", overRounds(ms, loaded, func(ps []procMem) float64 { return perProcess(ps, memFig(f)) }))
			}
			for _, f := range []string{"RSS", "PSS", "private"} {
				fmt.Fprintf(&b, " %.1f |", overRounds(ms, loaded, func(ps []procMem) float64 { return total(ps, memFig(f)) }))
			}
			fmt.Fprintf(&b, " %s | %s |\n", rate, errCell)
		}
	}
	for _, pair := range [][2]string{{"tether", "relay"}, {"tether", "tether-base"}} {
		t, base := results[pair[0]], results[pair[1]]
		if t == nil || base == nil {
			continue
		}
		fmt.Fprintf(&b, "\n%s ÷ %s (per-process medians, ratio within each round, then the median; spread min–max over rounds):\n\n| phase | RSS | PSS | private | total PSS |\n|---|---:|---:|---:|---:|\n", pair[0], pair[1])
		for _, loaded := range []bool{false, true} {
			fmt.Fprintf(&b, "| %s |", map[bool]string{false: "idle", true: "load"}[loaded])
			for _, f := range []string{"RSS", "PSS", "private", "total PSS"} {
				agg := func(ps []procMem) float64 { return perProcess(ps, memFig(f)) }
				if f == "total PSS" {
					agg = func(ps []procMem) float64 { return total(ps, memFig("PSS")) }
				}
				var xs []float64
				for i := range min(len(t), len(base)) {
					xs = append(xs, overRounds(t[i:i+1], loaded, agg)/overRounds(base[i:i+1], loaded, agg))
				}
				fmt.Fprintf(&b, " %.2f× (%.2f–%.2f) |", median(xs), slices.Min(xs), slices.Max(xs))
			}
			b.WriteString("\n")
		}
	}
	if t := results["tether"]; t != nil {
		med := overRounds(t, false, func(ps []procMem) float64 { return perProcess(ps, memFig("private")) })
		mx := overRounds(t, false, func(ps []procMem) float64 { return worst(ps, memFig("private")) })
		fmt.Fprintf(&b, "\nTarget (tether):\n\n| target | measured | met |\n|---|---|---|\n| private memory < 5 MiB per sidecar, idle | median %.2f MiB, largest %.2f MiB | %s |\n",
			med, mx, map[bool]string{true: "yes", false: "**no**"}[mx < 5])
	}
	_, err := io.WriteString(w, b.String())
	return err
}
