package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// load is one workload's parameters.
type load struct {
	addr   string
	conns  int
	size   int
	warmup time.Duration
	dur    time.Duration
	// cpu, if set, returns the CPU time used so far by the processes
	// under test; it is read at the start and end of the measured window.
	cpu func() time.Duration
	// others, if set, returns the CPU time used so far by every process
	// not part of the benchmark.
	others func() time.Duration
	// window, if set, is called as the measured window opens; the
	// function it returns is called as it closes.
	window func() (end func())
}

// loadResult is what one workload measured in its window.
type loadResult struct {
	// Ops is requests (keep-alive), connections (new-connection) or bytes
	// (bulk) completed and checked inside the window.
	Ops     int64
	Elapsed time.Duration
	// P50, P90, P99 and P999 (99.9th) are per-request latencies
	// (new-connection: connect, echo and close).
	P50, P90, P99, P999 time.Duration
	// Errors counts failed operations, warmup included; FirstErr is one.
	Errors   int64
	FirstErr error
	// CPU is the processes' CPU time inside the window; Others is the CPU
	// time the rest of the machine used meanwhile.
	CPU, Others time.Duration
}

// Rate is Ops per second.
func (r loadResult) Rate() float64 { return float64(r.Ops) / r.Elapsed.Seconds() }

// phases of a workload, in order.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// worker records what one load goroutine did.
type worker struct {
	ops   int64
	errs  int64
	first error
	lat   []time.Duration
}

func (w *worker) fail(err error) {
	if w.errs == 0 {
		w.first = err
	}
	w.errs++
}

// drive runs body on n goroutines through warmup and the measured window,
// then stops them and merges what they recorded. body must return soon
// after phase reads phaseStop, and when ctx ends.
func drive(ctx context.Context, l load, n int, body func(ctx context.Context, phase *atomic.Int32, w *worker)) (loadResult, error) {
	var phase atomic.Int32
	ws := make([]worker, n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := range ws {
		ws[i].lat = make([]time.Duration, 0, 1<<14)
		wg.Add(1)
		go func() {
			defer wg.Done()
			body(ctx, &phase, &ws[i])
		}()
	}
	var res loadResult
	sleepCtx(ctx, l.warmup)
	end := func() {}
	if l.window != nil {
		end = l.window()
	}
	var cpu0, others0 time.Duration
	if l.cpu != nil {
		cpu0 = l.cpu()
	}
	if l.others != nil {
		others0 = l.others()
	}
	start := time.Now()
	phase.Store(phaseMeasure)
	sleepCtx(ctx, l.dur)
	phase.Store(phaseStop)
	res.Elapsed = time.Since(start)
	if l.cpu != nil {
		res.CPU = l.cpu() - cpu0
	}
	if l.others != nil {
		res.Others = l.others() - others0
	}
	end()
	// Workers finish their operation in flight; a stuck one is cut off by
	// its connection deadline.
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	var lat []time.Duration
	for i := range ws {
		res.Ops += ws[i].ops
		res.Errors += ws[i].errs
		if res.FirstErr == nil {
			res.FirstErr = ws[i].first
		}
		lat = append(lat, ws[i].lat...)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		res.P50 = percentile(lat, 500)
		res.P90 = percentile(lat, 900)
		res.P99 = percentile(lat, 990)
		res.P999 = percentile(lat, 999)
	}
	return res, nil
}

// percentile returns the element of sorted (not empty) below which
// permille/1000 of them lie: 500 is the median, 999 the 99.9th percentile.
func percentile(sorted []time.Duration, permille int) time.Duration {
	return sorted[min(len(sorted)*permille/1000, len(sorted)-1)]
}

// opDeadline bounds one operation: a proxy that stalls shows as an error,
// not a hang.
const opDeadline = 10 * time.Second

// keepAlive sends size-byte requests on l.conns persistent connections,
// one at a time per connection, and checks each echo.
func keepAlive(ctx context.Context, l load) (loadResult, error) {
	return drive(ctx, l, l.conns, func(ctx context.Context, phase *atomic.Int32, w *worker) {
		req := make([]byte, 1+l.size)
		fill(req)
		resp := make([]byte, l.size)
		var seq uint64
		for phase.Load() != phaseStop && ctx.Err() == nil {
			c, err := dialEcho(ctx, l.addr)
			if err != nil {
				w.fail(err)
				sleepCtx(ctx, 10*time.Millisecond)
				continue
			}
			stop := context.AfterFunc(ctx, func() { c.Close() })
			// Deadlines are set once per connection, not per request, so
			// the client costs the same for every setup.
			c.SetDeadline(time.Now().Add(l.warmup + l.dur + opDeadline))
			first := true
			for phase.Load() != phaseStop {
				seq++
				binary.LittleEndian.PutUint64(req[1:], seq)
				out := req[1:]
				if first {
					req[0] = modeEcho
					out = req
				}
				t0 := time.Now()
				if _, err = c.Write(out); err != nil {
					break
				}
				if _, err = io.ReadFull(c, resp); err != nil {
					break
				}
				d := time.Since(t0)
				if !bytes.Equal(resp, req[1:]) {
					err = errors.New("keep-alive: echo differs from the request")
					break
				}
				first = false
				if phase.Load() == phaseMeasure {
					w.ops++
					w.lat = append(w.lat, d)
				}
			}
			stop()
			c.Close()
			if err != nil && phase.Load() != phaseStop && ctx.Err() == nil {
				w.fail(err)
			}
		}
	})
}

// newConns has l.conns clients each connect, send one size-byte request,
// check its echo and close, over and over.
func newConns(ctx context.Context, l load) (loadResult, error) {
	return connLoop(ctx, l, false)
}

// resetConns is newConns with each connection closed by an RST instead of
// a FIN, so every stream ends aborted. A proxy that drops its upstream TLS
// connection on an abort pays a handshake per connection here (Tether did
// before commit 4244539, which keeps the tunnel); stunnel and haproxy
// resume TLS sessions unless the -noresume setups are used.
func resetConns(ctx context.Context, l load) (loadResult, error) {
	return connLoop(ctx, l, true)
}

func connLoop(ctx context.Context, l load, rst bool) (loadResult, error) {
	return drive(ctx, l, l.conns, func(ctx context.Context, phase *atomic.Int32, w *worker) {
		req := make([]byte, 1+l.size)
		fill(req)
		req[0] = modeEcho
		resp := make([]byte, l.size)
		var seq uint64
		for phase.Load() != phaseStop && ctx.Err() == nil {
			seq++
			binary.LittleEndian.PutUint64(req[1:], seq)
			t0 := time.Now()
			err := oneShot(ctx, l.addr, req, resp, opDeadline, rst)
			d := time.Since(t0)
			if err != nil {
				if phase.Load() != phaseStop && ctx.Err() == nil {
					w.fail(err)
				}
				continue
			}
			if phase.Load() == phaseMeasure {
				w.ops++
				w.lat = append(w.lat, d)
			}
		}
	})
}

// oneShot connects, sends req (mode byte first), checks the echo and
// closes (with an RST if rst), within timeout.
func oneShot(ctx context.Context, addr string, req, resp []byte, timeout time.Duration, rst bool) error {
	c, err := dialEcho(ctx, addr)
	if err != nil {
		return err
	}
	defer func() {
		if tc, ok := c.(*net.TCPConn); ok && rst {
			tc.SetLinger(0)
		}
		c.Close()
	}()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(req); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, resp); err != nil {
		return err
	}
	if !bytes.Equal(resp, req[1:]) {
		return errors.New("new connection: echo differs from the request")
	}
	return nil
}

// bulk downloads the pattern on one connection and checks every byte;
// Ops is the bytes received in the window.
func bulk(ctx context.Context, l load) (loadResult, error) {
	return drive(ctx, l, 1, func(ctx context.Context, phase *atomic.Int32, w *worker) {
		c, err := dialEcho(ctx, l.addr)
		if err != nil {
			w.fail(err)
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		c.SetDeadline(time.Now().Add(l.warmup + l.dur + opDeadline))
		if _, err := c.Write([]byte{modeDownload}); err != nil {
			w.fail(err)
			return
		}
		buf := make([]byte, 64<<10)
		var off int64
		for phase.Load() != phaseStop {
			n, err := c.Read(buf)
			if n > 0 {
				p := int(off % patternPeriod)
				if !bytes.Equal(buf[:n], pattern[p:p+n]) {
					w.fail(fmt.Errorf("bulk: byte stream corrupt near offset %d", off))
					return
				}
				off += int64(n)
				if phase.Load() == phaseMeasure {
					w.ops += int64(n)
				}
			}
			if err != nil {
				if phase.Load() != phaseStop {
					w.fail(err)
				}
				return
			}
		}
	})
}

func dialEcho(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// fill writes a pattern into b that differs from byte to byte.
func fill(b []byte) {
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
