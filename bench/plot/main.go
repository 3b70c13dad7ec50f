// Command plot draws the latency percentiles of a data-path benchmark run
// (the JSON that `proxybench -json FILE` writes) as an SVG chart: one panel
// per workload, a group of bars per percentile (p50, p90, p99, p99.9), one
// bar per setup (direct, relay, tether, stunnel, haproxy, ...), on a
// logarithmic latency axis. bench/run-all runs it to make
// docs/benchmarks/latency.svg:
//
//	go run ./bench/plot -in proxy.json -out docs/benchmarks/latency.svg
//
// The SVG is written by hand (no dependencies) and is the same for the
// same input.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// Config is one plot.
type Config struct {
	In, Out   string
	Setups    []string // empty: every setup of the run, in its order
	Workloads []string // keys of median_latency_us, one panel each
	Note      string   // appended to the subtitle (machine, commit)
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (Config, error) {
	var c Config
	var setups, workloads string
	fs := flag.NewFlagSet("plot", flag.ContinueOnError)
	fs.StringVar(&c.In, "in", "", "proxybench -json output to read")
	fs.StringVar(&c.Out, "out", "latency.svg", "SVG file to write")
	fs.StringVar(&setups, "setups", "", "comma-separated setups to draw, in this order (default: all, in the run's order)")
	fs.StringVar(&workloads, "workloads", "keepalive,new_conn", "comma-separated workloads, one panel each: keepalive, new_conn, new_conn_rst")
	fs.StringVar(&c.Note, "note", "", "text added to the subtitle, e.g. the machine and commit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.In == "" {
		return c, errors.New("-in: the proxybench -json file is required")
	}
	c.Setups = splitList(setups)
	c.Workloads = splitList(workloads)
	if len(c.Workloads) == 0 {
		return c, errors.New("-workloads: none given")
	}
	for _, w := range c.Workloads {
		if _, ok := workloadTitles[w]; !ok {
			return c, fmt.Errorf("-workloads: unknown workload %q (want keepalive, new_conn or new_conn_rst)", w)
		}
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(cfg Config) error {
	rep, err := readReport(cfg.In)
	if err != nil {
		return err
	}
	chart, err := chartOf(rep, cfg.Setups, cfg.Workloads, cfg.Note)
	if err != nil {
		return err
	}
	var b strings.Builder
	if err := Render(&b, chart); err != nil {
		return err
	}
	return writeFile(cfg.Out, []byte(b.String()))
}
