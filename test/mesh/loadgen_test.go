//go:build linux

package mesh

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// route is one path through the mesh: a sidecar's outbound listener and
// the app that must answer there.
type route struct{ name, addr, want string }

// loadGen sends requests at a constant rate through routes, on new
// connections and on long-lived ones, and counts the outcome of each by
// the phase in which it started.
type loadGen struct {
	routes []route
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	phase string
	order []string
	stats map[string]*phaseStats
}

type phaseStats struct {
	began               time.Time
	attempted, ok, fail int
	kinds               map[string]int
	errs                []string
	maxLatency          time.Duration
}

// startLoad sends newRate requests per second per route, each on a new
// connection, and keeps kaConns connections per route open for the whole
// run, each carrying kaRate requests per second.
func startLoad(t *testing.T, routes []route, newRate float64, kaConns int, kaRate float64) *loadGen {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	g := &loadGen{routes: routes, cancel: cancel, stats: map[string]*phaseStats{}}
	g.setPhase("start")
	for _, r := range routes {
		if newRate > 0 {
			g.wg.Go(func() {
				tick := time.NewTicker(time.Duration(float64(time.Second) / newRate))
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
					phase, began := g.current(), time.Now()
					g.wg.Go(func() { g.record(phase, "new", r, began, call(r.addr, r.want)) })
				}
			})
		}
		for range kaConns {
			g.wg.Go(func() { g.keepAlive(ctx, r, kaRate) })
		}
	}
	t.Cleanup(g.stop)
	return g
}

// keepAlive carries requests on one long-lived connection; after a
// failure (counted) it reconnects.
func (g *loadGen) keepAlive(ctx context.Context, r route, rate float64) {
	var (
		c  net.Conn
		rd *bufio.Reader
	)
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		phase, began := g.current(), time.Now()
		var err error
		if c == nil {
			if c, err = net.DialTimeout("tcp", r.addr, 5*time.Second); err != nil {
				c = nil
				g.record(phase, "keepalive", r, began, fmt.Errorf("connect: %w", err))
				continue
			}
			rd = bufio.NewReader(c)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err = exchange(c, rd, r.want); err != nil {
			c.Close()
			c = nil
		}
		g.record(phase, "keepalive", r, began, err)
	}
}

// burst opens n connections per route at once and holds every one open
// until all have been answered, so each sidecar needs n tunnels at the
// same time: more than its pool keeps idle (64), so it must make new
// mTLS handshakes.
func (g *loadGen) burst(n int) {
	phase := g.current()
	var answered, all sync.WaitGroup
	release := make(chan struct{})
	for _, r := range g.routes {
		for range n {
			answered.Add(1)
			all.Go(func() {
				began := time.Now()
				c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
				if err == nil {
					c.SetDeadline(time.Now().Add(20 * time.Second))
					err = exchange(c, bufio.NewReader(c), r.want)
				}
				g.record(phase, "burst", r, began, err)
				answered.Done()
				<-release
				if c != nil {
					c.Close()
				}
			})
		}
	}
	answered.Wait()
	close(release)
	all.Wait()
}

func (g *loadGen) current() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.phase
}

// setPhase counts requests started from now on under name.
func (g *loadGen) setPhase(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.phase = name
	if g.stats[name] == nil {
		g.order = append(g.order, name)
		g.stats[name] = &phaseStats{began: time.Now(), kinds: map[string]int{}}
	}
}

func (g *loadGen) record(phase, kind string, r route, began time.Time, err error) {
	d := time.Since(began)
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats[phase]
	s.attempted++
	s.kinds[kind]++
	s.maxLatency = max(s.maxLatency, d)
	if err == nil {
		s.ok++
		return
	}
	s.fail++
	if len(s.errs) < 20 {
		s.errs = append(s.errs, fmt.Sprintf("%s %s via %s (%s): %v", began.Format("15:04:05.000"), kind, r.name, d.Round(time.Millisecond), err))
	}
}

// stop ends the load and waits for every request in flight.
func (g *loadGen) stop() {
	g.cancel()
	g.wg.Wait()
}

// report logs each phase and returns the number of failed requests.
func (g *loadGen) report(t *testing.T) (failed, attempted int) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "%-22s %8s %9s %9s %7s  %s\n", "phase", "lasted", "attempted", "succeeded", "failed", "max latency, by kind")
	for i, name := range g.order {
		s := g.stats[name]
		end := time.Now()
		if i+1 < len(g.order) {
			end = g.stats[g.order[i+1]].began
		}
		fmt.Fprintf(&b, "%-22s %8s %9d %9d %7d  %s %v\n", name, end.Sub(s.began).Round(100*time.Millisecond), s.attempted, s.ok, s.fail, s.maxLatency.Round(time.Millisecond), s.kinds)
		for _, e := range s.errs {
			fmt.Fprintf(&b, "    %s\n", e)
		}
		failed += s.fail
		attempted += s.attempted
	}
	t.Logf("load:\n%s", b.String())
	return failed, attempted
}
