package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// figure is one reported number of a measurement.
type figure struct {
	name   string
	higher bool // higher is better
	procs  bool // about the proxy processes: none for direct
	format string
	get    func(measurement) float64
}

var allFigures = []figure{
	{"keep-alive req/s", true, false, "%.0f", func(m measurement) float64 { return m.KeepAlive.Rate() }},
	{"p50 µs", false, false, "%.0f", func(m measurement) float64 { return us(m.KeepAlive.P50) }},
	{"p99 µs", false, false, "%.0f", func(m measurement) float64 { return us(m.KeepAlive.P99) }},
	{"new conn/s", true, false, "%.0f", func(m measurement) float64 { return m.NewConns.Rate() }},
	{"new conn/s RST", true, false, "%.0f", func(m measurement) float64 { return m.ResetConns.Rate() }},
	{"bulk MB/s", true, false, "%.0f", func(m measurement) float64 { return m.Bulk.Rate() / 1e6 }},
	{"CPU s/1k req", false, true, "%.3f", func(m measurement) float64 { return cpuPerK(m.KeepAlive) }},
	{"CPU s/1k conn", false, true, "%.3f", func(m measurement) float64 { return cpuPerK(m.NewConns) }},
	{"CPU s/1k conn RST", false, true, "%.3f", func(m measurement) float64 { return cpuPerK(m.ResetConns) }},
	{"CPU s/GB bulk", false, true, "%.2f", func(m measurement) float64 { return cpuPerK(m.Bulk) * 1e6 }},
	{"RSS idle MiB", false, true, "%.1f", func(m measurement) float64 { return mib(m.RSSIdle) }},
	{"RSS peak MiB", false, true, "%.1f", func(m measurement) float64 { return mib(m.RSSPeak) }},
	{"syscalls/req", false, true, "%.1f", func(m measurement) float64 {
		if m.Syscalls == 0 {
			return math.NaN() // not counted (-syscalls)
		}
		return float64(m.Syscalls) / float64(m.KeepAlive.Ops)
	}},
}

func fig(name string) figure {
	i := slices.IndexFunc(allFigures, func(f figure) bool { return f.name == name })
	return allFigures[i]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// value is the median of f over rounds, NaN where f does not apply.
func value(ms []measurement, f figure) float64 {
	var xs []float64
	for _, m := range ms {
		if f.procs && !m.HasProcs {
			return math.NaN()
		}
		v := f.get(m)
		if math.IsNaN(v) {
			return v
		}
		xs = append(xs, v)
	}
	return median(xs)
}

// ratio is the median over rounds of f(setup)/f(base), each round's pair
// measured minutes apart at most.
func ratio(ms, base []measurement, f figure) float64 {
	var xs []float64
	for i := range min(len(ms), len(base)) {
		if f.procs && (!ms[i].HasProcs || !base[i].HasProcs) {
			return math.NaN()
		}
		b := f.get(base[i])
		if b == 0 {
			return math.NaN()
		}
		xs = append(xs, f.get(ms[i])/b)
	}
	return median(xs)
}

func cell(format string, v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf(format, v)
}

func writeReport(w io.Writer, cfg Config, results map[string][]measurement) error {
	// Leave out figures no setup has (syscalls without -syscalls).
	var figures []figure
	for _, f := range allFigures {
		for _, ms := range results {
			if !math.IsNaN(value(ms, f)) {
				figures = append(figures, f)
				break
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Medians over %d rounds; %d keep-alive connections / concurrent new-connection clients, %d-byte requests, %s per workload after %s warmup. CPU is the two proxies' user+system time; RSS is the larger of the two proxies.\n\n",
		cfg.Rounds, cfg.Conns, cfg.Size, cfg.Duration, cfg.Warmup)
	b.WriteString("| setup |")
	for _, f := range figures {
		b.WriteString(" " + f.name + " |")
	}
	b.WriteString(" errors |\n|---|")
	for range figures {
		b.WriteString("---:|")
	}
	b.WriteString("---:|\n")
	for _, s := range cfg.Setups {
		ms := results[s]
		fmt.Fprintf(&b, "| %s |", s)
		for _, f := range figures {
			b.WriteString(" " + cell(f.format, value(ms, f)) + " |")
		}
		var errs int64
		for _, m := range ms {
			errs += m.KeepAlive.Errors + m.NewConns.Errors + m.ResetConns.Errors + m.Bulk.Errors
		}
		fmt.Fprintf(&b, " %d |\n", errs)
	}
	for _, base := range []string{"relay", "direct"} {
		if results[base] == nil {
			continue
		}
		fmt.Fprintf(&b, "\nRatio to %s (median of per-round ratios):\n\n| setup |", base)
		var fs []figure
		for _, f := range figures {
			if !f.procs || base == "relay" {
				fs = append(fs, f)
			}
		}
		for _, f := range fs {
			b.WriteString(" " + f.name + " |")
		}
		b.WriteString("\n|---|")
		for range fs {
			b.WriteString("---:|")
		}
		b.WriteString("\n")
		for _, s := range cfg.Setups {
			if s == base {
				continue
			}
			fmt.Fprintf(&b, "| %s |", s)
			for _, f := range fs {
				b.WriteString(" " + cell("%.2f×", ratio(results[s], results[base], f)) + " |")
			}
			b.WriteString("\n")
		}
	}
	var windows, retried, noisy int
	for _, ms := range results {
		for _, m := range ms {
			windows += 4
			retried += m.Retries
			noisy += m.Noisy
		}
	}
	fmt.Fprintf(&b, "\n%d measured windows; %d measured again because processes outside the benchmark used more than %.2f CPUs; %d still over after %d tries.\n",
		windows, retried, cfg.MaxOthers, noisy, cfg.Retries+1)
	writeBaseline(&b, cfg, results)
	writeTargets(&b, results)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeTargets checks the tether setup against the targets.
func writeTargets(b *strings.Builder, results map[string][]measurement) {
	t := results["tether"]
	if t == nil {
		return
	}
	b.WriteString("\nTargets (tether):\n\n| target | measured | met |\n|---|---|---|\n")
	row := func(target, measured string, ok bool) {
		fmt.Fprintf(b, "| %s | %s | %s |\n", target, measured, map[bool]string{true: "yes", false: "**no**"}[ok])
	}
	for _, rival := range []string{"stunnel", "haproxy"} {
		r := results[rival]
		if r == nil {
			continue
		}
		var behind []string
		for _, f := range allFigures {
			tv, rv := value(t, f), value(r, f)
			if math.IsNaN(tv) || math.IsNaN(rv) {
				continue
			}
			if f.higher && tv <= rv || !f.higher && tv >= rv {
				behind = append(behind, fmt.Sprintf("%s %s vs %s", f.name, cell(f.format, tv), cell(f.format, rv)))
			}
		}
		measured := "ahead on every figure"
		if len(behind) > 0 {
			measured = "behind on: " + strings.Join(behind, "; ")
		}
		row("ahead of "+rival+" on every figure", measured, len(behind) == 0)
	}
	if relay := results["relay"]; relay != nil {
		rps := ratio(t, relay, fig("keep-alive req/s"))
		row("keep-alive req/s ≥ 90% of relay", fmt.Sprintf("%.0f%%", 100*rps), rps >= 0.9)
		p50 := ratio(t, relay, fig("p50 µs"))
		row("keep-alive p50 ≤ 110% of relay", fmt.Sprintf("%.0f%%", 100*p50), p50 <= 1.1)
	}
	nc := value(t, fig("new conn/s"))
	row("≥ 2,000 new connections/s (FIN close)", fmt.Sprintf("%.0f/s", nc), nc >= 2000)
	rst := value(t, fig("new conn/s RST"))
	row("≥ 2,000 new connections/s (RST close)", fmt.Sprintf("%.0f/s", rst), rst >= 2000)
	idle := value(t, fig("RSS idle MiB"))
	row("idle RSS < 20 MiB", fmt.Sprintf("%.1f MiB", idle), idle < 20)
}
