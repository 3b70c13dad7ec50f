package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// median is the middle value of xs (the upper one of an even count), 0 for
// none.
func median[T int64 | float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// quantile of the successful issuances' latencies.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// figures are one build's per-round values in one scenario.
type figures struct {
	peak, rss []int64
	p50, rate []float64
}

// report writes one markdown table per scenario: medians over the rounds
// per build, and tether ÷ tether-base.
func report(w io.Writer, c config, results []result) {
	fmt.Fprintf(w, "%d attacker connections (every other one completes a TLS handshake without a client certificate, the rest send nothing), each reconnecting %s after the CA closes it; held %s after ramp-up; a legitimate bootstrap (join token, new connection, 5 s timeout) every %s; %d round(s), medians over rounds. Memory limit of the CA in the manifests: %s.\n",
		c.conns, c.reconnect, c.hold, c.interval, c.rounds, mib(c.memLimitBytes))
	if len(c.caArgs) > 0 {
		fmt.Fprintf(w, "tether-ca flags of the current build: %s\n", strings.Join(c.caArgs, " "))
	}
	for _, n := range c.sources {
		fmt.Fprintf(w, "\n%d source address(es) (127.0.0.2…):\n\n", n)
		fmt.Fprintln(w, "| build | CA peak RSS | CA RSS during the flood (median) | attacker connections held (median / max) | connects | legitimate issuances ok / tried | issuance p50 | issuance p99 | refused (tether_ca_connections_refused_total) |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---|")
		agg := map[string]figures{}
		for _, b := range []string{"tether", "tether-base"} {
			var peak, rss, heldMax, attempts []int64
			var held, p50, rate []float64
			var ok, tried int
			var lat []time.Duration
			var refused []string
			for _, r := range results {
				if r.build != b || r.sources != n {
					continue
				}
				peak, rss, heldMax, attempts = append(peak, r.peakRSS), append(rss, r.rssMedian), append(heldMax, r.heldMax), append(attempts, r.attempts)
				held = append(held, r.heldMed)
				ok, tried = ok+r.ok, tried+r.tried
				lat = append(lat, r.lat...)
				p50 = append(p50, float64(quantile(r.lat, 0.5)))
				if r.tried > 0 {
					rate = append(rate, float64(r.ok)/float64(r.tried))
				}
				refused = append(refused, r.refused)
			}
			if len(peak) == 0 {
				continue
			}
			agg[b] = figures{peak, rss, p50, rate}
			fmt.Fprintf(w, "| %s | %s | %s | %.0f / %d | %d | %d / %d | %s | %s | %s |\n", b, mib(median(peak)), mib(median(rss)),
				median(held), median(heldMax), median(attempts), ok, tried, ms(quantile(lat, 0.5)), ms(quantile(lat, 0.99)), strings.Join(refused, "; "))
		}
		t, base := agg["tether"], agg["tether-base"]
		if len(t.peak) > 0 && len(base.peak) > 0 {
			ratio := func(a, b float64) string {
				if b == 0 {
					return "—"
				}
				return fmt.Sprintf("%.2f×", a/b)
			}
			fmt.Fprintf(w, "\ntether ÷ tether-base: peak RSS %s, RSS during the flood %s, issuance p50 %s, issuance success rate %s\n",
				ratio(float64(median(t.peak)), float64(median(base.peak))),
				ratio(float64(median(t.rss)), float64(median(base.rss))),
				ratio(median(t.p50), median(base.p50)),
				ratio(median(t.rate), median(base.rate)))
		}
	}
}
