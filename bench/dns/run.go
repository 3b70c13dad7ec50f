//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tether-mesh/tether/internal/procstat"
)

// writeQueries writes n dnsperf query lines ("name type"), a fixed mix of
// what a pod in namespace team-000 asks its sidecar for:
//
//	30%  A     svc.ns.svc.cluster.local   (fully qualified)
//	10%  AAAA  svc.ns.svc.cluster.local   (NODATA: IPv4-only mesh)
//	20%  A     svc.ns                     (short: search path svc.cluster.local)
//	15%  A     svc                        (short: the pod's own namespace)
//	10%  A     svc.ns.svc                 (short: search path cluster.local)
//	10%  AAAA  svc.ns                     (short, NODATA)
//	 5%  SRV   _http._tcp.svc.ns.svc.cluster.local
//
// Every tenth service is unreachable for the pod, so about 10% of the
// answers are NXDOMAIN. Short names get a CNAME to the full name, then the
// address.
func writeQueries(w io.Writer, n, services, namespaces int) error {
	bw := bufio.NewWriter(w)
	x := uint32(2463534242)
	next := func() uint32 { x ^= x << 13; x ^= x >> 17; x ^= x << 5; return x }
	// Services of the pod's own namespace, for the one-label form.
	var own []int
	for i := 0; i < services; i += namespaces {
		own = append(own, i)
	}
	for range n {
		i := int(next() % uint32(services))
		ns := nsName(i % namespaces)
		full := svcName(i) + "." + ns + ".svc." + clusterDomain
		switch p := next() % 100; {
		case p < 30:
			fmt.Fprintf(bw, "%s A\n", full)
		case p < 40:
			fmt.Fprintf(bw, "%s AAAA\n", full)
		case p < 60:
			fmt.Fprintf(bw, "%s.%s A\n", svcName(i), ns)
		case p < 75:
			fmt.Fprintf(bw, "%s A\n", svcName(own[int(next()%uint32(len(own)))]))
		case p < 85:
			fmt.Fprintf(bw, "%s.%s.svc A\n", svcName(i), ns)
		case p < 95:
			fmt.Fprintf(bw, "%s.%s AAAA\n", svcName(i), ns)
		default:
			fmt.Fprintf(bw, "_http._tcp.%s SRV\n", full)
		}
	}
	return bw.Flush()
}

func queriesMain(args []string) error {
	fs := flag.NewFlagSet("dnsbench queries", flag.ContinueOnError)
	n := fs.Int("n", 20000, "query lines")
	services := fs.Int("services", defaultServices, "mesh services")
	namespaces := fs.Int("namespaces", defaultNamespaces, "namespaces")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return writeQueries(os.Stdout, *n, *services, *namespaces)
}

// runConfig is one side-by-side run.
type runConfig struct {
	Rounds     int
	Duration   time.Duration
	Warmup     time.Duration
	Clients    int // dnsperf -c
	Threads    int // dnsperf -T
	Inflight   int // dnsperf -q
	ServerCPU  int // taskset CPU for the servers (-1: no pinning)
	ClientCPU  int // taskset CPU for dnsperf (-1: no pinning)
	Services   int
	Namespaces int
	Queries    int
}

var modes = []string{"tether", "minimal"}

// result is one dnsperf window against one server.
type result struct {
	QPS       float64
	AvgLat    time.Duration
	Lost      int64
	Completed int64
	Codes     string
	ServerCPU time.Duration // the server's CPU time in the window
	PerfCPU   time.Duration // dnsperf's
	Wall      time.Duration
}

func runMain(ctx context.Context, args []string) error {
	var c runConfig
	fs := flag.NewFlagSet("dnsbench run", flag.ContinueOnError)
	fs.IntVar(&c.Rounds, "rounds", 7, "rounds; each runs dnsperf against both servers")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured dnsperf run per server and round")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "unmeasured dnsperf run before each measured one")
	fs.IntVar(&c.Clients, "c", 4, "dnsperf -c: simulated clients (source ports)")
	fs.IntVar(&c.Threads, "T", 1, "dnsperf -T: threads")
	fs.IntVar(&c.Inflight, "q", 128, "dnsperf -q: queries in flight")
	fs.IntVar(&c.ServerCPU, "server-cpu", 0, "CPU the servers are pinned to with taskset (-1: none)")
	fs.IntVar(&c.ClientCPU, "client-cpu", 1, "CPU dnsperf is pinned to with taskset (-1: none)")
	fs.IntVar(&c.Services, "services", defaultServices, "mesh services in the tether server's table")
	fs.IntVar(&c.Namespaces, "namespaces", defaultNamespaces, "namespaces of those services")
	fs.IntVar(&c.Queries, "queries", 20000, "lines of the query file (dnsperf loops over it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.Rounds < 1 || c.Duration <= 0 {
		return errors.New("-rounds and -duration must be positive")
	}
	perf, err := exec.LookPath("dnsperf")
	if err != nil {
		return errors.New("dnsperf not found: install Debian's dnsperf (bench/dns/run.sh does as root)")
	}
	taskset, _ := exec.LookPath("taskset")
	pin := func(cpu int, argv []string) []string {
		if taskset == "" || cpu < 0 || cpu >= runtime.NumCPU() {
			return argv
		}
		return append([]string{taskset, "-c", strconv.Itoa(cpu)}, argv...)
	}
	dir, err := os.MkdirTemp("", "dnsbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	qfile := filepath.Join(dir, "queries.txt")
	f, err := os.Create(qfile)
	if err != nil {
		return err
	}
	if err := writeQueries(f, c.Queries, c.Services, c.Namespaces); err != nil {
		return err
	}
	f.Close()

	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Printf("dnsbench: %s, %d CPUs, %s, loadavg %s; dnsperf %s\n", cpuModel(), runtime.NumCPU(), runtime.Version(), loadavg(), perfVersion(perf))
	fmt.Printf("servers pinned to CPU %d, dnsperf to CPU %d (taskset %s); dnsperf -c %d -T %d -q %d; %d rounds of %s after %s warm-up; tether table: %d services in %d namespaces, %d queries\n\n",
		c.ServerCPU, c.ClientCPU, map[bool]string{true: "yes", false: "not found"}[taskset != ""], c.Clients, c.Threads, c.Inflight,
		c.Rounds, c.Duration, c.Warmup, c.Services, c.Namespaces, c.Queries)

	servers := map[string]*child{}
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	for _, m := range modes {
		argv := pin(c.ServerCPU, []string{self, "serve", "-mode", m, "-services", strconv.Itoa(c.Services), "-namespaces", strconv.Itoa(c.Namespaces)})
		s, err := startChild(argv)
		if err != nil {
			return fmt.Errorf("start %s server: %w", m, err)
		}
		servers[m] = s
	}

	results := map[string][]result{}
	for round := range c.Rounds {
		order := modes
		if round%2 == 1 {
			order = []string{modes[1], modes[0]}
		}
		for _, m := range order {
			if err := ctx.Err(); err != nil {
				return err
			}
			s := servers[m]
			base := []string{perf, "-s", s.host, "-p", s.port, "-d", qfile, "-c", strconv.Itoa(c.Clients),
				"-T", strconv.Itoa(c.Threads), "-q", strconv.Itoa(c.Inflight), "-t", "2"}
			if c.Warmup > 0 {
				if _, err := dnsperf(ctx, pin(c.ClientCPU, append(slices.Clone(base), "-l", secs(c.Warmup))), s.pid); err != nil {
					return fmt.Errorf("%s warm-up: %w", m, err)
				}
			}
			r, err := dnsperf(ctx, pin(c.ClientCPU, append(slices.Clone(base), "-l", secs(c.Duration))), s.pid)
			if err != nil {
				return fmt.Errorf("%s: %w", m, err)
			}
			results[m] = append(results[m], r)
			fmt.Printf("round %d %-8s %9.0f qps  avg latency %7s  lost %d of %d  server CPU %5.2f (%4.1f µs/query)  dnsperf CPU %5.2f  %s\n",
				round+1, m, r.QPS, r.AvgLat.Round(time.Microsecond), r.Lost, r.Completed+r.Lost,
				r.ServerCPU.Seconds()/r.Wall.Seconds(), cpuPerQuery(r), r.PerfCPU.Seconds()/r.Wall.Seconds(), r.Codes)
		}
	}
	report(os.Stdout, c, results)
	return nil
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

func cpuPerQuery(r result) float64 {
	n := float64(r.Completed)
	if n == 0 {
		return 0
	}
	return float64(r.ServerCPU.Microseconds()) / n
}

var (
	reQPS   = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	reLat   = regexp.MustCompile(`Average Latency \(s\):\s+([0-9.]+)`)
	reLost  = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
	reDone  = regexp.MustCompile(`Queries completed:\s+([0-9]+)`)
	reCodes = regexp.MustCompile(`Response codes:\s+(.*)`)
)

// dnsperf runs argv and reads its summary, and the server's CPU time over
// the run.
func dnsperf(ctx context.Context, argv []string, serverPID int) (result, error) {
	var r result
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cpu0, err := procstat.CPU(serverPID)
	if err != nil {
		return r, err
	}
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return r, fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out.String())
	}
	r.Wall = time.Since(start)
	cpu1, err := procstat.CPU(serverPID)
	if err != nil {
		return r, err
	}
	r.ServerCPU = cpu1 - cpu0
	if u, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.PerfCPU = time.Duration(u.Utime.Nano() + u.Stime.Nano())
	}
	s := out.String()
	m := reQPS.FindStringSubmatch(s)
	if m == nil {
		return r, fmt.Errorf("no 'Queries per second' in dnsperf output:\n%s", s)
	}
	r.QPS, _ = strconv.ParseFloat(m[1], 64)
	if m := reLat.FindStringSubmatch(s); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		r.AvgLat = time.Duration(v * float64(time.Second))
	}
	if m := reLost.FindStringSubmatch(s); m != nil {
		r.Lost, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reDone.FindStringSubmatch(s); m != nil {
		r.Completed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reCodes.FindStringSubmatch(s); m != nil {
		r.Codes = strings.TrimSpace(m[1])
	}
	return r, nil
}

func perfVersion(perf string) string {
	out, _ := exec.Command(perf, "-h").CombinedOutput()
	if m := regexp.MustCompile(`DNS Performance Testing Tool\s+Version\s+(\S+)`).FindSubmatch(out); m != nil {
		return string(m[1])
	}
	return "(version unknown)"
}

// report prints medians and the per-round ratio tether ÷ minimal.
func report(w io.Writer, c runConfig, res map[string][]result) {
	med := func(m string, f func(result) float64) float64 {
		var v []float64
		for _, r := range res[m] {
			v = append(v, f(r))
		}
		return median(v)
	}
	var qpsRatio, cpuRatio []float64
	for i := range res["tether"] {
		t, b := res["tether"][i], res["minimal"][i]
		qpsRatio = append(qpsRatio, t.QPS/b.QPS)
		cpuRatio = append(cpuRatio, cpuPerQuery(b)/cpuPerQuery(t))
	}
	fmt.Fprintf(w, "\nmedians of %d rounds, loadavg after %s\n\n", c.Rounds, loadavg())
	fmt.Fprintf(w, "| server | qps | avg latency | server CPUs busy | server CPU µs/query | dnsperf CPUs busy | qps ÷ minimal [min–max] | minimal CPU/query ÷ CPU/query |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, m := range modes {
		qps := med(m, func(r result) float64 { return r.QPS })
		lat := med(m, func(r result) float64 { return float64(r.AvgLat) })
		busy := med(m, func(r result) float64 { return r.ServerCPU.Seconds() / r.Wall.Seconds() })
		cpq := med(m, cpuPerQuery)
		pbusy := med(m, func(r result) float64 { return r.PerfCPU.Seconds() / r.Wall.Seconds() })
		ratio, cratio := "—", "—"
		if m == "tether" {
			ratio = fmt.Sprintf("**%.2f** [%.2f–%.2f]", median(qpsRatio), slices.Min(qpsRatio), slices.Max(qpsRatio))
			cratio = fmt.Sprintf("%.2f", median(cpuRatio))
		}
		fmt.Fprintf(w, "| %s | %.0f | %s | %.2f | %.1f | %.2f | %s | %s |\n", m, qps, time.Duration(lat).Round(time.Microsecond), busy, cpq, pbusy, ratio, cratio)
	}
	met := "met"
	if median(qpsRatio) < 0.6 {
		met = "NOT met"
	}
	fmt.Fprintf(w, "\ntarget: tether qps at least 60%% of the minimal server's (median of per-round ratios %.2f): %s\n", median(qpsRatio), met)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
