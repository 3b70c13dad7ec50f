package sidecar

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// fakeRunner records the iptables tools Init runs.
type fakeRunner struct {
	calls   []string
	restore []string
	fail    map[string]string // tool → stderr of its failure
}

func (f *fakeRunner) Run(_ context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, name+" "+strings.Join(args, " "))
	if msg, ok := f.fail[name]; ok {
		return nil, fmt.Errorf("%s: exit status 1: %s", name, msg)
	}
	if strings.Contains(name, "restore") {
		f.restore = append(f.restore, string(stdin))
	}
	return nil, nil
}

// fakePod stands for the pod's network namespace in Init's tests: its
// routable IPv6 addresses, whether the kernel has IPv6, and what adding
// ::6 to lo does.
type fakePod struct {
	addrs  []netip.Addr
	ipv6On bool
	addErr error
	added  bool
}

// use makes Init see p until the test ends.
func (p *fakePod) use(t *testing.T) {
	saved := thisPod
	podStubbed = true
	thisPod = podNetwork{
		ipv6Addrs:  func() ([]netip.Addr, error) { return p.addrs, nil },
		ipv6On:     func() bool { return p.ipv6On },
		addSource6: func() error { p.added = true; return p.addErr },
	}
	t.Cleanup(func() { thisPod, podStubbed = saved, false })
}

// podStubbed is set while a test's fakePod stands for the pod.
var podStubbed bool

func runInit(t *testing.T, r *fakeRunner, args ...string) (string, string, int) {
	t.Helper()
	if !podStubbed {
		// Never touch the test machine's own network: an IPv4-only pod.
		(&fakePod{}).use(t)
	}
	var out, errb bytes.Buffer
	var runner = r
	if r == nil {
		code := Init(context.Background(), args, &out, &errb, nil)
		return out.String(), errb.String(), code
	}
	code := Init(context.Background(), args, &out, &errb, runner)
	return out.String(), errb.String(), code
}

func TestInitDryRun(t *testing.T) {
	out, errOut, code := runInit(t, nil, "--dry-run", "--exclude-inbound-ports", "9090,9091", "--exclude-outbound-cidrs", "10.96.0.0/12")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"--dport 9090 -j RETURN", "-d 10.96.0.0/12 -j RETURN", "--uid-owner 1337 -j RETURN", "REDIRECT --to-ports 15001", "REDIRECT --to-ports 15006", "--dport 15020 -j RETURN"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "15053") && !strings.Contains(out, "--dport 15053 -j RETURN") {
		t.Errorf("DNS is captured by default although the sidecar serves no DNS yet:\n%s", out)
	}
}

func TestInitAppliesAndCleansUp(t *testing.T) {
	r := &fakeRunner{}
	if _, errOut, code := runInit(t, r, "--exclude-outbound-ports", "5432"); code != 0 {
		t.Fatalf("apply: exit %d: %s", code, errOut)
	}
	if len(r.restore) == 0 || !strings.Contains(strings.Join(r.restore, ""), "--dport 5432 -j RETURN") {
		t.Fatalf("apply did not restore the rules: calls %v", r.calls)
	}
	r2 := &fakeRunner{}
	if _, errOut, code := runInit(t, r2, "--cleanup"); code != 0 {
		t.Fatalf("cleanup: exit %d: %s", code, errOut)
	}
	if len(r2.calls) == 0 {
		t.Fatal("cleanup ran no iptables tool")
	}
}

func TestInitRefusesBadInput(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--exclude-inbound-ports", "0"}, 2, "out of range"},
		{[]string{"--exclude-inbound-ports", "http"}, 2, "exclude-inbound-ports"},
		{[]string{"--exclude-outbound-cidrs", "10.0.0.0/33"}, 2, "exclude-outbound-cidrs"},
		{[]string{"--proxy-uid", "0", "--dry-run"}, 1, "UID"},
		{[]string{"stray"}, 2, "unexpected arguments"},
	}
	for _, tc := range cases {
		_, errOut, code := runInit(t, &fakeRunner{}, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("init %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

// TestInitIPv6 is the fail-closed rule of IPv6 capture: a pod with an IPv6
// address other than link-local gets IPv6 rules (and ::6 on lo for the
// sidecar's deliveries) by default, and if they cannot be installed init
// fails, naming the address and the cause, so the pod does not start with
// IPv6 open. A pod with no such address gets them when it can, and starts
// without them (with a warning) when it cannot.
func TestInitIPv6(t *testing.T) {
	podAddr := netip.MustParseAddr("fd00:10:244::5")
	noNAT6 := map[string]string{"ip6tables-restore": "ip6tables-restore v1.8.9 (nf_tables): RULE_APPEND failed (No such file or directory): rule in chain PREROUTING"}

	t.Run("dual-stack pod: IPv6 rules by default", func(t *testing.T) {
		p := &fakePod{addrs: []netip.Addr{podAddr}, ipv6On: true}
		p.use(t)
		r := &fakeRunner{}
		out, errOut, code := runInit(t, r)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if !p.added || !strings.Contains(out, "IPv6 true") || !strings.Contains(strings.Join(r.calls, "\n"), "ip6tables-restore --noflush") {
			t.Fatalf("::6 added %v, output %q, calls %v: want the IPv6 rules", p.added, out, r.calls)
		}
		if six := r.restore[len(r.restore)-1]; !strings.Contains(six, "-A TETHER_OUTPUT -s ::6/128 -o lo -j RETURN") {
			t.Fatalf("IPv6 rules do not exempt the delivery source ::6:\n%s", six)
		}
	})
	t.Run("dual-stack pod: IPv6 rules fail, init fails", func(t *testing.T) {
		(&fakePod{addrs: []netip.Addr{podAddr}, ipv6On: true}).use(t)
		_, errOut, code := runInit(t, &fakeRunner{fail: noNAT6})
		if code != 1 || !strings.Contains(errOut, "fd00:10:244::5") || !strings.Contains(errOut, "must not start") || !strings.Contains(errOut, "RULE_APPEND failed") {
			t.Fatalf("exit %d, stderr %q: want exit 1 naming the address, the refusal and the cause", code, errOut)
		}
	})
	t.Run("dual-stack pod: ::6 cannot be added, init fails", func(t *testing.T) {
		(&fakePod{addrs: []netip.Addr{podAddr}, ipv6On: true, addErr: errors.New("add ::6 to lo: operation not permitted")}).use(t)
		_, errOut, code := runInit(t, &fakeRunner{})
		if code != 1 || !strings.Contains(errOut, "operation not permitted") || !strings.Contains(errOut, "must not start") {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("dual-stack pod: --ipv6=false refused", func(t *testing.T) {
		(&fakePod{addrs: []netip.Addr{podAddr}, ipv6On: true}).use(t)
		_, errOut, code := runInit(t, &fakeRunner{}, "--ipv6=false")
		if code != 1 || !strings.Contains(errOut, "fd00:10:244::5") || !strings.Contains(errOut, "refusing") {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("IPv4 pod, IPv6 in the kernel: rules when they can be installed", func(t *testing.T) {
		(&fakePod{ipv6On: true}).use(t)
		r := &fakeRunner{}
		if out, errOut, code := runInit(t, r); code != 0 || !strings.Contains(out, "IPv6 true") {
			t.Fatalf("exit %d, out %q, stderr %q", code, out, errOut)
		}
		r = &fakeRunner{fail: noNAT6}
		out, errOut, code := runInit(t, r)
		if code != 0 || !strings.Contains(out, "IPv6 false") || !strings.Contains(errOut, "warning: no IPv6 capture") {
			t.Fatalf("exit %d, out %q, stderr %q: want IPv4 capture and a warning", code, out, errOut)
		}
	})
	t.Run("--ipv6=true without an address: required", func(t *testing.T) {
		(&fakePod{ipv6On: true}).use(t)
		if _, errOut, code := runInit(t, &fakeRunner{fail: noNAT6}, "--ipv6"); code != 1 || !strings.Contains(errOut, "--ipv6=true") {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("IPv4 only kernel", func(t *testing.T) {
		(&fakePod{}).use(t)
		r := &fakeRunner{}
		if out, errOut, code := runInit(t, r); code != 0 || !strings.Contains(out, "IPv6 false") || strings.Contains(strings.Join(r.restore, ""), "::6") {
			t.Fatalf("exit %d, out %q, stderr %q", code, out, errOut)
		}
	})
}

// TestInitRegistryOnlyRejectsUDP: with --outbound-mode registry-only init
// adds the filter rules that reject the app's UDP leaving the pod (the
// sidecar proxies TCP only); passthrough adds none.
func TestInitRegistryOnlyRejectsUDP(t *testing.T) {
	out, errOut, code := runInit(t, nil, "--dry-run", "--outbound-mode", "registry-only", "--capture-dns")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"*filter", "-A OUTPUT -p udp -j TETHER_UDP", "-A TETHER_UDP -m owner --uid-owner 1337 -j RETURN",
		"-A TETHER_UDP -o lo -j RETURN", "-A TETHER_UDP -j REJECT --reject-with icmp-port-unreachable"} {
		if !strings.Contains(out, want) {
			t.Errorf("registry-only rules lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "--dport 53 -j RETURN") {
		t.Errorf("with DNS captured, UDP to port 53 elsewhere must be rejected too:\n%s", out)
	}
	out, _, _ = runInit(t, nil, "--dry-run")
	if strings.Contains(out, "TETHER_UDP") {
		t.Errorf("passthrough rejects UDP:\n%s", out)
	}
	if _, errOut, code := runInit(t, nil, "--outbound-mode", "deny"); code != 2 || !strings.Contains(errOut, "want passthrough or registry-only") {
		t.Errorf("bad --outbound-mode: exit %d, %q", code, errOut)
	}
}
