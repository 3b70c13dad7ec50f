// Command flowsbench measures the memory of tether-discovery's
// observed-traffic table (pkg/discovery/flows.Store) at 10,000 services
// and 1,000 sidecars, beside a baseline: the same edges in a plain
// map[flows.Key]*flows.Edge, each report's strings kept as decoded (what
// the table would cost without interning). Each round fills both from the
// same reports, in alternating order, and reads the live heap after a
// GC; the report gives medians and the Store ÷ map ratio per round. It
// also times Add per edge and one GET /debug/flows (Table and its JSON).
// bench/flows/run.sh runs it; results go in docs/BENCHMARKS.md,
// "Observed-traffic table".
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/tether-mesh/tether/pkg/discovery/flows"
)

// config is the mesh the reports describe.
type config struct {
	services, sidecars, calls, rounds int
	denyEvery                         int
}

func main() {
	var c config
	fs := flag.NewFlagSet("flowsbench", flag.ExitOnError)
	fs.IntVar(&c.services, "services", 10000, "services (10 per namespace), each served by one of the sidecars")
	fs.IntVar(&c.sidecars, "sidecars", 1000, "sidecar identities; each calls -calls services")
	fs.IntVar(&c.calls, "calls", 50, "services each sidecar calls: edges = 2 × sidecars × calls (both sides), plus denials")
	fs.IntVar(&c.denyEvery, "deny-every", 10, "every n-th call is also denied at the destination (a rule naming the caller, unique per edge)")
	fs.IntVar(&c.rounds, "rounds", 5, "rounds; medians over them")
	fs.Parse(os.Args[1:])
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "flowsbench:", err)
		os.Exit(1)
	}
}

// report is one sidecar's report: its reporter and edges, strings fresh
// as a decoder makes them.
type report struct {
	reporter string
	edges    []flows.Edge
}

func sidecarID(i int) string {
	return fmt.Sprintf("spiffe://cluster.local/ns/team-%03d/sa/workload-%04d", i/10, i)
}

func serviceName(i int) (ns, name string) {
	return fmt.Sprintf("team-%03d", i/10), fmt.Sprintf("service-%05d", i)
}

// reports builds the reports of one interval: every sidecar's caller-side
// edges, and for every service called the destination side's (reported
// by the sidecar that serves it: service i is served by sidecar i mod
// sidecars).
func reports(c config, now time.Time) []report {
	byReporter := map[string]*report{}
	add := func(reporter string, e flows.Edge) {
		r := byReporter[reporter]
		if r == nil {
			r = &report{reporter: strings.Clone(reporter)}
			byReporter[reporter] = r
		}
		r.edges = append(r.edges, e)
	}
	for s := range c.sidecars {
		src := sidecarID(s)
		for k := range c.calls {
			svc := (s*7919 + k*104729) % c.services
			ns, name := serviceName(svc)
			key := flows.Key{Source: strings.Clone(src), Namespace: ns, Service: name, Port: 8080, Decision: flows.Allow,
				Rule: fmt.Sprintf("AccessPolicy %s/allow-callers", ns), Side: flows.Caller}
			e := flows.Edge{Key: key, Connections: uint64(1 + k), FirstSeen: now.Add(-time.Minute), LastSeen: now}
			add(src, e)
			dest := e
			dest.Side = flows.Destination
			dest.Source = strings.Clone(src)
			dest.Rule = ""
			add(sidecarID(svc%c.sidecars), dest)
			if k%c.denyEvery == 0 {
				deny := dest
				deny.Decision = flows.Deny
				deny.Rule = fmt.Sprintf("no principal of inbound|15006 chain 8080|%s/%s:8080 (inbound_%s_%s_8080) admits %s", ns, name, ns, name, src)
				add(sidecarID(svc%c.sidecars), deny)
			}
		}
	}
	out := make([]report, 0, len(byReporter))
	for _, r := range byReporter {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b report) int { return strings.Compare(a.reporter, b.reporter) })
	return out
}

// heap is the live heap after a GC.
func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

type result struct {
	edges                int
	storeBytes, mapBytes uint64
	addNsPerEdge         float64
	tableMs, jsonMs      float64
	jsonBytes            int
}

// fillStore adds the reports to a Store and returns it with the heap it
// took and the time per edge.
func fillStore(c config, now time.Time) (*flows.Store, uint64, float64) {
	before := heap()
	reps := reports(c, now)
	s := flows.NewStore(flows.StoreConfig{MaxEdges: 1 << 30, MaxEdgesPerReporter: 1 << 30, Now: func() time.Time { return now }})
	n := 0
	start := time.Now()
	for _, r := range reps {
		for i := 0; i < len(r.edges); i += flows.MaxReportEdges {
			s.Add(r.reporter, r.edges[i:min(i+flows.MaxReportEdges, len(r.edges))], 0)
		}
		n += len(r.edges)
	}
	took := time.Since(start)
	runtime.KeepAlive(reps)
	reps = nil
	return s, heap() - before, float64(took.Nanoseconds()) / float64(n)
}

// fillMap is the baseline: the same edges in a map, strings as decoded.
func fillMap(c config, now time.Time) (map[flows.Key]*flows.Edge, uint64) {
	before := heap()
	reps := reports(c, now)
	m := map[flows.Key]*flows.Edge{}
	for _, r := range reps {
		for _, e := range r.edges {
			if have, ok := m[e.Key]; ok {
				have.Connections += e.Connections
				continue
			}
			e := e
			m[e.Key] = &e
		}
	}
	reps = nil
	return m, heap() - before
}

func run(c config) error {
	now := time.Now()
	var rs []result
	for r := range c.rounds {
		var res result
		var s *flows.Store
		var m map[flows.Key]*flows.Edge
		if r%2 == 0 {
			s, res.storeBytes, res.addNsPerEdge = fillStore(c, now)
			m, res.mapBytes = fillMap(c, now)
		} else {
			m, res.mapBytes = fillMap(c, now)
			s, res.storeBytes, res.addNsPerEdge = fillStore(c, now)
		}
		res.edges = s.Stats().Edges
		if len(m) != res.edges {
			return fmt.Errorf("round %d: the store holds %d edges, the map %d", r+1, res.edges, len(m))
		}
		start := time.Now()
		tab := s.Table(flows.Filter{})
		res.tableMs = float64(time.Since(start).Microseconds()) / 1000
		start = time.Now()
		b, err := json.MarshalIndent(tab, "", "  ")
		if err != nil {
			return err
		}
		res.jsonMs, res.jsonBytes = float64(time.Since(start).Microseconds())/1000, len(b)
		runtime.KeepAlive(s)
		runtime.KeepAlive(m)
		fmt.Fprintf(os.Stderr, "round %d: %d edges, store %.1f MiB, map %.1f MiB\n", r+1, res.edges, mib(res.storeBytes), mib(res.mapBytes))
		rs = append(rs, res)
	}
	write(c, rs)
	return nil
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func write(c config, rs []result) {
	col := func(f func(result) float64) []float64 {
		out := make([]float64, len(rs))
		for i, r := range rs {
			out[i] = f(r)
		}
		return out
	}
	edges := rs[0].edges
	store := col(func(r result) float64 { return float64(r.storeBytes) })
	base := col(func(r result) float64 { return float64(r.mapBytes) })
	ratios := col(func(r result) float64 { return float64(r.storeBytes) / float64(r.mapBytes) })
	var per []string
	for _, x := range ratios {
		per = append(per, fmt.Sprintf("%.3f", x))
	}
	fmt.Printf("%d services, %d sidecars each calling %d services (caller and destination sides; every %d-th call also denied with a rule naming the caller): %d edges. Medians over %d rounds; live heap after GC.\n\n",
		c.services, c.sidecars, c.calls, c.denyEvery, edges, c.rounds)
	fmt.Println("| figure | flows.Store | baseline map[Key]*Edge | Store ÷ map (median) | spread (min–max) | per round |")
	fmt.Println("|---|---:|---:|---:|---|---|")
	fmt.Printf("| heap, MiB | %.1f | %.1f | %.3f× | %.3f–%.3f× | %s |\n", mib(uint64(median(store))), mib(uint64(median(base))),
		median(ratios), slices.Min(ratios), slices.Max(ratios), strings.Join(per, ", "))
	fmt.Printf("| bytes per edge | %.0f | %.0f | | | |\n", median(store)/float64(edges), median(base)/float64(edges))
	fmt.Println()
	fmt.Printf("Store.Add: %.0f ns per edge (median). GET /debug/flows of the whole table: Table %.1f ms, JSON %.1f ms, %.1f MiB of JSON.\n",
		median(col(func(r result) float64 { return r.addNsPerEdge })), median(col(func(r result) float64 { return r.tableMs })),
		median(col(func(r result) float64 { return r.jsonMs })), mib(uint64(rs[0].jsonBytes)))
}
