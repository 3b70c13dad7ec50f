//go:build linux

package capture_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/netns"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// These tests build "pods" out of network namespaces. Every address is a
// private one that exists only inside the namespaces the test creates.
var (
	podA = netip.MustParsePrefix("10.211.0.1/24")
	podB = netip.MustParsePrefix("10.211.0.2/24")
	// podB2 is a second address of pod B, used as an excluded CIDR.
	podB2 = netip.MustParsePrefix("10.211.0.3/24")

	podA6 = netip.MustParsePrefix("fd00:211::1/64")
	podB6 = netip.MustParsePrefix("fd00:211::2/64")
)

const proxyUID = capture.DefaultProxyUID

// runner runs the iptables tools inside ns.
func runner(ns *netns.NS) capture.Runner {
	return capture.ExecRunner{Start: ns.StartCmd}
}

func pods(t *testing.T) (a, b *netns.NS) {
	a, b = netns.New(t, "poda"), netns.New(t, "podb")
	netns.Link(t, a, b, podA, podB)
	return a, b
}

func apply(t *testing.T, ns *netns.NS, c capture.Config) {
	t.Helper()
	if err := capture.Apply(context.Background(), c, runner(ns)); err != nil {
		t.Fatalf("Apply in %s: %v", ns.Name(), err)
	}
}

// listen opens a listener inside ns and serves each connection with reply.
func listen(t *testing.T, ns *netns.NS, addr string, reply func(*net.TCPConn) string) {
	t.Helper()
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns.Name(), err)
	}
	testutil.Serve(t, l, func(c net.Conn) {
		go func() {
			defer c.Close()
			io.WriteString(c, reply(c.(*net.TCPConn)))
		}()
	})
}

// text is a reply that is always s.
func text(s string) func(*net.TCPConn) string {
	return func(*net.TCPConn) string { return s }
}

// origDst is a reply saying "<label> <original destination>", as a capture
// listener of the sidecar would see it.
func origDst(label string) func(*net.TCPConn) string {
	return func(c *net.TCPConn) string {
		dst, err := capture.OriginalDst(c)
		if err != nil {
			return label + " error: " + err.Error()
		}
		return label + " " + dst.String()
	}
}

// client makes one connection from inside a pod, as uid, and returns what it
// read (or the error). UID 0 runs in the test process; any other UID runs the
// test binary in helper mode.
type client struct {
	t   *testing.T
	exe string // the test binary, runnable by other UIDs
}

func newClient(t *testing.T) client {
	// A race-enabled helper would otherwise sleep a second before exiting.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return client{t: t, exe: netns.Executable(t)}
}

func (c client) do(ns *netns.NS, uid int, mode, addr string) string {
	c.t.Helper()
	if uid == 0 {
		var out string
		err := ns.Do(func() (err error) {
			switch mode {
			case "udp":
				out, err = exchangeUDPAddr(addr)
			case "deliver":
				out, err = deliverTCP(addr)
			case "udpc":
				out, err = connectedUDP(addr)
			default:
				out, err = dialTCP(addr)
			}
			return err
		})
		if err != nil {
			return "error: " + err.Error()
		}
		return out
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := ns.Output(ctx, uid, c.exe, helperArg, mode, addr)
	return strings.TrimSpace(out)
}

func exchangeUDPAddr(addr string) (string, error) { return exchangeUDP(addr) }

func TestApplyIsIdempotentAndCleanupIsExact(t *testing.T) {
	cfg := capture.DefaultConfig()
	cfg.IPv6 = true
	cfg.ExcludeInboundPorts = []int{9090}
	cfg.ExcludeOutboundPorts = []int{5432}
	cfg.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:96::/64")}
	want, err := capture.Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}

	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			useBackend(t, backend)
			ns := netns.New(t, backend)
			// A rule that is not ours, which nothing may touch.
			ns.Run(t, "iptables", "-t", "nat", "-N", "KEEP_ME")
			ns.Run(t, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "KEEP_ME")
			const foreign = "-A OUTPUT -p tcp -m tcp --dport 9999 -j KEEP_ME"

			apply(t, ns, cfg)
			first, first6 := save(t, ns, "iptables-save"), save(t, ns, "ip6tables-save")
			apply(t, ns, cfg)
			if again := save(t, ns, "iptables-save"); again != first {
				t.Fatalf("second Apply changed the table:\nfirst:\n%s\nsecond:\n%s", first, again)
			}
			if again := save(t, ns, "ip6tables-save"); again != first6 {
				t.Fatalf("second Apply changed the IPv6 table:\nfirst:\n%s\nsecond:\n%s", first6, again)
			}
			// The kernel holds exactly the rules Rules shows, each once, and the
			// foreign rule is still there.
			sameRules(t, first, want.IPv4, foreign)
			sameRules(t, first6, want.IPv6, "")

			// Applying a different config replaces the rules.
			noDNS := cfg
			noDNS.CaptureDNS, noDNS.IPv6 = false, false
			apply(t, ns, noDNS)
			rs, _ := capture.Rules(noDNS)
			sameRules(t, save(t, ns, "iptables-save"), rs.IPv4, foreign)
			if s := save(t, ns, "ip6tables-save"); strings.Contains(s, "TETHER") {
				t.Fatalf("Apply without IPv6 left IPv6 rules:\n%s", s)
			}

			for i := range 2 {
				if err := capture.Cleanup(context.Background(), runner(ns)); err != nil {
					t.Fatalf("Cleanup #%d: %v", i+1, err)
				}
				s := save(t, ns, "iptables-save")
				if strings.Contains(s, "TETHER") || !strings.Contains(s, foreign) {
					t.Fatalf("after Cleanup #%d the table is:\n%s", i+1, s)
				}
			}
			apply(t, ns, cfg)
			if err := capture.Cleanup(context.Background(), runner(ns)); err != nil {
				t.Fatal(err)
			}
			if s := save(t, ns, "ip6tables-save"); strings.Contains(s, "TETHER") {
				t.Fatalf("Cleanup left IPv6 rules:\n%s", s)
			}
		})
	}
}

// useBackend points the plain iptables tool names at one backend for this
// test (through a PATH entry of symlinks), or skips if it is not installed
// (Debian's iptables package has both).
func useBackend(t *testing.T, backend string) {
	netns.RequireRoot(t)
	dir := t.TempDir()
	for _, tool := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		fam, rest, _ := strings.Cut(tool, "-")
		target := fam + "-" + backend
		if rest != "" {
			target += "-" + rest
		}
		path, err := exec.LookPath(target)
		if err != nil {
			t.Skipf("%s not installed", target)
		}
		if err := os.Symlink(path, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// save returns the nat table without comments and counters.
func save(t *testing.T, ns *netns.NS, tool string) string {
	t.Helper()
	var b strings.Builder
	for line := range strings.Lines(ns.Run(t, tool, "-t", "nat")) {
		if !strings.HasPrefix(line, "#") {
			b.WriteString(counters.ReplaceAllString(line, "[0:0]"))
		}
	}
	return b.String()
}

// sameRules checks that the rules in saved are exactly the rules in ruleset
// plus extra (if not empty).
func sameRules(t *testing.T, saved, ruleset, extra string) {
	t.Helper()
	count := func(s string) map[string]int {
		m := map[string]int{}
		for line := range strings.Lines(s) {
			if line = strings.TrimSpace(line); strings.HasPrefix(line, "-A ") {
				m[line]++
			}
		}
		return m
	}
	got, want := count(saved), count(ruleset)
	if extra != "" {
		want[extra]++
	}
	for r, n := range want {
		if got[r] != n {
			t.Errorf("rule %q is in the table %d times, want %d", r, got[r], n)
		}
	}
	for r := range got {
		if want[r] == 0 {
			t.Errorf("unexpected rule %q", r)
		}
	}
	if t.Failed() {
		t.Fatalf("table:\n%s", saved)
	}
}

func TestOutboundCapture(t *testing.T) {
	a, b := pods(t)
	b.AddAddr(t, "eth0", podB2)
	cfg := capture.DefaultConfig()
	cfg.ExcludeOutboundPorts = []int{9090}
	cfg.ExcludeOutboundCIDRs = []netip.Prefix{netip.PrefixFrom(podB2.Addr(), 32)}
	apply(t, a, cfg)

	// Pod A: the sidecar's listeners and an app; pod B: an app.
	listen(t, a, "127.0.0.1:15001", origDst("outbound"))
	listen(t, a, ":15006", origDst("inbound"))
	listen(t, a, ":8080", text("app-a"))
	a.ServeUDP(t, "127.0.0.1:15053", "sidecar-dns")
	listen(t, a, "127.0.0.1:15053", text("sidecar-dns-tcp"))
	listen(t, b, ":8080", text("app-b"))
	listen(t, b, ":9090", text("app-b-9090"))
	b.ServeUDP(t, ":53", "dns-b")
	listen(t, b, ":53", text("dns-b-tcp"))

	cl := newClient(t)
	for _, tc := range []struct {
		name  string
		uid   int
		mode  string
		addr  string
		reply string
	}{
		{"app to another pod is captured with its original destination", 0, "dial", "10.211.0.2:8080", "outbound 10.211.0.2:8080"},
		{"any non-proxy uid is captured", 1000, "dial", "10.211.0.2:8080", "outbound 10.211.0.2:8080"},
		{"the proxy uid is not captured", proxyUID, "dial", "10.211.0.2:8080", "app-b"},
		{"excluded port", 0, "dial", "10.211.0.2:9090", "app-b-9090"},
		{"excluded CIDR", 0, "dial", "10.211.0.3:8080", "app-b"},
		{"loopback", 0, "dial", "127.0.0.1:8080", "app-a"},
		{"app to its own pod IP goes straight to the app", 0, "dial", "10.211.0.1:8080", "app-a"},
		{"proxy to its own pod IP goes through inbound capture", proxyUID, "dial", "10.211.0.1:8080", "inbound 10.211.0.1:8080"},
		{"proxy to its own pod IP on an excluded port", proxyUID, "dial", "10.211.0.1:15006", "inbound 10.211.0.1:15006"},
		{"proxy to its own pod IP from the delivery source goes straight to the app", proxyUID, "deliver", "10.211.0.1:8080", "app-a"},
		{"DNS over UDP goes to the sidecar", 0, "udp", "10.211.0.2:53", "sidecar-dns from 10.211.0.2:53"},
		{"DNS over TCP goes to the sidecar", 0, "dial", "10.211.0.2:53", "sidecar-dns-tcp"},
		{"the proxy's DNS over UDP is not captured", proxyUID, "udp", "10.211.0.2:53", "dns-b from 10.211.0.2:53"},
		{"the proxy's DNS over TCP is not captured", proxyUID, "dial", "10.211.0.2:53", "dns-b-tcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cl.do(a, tc.uid, tc.mode, tc.addr); got != tc.reply {
				t.Fatalf("uid %d %s %s: got %q, want %q", tc.uid, tc.mode, tc.addr, got, tc.reply)
			}
		})
	}
}

func TestInboundCapture(t *testing.T) {
	a, b := pods(t)
	cfg := capture.DefaultConfig()
	cfg.ExcludeInboundPorts = []int{9090}
	apply(t, b, cfg)

	listen(t, b, ":15006", origDst("inbound"))
	listen(t, b, ":15020", text("admin-b"))
	listen(t, b, ":8080", text("app-b"))
	listen(t, b, ":9090", text("app-b-9090"))

	cl := newClient(t)
	for _, tc := range []struct {
		name, addr, reply string
	}{
		{"to an app port lands on the inbound listener", "10.211.0.2:8080", "inbound 10.211.0.2:8080"},
		{"to the admin port (kubelet probes) is not captured", "10.211.0.2:15020", "admin-b"},
		{"to an excluded port is not captured", "10.211.0.2:9090", "app-b-9090"},
		{"to the inbound port itself is not redirected", "10.211.0.2:15006", "inbound 10.211.0.2:15006"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Pod A has no rules, so its root process talks to B directly.
			if got := cl.do(a, 0, "dial", tc.addr); got != tc.reply {
				t.Fatalf("dial %s: got %q, want %q", tc.addr, got, tc.reply)
			}
		})
	}
}

// TestTransparentProxy runs a minimal sidecar as UID 1337 in pod A: it takes
// the captured connection, connects to the original destination itself
// (which capture lets through because of its UID) and relays the answer.
func TestTransparentProxy(t *testing.T) {
	a, b := pods(t)
	apply(t, a, capture.DefaultConfig())
	listen(t, b, ":8080", text("app-b"))

	cl := newClient(t)
	p := a.Start(t, proxyUID, cl.exe, helperArg, "proxy", "127.0.0.1:15001")
	waitFor(t, p, "ready")

	want := fmt.Sprintf("proxy(uid %d) 10.211.0.2:8080 -> app-b", proxyUID)
	if got := cl.do(a, 0, "dial", "10.211.0.2:8080"); got != want {
		t.Fatalf("got %q, want %q (proxy output: %s)", got, want, p.Output())
	}
}

func waitFor(t *testing.T, p *netns.Proc, s string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(p.Output(), s) {
		select {
		case <-p.Done():
			t.Fatalf("process exited (%v) before printing %q: %s", p.Err(), s, p.Output())
		case <-deadline:
			t.Fatalf("process did not print %q in 10s: %s", s, p.Output())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestIPv6Capture(t *testing.T) {
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		t.Skip("the kernel has no IPv6")
	}
	a, b := netns.New(t, "poda6"), netns.New(t, "podb6")
	netns.Link(t, a, b, podA6, podB6)
	cfg := capture.DefaultConfig()
	cfg.IPv6 = true
	apply(t, a, cfg)
	apply(t, b, cfg)

	listen(t, a, "[::1]:15001", origDst("outbound"))
	listen(t, b, "[::]:15006", origDst("inbound"))

	cl := newClient(t)
	if got, want := cl.do(a, 0, "dial", "[fd00:211::2]:8080"), "outbound [fd00:211::2]:8080"; got != want {
		t.Errorf("outbound from A: got %q, want %q", got, want)
	}
	if got, want := cl.do(a, proxyUID, "dial", "[fd00:211::2]:8080"), "inbound [fd00:211::2]:8080"; got != want {
		t.Errorf("proxy in A to B: got %q, want %q", got, want)
	}

	// The sidecar's deliveries to the app at the IPv6 pod IP come from ::6,
	// which init puts on lo (twice: it is idempotent) and the rules exempt;
	// its other connections to its own pod IP go to the inbound listener.
	for range 2 {
		if err := b.Do(capture.AddDeliverySource6); err != nil {
			t.Fatalf("AddDeliverySource6: %v", err)
		}
	}
	if out := b.Run(t, "ip", "-6", "addr", "show", "dev", "lo"); !strings.Contains(out, "::6/128") {
		t.Fatalf("no ::6/128 on lo:\n%s", out)
	}
	listen(t, b, "[fd00:211::2]:8080", func(c *net.TCPConn) string { return "app-b from " + c.RemoteAddr().String() })
	if got := cl.do(b, proxyUID, "deliver", "[fd00:211::2]:8080"); !strings.HasPrefix(got, "app-b from [::6]:") {
		t.Errorf("proxy in B delivering from ::6 to its IPv6 pod IP: got %q, want the app", got)
	}
	if got, want := cl.do(b, proxyUID, "dial", "[fd00:211::2]:8080"), "inbound [fd00:211::2]:8080"; got != want {
		t.Errorf("proxy in B to its own IPv6 pod IP (not from ::6): got %q, want %q", got, want)
	}
	// Plaintext from A's proxy UID (not captured in A) to B's app port
	// lands on B's inbound listener, never on the app.
	if got, want := cl.do(a, proxyUID, "dial", "[fd00:211::2]:8080"), "inbound [fd00:211::2]:8080"; got != want {
		t.Errorf("plaintext over IPv6 to B's app port: got %q, want %q", got, want)
	}
}

// TestRejectUDP: with RejectUDP (registry-only), the app's UDP leaving the
// pod is refused at once (the write fails with EPERM), over IPv4 and IPv6, while DNS still reaches the
// sidecar, the sidecar's own UDP leaves, and excluded destinations stay
// reachable. Without it, the same datagram gets its answer (the bypass).
func TestRejectUDP(t *testing.T) {
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		t.Skip("the kernel has no IPv6")
	}
	a, b := pods(t)
	a.AddAddr(t, "eth0", podA6)
	b.AddAddr(t, "eth0", podB6)
	b.AddAddr(t, "eth0", podB2)
	b.ServeUDP(t, ":9999", "echo-b")
	b.ServeUDP(t, ":53", "dns-b")
	a.ServeUDP(t, "127.0.0.1:15053", "sidecar-dns")
	cl := newClient(t)
	waitDAD(t, a, b)

	// Passthrough: nothing restricts UDP.
	apply(t, a, capture.Config{ProxyUID: proxyUID, ProxyGID: proxyUID, OutboundPort: 15001, InboundPort: 15006, DNSPort: 15053, AdminPort: 15020,
		CaptureDNS: true, IPv6: true})
	if got := cl.do(a, 1000, "udpc", "10.211.0.2:9999"); got != "echo-b" {
		t.Fatalf("passthrough: UDP from the app: got %q, want echo-b", got)
	}

	cfg := capture.DefaultConfig()
	cfg.IPv6, cfg.RejectUDP = true, true
	cfg.ExcludeOutboundCIDRs = []netip.Prefix{netip.PrefixFrom(podB2.Addr(), 32)}
	apply(t, a, cfg)
	for _, tc := range []struct {
		name string
		uid  int
		mode string
		addr string
		want string
	}{
		// REJECT in OUTPUT fails the sender's write at once with EPERM.
		{"app UDP over IPv4 is refused", 1000, "udpc", "10.211.0.2:9999", "operation not permitted"},
		{"app UDP over IPv6 is refused", 1000, "udpc", "[fd00:211::2]:9999", "operation not permitted"},
		{"root in the app is refused too", 0, "udpc", "10.211.0.2:9999", "operation not permitted"},
		{"app DNS goes to the sidecar", 1000, "udp", "10.211.0.2:53", "sidecar-dns from 10.211.0.2:53"},
		{"the sidecar's own UDP leaves", proxyUID, "udpc", "10.211.0.2:9999", "echo-b"},
		{"an excluded CIDR is reachable", 1000, "udp", "10.211.0.3:9999", "echo-b from "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cl.do(a, tc.uid, tc.mode, tc.addr); !strings.Contains(got, tc.want) {
				t.Fatalf("uid %d %s %s: got %q, want %q", tc.uid, tc.mode, tc.addr, got, tc.want)
			}
		})
	}
	// Apply is exact for the filter table too: the saved rules are the ruleset's.
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if saved := a.Run(t, tool, "-t", "filter"); !strings.Contains(saved, "-A OUTPUT -p udp -j TETHER_UDP") {
			t.Fatalf("%s filter table after Apply:\n%s", tool, saved)
		}
	}
	if err := capture.Cleanup(context.Background(), runner(a)); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		for _, table := range []string{"nat", "filter"} {
			if saved := a.Run(t, tool, "-t", table); strings.Contains(saved, "TETHER_") {
				t.Fatalf("%s -t %s after Cleanup:\n%s", tool, table, saved)
			}
		}
	}
}

// waitDAD waits until the IPv6 addresses of the namespaces are usable
// (duplicate address detection done).
func waitDAD(t *testing.T, nss ...*netns.NS) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, ns := range nss {
		for strings.Contains(ns.Run(t, "ip", "-6", "addr"), "tentative") {
			if time.Now().After(deadline) {
				t.Fatalf("IPv6 addresses of %s still tentative", ns.Name())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func TestWithoutNetAdmin(t *testing.T) {
	ns := netns.New(t, "nocap")
	// The tools run as nobody: iptables itself says it may not.
	asNobody := capture.ExecRunner{Start: func(cmd *exec.Cmd) error {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return ns.StartCmd(cmd)
	}}
	err := capture.Apply(context.Background(), capture.DefaultConfig(), asNobody)
	if !errors.Is(err, capture.ErrNeedNetAdmin) {
		t.Fatalf("Apply as nobody = %v; want ErrNeedNetAdmin", err)
	}
	if want := "needs NET_ADMIN: run as root or add the NET_ADMIN capability"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}

	// Check sees the missing capability before anything runs.
	cl := newClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Output(ctx, 65534, cl.exe, helperArg, "check")
	if err == nil || !strings.Contains(out, "needs NET_ADMIN") {
		t.Fatalf("Check as nobody: %q, %v", out, err)
	}
	if out, err := ns.Output(ctx, 0, cl.exe, helperArg, "check"); err != nil || out != "ok" {
		t.Fatalf("Check as root: %q, %v", out, err)
	}
}
