package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/tether-mesh/tether/internal/procstat"
)

// scaleResult is what one scale measured.
type scaleResult struct {
	Name    string
	Scale   Scale
	Ready   ready
	Connect time.Duration // every client connected and served
	MemReg  memReport     // registry and snapshot alone
	MemAll  memReport     // every client connected and served
	MemEnd  memReport     // after the changes
	Changes []changeResult
}

// changeResult is one change.
type changeResult struct {
	Kind      string
	N         int
	Update    time.Duration   // Registry.Update
	Lat       []time.Duration // per expected client, from Update called to the changed resource received
	Missing   int             // expected clients that never received it
	Busy      time.Duration   // from Update called until the server was last seen busy
	ServerCPU time.Duration   // server CPU from Update until quiet
	ClientCPU time.Duration   // this process's CPU over the same time
	OtherCPU  time.Duration   // every other process's CPU over the same time
	Resps     [4]int64        // responses received, by type
	Bytes     [4]int64        // resource bytes received, by type
}

func (c changeResult) last() time.Duration {
	if len(c.Lat) == 0 {
		return 0
	}
	return slices.Max(c.Lat)
}

func run(ctx context.Context, cfg Config, out, log io.Writer) error {
	fmt.Fprintf(log, "discoveryscale: %s, %d CPUs (GOMAXPROCS %d), %s %s/%s, loadavg %s\n",
		cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH, loadavg())
	ca, err := newTestCA(ctx)
	if err != nil {
		return err
	}
	defer ca.close()
	cert, key, bundle, err := ca.writeServerFiles()
	if err != nil {
		return err
	}
	type job struct {
		name string
		sc   Scale
		full bool
	}
	var jobs []job
	if cfg.BaselineDiv > 0 {
		jobs = append(jobs, job{fmt.Sprintf("1/%d", cfg.BaselineDiv), cfg.Scale.scaled(cfg.BaselineDiv), false})
	}
	jobs = append(jobs, job{"full", cfg.Scale, true})
	var results []*scaleResult
	for _, jb := range jobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		fmt.Fprintf(log, "\n== %s: %s, %d clients\n", jb.name, jb.sc, jb.sc.Clients)
		r, err := runScale(ctx, cfg, jb.name, jb.sc, jb.full, ca, cert, key, bundle, log)
		if err != nil {
			return fmt.Errorf("%s scale: %w", jb.name, err)
		}
		results = append(results, r)
	}
	report(out, cfg, results)
	return nil
}

func runScale(ctx context.Context, cfg Config, name string, sc Scale, full bool, ca *testCA, cert, key, bundle string, log io.Writer) (*scaleResult, error) {
	m := generate(sc)
	svids := make([]*x509svid.SVID, sc.Clients)
	for j := range svids {
		s, err := ca.svid(m.clientID(j))
		if err != nil {
			return nil, err
		}
		svids[j] = s
	}
	start := time.Now()
	srv, err := startServer(sc, cfg, cert, key, bundle, full)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	res := &scaleResult{Name: name, Scale: sc, Ready: srv.ready}
	fmt.Fprintf(log, "server up in %s: Registry.Update median %s, BuildResources per client median %s (clusters %d, CLAs %d, listeners %d, name table %d services, %d bytes)\n",
		time.Since(start).Round(time.Millisecond), median(srv.ready.Update), median(srv.ready.BuildNode),
		srv.ready.BuildCounts[0], srv.ready.BuildCounts[1], srv.ready.BuildCounts[2], srv.ready.BuildCounts[3], srv.ready.NameTableLen)
	if err := srv.call("mem registry", &res.MemReg); err != nil {
		return nil, err
	}
	start = time.Now()
	f, err := connect(ctx, srv.ready.Addr, svids, ca.bundle(), serverID, cfg.Handshakes, cfg.Timeout, cfg.Delta)
	if err != nil {
		return nil, err
	}
	defer f.close()
	res.Connect = time.Since(start)
	settle(srv.pid(), time.Minute)
	if err := srv.call("mem serving", &res.MemAll); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "%d clients connected and served in %s; server heap in use %s, RSS %s (registry alone: %s, %s)\n",
		sc.Clients, res.Connect.Round(time.Millisecond), mib(res.MemAll.HeapInuse), mib(uint64(res.MemAll.RSS)),
		mib(res.MemReg.HeapInuse), mib(uint64(res.MemReg.RSS)))
	n := map[string]int{}
	for round := range cfg.Rounds {
		for _, kind := range rotate(cfg.Kinds, round) {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			cr, err := oneChange(m, f, srv, kind, n[kind], cfg.Timeout)
			if err != nil {
				return nil, err
			}
			n[kind]++
			res.Changes = append(res.Changes, cr)
			fmt.Fprintf(log, "round %d %-12s update %8s  clients %4d  p50 %8s  last %8s  missing %d  server busy %8s, CPU %7s  clients' CPU %7s  others' CPU %7s  pushes %s\n",
				round+1, kind, cr.Update.Round(time.Microsecond), len(cr.Lat), pct(cr.Lat, 50), cr.last().Round(time.Millisecond),
				cr.Missing, cr.Busy.Round(time.Millisecond), cr.ServerCPU, cr.ClientCPU, cr.OtherCPU, pushes(cr))
		}
	}
	if err := srv.call("mem end", &res.MemEnd); err != nil {
		return nil, err
	}
	return res, nil
}

func rotate(list []string, k int) []string {
	k %= len(list)
	return append(slices.Clone(list[k:]), list[:k]...)
}

// oneChange makes change (kind, n) in the parent's copy of the registry (to
// know what to wait for) and in the server's, and waits for the expected
// clients to receive it, then for the server to go quiet.
func oneChange(m *mesh, f *fleet, srv *server, kind string, n int, timeout time.Duration) (changeResult, error) {
	cr := changeResult{Kind: kind, N: n}
	ch, err := m.apply(kind, n)
	if err != nil {
		return cr, err
	}
	wait := f.arm(ch)
	r0, b0 := f.counts()
	sys0, _ := procstat.SystemBusy()
	srv0, _ := procstat.CPU(srv.pid())
	self0, _ := procstat.CPU(os.Getpid())
	var rep changeReport
	if err := srv.call(fmt.Sprintf("change %s %d", kind, n), &rep); err != nil {
		return cr, err
	}
	if rep.Err != "" {
		return cr, fmt.Errorf("change %s %d: %s", kind, n, rep.Err)
	}
	cr.Update = time.Duration(rep.End - rep.Start)
	at, werr := wait(timeout)
	for _, t := range at {
		if t == 0 {
			cr.Missing++
			continue
		}
		cr.Lat = append(cr.Lat, time.Duration(t-rep.Start))
	}
	if werr != nil {
		if cr.Missing == 0 {
			return cr, werr
		}
		fmt.Fprintf(os.Stderr, "change %s %d: %d of %d clients missed it, e.g. %v\n", kind, n, cr.Missing, len(at), werr)
	}
	srv1, busyUntil := settle(srv.pid(), time.Minute)
	cr.Busy = busyUntil.Sub(time.Unix(0, rep.Start))
	self1, _ := procstat.CPU(os.Getpid())
	sys1, _ := procstat.SystemBusy()
	cr.ServerCPU, cr.ClientCPU = srv1-srv0, self1-self0
	cr.OtherCPU = max(0, sys1-sys0-cr.ServerCPU-cr.ClientCPU)
	r1, b1 := f.counts()
	for i := range r1 {
		cr.Resps[i], cr.Bytes[i] = r1[i]-r0[i], b1[i]-b0[i]
	}
	return cr, nil
}

func pushes(cr changeResult) string {
	var parts []string
	for i, t := range allTypes {
		if cr.Resps[i] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d (%s)", shortType(t), cr.Resps[i], mib(uint64(cr.Bytes[i]))))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// report prints the markdown tables.
func report(w io.Writer, cfg Config, results []*scaleResult) {
	fmt.Fprintf(w, "\n### Registry, snapshot and per-client build\n\n")
	fmt.Fprintf(w, "| scale | Registry.Update (median of %d) | BuildResources per client (median, max of %d) | clusters / CLAs / name-table services per client | name table bytes | %d clients connected in |\n|---|---:|---:|---|---:|---:|\n",
		cfg.BuildRounds, cfg.BuildNodes, cfg.Scale.Clients)
	for _, r := range results {
		fmt.Fprintf(w, "| %s: %s | %s | %s, %s | %d / %d / %d | %d | %s |\n", r.Name, r.Scale, rd(median(r.Ready.Update)),
			rd(median(r.Ready.BuildNode)), rd(slices.Max(append([]time.Duration{0}, r.Ready.BuildNode...))),
			r.Ready.BuildCounts[0], r.Ready.BuildCounts[1], r.Ready.BuildCounts[3], r.Ready.NameTableLen, r.Connect.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "\n### Discovery server memory (after GC)\n\n| scale | registry alone: heap in use / RSS | %d clients served: heap in use / RSS | after the changes: heap in use / RSS / peak RSS |\n|---|---:|---:|---:|\n", cfg.Scale.Clients)
	for _, r := range results {
		fmt.Fprintf(w, "| %s | %s / %s | %s / %s | %s / %s / %s |\n", r.Name,
			mib(r.MemReg.HeapInuse), mib(uint64(r.MemReg.RSS)), mib(r.MemAll.HeapInuse), mib(uint64(r.MemAll.RSS)),
			mib(r.MemEnd.HeapInuse), mib(uint64(r.MemEnd.RSS)), mib(uint64(r.MemEnd.HWM)))
	}
	fmt.Fprintf(w, "\n### Time for one change to reach the clients (%d rounds)\n\n", cfg.Rounds)
	fmt.Fprintf(w, "From the call of Registry.Update to each client whose view changed receiving the changed resource; p50/p99/max over every such client of every change of the kind; *last* is the median over changes of the last client's time.\n\n")
	fmt.Fprintf(w, "| change | scale | clients reached | Registry.Update | p50 | p99 | max | last (median) | server CPU / change | clients' CPU / change | server busy for | pushed per change |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, kind := range cfg.Kinds {
		var base time.Duration
		for _, r := range results {
			var lat, lasts, upd, scpu, ccpu, busy []time.Duration
			var reached, missing int
			var last changeResult
			for _, c := range r.Changes {
				if c.Kind != kind {
					continue
				}
				lat = append(lat, c.Lat...)
				lasts = append(lasts, c.last())
				upd = append(upd, c.Update)
				scpu = append(scpu, c.ServerCPU)
				ccpu = append(ccpu, c.ClientCPU)
				busy = append(busy, c.Busy)
				reached += len(c.Lat)
				missing += c.Missing
				last = c
			}
			if len(lasts) == 0 {
				continue
			}
			ratio := ""
			if base == 0 {
				base = median(lasts)
			} else if base > 0 {
				ratio = fmt.Sprintf(" (%.1f× 1/%d)", float64(median(lasts))/float64(base), cfg.BaselineDiv)
			}
			reachedS := fmt.Sprintf("%d/%d", reached/len(lasts), (reached+missing)/len(lasts))
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | **%s**%s | %s | %s | %s | %s |\n", kind, r.Name, reachedS,
				rd(median(upd)), pct(lat, 50), pct(lat, 99), pct(lat, 100), rd(median(lasts)), ratio,
				rd(median(scpu)), rd(median(ccpu)), rd(median(busy)), pushes(last))
		}
	}
	fmt.Fprintln(w)
	for _, r := range results {
		if r.Name != "full" {
			continue
		}
		okPush := true
		for _, c := range r.Changes {
			if c.Missing > 0 || c.last() >= time.Second {
				okPush = false
			}
		}
		okMem := r.MemAll.RSS < 1<<30 && r.MemEnd.HWM < 1<<30
		fmt.Fprintf(w, "target: every change reaches every client in under 1 s: %s\n", metStr(okPush))
		fmt.Fprintf(w, "target: discovery under 1 GiB (RSS with every client served, and peak): %s\n", metStr(okMem))
	}
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func median(d []time.Duration) time.Duration { return pctD(d, 50) }

func pctD(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func pct(d []time.Duration, p int) string { return rd(pctD(d, p)) }

// rd rounds d for a table.
func rd(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

func mib(b uint64) string {
	switch {
	case b >= 10<<20:
		return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%.0f KiB", float64(b)/(1<<10))
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
