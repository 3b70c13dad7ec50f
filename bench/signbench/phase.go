package main

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
)

// op issues one SVID for worker w (its i-th request) and returns the chain,
// DER, leaf first.
type op func(ctx context.Context, w, i int) ([][]byte, error)

// phase is one way of issuing SVIDs, run by a number of workers.
type phase struct {
	name    string
	workers int
	conns   int // connections the workers share; 0 when in process
	op      op
}

// phase returns the named phase.
func (b *bench) phase(name string) phase {
	csr := func(w, i int) []byte {
		// Workers start at different CSRs and step through all of them.
		return b.csrs[(w*7919+i)%len(b.csrs)]
	}
	switch name {
	case phaseBare:
		return phase{name: name, workers: b.cfg.Workers, op: func(_ context.Context, w, i int) ([][]byte, error) {
			der, err := b.bare.sign(csr(w, i))
			return [][]byte{der, b.bare.interDER}, err
		}}
	case phaseCASign:
		return phase{name: name, workers: b.cfg.Workers, op: func(_ context.Context, w, i int) ([][]byte, error) {
			iss, err := b.ca.Sign(loadID, csr(w, i))
			if err != nil {
				return nil, err
			}
			return iss.Chain, nil
		}}
	case phaseE2EToken, phaseE2EMTLS:
		conns, cred := b.tokenConns, b.token
		if name == phaseE2EMTLS {
			conns, cred = b.mtlsConns, nil
		}
		clients := make([]cav1.CAClient, len(conns))
		for i, c := range conns {
			clients[i] = cav1.NewCAClient(c)
		}
		return phase{name: name, workers: b.cfg.Concurrency, conns: len(conns), op: func(ctx context.Context, w, i int) ([][]byte, error) {
			resp, err := clients[w%len(clients)].Sign(ctx, &cav1.SignRequest{Csr: csr(w, i), Credential: cred})
			return resp.GetCertChain(), err
		}}
	case phaseE2EDial:
		return phase{name: name, workers: b.cfg.Concurrency, op: func(ctx context.Context, w, i int) ([][]byte, error) {
			conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(b.tokenCreds))
			if err != nil {
				return nil, err
			}
			defer conn.Close()
			resp, err := cav1.NewCAClient(conn).Sign(ctx, &cav1.SignRequest{Csr: csr(w, i), Credential: b.token})
			return resp.GetCertChain(), err
		}}
	}
	panic("unknown phase " + name) // Config.fill checked the names
}

// clientLabels mark the load generator's goroutines in CPU profiles.
var clientLabels = pprof.Labels("side", "client")

// Result is one phase of one round.
type Result struct {
	Phase   string `json:"phase"`
	Workers int    `json:"workers"`
	Conns   int    `json:"conns,omitempty"`
	// Ops is the number of SVIDs issued in the measured window.
	Ops       int     `json:"ops"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	// P50 and P99 are latencies of one issuance as its caller sees it, µs.
	P50 float64 `json:"p50_us"`
	P99 float64 `json:"p99_us"`
	// CPUPerOp is the process's user+system CPU time in the window divided
	// by Ops, µs: the CA, and in the e2e phases the clients too.
	CPUPerOp float64 `json:"cpu_us_per_op"`
	// Cores is the CPU time divided by the window: how many CPUs the
	// process kept busy. Well under GOMAXPROCS means that something else
	// on the machine took CPU time, or the phase did not saturate it.
	Cores float64 `json:"cores"`

	// last holds each worker's last issued chain, to verify.
	last [][][]byte
}

// worker is one goroutine of a phase; only it touches its fields.
type worker struct {
	lat      []time.Duration
	last     [][]byte
	errs     int
	firstErr error
}

// Phase states.
const (
	warmingUp int32 = iota
	measuring
	stopping
)

// run runs p for warmup, then measures it for dur. Every error fails the
// phase: numbers from a CA that refuses requests mean nothing.
func (p phase) run(ctx context.Context, warmup, dur time.Duration) (Result, error) {
	runtime.GC() // start each phase without the previous one's garbage
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var state atomic.Int32
	workers := make([]worker, p.workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			pprof.Do(ctx, pprof.Labels("side", "client", "phase", p.name), func(ctx context.Context) {
				workers[w].loop(ctx, p.op, w, &state)
			})
		})
	}
	sleep(ctx, warmup)
	cpu0, t0 := processCPU(), time.Now()
	state.Store(measuring)
	sleep(ctx, dur)
	state.Store(stopping)
	t1, cpu1 := time.Now(), processCPU()
	// Requests in flight finish; a hung one is cancelled after a grace period.
	grace := time.AfterFunc(10*time.Second, cancel)
	wg.Wait()
	if !grace.Stop() {
		return Result{}, fmt.Errorf("phase %s: requests still running 10s after the phase ended", p.name)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	r := Result{Phase: p.name, Workers: p.workers, Conns: p.conns, Seconds: t1.Sub(t0).Seconds()}
	var lat []time.Duration
	var errs int
	var firstErr error
	for _, w := range workers {
		lat = append(lat, w.lat...)
		errs += w.errs
		if firstErr == nil {
			firstErr = w.firstErr
		}
		if w.last != nil {
			r.last = append(r.last, w.last)
		}
	}
	if errs > 0 {
		return r, fmt.Errorf("phase %s: %d requests failed, the first with: %w", p.name, errs, firstErr)
	}
	r.Ops = len(lat)
	if r.Ops == 0 {
		return r, fmt.Errorf("phase %s: no SVID issued in %s", p.name, dur)
	}
	slices.Sort(lat)
	r.OpsPerSec = float64(r.Ops) / r.Seconds
	r.P50 = micros(percentile(lat, 0.50))
	r.P99 = micros(percentile(lat, 0.99))
	r.CPUPerOp = micros(cpu1-cpu0) / float64(r.Ops)
	r.Cores = (cpu1 - cpu0).Seconds() / r.Seconds
	return r, nil
}

// loop issues SVIDs until the phase stops. It records the latency of every
// request that completes while the phase is measuring.
func (w *worker) loop(ctx context.Context, issue op, id int, state *atomic.Int32) {
	w.lat = make([]time.Duration, 0, 1024)
	for i := 0; state.Load() != stopping; i++ {
		start := time.Now()
		chain, err := issue(ctx, id, i)
		took := time.Since(start)
		if err != nil {
			w.errs++
			if w.firstErr == nil {
				w.firstErr = err
			}
			continue
		}
		if state.Load() == measuring {
			w.lat = append(w.lat, took)
			w.last = chain
		}
	}
}

// percentile returns the nearest-rank p-quantile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(float64(len(sorted))*p)) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
