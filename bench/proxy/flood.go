package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tether-mesh/tether/internal/procstat"
)

// proxybench flood measures issue 11 item 10: idle unauthenticated
// connections against sidecar B's inbound port while legitimate callers
// go through sidecar A. Each round starts a fresh tether pair for each
// variant, in a rotating order:
//
//	baseline       the legitimate load alone
//	flood          the same load while -attackers idle TCP connections
//	               (from 127.0.1.0 and up, -per-source each) are held open
//	               to B's inbound port; a connection B closes is opened
//	               again after 100ms, so the pressure stays
//
// and, with -old-bin, the same two variants with the tether-sidecar in
// that directory. The attackers connect first; once every one has
// connected once (or failed), the legitimate load runs: -c clients, each
// opening a connection through A, echoing -size bytes and closing, for
// -duration. B's RSS is sampled every 100ms throughout (VmRSS from /proc)
// and its peak (VmHWM) read at the end.
func floodMain(args []string) int {
	fs := flag.NewFlagSet("proxybench flood", flag.ContinueOnError)
	attackers := fs.Int("attackers", 20000, "idle attacker connections")
	perSource := fs.Int("per-source", 200, "attacker connections per source address (127.0.1.0 and up)")
	conns := fs.Int("c", 200, "concurrent legitimate clients")
	size := fs.Int("size", 1024, "request and response size")
	dur := fs.Duration("duration", 10*time.Second, "measured time of the legitimate load")
	warmup := fs.Duration("warmup", time.Second, "unmeasured time at the start of the legitimate load")
	rounds := fs.Int("rounds", 3, "rounds; medians are taken over them")
	bin := fs.String("bin", "bin", "directory holding tether-ca, tether and tether-sidecar")
	oldBin := fs.String("old-bin", "", "directory holding an older tether-sidecar to measure side by side (optional)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *attackers < 0 || *perSource < 1 || *conns < 1 || *rounds < 1 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "proxybench flood: want -attackers >= 0, -per-source, -c, -rounds >= 1 and -duration > 0")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := raiseFileLimit(attackersPerChild + 1024); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench flood:", err)
		return 1
	}
	if err := flood(ctx, floodConfig{*attackers, *perSource, load{conns: *conns, size: *size, dur: *dur, warmup: *warmup}, *rounds, *bin, *oldBin}); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench flood:", err)
		return 1
	}
	return 0
}

type floodConfig struct {
	attackers, perSource int
	legit                load
	rounds               int
	bin, oldBin          string
}

// floodResult is one variant's round.
type floodResult struct {
	legit          loadResult
	rssMax, hwm    int64 // B's, bytes
	held, attempts int64 // attacker connections open at the end; dials
	// counters are the sidecars' connection results, for the log.
	counters string
}

func flood(ctx context.Context, cfg floodConfig) error {
	e, done, err := newEnv(ctx, "", "proxybench-flood-", cfg.bin, "")
	if err != nil {
		return err
	}
	defer done()
	if err := e.startTetherCA(ctx); err != nil {
		return fmt.Errorf("tether-ca: %w", err)
	}
	variants := []string{"baseline", "flood"}
	binOf := map[string]string{"baseline": e.bins, "flood": e.bins}
	if cfg.oldBin != "" {
		old, err := filepath.Abs(cfg.oldBin)
		if err != nil {
			return err
		}
		variants = append(variants, "old baseline", "old flood")
		binOf["old baseline"], binOf["old flood"] = old, old
	}
	results := map[string][]floodResult{}
	for r := range cfg.rounds {
		order := slices.Concat(variants[r%len(variants):], variants[:r%len(variants)])
		for _, v := range order {
			ve := *e
			ve.bins = binOf[v]
			res, err := floodRound(ctx, &ve, cfg, v == "flood" || v == "old flood", filepath.Join(e.dir, fmt.Sprintf("r%d-%s", r+1, v)))
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, v, err)
			}
			results[v] = append(results[v], res)
			fmt.Fprintf(os.Stderr, "round %d  %-13s legit %8.0f conn/s, %d errors (first: %v), p99 %.2fms; B RSS max %.1f MiB, HWM %.1f MiB; attackers held %d of %d dials;%s\n",
				r+1, v, res.legit.Rate(), res.legit.Errors, res.legit.FirstErr, us(res.legit.P99)/1000, mib(res.rssMax), mib(res.hwm), res.held, res.attempts, res.counters)
		}
	}
	fmt.Printf("| variant | legit conn/s | vs baseline | legit errors | p99 ms | B RSS max MiB | B VmHWM MiB | attackers held at end |\n|---|---|---|---|---|---|---|---|\n")
	base := func(v string) string {
		if v == "old flood" {
			return "old baseline"
		}
		return "baseline"
	}
	med := func(v string, f func(floodResult) float64) float64 {
		var xs []float64
		for _, r := range results[v] {
			xs = append(xs, f(r))
		}
		return median(xs)
	}
	for _, v := range variants {
		rate := func(r floodResult) float64 { return r.legit.Rate() }
		var ratios []float64
		for i, r := range results[v] {
			ratios = append(ratios, r.legit.Rate()/results[base(v)][i].legit.Rate())
		}
		fmt.Printf("| %s | %.0f | %.2f | %.0f | %.2f | %.1f | %.1f | %.0f |\n", v, med(v, rate), median(ratios),
			med(v, func(r floodResult) float64 { return float64(r.legit.Errors) }),
			med(v, func(r floodResult) float64 { return us(r.legit.P99) / 1000 }),
			med(v, func(r floodResult) float64 { return mib(r.rssMax) }),
			med(v, func(r floodResult) float64 { return mib(r.hwm) }),
			med(v, func(r floodResult) float64 { return float64(r.held) }))
	}
	fmt.Printf("\nMedians over %d rounds; legit errors are failed connections (warmup included).\n", cfg.rounds)
	return nil
}

// floodRound starts a pair, floods B if flooded is set, runs the legitimate
// load and stops everything.
func floodRound(ctx context.Context, e *env, cfg floodConfig, flooded bool, dir string) (floodResult, error) {
	var res floodResult
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	p, err := startTether(ctx, e, dir)
	if err != nil {
		return res, err
	}
	defer stopAll(p.procs)
	b := p.procs[len(p.procs)-1].pid()
	sampleCtx, cancel := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	stopSampling := func() { cancel(); sampler.Wait() }
	defer stopSampling()
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if m, err := procstat.Memory(b); err == nil {
				res.rssMax = max(res.rssMax, m.RSS)
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var attackers []*child
	if flooded {
		if attackers, err = startAttackers(ctx, dir, e.self, p.target, cfg.attackers, cfg.perSource); err != nil {
			return res, err
		}
		defer stopAll(attackers)
	}
	l := cfg.legit
	l.addr = p.entry
	res.legit, err = newConns(ctx, l)
	for i, side := range []string{"A", "B"} {
		res.counters += " " + side + ":" + sidecarCounters(ctx, p.admins[i])
	}
	for _, a := range attackers {
		a.stop()
		held, attempts, err := attackResult(a)
		if err != nil {
			return res, err
		}
		res.held += held
		res.attempts += attempts
	}
	stopSampling()
	if err != nil {
		return res, err
	}
	m, err := procstat.Memory(b)
	if err != nil {
		return res, fmt.Errorf("sidecar B: %w", err)
	}
	res.hwm = m.HWM
	return res, nil
}

// attackersPerChild is how many attacker sockets one child process
// holds: the open file limit may not be raised past the hard limit
// (20,000 in some containers), so 20,000 attackers take several processes.
const attackersPerChild = 8000

// raiseFileLimit raises the soft open file limit to n, or to the hard
// limit if that is lower (children inherit it).
func raiseFileLimit(n int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if uint64(n) > lim.Max {
		return fmt.Errorf("the open file limit's hard limit is %d; the attackers need %d per process", lim.Max, n)
	}
	lim.Cur = max(lim.Cur, uint64(n))
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// startAttackers starts child processes holding n idle connections to
// target in all, and waits until each attacker has connected once.
func startAttackers(ctx context.Context, dir, self, target string, n, perSource int) ([]*child, error) {
	var cs []*child
	for first := 0; first < n; first += attackersPerChild {
		c, err := startChild(dir, fmt.Sprintf("attack-%d", first), self, "attack", "-target", target,
			"-first", fmt.Sprint(first), "-n", fmt.Sprint(min(attackersPerChild, n-first)), "-per-source", fmt.Sprint(perSource))
		if err != nil {
			stopAll(cs)
			return nil, err
		}
		cs = append(cs, c)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; {
		ready := 0
		for _, c := range cs {
			if err := c.exited(); err != nil {
				stopAll(cs)
				return nil, err
			}
			if b, _ := os.ReadFile(c.log); bytes.Contains(b, []byte("ready\n")) {
				ready++
			}
		}
		if ready == len(cs) {
			return cs, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stopAll(cs)
			return nil, fmt.Errorf("attackers not connected after 2 minutes")
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

// attackResult reads what a stopped attacker child reported.
func attackResult(c *child) (held, attempts int64, err error) {
	b, _ := os.ReadFile(c.log)
	i := bytes.LastIndex(b, []byte("held="))
	if i < 0 {
		return 0, 0, fmt.Errorf("%s reported nothing: %s", c.name, c.tail())
	}
	_, err = fmt.Sscanf(string(b[i:]), "held=%d attempts=%d", &held, &attempts)
	return held, attempts, err
}

// attackMain is the attack subcommand: hold -n idle connections to
// -target until SIGTERM, from 127.0.1.0 and up (-per-source each, counting
// from attacker -first); print "ready" once each has connected once, and
// "held=H attempts=A" at the end.
func attackMain(args []string) int {
	fs := flag.NewFlagSet("proxybench attack", flag.ContinueOnError)
	target := fs.String("target", "", "address to flood")
	first := fs.Int("first", 0, "index of the first attacker (picks the source addresses)")
	n := fs.Int("n", 1000, "idle connections")
	perSource := fs.Int("per-source", 200, "connections per source address")
	if err := fs.Parse(args); err != nil || *target == "" || *perSource < 1 {
		fmt.Fprintln(os.Stderr, "proxybench attack: -target is required; -per-source must be positive")
		return 2
	}
	if err := raiseFileLimit(*n + 64); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench attack:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a := startAttack(ctx, *target, *first, *n, *perSource)
	a.connectedOnce.Wait()
	fmt.Println("ready")
	<-ctx.Done()
	// Report before closing 8,000 sockets, which may outlast the grace
	// period of child.stop on a busy machine.
	fmt.Printf("held=%d attempts=%d\n", a.held.Load(), a.attempts.Load())
	a.stop()
	return 0
}

// attack holds idle connections to a target.
type attack struct {
	cancel         context.CancelFunc
	wg             sync.WaitGroup
	connectedOnce  sync.WaitGroup
	held, attempts atomic.Int64
}

func startAttack(ctx context.Context, target string, first, n, perSource int) *attack {
	ctx, cancel := context.WithCancel(ctx)
	a := &attack{cancel: cancel}
	a.connectedOnce.Add(n)
	for i := first; i < first+n; i++ {
		src := netip.AddrFrom4([4]byte{127, 0, 1 + byte(i/perSource/256), byte(i / perSource % 256)})
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 5 * time.Second}
			first := true
			for ctx.Err() == nil {
				a.attempts.Add(1)
				c, err := d.DialContext(ctx, "tcp", target)
				if first {
					a.connectedOnce.Done()
					first = false
				}
				if err == nil {
					a.held.Add(1)
					stop := context.AfterFunc(ctx, func() { c.Close() })
					io.Copy(io.Discard, c) // idle: sends nothing, waits for B to close
					stop()
					c.Close()
					a.held.Add(-1)
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	return a
}

func (a *attack) stop() {
	a.cancel()
	a.wg.Wait()
}

// sidecarCounters reads a tether sidecar's connection results and
// unauthenticated rejections from its /metrics, as "name{labels}=value"
// pairs.
func sidecarCounters(ctx context.Context, admin string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "metrics: " + err.Error()
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		for _, name := range []string{"tether_sidecar_connections_total", "tether_sidecar_unauthenticated_rejections_total", "tether_sidecar_connection_limit_rejections_total"} {
			if rest, ok := strings.CutPrefix(sc.Text(), name); ok {
				out = append(out, strings.TrimPrefix(name, "tether_sidecar_")+strings.Replace(rest, " ", "=", 1))
			}
		}
	}
	return strings.Join(out, " ")
}
