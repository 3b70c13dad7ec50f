package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// proxyReport is the part of proxybench's JSONReport (bench/proxy
// jsonreport.go) that the plot reads.
type proxyReport struct {
	Tool     string    `json:"tool"`
	Start    time.Time `json:"start"`
	Go       string    `json:"go"`
	NumCPU   int       `json:"num_cpu"`
	Settings struct {
		Rounds   int    `json:"rounds"`
		Duration string `json:"duration"`
		Warmup   string `json:"warmup"`
		Conns    int    `json:"conns"`
		Size     int    `json:"size_bytes"`
	} `json:"settings"`
	Setups []proxySetup `json:"setups"`
}

type proxySetup struct {
	Name string `json:"name"`
	// Median maps a workload to its percentiles ("p50", "p90", "p99",
	// "p99.9") in microseconds.
	Median map[string]map[string]float64 `json:"median_latency_us"`
}

// percentiles are drawn in this order, with these labels.
var percentiles = []string{"p50", "p90", "p99", "p99.9"}

var workloadTitles = map[string]string{
	"keepalive":    "Keep-alive: one request and its echo on a persistent connection",
	"new_conn":     "New connection: connect, one request and its echo, close (FIN)",
	"new_conn_rst": "New connection closed with an RST",
}

func readReport(path string) (proxyReport, error) {
	var rep proxyReport
	b, err := os.ReadFile(path)
	if err != nil {
		return rep, err
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return rep, fmt.Errorf("%s: %w", path, err)
	}
	if rep.Tool != "proxybench" {
		return rep, fmt.Errorf("%s: not a proxybench -json report (tool %q)", path, rep.Tool)
	}
	return rep, nil
}

// chartOf turns a report into a chart: one panel per workload, the
// setups as series (all of them when setups is empty).
func chartOf(rep proxyReport, setups, workloads []string, note string) (Chart, error) {
	var names []string
	for _, s := range rep.Setups {
		names = append(names, s.Name)
	}
	if len(setups) == 0 {
		setups = names
	}
	for _, s := range setups {
		if !slices.Contains(names, s) {
			return Chart{}, fmt.Errorf("setup %q is not in the report (it has %s)", s, strings.Join(names, ", "))
		}
	}
	st := rep.Settings
	sub := fmt.Sprintf("bench/proxy, %s: %d connections or clients, %d-byte requests; medians of %d rounds of %s; %d CPUs, %s",
		rep.Start.UTC().Format("2006-01-02 15:04 UTC"), st.Conns, st.Size, st.Rounds, st.Duration, rep.NumCPU, rep.Go)
	if note != "" {
		sub += "; " + note
	}
	c := Chart{Title: "Latency through each setup (log scale; lower is better)", Subtitle: sub}
	for _, w := range workloads {
		p := Panel{Title: workloadTitles[w], Categories: percentiles}
		for _, name := range setups {
			i := slices.IndexFunc(rep.Setups, func(s proxySetup) bool { return s.Name == name })
			got := rep.Setups[i].Median[w]
			vals := make([]float64, len(percentiles))
			for j, pc := range percentiles {
				vals[j] = got[pc] // 0 when missing: not drawn
			}
			p.Series = append(p.Series, Series{Name: name, Values: vals})
		}
		c.Panels = append(c.Panels, p)
	}
	return c, nil
}

// writeFile writes b to path through a temporary file in the same
// directory, so that path never holds half a chart.
func writeFile(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".plot-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op once renamed
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
