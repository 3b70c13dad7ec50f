package main

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func newTestBench(tb testing.TB, cfg Config) *bench {
	tb.Helper()
	b, err := newBench(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(b.Close)
	return b
}

// TestPhases runs every phase of the load tool briefly and checks that each
// one issued SVIDs that verify against the bundle of the CA that signed them.
func TestPhases(t *testing.T) {
	b := newTestBench(t, Config{Duration: 100 * time.Millisecond, Rounds: 1, Concurrency: 4, Conns: 2, CSRs: 8})
	var out bytes.Buffer
	rep, err := b.run(context.Background(), &out)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rounds) != 1 || len(rep.Rounds[0]) != len(allPhases) {
		t.Fatalf("got %d rounds, want 1 with %d phases", len(rep.Rounds), len(allPhases))
	}
	for i, r := range rep.Rounds[0] {
		name := allPhases[i]
		t.Run(name, func(t *testing.T) {
			if r.Phase != name || r.Ops == 0 || r.OpsPerSec <= 0 || r.P50 <= 0 || r.P99 < r.P50 {
				t.Errorf("implausible result %+v", r)
			}
			if len(r.last) == 0 {
				t.Fatal("no SVID kept to verify")
			}
			for _, chain := range r.last {
				certs, err := svidOf(chain)
				if err != nil {
					t.Fatal(err)
				}
				id, _, err := x509svid.Verify(certs, b.bundleFor(name))
				if err != nil {
					t.Fatalf("issued SVID does not verify: %v", err)
				}
				if id != loadID {
					t.Errorf("issued SVID for %s, want %s", id, loadID)
				}
			}
		})
	}
	// The check can fail: the baseline's SVIDs do not chain to the CA.
	if err := checkSVID(rep.Rounds[0][0].last[0], b.ca); err == nil {
		t.Error("an SVID of the bare baseline verified against the CA's bundle")
	}
	for _, want := range append([]string{"round 1 of 1", "medians of 1 rounds", "target: e2e-token", "target: e2e-mtls"}, allPhases...) {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil || len(back.Medians) != len(allPhases) {
		t.Errorf("JSON report does not round-trip (%v): %s", err, data)
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		check   func(Config) bool
	}{
		{"defaults", nil, "", func(c Config) bool {
			return c.Duration == 3*time.Second && c.Rounds == 5 && c.Concurrency == 32 && c.Conns == 32 &&
				c.Workers == runtime.GOMAXPROCS(0) && len(c.Phases) == len(allPhases)
		}},
		{"shared connections", []string{"-concurrency", "8", "-conns", "2", "-phases", "bare,e2e-token"}, "", func(c Config) bool {
			return c.Concurrency == 8 && c.Conns == 2 && len(c.Phases) == 2
		}},
		{"more connections than clients", []string{"-concurrency", "2", "-conns", "3"}, "-conns 3", nil},
		{"unknown phase", []string{"-phases", "bare,fast"}, `unknown phase "fast"`, nil},
		{"negative duration", []string{"-duration", "-1s"}, "must not be negative", nil},
		{"stray argument", []string{"now"}, "unexpected arguments", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseFlags(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Errorf("config %+v", c)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	phases := []string{phaseBare, phaseE2EToken, phaseE2EMTLS}
	round := func(bare, token, mtls float64) []Result {
		return []Result{
			{Phase: phaseBare, OpsPerSec: bare, CPUPerOp: 100},
			{Phase: phaseE2EToken, OpsPerSec: token, CPUPerOp: 200},
			{Phase: phaseE2EMTLS, OpsPerSec: mtls, CPUPerOp: 250},
		}
	}
	// Ratios are taken per round, so a slow round for everyone cancels out.
	sums, target := summarize([][]Result{round(1000, 600, 400), round(500, 300, 200), round(900, 540, 500)}, phases)
	if got := sums[0].OpsPerSec; got != 900 {
		t.Errorf("median bare ops/s = %v, want 900", got)
	}
	if s := sums[1]; s.VsBare != 0.6 || s.CPUVsBare != 0.5 {
		t.Errorf("e2e-token vs bare = %v, CPU %v; want 0.6, 0.5", s.VsBare, s.CPUVsBare)
	}
	if s := sums[2]; s.VsBare != 0.4 || s.MinVsBare != 0.4 || s.MaxVsBare > 0.56 || s.MaxVsBare < 0.55 {
		t.Errorf("e2e-mtls vs bare = %v [%v-%v], want 0.4 [0.4-0.56]", s.VsBare, s.MinVsBare, s.MaxVsBare)
	}
	if !target[phaseE2EToken] || target[phaseE2EMTLS] {
		t.Errorf("target = %v, want e2e-token met and e2e-mtls not", target)
	}
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 200; i++ {
		lat = append(lat, time.Duration(i))
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 100}, {0.99, 198}, {1, 200}, {0, 1}} {
		if got := percentile(lat, tc.p); got != tc.want {
			t.Errorf("percentile(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
}

// The benchmarks below run the phases' requests under testing.B, so that
// `go test -bench . -count 6 ./bench/... | benchstat` compares the bare loop
// (BenchmarkBareSign) with identity.CA.Sign (BenchmarkCASign) and with the
// gRPC path (BenchmarkGRPCSign). They report CPU time per op (cpu-ns/op)
// besides wall time, since the machine may be shared.

func BenchmarkBareSign(b *testing.B) { benchmarkPhase(b, phaseBare, 1) }

func BenchmarkCASign(b *testing.B) { benchmarkPhase(b, phaseCASign, 1) }

// BenchmarkGRPCSign runs 16 clients per GOMAXPROCS, each on its own
// connection, in the same process as the CA.
func BenchmarkGRPCSign(b *testing.B) {
	b.Run("token", func(b *testing.B) { benchmarkPhase(b, phaseE2EToken, 16) })
	b.Run("mtls", func(b *testing.B) { benchmarkPhase(b, phaseE2EMTLS, 16) })
	b.Run("dial", func(b *testing.B) { benchmarkPhase(b, phaseE2EDial, 16) })
}

// benchmarkPhase runs the requests of a phase on parallelism goroutines per
// GOMAXPROCS.
func benchmarkPhase(b *testing.B, name string, parallelism int) {
	clients := parallelism * runtime.GOMAXPROCS(0)
	s := newTestBench(b, Config{Concurrency: clients})
	op := s.phase(name).op
	ctx := context.Background()
	var next atomic.Int64
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := int(next.Add(1) - 1) // each goroutine its own client
		for i := 0; pb.Next(); i++ {
			if _, err := op(ctx, w, i); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}
