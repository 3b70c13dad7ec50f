package main

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/procstat"
)

// TestMemRelayRing runs the mem subcommand's relay ring for real (the test
// binary is the relay, three processes from one copy of it) and checks
// what it reads: every process shares the binary's pages with the others
// (PSS below RSS), its private memory lies within its RSS, and the load
// went through every process without an error.
func TestMemRelayRing(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	ctx := t.Context()
	e := echoEnv(t)
	cfg := memConfig{Setups: []string{"relay"}, N: 3, Rounds: 1, Conns: 2, Size: 1024,
		Settle: 100 * time.Millisecond, Load: 300 * time.Millisecond, Warmup: 50 * time.Millisecond}
	r := &ring{e: e, cfg: cfg}
	if err := r.prepare(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := r.measure(ctx, "relay", filepath.Join(e.dir, "r1-relay"))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Idle) != 3 || len(m.Loaded) != 3 {
		t.Fatalf("readings of %d and %d processes, want 3", len(m.Idle), len(m.Loaded))
	}
	for i, ps := range [][]procMem{m.Idle, m.Loaded} {
		for j, p := range ps {
			if p.RSS <= 0 || p.PSS <= 0 || p.PSS >= p.RSS || p.Private() <= 0 || p.Private() > p.RSS || p.HWM < p.RSS/2 {
				t.Errorf("reading %d, relay %d: %+v; want 0 < PSS < RSS (a shared binary), 0 < private ≤ RSS", i, j, p)
			}
		}
	}
	if m.Rate <= 0 || m.Errors > 0 {
		t.Errorf("load: %.0f req/s, %d errors (first: %v)", m.Rate, m.Errors, m.First)
	}
	var out strings.Builder
	if err := writeMemReport(&out, cfg, r.binSizes, map[string][]memRound{"relay": {m}}); err != nil {
		t.Fatal(err)
	}
	reportHas(t, out.String(), "| relay | idle |", "| relay | load |")
}

func TestMemReport(t *testing.T) {
	const mb = 1 << 20
	proc := func(rss, pss, private float64) procMem {
		return procMem{Smaps: procstat.Smaps{RSS: int64(rss * mb), PSS: int64(pss * mb), PrivateDirty: int64(private * mb), Anonymous: int64(private * mb)}, HWM: int64(rss * mb)}
	}
	// Three processes, two rounds; the medians over processes are 20/6/4
	// (round 1) and 22/8/4.5 (round 2) idle.
	round := func(add float64) memRound {
		return memRound{
			Idle:   []procMem{proc(20+add, 6+add, 4+add/4), proc(19+add, 5+add, 3.5+add/4), proc(21+add, 7+add, 4.8+add/4)},
			Loaded: []procMem{proc(24+add, 9+add, 6), proc(23+add, 8+add, 5.5), proc(25+add, 10+add, 6.5)},
			Rate:   1000 + 100*add,
		}
	}
	relay := func() memRound {
		return memRound{Idle: []procMem{proc(8, 2, 1), proc(8, 2, 1), proc(8, 2, 1)}, Loaded: []procMem{proc(9, 3, 2), proc(9, 3, 2), proc(9, 3, 2)}, Rate: 2000}
	}
	results := map[string][]memRound{"relay": {relay(), relay()}, "tether": {round(0), round(2)}}
	cfg := memConfig{Setups: []string{"relay", "tether"}, N: 3, Rounds: 2, Conns: 4, Size: 1024, Settle: 5 * time.Second, Load: 10 * time.Second, Warmup: time.Second}
	var out strings.Builder
	if err := writeMemReport(&out, cfg, map[string]int64{"relay": 10e6, "tether": 27e6}, results); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	reportHas(t, s,
		"relay 10.0 MB, tether 27.0 MB",
		// median over rounds of the per-round medians: RSS (20, 22) → 21,
		// PSS (6, 8) → 7, private (4, 4.5) → 4.25; the largest private
		// (4.8, 5.3) → 5.05; totals: RSS (60, 66) → 63.
		"| tether | idle | 21.00 | 7.00 | 4.25 | 5.05 | 4.25 | 0.00 | 4.25 | 21.00 | 63.0 |",
		"| tether | load | 25.00 | 10.00 | 6.00 | 6.50 |",
		"| 1100 | 0 |",
		"| relay | idle | 8.00 | 2.00 | 1.00 | 1.00 |",
		// tether ÷ relay, per round: PSS 6/2 and 8/2 → median 3.5, spread 3–4.
		"| idle | 2.62× (2.50–2.75) | 3.50× (3.00–4.00) |",
		"| private memory < 5 MiB per sidecar, idle | median 4.25 MiB, largest 5.05 MiB | **no** |",
	)
}

func TestParseMemFlags(t *testing.T) {
	base := t.TempDir()
	if err := os.WriteFile(filepath.Join(base, "tether-sidecar"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := parseMemFlags([]string{"-n", "10", "-baseline-bin", base})
	if err != nil || !slices.Equal(c.Setups, []string{"relay", "tether", "tether-base"}) || c.N != 10 {
		t.Errorf("parseMemFlags: %+v, %v; want relay, tether, tether-base", c, err)
	}
	for _, bad := range [][]string{
		{"-n", "1"}, {"-setups", "stunnel"}, {"-setups", "relay,relay"}, {"-setups", "tether-base"},
		{"-load", "0s"}, {"-baseline-bin", t.TempDir()}, {"extra"},
	} {
		if _, err := parseMemFlags(bad); err == nil {
			t.Errorf("parseMemFlags(%q): no error", bad)
		}
	}
}

// usage is the start of tether-sidecar's -help, with two flags a later
// version might add: a loopback admin listener and a debug socket.
const usage = `Usage of tether-sidecar:
  -admin-listen string
    	admin address: /healthz/ready, /metrics (default ":15020")
  -admin-local-listen string
    	loopback admin: /debug/*, POST /quitquitquit (default "127.0.0.1:15000")
  -allow value
    	allow a caller inbound: SPIFFE_ID (repeatable)
  -bundle string
    	PEM trust bundle that verifies the CA at bootstrap (default "/etc/tether/bundle/bundle.pem")
  -ca string
    	tether-ca address (env TETHER_CA_ADDR) (default "tether-ca.tether-system.svc:8443")
  -capture-inbound-listen string
    	transparent mode: inbound capture listener (default ":15006")
  -debug-socket string
    	debug socket (default "/run/tether/debug.sock")
  -dns-listen value
    	DNS server address (default 127.0.0.1:15053 with --transparent and --discovery, else off; empty: off)
  -join-token string
    	join token (standalone; env TETHER_JOIN_TOKEN)
  -log-level string
    	debug, info, warn or error (default "info")
  -metrics-listen string
    	off by default (default "")
  -access-log string
    	JSON access log file, - for standard output, off to disable (default "-")
  -transparent
    	serve the capture listeners
  -workload-socket string
    	SPIFFE Workload API unix socket (empty: off) (default "/run/tether/workload.sock")
`

// TestSidecarArgs: the flags are read from the binary's -help, a listener
// or socket flag it has beyond the ones this tool sets gets an address or
// socket of its own (two sidecars on one host must not share one), and a
// binary without a flag the tool sets is refused, naming the flag.
func TestSidecarArgs(t *testing.T) {
	flags := parseUsage(usage)
	for name, def := range map[string]string{"admin-listen": ":15020", "admin-local-listen": "127.0.0.1:15000", "allow": "", "transparent": "",
		"dns-listen": "127.0.0.1:15053 with --transparent and --discovery, else off; empty: off", "workload-socket": "/run/tether/workload.sock"} {
		if got, ok := flags[name]; !ok || got != def {
			t.Errorf("flag %s: default %q (present %v), want %q", name, got, ok, def)
		}
	}
	dir := t.TempDir()
	write := func(name, usage string) string {
		p := filepath.Join(dir, name)
		script := "#!/bin/sh\ncat >&2 <<'EOF'\n" + usage + "EOF\nexit 2\n"
		if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	e := &env{ca: &tetherCA{addr: "127.0.0.1:1", bundle: "/b.pem"}}
	cmd, err := e.sidecarArgs(t.Context(), write("new", usage), dir, "s-1", "tok", "127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Join(cmd, " ")
	for _, want := range []string{"--ca 127.0.0.1:1 ", "--join-token tok ", "--access-log off ", "--admin-listen 127.0.0.1:2 ",
		"--workload-socket " + filepath.Join(dir, "s-1.sock"), "--debug-socket " + filepath.Join(dir, "s-1-debug-socket.sock"), "--admin-local-listen 127.0.0.1:"} {
		if !strings.Contains(args+" ", want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	for _, not := range []string{"--capture-inbound-listen", "--dns-listen", "--metrics-listen", "--allow", "15000", "15020"} {
		if strings.Contains(args, not) {
			t.Errorf("args %q hold %q", args, not)
		}
	}
	// Each sidecar gets addresses of its own.
	cmd2, err := e.sidecarArgs(t.Context(), write("new", usage), dir, "s-2", "tok", "127.0.0.1:3")
	if err != nil {
		t.Fatal(err)
	}
	local := func(args []string) string { return args[slices.Index(args, "--admin-local-listen")+1] }
	if local(cmd) == local(cmd2) {
		t.Errorf("two sidecars share an address: %q and %q", cmd, cmd2)
	}
	old := strings.Replace(usage, "  -workload-socket string\n", "  -other string\n", 1)
	if _, err := e.sidecarArgs(t.Context(), write("old", old), dir, "s-3", "tok", "127.0.0.1:4"); err == nil || !strings.Contains(err.Error(), "no --workload-socket flag") {
		t.Errorf("binary without --workload-socket: %v; want an error naming the flag", err)
	}
	if _, err := e.sidecarArgs(t.Context(), write("none", "no usage here\n"), dir, "s-4", "tok", "127.0.0.1:5"); err == nil || !strings.Contains(err.Error(), "-admin-listen") {
		t.Errorf("binary without usage: %v", err)
	}
}

func TestBaselineSetups(t *testing.T) {
	base := t.TempDir()
	if err := os.WriteFile(filepath.Join(base, "tether-sidecar"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		setups  string
		dir     string
		want    string
		wantErr string
	}{
		{"relay,tether,stunnel", base, "relay,tether,tether-base,stunnel", ""},
		{"relay", base, "relay,tether-base", ""},
		{"tether-base,tether", base, "tether-base,tether", ""},
		{"relay,tether", "", "relay,tether", ""},
		{"tether,tether-base", "", "", "needs -baseline-bin"},
		{"tether", t.TempDir(), "", "not an executable file"},
	} {
		args := []string{"-setups", tc.setups}
		if tc.dir != "" {
			args = append(args, "-baseline-bin", tc.dir)
		}
		c, err := parseFlags(args)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: %v, want an error with %q", args, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("%q: %v", args, err)
		case strings.Join(c.Setups, ",") != tc.want:
			t.Errorf("%q: setups %q, want %q", args, c.Setups, tc.want)
		}
	}
}

// TestBaselineReport: the tether ÷ tether-base table gives each round's
// ratio, their median and their spread, and names the figures worse in
// every round.
func TestBaselineReport(t *testing.T) {
	m := func(rps float64, p50us float64) measurement {
		return measurement{
			KeepAlive: loadResult{Ops: int64(rps), Elapsed: time.Second, P50: time.Duration(p50us) * time.Microsecond, P99: time.Millisecond, CPU: time.Second},
			NewConns:  loadResult{Ops: 1000, Elapsed: time.Second, CPU: time.Second}, ResetConns: loadResult{Ops: 1000, Elapsed: time.Second, CPU: time.Second},
			Bulk: loadResult{Ops: 1e9, Elapsed: time.Second, CPU: time.Second}, HasProcs: true, RSSIdle: 20 << 20, RSSPeak: 30 << 20,
		}
	}
	results := map[string][]measurement{
		"tether":      {m(9000, 500), m(10500, 520), m(10000, 480)},
		"tether-base": {m(10000, 500), m(10000, 500), m(10000, 500)},
	}
	cfg := Config{Setups: []string{"tether", "tether-base"}, Rounds: 3, Conns: 16, Size: 1024, Duration: time.Second, BaseBinDir: "/tmp/base"}
	var out strings.Builder
	if err := writeReport(&out, cfg, results); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	reportHas(t, s,
		"tether ÷ tether-base (/tmp/base,",
		"| keep-alive req/s | 10000 | 10000 | 1.000× | 0.900–1.050× | 0.900, 1.050, 1.000 |",
		"| p50 µs | 500 | 500 | 1.000× | 0.960–1.040× | 1.000, 1.040, 0.960 |",
		"| RSS idle MiB | 20.0 | 20.0 | 1.000× | 1.000–1.000× | 1.000, 1.000, 1.000 |",
		"No figure is worse for tether than for tether-base in every round.",
	)
	results["tether"] = []measurement{m(9000, 510), m(9500, 520), m(9900, 480)}
	out.Reset()
	if err := writeReport(&out, cfg, results); err != nil {
		t.Fatal(err)
	}
	reportHas(t, out.String(), "Worse for tether than for tether-base in every round (3 round(s)): keep-alive req/s; CPU s/1k req.")
}

// TestRelayRoutes: a relay wants one upstream per listener (that it serves
// both routes, TestMemRelayRing shows: each relay there has two).
func TestRelayRoutes(t *testing.T) {
	if code := childMain("relay", []string{"-listen", "127.0.0.1:0,127.0.0.1:0", "-to", "127.0.0.1:1"}); code != 2 {
		t.Errorf("2 listeners, 1 upstream: exit %d, want 2", code)
	}
	if code := childMain("echo", []string{"-listen", "127.0.0.1:0,127.0.0.1:0"}); code != 2 {
		t.Errorf("echo with 2 listeners: exit %d, want 2", code)
	}
}

// TestFreeAddrsDistinct: no address is handed out twice, although the
// kernel may give a port just closed to the next bind.
func TestFreeAddrsDistinct(t *testing.T) {
	a, err := freeAddrs(200)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(a)
	if len(slices.Compact(a)) != 200 {
		t.Errorf("freeAddrs(200) returned an address twice: %q", a)
	}
}
