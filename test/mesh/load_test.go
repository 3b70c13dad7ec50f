//go:build linux

package mesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// usage is what one process holds at one moment.
type usage struct {
	goroutines float64
	fds        int
	rssKiB     int
}

func (u usage) String() string {
	return fmt.Sprintf("%4.0f goroutines %4d fds %6.1f MiB", u.goroutines, u.fds, float64(u.rssKiB)/1024)
}

// measure reads a process's goroutines (its /metrics), open fds and RSS
// (/proc).
func measure(t *testing.T, admin string, pid int) usage {
	t.Helper()
	m, err := scrape(admin)
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	u := usage{goroutines: metric(m, "go_goroutines")}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	u.fds = len(fds)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			u.rssKiB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return u
}

// worker kinds of the load.
type workerKind struct {
	name    string
	n       int
	addr    string
	want    string // the app that must answer; "" for a call that must be refused
	keepOne bool   // one connection for many requests
}

type loadCounts struct {
	ok, failed, refused, leaked atomic.Int64
	mu                          sync.Mutex
	errs                        []string
}

func (c *loadCounts) fail(kind string, err error) {
	c.failed.Add(1)
	c.mu.Lock()
	if len(c.errs) < 20 {
		c.errs = append(c.errs, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), kind, err))
	}
	c.mu.Unlock()
}

// runWorkers runs every worker until ctx ends. Each holds one connection
// open nearly all the time: it connects, makes its request, keeps the
// connection for 5-25ms, and closes it (or, with keepOne, makes the next
// request on it).
func runWorkers(ctx context.Context, kinds []workerKind, c *loadCounts) {
	var wg sync.WaitGroup
	think := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond):
			return true
		}
	}
	for _, k := range kinds {
		for range k.n {
			wg.Go(func() {
				var conn net.Conn
				var rd *bufio.Reader
				defer func() {
					if conn != nil {
						conn.Close()
					}
				}()
				for ctx.Err() == nil {
					if k.want == "" {
						if err := refused(k.addr); err != nil {
							c.leaked.Add(1)
							c.fail(k.name, err)
						} else {
							c.refused.Add(1)
						}
						think()
						continue
					}
					var err error
					if conn == nil {
						if conn, err = net.DialTimeout("tcp", k.addr, 5*time.Second); err != nil {
							conn = nil
							c.fail(k.name, err)
							think()
							continue
						}
						rd = bufio.NewReader(conn)
					}
					conn.SetDeadline(time.Now().Add(10 * time.Second))
					if err = exchange(conn, rd, k.want); err != nil {
						c.fail(k.name, err)
					} else {
						c.ok.Add(1)
					}
					alive := think()
					if err != nil || !k.keepOne || !alive {
						conn.Close()
						conn = nil
					}
				}
			})
		}
	}
	wg.Wait()
}

// TestLoadNoLeaks: 200 concurrent connections through four sidecars, for
// 20s (TETHER_MESH_LOAD_DURATION=1m runs the minute the guarantee names):
// 100 web → api (half a new connection per request, half one connection
// for many), 30 other → db, 35 web → db (refused by web's own view) and 35
// other → api as a fixed peer (refused by api's inbound side). No allowed
// request may fail and no refused one may get an answer.
//
// Leaks are measured on every sidecar: goroutines (go_goroutines), open
// fds (/proc/PID/fd) and RSS (/proc/PID/status). A sidecar keeps up to 64
// idle mTLS tunnels per destination for up to a minute, so right after a
// load it holds more than when idle. Hence three measures, each once no
// connection is active: idle (before any load), after a 5s warm-up, and
// after the load. After the load, goroutines and fds must be back to
// their level after the warm-up (within 10% + 10 goroutines and 10 fds);
// during the load RSS must stay flat (the largest sample of its last
// third within 10% + 4 MiB of the largest of its first third). Then, with
// the other tests running (t.Parallel), the pools must drain back to the
// idle measure (within 5 goroutines and 2 fds) once their tunnels expire.
func TestLoadNoLeaks(t *testing.T) {
	needMesh(t)
	duration := 20 * time.Second
	if s := os.Getenv("TETHER_MESH_LOAD_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("TETHER_MESH_LOAD_DURATION: %v", err)
		}
		duration = d
	}
	ca := startCA(t)
	apiApp, dbApp := startApp(t, "api"), startApp(t, "db")
	api := svc{name: "api", sa: "api", ip: "10.96.0.30", port: 8080, app: apiApp.addr, endpoint: loopback(t), allowFrom: []string{"web"}}
	db := svc{name: "db", sa: "db", ip: "10.96.0.31", port: 5432, app: dbApp.addr, endpoint: loopback(t), allowFrom: []string{"other"}}
	disc := startDiscovery(t, ca, meshYAML(api, db))
	quiet := []string{"--access-log-sample", "0.01"}
	apiSC := startSidecar(t, ca, disc, sidecarSpec{sa: "api", inbound: api.endpoint, app: api.app, extra: quiet})
	dbSC := startSidecar(t, ca, disc, sidecarSpec{sa: "db", inbound: db.endpoint, app: db.app, extra: quiet})
	web := startSidecar(t, ca, disc, sidecarSpec{sa: "web", outbound: []string{"default/api:8080", "default/db:5432"}, extra: quiet})
	other := startSidecar(t, ca, disc, sidecarSpec{sa: "other", outbound: []string{"default/db:5432", api.endpoint + "@" + workloadID("default", "api").String()}, extra: quiet})
	sidecars := []*sidecarProc{apiSC, dbSC, web, other}
	kinds := []workerKind{
		{name: "web → api, new connections", n: 50, addr: web.outbound[0], want: "api"},
		{name: "web → api, kept connections", n: 50, addr: web.outbound[0], want: "api", keepOne: true},
		{name: "other → db", n: 30, addr: other.outbound[0], want: "db"},
		{name: "web → db (web's view refuses)", n: 35, addr: web.outbound[1]},
		{name: "other → api as a peer (api refuses)", n: 35, addr: other.outbound[1]},
	}
	for _, k := range kinds {
		eventually(t, k.name, 20*time.Second, func() error {
			if k.want == "" {
				return refused(k.addr)
			}
			return call(k.addr, k.want)
		})
	}

	// settle waits until no sidecar relays a connection of an app any
	// more (idle pooled tunnels count as active inbound connections, so
	// only outbound ones are waited for), and then until each sidecar's
	// goroutines hold still; then it measures each.
	settle := func(what string) []usage {
		t.Helper()
		for _, s := range sidecars {
			eventually(t, s.name+" to close every app connection "+what, 30*time.Second, func() error {
				if n := metric(s.metrics(t), "tether_sidecar_active_connections", `direction="outbound"`); n != 0 {
					return fmt.Errorf("%v active outbound connections", n)
				}
				return nil
			})
		}
		var us []usage
		for _, s := range sidecars {
			var last []usage
			eventually(t, s.name+"'s goroutines to hold still "+what, 30*time.Second, func() error {
				last = append(last, measure(t, s.admin, s.p.pid()))
				if len(last) < 3 {
					return errors.New("too few samples")
				}
				last = last[len(last)-3:]
				if last[0].goroutines != last[2].goroutines || last[1].goroutines != last[2].goroutines {
					return fmt.Errorf("goroutines %v, %v, %v", last[0].goroutines, last[1].goroutines, last[2].goroutines)
				}
				return nil
			})
			us = append(us, last[2])
		}
		return us
	}
	run := func(d time.Duration, sample func()) *loadCounts {
		c := &loadCounts{}
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		done := make(chan struct{})
		go func() { runWorkers(ctx, kinds, c); close(done) }()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return c
			case <-tick.C:
				if sample != nil {
					sample()
				}
			}
		}
	}
	check := func(what string, c *loadCounts, d time.Duration) {
		t.Helper()
		t.Logf("%s: %d answered, %d refused as they must be, %d failed, %d refused calls answered (%.0f requests/s)",
			what, c.ok.Load(), c.refused.Load(), c.failed.Load(), c.leaked.Load(), float64(c.ok.Load()+c.refused.Load())/d.Seconds())
		if c.failed.Load() != 0 {
			t.Errorf("%s: %d requests failed:\n%s", what, c.failed.Load(), strings.Join(c.errs, "\n"))
		}
		if c.ok.Load() == 0 || c.refused.Load() == 0 {
			t.Errorf("%s: no traffic", what)
		}
	}

	idle := settle("before the load")
	warm := run(5*time.Second, nil)
	check("warm-up", warm, 5*time.Second)
	afterWarmUp := settle("after the warm-up")

	rss, heap := make([][]int, len(sidecars)), make([][]int, len(sidecars))
	peakActive := 0.0
	main := run(duration, func() {
		active := 0.0
		for i, s := range sidecars {
			m, err := scrape(s.admin)
			if err != nil {
				t.Errorf("%s during the load: %v", s.name, err)
				continue
			}
			active += metric(m, "tether_sidecar_active_connections")
			rss[i] = append(rss[i], measure(t, s.admin, s.p.pid()).rssKiB)
			heap[i] = append(heap[i], int(metric(m, "go_memstats_heap_inuse_bytes")/1024))
		}
		peakActive = max(peakActive, active)
	})
	check(fmt.Sprintf("load (%s)", duration), main, duration)
	t.Logf("peak of active connections summed over the sidecars: %.0f", peakActive)
	for _, s := range sidecars {
		m := s.metrics(t)
		t.Logf("%s connections: %s; denials: %s", s.name, strings.Join(series(m, "tether_sidecar_connections_total"), ", "), strings.Join(series(m, "tether_sidecar_authz_denials_total"), ", "))
	}
	if main.failed.Load() > 0 {
		for _, s := range sidecars {
			var odd []string
			for _, l := range strings.Split(readFile(s.accessLog), "\n") {
				if l != "" && !strings.Contains(l, `"decision":"allow"`) && !strings.Contains(l, `"rule":"unknown service, or policy allows none of its ports"`) && !strings.Contains(l, "admits") {
					odd = append(odd, l)
				}
			}
			t.Logf("%s: %d access log entries that are neither allowed nor an expected denial:\n%s", s.name, len(odd), strings.Join(odd[:min(len(odd), 20)], "\n"))
		}
	}
	afterLoad := settle("after the load")

	for i, s := range sidecars {
		t.Logf("%-14s idle: %s | after warm-up: %s | after load: %s", s.name, idle[i], afterWarmUp[i], afterLoad[i])
		w, a := afterWarmUp[i], afterLoad[i]
		if a.goroutines > w.goroutines*1.1+10 {
			t.Errorf("%s: %v goroutines after the load, %v after the warm-up: a leak", s.name, a.goroutines, w.goroutines)
		}
		if a.fds > w.fds+10 {
			t.Errorf("%s: %d open fds after the load, %d after the warm-up: a leak", s.name, a.fds, w.fds)
		}
		n := len(rss[i])
		if n < 6 {
			t.Errorf("%s: only %d RSS samples", s.name, n)
			continue
		}
		first, last := slicesMax(rss[i][:n/3]), slicesMax(rss[i][n-n/3:])
		t.Logf("%-14s RSS during the load (MiB): %s", s.name, mibs(rss[i]))
		t.Logf("%-14s heap in use during the load (MiB): %s", s.name, mibs(heap[i]))
		if float64(last) > float64(first)*1.1+4*1024 {
			t.Errorf("%s: RSS grew during the load from %d KiB (first third) to %d KiB (last third)", s.name, first, last)
		}
		if !s.p.alive() {
			t.Errorf("%s exited: %v", s.name, s.p.err)
		}
	}
	if t.Failed() {
		return
	}

	// The pools drain once their tunnels expire: back to idle. This is
	// waiting, so let the other tests run meanwhile.
	t.Parallel()
	began := time.Now()
	for i, s := range sidecars {
		eventually(t, s.name+" to drain back to its idle usage", 150*time.Second, func() error {
			u := measure(t, s.admin, s.p.pid())
			if u.goroutines > idle[i].goroutines+5 || u.fds > idle[i].fds+2 {
				return fmt.Errorf("now %s, idle %s", u, idle[i])
			}
			return nil
		})
	}
	t.Logf("every sidecar drained to its idle usage %s after the load", time.Since(began).Round(time.Second))
	for i, s := range sidecars {
		t.Logf("%-14s idle: %s | drained: %s", s.name, idle[i], measure(t, s.admin, s.p.pid()))
	}
}

// series returns the samples of a metric, one line each.
func series(text, name string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			out = append(out, strings.TrimPrefix(l, name))
		}
	}
	return out
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func slicesMax(xs []int) int {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

func mibs(kib []int) string {
	var parts []string
	for _, k := range kib {
		parts = append(parts, fmt.Sprintf("%.1f", float64(k)/1024))
	}
	return strings.Join(parts, " ")
}
