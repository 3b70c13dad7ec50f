package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/tether-mesh/tether/internal/procstat"
	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// childEnv makes the test binary act as proxybench's echo and relay
// children, so the tests start the same processes a run does.
const childEnv = "PROXYBENCH_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" && len(os.Args) > 1 {
		os.Exit(childMain(os.Args[1], os.Args[2:]))
	}
	os.Exit(m.Run())
}

// echoEnv is an env in a temporary directory whose children are this
// test binary, with its echo server started; the test ends it.
func echoEnv(t *testing.T) *env {
	t.Helper()
	t.Setenv(childEnv, "1")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{dir: t.TempDir(), self: self}
	t.Cleanup(e.close)
	if err := e.startEcho(t.Context()); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestSetupsMoveTheBytes runs each workload briefly through each setup and
// checks that echoes came back intact: relay and echo as child processes,
// the tether pair in process (pkg/proxy, as the sidecars run it), stunnel
// and haproxy as processes when installed.
func TestSetupsMoveTheBytes(t *testing.T) {
	ctx := t.Context()
	e := echoEnv(t)
	a, b := testIdentities(t)
	e.certs = writeCerts(t, e.dir, a, b)
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) (*pair, error)
	}{
		{"direct", func(*testing.T) (*pair, error) { return startDirect(ctx, e, "") }},
		{"relay", func(t *testing.T) (*pair, error) { return startRelay(ctx, e, t.TempDir()) }},
		{"tether", func(t *testing.T) (*pair, error) { return &pair{entry: tetherPair(t, a, b, e.echo)}, nil }},
		{"stunnel", func(t *testing.T) (*pair, error) { return needs(t, "stunnel4", "stunnel", stunnelPair(true), e) }},
		{"haproxy", func(t *testing.T) (*pair, error) { return needs(t, "haproxy", "haproxy", haproxyPair(true), e) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := tc.start(t)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { stopAll(p.procs) })
			if len(p.procs) > 0 {
				if m, err := memOf(p.procs); err != nil || m.RSS == 0 || m.HWM < m.RSS || m.Anon > m.RSS {
					t.Errorf("memory of the proxies: %+v, %v", m, err)
				}
			}
			// Long enough, and minimums low enough, that a loaded CI machine
			// (other packages' tests run alongside) still passes: this checks
			// that each workload works, not how fast.
			l := load{addr: p.entry, conns: 4, size: 1024, warmup: 20 * time.Millisecond, dur: 300 * time.Millisecond}
			for _, w := range []struct {
				name string
				fn   func(context.Context, load) (loadResult, error)
				min  int64
			}{{"keep-alive", keepAlive, 10}, {"new-conn", newConns, 3}, {"new-conn-rst", resetConns, 3}, {"bulk", bulk, 256 << 10}} {
				if w.name == "bulk" {
					l.conns = 1
				}
				r, err := w.fn(ctx, l)
				if err != nil {
					t.Fatal(err)
				}
				if r.Errors > 0 || r.Ops < w.min {
					t.Errorf("%s: %d checked, %d errors (first: %v); want at least %d and none", w.name, r.Ops, r.Errors, r.FirstErr, w.min)
				}
				if w.name != "bulk" && (r.P50 <= 0 || r.P90 < r.P50 || r.P99 < r.P90 || r.P999 < r.P99) {
					t.Errorf("%s: p50 %v, p90 %v, p99 %v, p99.9 %v", w.name, r.P50, r.P90, r.P99, r.P999)
				}
			}
		})
	}
}

func needs(t *testing.T, bin, pkg string, start func(context.Context, *env, string) (*pair, error), e *env) (*pair, error) {
	if _, err := lookPath(bin); err != nil {
		t.Skipf("%s not installed (apt-get install %s); bench/proxy/run.sh installs it", bin, pkg)
	}
	return start(t.Context(), e, t.TempDir())
}

// TestCorruptionIsCaught: an echo server that flips a bit fails every
// workload instead of being counted.
func TestCorruptionIsCaught(t *testing.T) {
	bad := echoServer(t, func(c net.Conn) {
		defer c.Close()
		var mode [1]byte
		if _, err := io.ReadFull(c, mode[:]); err != nil {
			return
		}
		if mode[0] == modeDownload {
			chunk := bytes.Clone(pattern[:chunkSize])
			c.Write(chunk)
			chunk[100] ^= 1
			for {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				buf[n-1] ^= 1
				c.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	})
	// A second: bulk must read past the first, clean, 64 KB chunk, which
	// on a loaded machine took more than the 50 ms this test once gave it.
	l := load{addr: bad, conns: 2, size: 1024, dur: time.Second}
	for name, fn := range map[string]func(context.Context, load) (loadResult, error){"keep-alive": keepAlive, "new-conn": newConns, "bulk": bulk} {
		r, err := fn(t.Context(), l)
		if err != nil {
			t.Fatal(err)
		}
		if r.Errors == 0 || r.FirstErr == nil || !strings.Contains(r.FirstErr.Error(), "differs") && !strings.Contains(r.FirstErr.Error(), "corrupt") {
			t.Errorf("%s: corrupted echo not caught: %d errors, first %v", name, r.Errors, r.FirstErr)
		}
		if name != "bulk" && r.Ops != 0 {
			t.Errorf("%s: %d corrupted echoes counted", name, r.Ops)
		}
	}
}

func TestReport(t *testing.T) {
	m := func(rps, p50us, conns float64, rssMiB float64, procs bool) measurement {
		return measurement{
			KeepAlive:  loadResult{Ops: int64(rps), Elapsed: time.Second, P50: time.Duration(p50us) * time.Microsecond, P99: 2 * time.Duration(p50us) * time.Microsecond, CPU: time.Second},
			NewConns:   loadResult{Ops: int64(conns), Elapsed: time.Second, P50: time.Millisecond, P99: 2 * time.Millisecond, CPU: time.Second},
			ResetConns: loadResult{Ops: int64(conns / 2), Elapsed: time.Second, CPU: time.Second},
			Bulk:       loadResult{Ops: 1e9, Elapsed: time.Second, CPU: time.Second},
			HasProcs:   procs, RSSIdle: int64(rssMiB * (1 << 20)), RSSPeak: int64(2 * rssMiB * (1 << 20)),
		}
	}
	results := map[string][]measurement{
		"direct":  {m(40000, 100, 10000, 0, false), m(40000, 100, 10000, 0, false), m(40000, 100, 10000, 0, false)},
		"relay":   {m(10000, 400, 2400, 5, true), m(12000, 400, 2400, 5, true), m(11000, 400, 2400, 5, true)},
		"tether":  {m(9500, 420, 1500, 15, true), m(11400, 420, 1500, 15, true), m(10450, 420, 1500, 15, true)},
		"stunnel": {m(7000, 600, 80, 10, true), m(7000, 600, 80, 10, true), m(7000, 600, 80, 10, true)},
	}
	for i := range results["tether"] {
		results["tether"][i].Syscalls = 14 * results["tether"][i].KeepAlive.Ops
	}
	var out strings.Builder
	cfg := Config{Setups: []string{"direct", "relay", "tether", "stunnel"}, Rounds: 3, Conns: 16, Size: 1024, Duration: time.Second}
	if err := writeReport(&out, cfg, results); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	reportHas(t, s,
		"| tether | 10450 | 420 | 840 | 1500 |", // medians
		"| tether | 0.95× | 1.05× |",            // ratio to relay, per round
		"| keep-alive req/s ≥ 90% of relay | 95% | yes |",
		"| keep-alive p50 ≤ 110% of relay | 105% | yes |",
		"| ≥ 2,000 new connections/s (FIN close) | 1500/s | **no** |",
		"| ≥ 2,000 new connections/s (RST close) | 750/s | **no** |",
		"| idle RSS < 20 MiB | 15.0 MiB | yes |",
		// A tie is not "ahead".
		"| ahead of stunnel on every figure | behind on: bulk MB/s 1000 vs 1000;",
		"RSS idle MiB 15.0 vs 10.0; RSS peak MiB 30.0 vs 20.0 | **no** |",
		"| direct | 40000 | 100 | 200 | 10000 | 5000 | 1000 | – |",
		"| RSS peak MiB | syscalls/req | errors |", // counted for tether only
		"| 30.0 | 14.0 | 0 |",
	)
	if v := median([]float64{3, 1, 2, 10}); v != 2.5 || !math.IsNaN(median(nil)) {
		t.Errorf("median: %v", v)
	}
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := range 2000 {
		lat = append(lat, time.Duration(i+1)*time.Microsecond)
	}
	for _, tc := range []struct {
		permille int
		want     time.Duration
	}{{500, 1001 * time.Microsecond}, {900, 1801 * time.Microsecond}, {990, 1981 * time.Microsecond}, {999, 1999 * time.Microsecond}, {1000, 2000 * time.Microsecond}} {
		if got := percentile(lat, tc.permille); got != tc.want {
			t.Errorf("percentile(1..2000 µs, %d‰) = %v, want %v", tc.permille, got, tc.want)
		}
	}
	if got := percentile([]time.Duration{7}, 999); got != 7 {
		t.Errorf("percentile of one sample = %v", got)
	}
}

// TestJSONReport: -json gives each setup's percentiles per round and their
// medians, and leaves out figures that do not apply.
func TestJSONReport(t *testing.T) {
	m := func(p50us int, procs bool) measurement {
		d := time.Duration(p50us) * time.Microsecond
		r := loadResult{Ops: 1000, Elapsed: time.Second, P50: d, P90: 2 * d, P99: 3 * d, P999: 4 * d, CPU: time.Second}
		return measurement{KeepAlive: r, NewConns: r, ResetConns: r, Bulk: loadResult{Ops: 1e9, Elapsed: time.Second}, HasProcs: procs, RSSIdle: 1 << 20}
	}
	results := map[string][]measurement{
		"direct": {m(10, false), m(30, false), m(20, false)},
		"tether": {m(100, true), m(300, true), m(200, true)},
	}
	cfg := Config{Setups: []string{"direct", "tether"}, Rounds: 3, Conns: 16, Size: 1024, Duration: time.Second}
	path := filepath.Join(t.TempDir(), "out.json")
	if err := writeJSON(path, jsonReport(cfg, time.Now(), time.Now(), results)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep JSONReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("%v:\n%s", err, b)
	}
	if len(rep.Setups) != 2 || rep.Setups[0].Name != "direct" || rep.Setups[1].Name != "tether" {
		t.Fatalf("setups %+v", rep.Setups)
	}
	tether := rep.Setups[1]
	if want := (Percentiles{P50: 200, P90: 400, P99: 600, P999: 800}); tether.Median.KeepAlive != want || tether.Median.NewConn != want {
		t.Errorf("tether medians %+v, want %+v", tether.Median, want)
	}
	if len(tether.Rounds) != 3 || tether.Rounds[1].Latency.KeepAlive.P999 != 1200 {
		t.Errorf("tether rounds %+v", tether.Rounds)
	}
	if _, ok := rep.Setups[0].Figures["RSS idle MiB"]; ok {
		t.Error("direct has an RSS figure")
	}
	if v := tether.Figures["RSS idle MiB"]; v != 1 {
		t.Errorf("tether RSS idle %v MiB, want 1", v)
	}
	if _, ok := tether.Figures["syscalls/req"]; ok {
		t.Error("syscalls reported without -syscalls")
	}
}

// BenchmarkPair sends 1 KiB echoes through in-process pairs, for profiling
// pkg/proxy against the plain relay; proxy goroutines carry the pprof
// label side=proxy, the echo server's side=echo:
//
//	go test ./bench/proxy -run '^$' -bench 'Pair/tether/keepalive' -cpuprofile cpu.out
//	go tool pprof -tagfocus side=proxy -top cpu.out
func BenchmarkPair(b *testing.B) {
	var echo string
	pprof.Do(context.Background(), pprof.Labels("side", "echo"), func(context.Context) {
		echo = echoServer(b, handleEcho)
	})
	ia, ib := testIdentities(b)
	var relay, tether string
	pprof.Do(context.Background(), pprof.Labels("side", "proxy"), func(context.Context) {
		relay = relayPair(b, echo)
		tether = tetherPair(b, ia, ib, echo)
	})
	// cpu-ns/op is the whole process's CPU time (client and echo server
	// included, the same for every pair): steadier than ns/op on a busy
	// machine.
	sub := func(name string, f func(b *testing.B)) {
		b.Run(name, func(b *testing.B) {
			cpu0, err := procstat.CPU(os.Getpid())
			f(b)
			if cpu1, err1 := procstat.CPU(os.Getpid()); err == nil && err1 == nil {
				b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
			}
		})
	}
	for _, p := range []struct{ name, addr string }{{"relay", relay}, {"tether", tether}} {
		sub(p.name+"/keepalive", func(b *testing.B) {
			b.SetParallelism(8) // 16 connections on 2 CPUs
			b.SetBytes(1024)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.Dial("tcp", p.addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				req, resp := make([]byte, 1025), make([]byte, 1024)
				fill(req)
				req[0] = modeEcho
				if _, err := c.Write(req[:1]); err != nil {
					b.Error(err)
					return
				}
				var seq uint64
				for pb.Next() {
					seq++
					binary.LittleEndian.PutUint64(req[1:], seq)
					if _, err := c.Write(req[1:]); err != nil {
						b.Error(err)
						return
					}
					if _, err := io.ReadFull(c, resp); err != nil || !bytes.Equal(resp, req[1:]) {
						b.Errorf("echo: %v", err)
						return
					}
				}
			})
		})
		for _, rst := range []bool{false, true} {
			name := p.name + "/newconn"
			if rst {
				name += "-rst" // an aborted stream: a proxy that drops its upstream connection then pays a handshake
			}
			sub(name, func(b *testing.B) {
				b.SetParallelism(8)
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					req, resp := make([]byte, 1025), make([]byte, 1024)
					fill(req)
					req[0] = modeEcho
					for pb.Next() {
						if err := oneShot(context.Background(), p.addr, req, resp, opDeadline, rst); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
		// Bulk last: a stream it leaves behind would load what follows.
		sub(p.name+"/bulk", func(b *testing.B) {
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte{modeDownload}); err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, chunkSize)
			b.SetBytes(chunkSize)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, pattern[:chunkSize]) {
					b.Fatalf("download: %v", err)
				}
			}
		})
	}
}

// BenchmarkHandshake is one TCP connection and mutual TLS handshake with
// the configuration pkg/proxy uses between sidecars (go-spiffe mTLS, TLS
// 1.3, the tether ALPN, Go's default key exchange): the cost of every
// connection that cannot reuse a pooled tunnel. The server side carries
// the pprof label side=server, the client side=client.
func BenchmarkHandshake(b *testing.B) {
	ia, ib := testIdentities(b)
	server := tlsconfig.MTLSServerConfig(ib, ib, tlsconfig.AuthorizeMemberOf(tu.TrustDomain))
	server.MinVersion, server.NextProtos = tls.VersionTLS13, []string{proxy.ALPN}
	client := tlsconfig.MTLSClientConfig(ia, ia, tlsconfig.AuthorizeOneOf(spiffeid.RequireFromString(idB)))
	client.MinVersion, client.NextProtos = tls.VersionTLS13, []string{proxy.ALPN}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	pprof.Do(context.Background(), pprof.Labels("side", "server"), func(context.Context) {
		go accept(l, func(c net.Conn) {
			defer c.Close()
			tc := tls.Server(c, server)
			if tc.Handshake() == nil {
				tc.Write([]byte{1})
			}
		})
	})
	b.SetParallelism(8)
	b.ReportAllocs()
	cpu0, err := procstat.CPU(os.Getpid())
	pprof.Do(context.Background(), pprof.Labels("side", "client"), func(context.Context) {
		b.RunParallel(func(pb *testing.PB) {
			var one [1]byte
			for pb.Next() {
				c, err := tls.Dial("tcp", l.Addr().String(), client)
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(c, one[:]); err != nil {
					b.Error(err)
				}
				c.Close()
			}
		})
	})
	if cpu1, err1 := procstat.CPU(os.Getpid()); err == nil && err1 == nil {
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
	}
}

// reportHas fails t for each of wants that report lacks.
func reportHas(t *testing.T, report string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
}
