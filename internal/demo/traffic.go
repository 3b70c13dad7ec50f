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

// traffic is the demo's traffic loop: you (the demo) call web, which calls
// api, which calls db, at a steady rate; and every 2 seconds web tries db
// directly, which policy denies.
type traffic struct {
	web      string // the web app's address
	interval time.Duration
	client   *http.Client

	total callStats
	mu    sync.Mutex
	phase *callStats
	// phases are the rotation's, in order.
	phases []*callStats

	// The denied call: attempts, refusals, and calls that went through.
	deniedTried, deniedRefused, deniedThrough atomic.Int64
	lastThrough                               atomic.Pointer[string]

	stop context.CancelFunc
	done chan struct{}
}

func newTraffic(web string, rate float64) *traffic {
	return &traffic{
		web:      web,
		interval: time.Duration(float64(time.Second) / rate),
		client:   &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
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
	ctx, t.stop = context.WithCancel(ctx)
	t.done = make(chan struct{})
	go func() {
		defer close(t.done)
		tick := time.NewTicker(t.interval)
		defer tick.Stop()
		every := max(1, int(2*time.Second/t.interval))
		for n := 0; ; n++ {
			t.mu.Lock()
			phase := t.phase
			t.mu.Unlock()
			err := t.chain(ctx)
			if ctx.Err() != nil {
				return // a call cut short by the stop is not a failure
			}
			t.total.record(err)
			if phase != nil {
				phase.record(err)
			}
			if n%every == 0 {
				t.deniedTried.Add(1)
				if err := t.direct(ctx, "db"); err != nil {
					t.deniedRefused.Add(1)
				} else if ctx.Err() == nil {
					t.deniedThrough.Add(1)
					msg := time.Now().Format("15:04:05") + " web → db answered 200"
					t.lastThrough.Store(&msg)
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

// halt stops the loop and waits for the call in flight.
func (t *traffic) halt() {
	if t.stop != nil {
		t.stop()
		<-t.done
	}
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
