package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// JSONReport is what -json writes: the run's settings, and for every setup
// its latency percentiles and figures, per round and as medians over the
// rounds. bench/plot draws docs/benchmarks/latency.svg from it. Latencies
// are in microseconds; a figure that does not apply to a setup (CPU and
// RSS of direct, syscalls without -syscalls) is left out.
type JSONReport struct {
	Tool     string       `json:"tool"`
	Start    time.Time    `json:"start"`
	End      time.Time    `json:"end"`
	Go       string       `json:"go"`
	NumCPU   int          `json:"num_cpu"`
	Settings JSONSettings `json:"settings"`
	Setups   []JSONSetup  `json:"setups"` // in the order of -setups
}

// JSONSettings are the run's parameters.
type JSONSettings struct {
	Setups   []string `json:"setups"`
	Rounds   int      `json:"rounds"`
	Duration string   `json:"duration"`
	Warmup   string   `json:"warmup"`
	Conns    int      `json:"conns"`
	Size     int      `json:"size_bytes"`
}

// JSONSetup is one setup's results.
type JSONSetup struct {
	Name string `json:"name"`
	// Median holds, for each workload, the median over rounds of each
	// percentile (each taken within its round).
	Median JSONLatencies `json:"median_latency_us"`
	// Figures are the medians over rounds of the markdown table's
	// columns, keyed by its headers.
	Figures map[string]float64 `json:"figures"`
	Rounds  []JSONRound        `json:"rounds"`
	Errors  int64              `json:"errors"`
}

// JSONLatencies are the latency percentiles of the workloads that have
// them: keep-alive requests, and new connections (connect, echo, close)
// closed with a FIN and with an RST.
type JSONLatencies struct {
	KeepAlive  Percentiles `json:"keepalive"`
	NewConn    Percentiles `json:"new_conn"`
	NewConnRST Percentiles `json:"new_conn_rst"`
}

// Percentiles are latencies in microseconds.
type Percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99.9"`
}

// JSONRound is one setup in one round.
type JSONRound struct {
	Latency JSONLatencies `json:"latency_us"`
	// Rates are operations per second: keep-alive requests, new
	// connections (FIN and RST), and bulk bytes.
	KeepAliveRate  float64 `json:"keepalive_per_s"`
	NewConnRate    float64 `json:"new_conn_per_s"`
	NewConnRSTRate float64 `json:"new_conn_rst_per_s"`
	BulkBytesRate  float64 `json:"bulk_bytes_per_s"`
	Errors         int64   `json:"errors"`
	Retries        int     `json:"retries"`
	Noisy          int     `json:"noisy"`
}

func percentiles(r loadResult) Percentiles {
	return Percentiles{P50: us(r.P50), P90: us(r.P90), P99: us(r.P99), P999: us(r.P999)}
}

func latencies(m measurement) JSONLatencies {
	return JSONLatencies{KeepAlive: percentiles(m.KeepAlive), NewConn: percentiles(m.NewConns), NewConnRST: percentiles(m.ResetConns)}
}

// jsonReport builds the -json report of a run.
func jsonReport(cfg Config, start, end time.Time, results map[string][]measurement) JSONReport {
	rep := JSONReport{
		Tool: "proxybench", Start: start.UTC(), End: end.UTC(), Go: runtime.Version(), NumCPU: runtime.NumCPU(),
		Settings: JSONSettings{Setups: cfg.Setups, Rounds: cfg.Rounds, Duration: cfg.Duration.String(),
			Warmup: cfg.Warmup.String(), Conns: cfg.Conns, Size: cfg.Size},
	}
	for _, name := range cfg.Setups {
		ms := results[name]
		s := JSONSetup{Name: name, Figures: map[string]float64{}}
		var lats []JSONLatencies
		for _, m := range ms {
			errs := m.KeepAlive.Errors + m.NewConns.Errors + m.ResetConns.Errors + m.Bulk.Errors
			s.Errors += errs
			l := latencies(m)
			lats = append(lats, l)
			s.Rounds = append(s.Rounds, JSONRound{Latency: l, KeepAliveRate: m.KeepAlive.Rate(),
				NewConnRate: m.NewConns.Rate(), NewConnRSTRate: m.ResetConns.Rate(), BulkBytesRate: m.Bulk.Rate(),
				Errors: errs, Retries: m.Retries, Noisy: m.Noisy})
		}
		med := func(get func(JSONLatencies) Percentiles) Percentiles {
			var p50, p90, p99, p999 []float64
			for _, l := range lats {
				p := get(l)
				p50, p90, p99, p999 = append(p50, p.P50), append(p90, p.P90), append(p99, p.P99), append(p999, p.P999)
			}
			return Percentiles{P50: median(p50), P90: median(p90), P99: median(p99), P999: median(p999)}
		}
		s.Median = JSONLatencies{
			KeepAlive:  med(func(l JSONLatencies) Percentiles { return l.KeepAlive }),
			NewConn:    med(func(l JSONLatencies) Percentiles { return l.NewConn }),
			NewConnRST: med(func(l JSONLatencies) Percentiles { return l.NewConnRST }),
		}
		for _, f := range allFigures {
			if v := value(ms, f); !math.IsNaN(v) && !math.IsInf(v, 0) {
				s.Figures[f.name] = v
			}
		}
		rep.Setups = append(rep.Setups, s)
	}
	return rep
}

// writeJSON writes rep to path through a temporary file in the same
// directory, so that path never holds half a report.
func writeJSON(path string, rep JSONReport) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("json report: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".proxybench-*.json")
	if err != nil {
		return fmt.Errorf("json report: %w", err)
	}
	defer os.Remove(f.Name()) // no-op once renamed
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("json report: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("json report: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("json report: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("json report: %w", err)
	}
	return nil
}
