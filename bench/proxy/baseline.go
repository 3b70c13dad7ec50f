package main

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
)

// baselineSetups checks -baseline-bin against -setups: the directory must
// hold a tether-sidecar, and it adds tether-base (right after tether) when
// -setups does not name it; tether-base without -baseline-bin is refused.
func baselineSetups(c *Config) error {
	named := slices.Contains(c.Setups, "tether-base")
	if c.BaseBinDir == "" {
		if named {
			return fmt.Errorf("-setups tether-base needs -baseline-bin DIR, a directory holding the older tether-sidecar (bench/proxy/build-base.sh REV DIR builds one)")
		}
		return nil
	}
	if bin := filepath.Join(c.BaseBinDir, "tether-sidecar"); !isExec(bin) {
		return fmt.Errorf("-baseline-bin: %s is not an executable file (bench/proxy/build-base.sh REV %s builds one)", bin, c.BaseBinDir)
	}
	if named {
		return nil
	}
	if i := slices.Index(c.Setups, "tether"); i >= 0 {
		c.Setups = slices.Insert(c.Setups, i+1, "tether-base")
	} else {
		c.Setups = append(c.Setups, "tether-base")
	}
	return nil
}

// baseRatios returns f(tether)/f(tether-base) for every round both ran,
// NaN where f does not apply.
func baseRatios(t, base []measurement, f figure) []float64 {
	var xs []float64
	for i := range min(len(t), len(base)) {
		b, v := f.get(base[i]), f.get(t[i])
		if b == 0 || math.IsNaN(b) || math.IsNaN(v) {
			return nil
		}
		xs = append(xs, v/b)
	}
	return xs
}

// writeBaseline compares tether with tether-base, the older build run in
// the same rounds: per figure the ratio of each round, their median and
// their spread (min–max), which is what a difference has to exceed to
// stand out from the round-to-round noise.
func writeBaseline(b *strings.Builder, cfg Config, results map[string][]measurement) {
	writeRatios(b, results, "tether", "tether-base", fmt.Sprintf("tether-base (%s, the older build of -baseline-bin)", cfg.BaseBinDir))
	writeRatios(b, results, "tether-flows", "tether-noflows", "tether-noflows (the same sidecars and discovery, flow summary and reports off)")
}

// writeRatios compares setup name with setup base, described by what.
func writeRatios(b *strings.Builder, results map[string][]measurement, name, base, what string) {
	t, bm := results[name], results[base]
	if t == nil || bm == nil {
		return
	}
	fmt.Fprintf(b, "\n%s ÷ %s, ratio within each round; spread = min–max of the per-round ratios. For req/s, conn/s and MB/s higher is better, for the rest lower.\n\n", name, what)
	fmt.Fprintf(b, "| figure | %s | %s | ratio (median) | spread (min–max) | per round |\n|---|---:|---:|---:|---|---|\n", name, base)
	var worse []string
	for _, f := range allFigures {
		xs := baseRatios(t, bm, f)
		if len(xs) == 0 {
			continue
		}
		var per []string
		worseAll := true
		for _, x := range xs {
			per = append(per, fmt.Sprintf("%.3f", x))
			if f.higher && x >= 1 || !f.higher && x <= 1 {
				worseAll = false
			}
		}
		if worseAll {
			worse = append(worse, f.name)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %.3f× | %.3f–%.3f× | %s |\n", f.name, cell(f.format, value(t, f)), cell(f.format, value(bm, f)),
			median(xs), slices.Min(xs), slices.Max(xs), strings.Join(per, ", "))
	}
	if len(worse) == 0 {
		fmt.Fprintf(b, "\nNo figure is worse for %s than for %s in every round.\n", name, base)
	} else {
		fmt.Fprintf(b, "\nWorse for %s than for %s in every round (%d round(s)): %s.\n", name, base, min(len(t), len(bm)), strings.Join(worse, "; "))
	}
}
