package demo

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// demoChain is what web answers when web → api → db went through.
const demoChain = "web → api → db"

// callStats counts the calls web → api → db made in one phase.
type callStats struct {
	name                  string
	attempted, ok, failed atomic.Int64
	mu                    sync.Mutex
	firstErrors           []string
}

func (s *callStats) record(err error) {
	s.attempted.Add(1)
	if err == nil {
		s.ok.Add(1)
		return
	}
	s.failed.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.firstErrors) < 3 {
		s.firstErrors = append(s.firstErrors, time.Now().Format("15:04:05.000")+" "+err.Error())
	}
}

// callLoop is a demo's traffic loop: an allowed call at a steady rate,
// and every 2 seconds one that policy refuses, until halted.
type callLoop struct {
	interval time.Duration
	client   *http.Client

	// The refused call: attempts, refusals, and calls that went through.
	deniedTried, deniedRefused, deniedThrough atomic.Int64
	lastThrough                               atomic.Pointer[string]

	stop context.CancelFunc
	done chan struct{}
}

func newCallLoop(rate float64) callLoop {
	return callLoop{
		interval: time.Duration(float64(time.Second) / rate),
		client:   &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
}

// start runs the loop: allowed at every tick, its result to record, and
// denied every 2 seconds (nil: it went through, described as through in
// lastThrough).
func (l *callLoop) start(ctx context.Context, allowed func(context.Context) error, record func(error), denied func(context.Context) error, through string) {
	ctx, l.stop = context.WithCancel(ctx)
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		tick := time.NewTicker(l.interval)
		defer tick.Stop()
		every := max(1, int(2*time.Second/l.interval))
		for n := 0; ; n++ {
			err := allowed(ctx)
			if ctx.Err() != nil {
				return // a call cut short by the stop is not a failure
			}
			record(err)
			if n%every == 0 {
				l.deniedTried.Add(1)
				if err := denied(ctx); err != nil {
					l.deniedRefused.Add(1)
				} else if ctx.Err() == nil {
					l.deniedThrough.Add(1)
					msg := time.Now().Format("15:04:05") + " " + through + " answered 200"
					l.lastThrough.Store(&msg)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// halt stops the loop and waits for the call in flight.
func (l *callLoop) halt() {
	if l.stop != nil {
		l.stop()
		<-l.done
	}
}

// traffic is the demo's traffic loop: you (the demo) call web, which calls
// api, which calls db, at a steady rate; and every 2 seconds web tries db
// directly, which policy denies.
type traffic struct {
	callLoop
	web string // the web app's address

	total callStats
	mu    sync.Mutex
	phase *callStats
	// phases are the rotation's, in order.
	phases []*callStats
}

func newTraffic(web string, rate float64) *traffic {
	return &traffic{web: web, callLoop: newCallLoop(rate)}
}

// chain calls web → api → db once.
func (t *traffic) chain(ctx context.Context) error {
	body, err := demoGet(ctx, t.client, "http://"+t.web+"/")
	if err != nil {
		return err
	}
	if body != demoChain {
		return fmt.Errorf("web answered %q, want %q", body, demoChain)
	}
	return nil
}

// direct has web call db; nil means the call went through (it should not).
func (t *traffic) direct(ctx context.Context, via string) error {
	_, err := demoGet(ctx, t.client, "http://"+t.web+"/call/"+via)
	return err
}

// setPhase starts counting calls in a new phase of the rotation.
func (t *traffic) setPhase(name string) *callStats {
	s := &callStats{name: name}
	t.mu.Lock()
	t.phase = s
	t.phases = append(t.phases, s)
	t.mu.Unlock()
	return s
}

func (t *traffic) start(ctx context.Context) {
	var phase *callStats // the phase the call in flight began in (the loop's goroutine only)
	t.callLoop.start(ctx, func(ctx context.Context) error {
		t.mu.Lock()
		phase = t.phase
		t.mu.Unlock()
		return t.chain(ctx)
	}, func(err error) {
		t.total.record(err)
		if phase != nil {
			phase.record(err)
		}
	}, func(ctx context.Context) error { return t.direct(ctx, "db") }, "web → db")
}

// burst makes n calls web → api → db at once, counted in the current
// phase: more than the sidecars' pooled connections can carry, so they
// open new ones (new mTLS handshakes). It returns how many failed.
func (t *traffic) burst(ctx context.Context, n int) int64 {
	t.mu.Lock()
	phase := t.phase
	t.mu.Unlock()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range n {
		wg.Go(func() {
			err := t.chain(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				failed.Add(1)
			}
			t.total.record(err)
			if phase != nil {
				phase.record(err)
			}
		})
	}
	wg.Wait()
	return failed.Load()
}

// failures describes the first failures of s, indented.
func (s *callStats) failures() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.firstErrors) == 0 {
		return ""
	}
	return "\n      first failures: " + strings.Join(s.firstErrors, "\n                      ")
}
