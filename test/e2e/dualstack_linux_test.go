//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tether-mesh/tether/internal/netns"
)

// TestDualStackCapture is the IPv6 bypass, tried as an attacker would, on
// dual-stack pods in network namespaces, each pair joined directly by a
// veth with an IPv4 and an IPv6 address:
//
//	A (fd00:212::1)  ── B (fd00:212::2): tether-ca, app on 8080 and 9090
//	A (fd00:213::1)  ── X (fd00:213::2): outside the mesh, HTTP 8080, UDP 9999
//	X (fd00:214::1)  ── B (fd00:214::2)
//
// A and B run `tether-sidecar init` with no IPv6 flag (as the injector
// runs it: IPv6 capture is the default) and a sidecar; B is strict and
// lets A's identity in on port 8080 only; A is registry-only. Then:
//
//   - A's app reaches B's app over IPv6 through both sidecars (mTLS), and
//     B's app sees the call come from ::6, B's IPv6 delivery source;
//   - A's app calling B over IPv6 on 9090, which B's policy denies A, is
//     refused by B's sidecar;
//   - X (no sidecar) gets nothing from B's app in plaintext over IPv6 (nor
//     IPv4): B's strict inbound refuses it;
//   - A's app (registry-only) reaches nothing of X over IPv6 (nor IPv4):
//     TCP is refused by A's sidecar, UDP by A's capture rules;
//   - A's DNS to X's IPv6 resolver is captured to A's sidecar on [::1]
//     and forwarded: name resolution keeps working over IPv6.
func TestDualStackCapture(t *testing.T) {
	netns.RequireRoot(t)
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		t.Skip("the kernel has no IPv6")
	}
	curl := needCurl(t)
	bin := buildBinaries(t, "tether-ca", "tether-sidecar", "tether")
	a, b, x := netns.New(t, "pod-a6"), netns.New(t, "pod-b6"), netns.New(t, "outside6")
	link := func(p, q *netns.NS, n int) {
		ifP, ifQ := netns.Link(t, p, q, netip.MustParsePrefix(fmt.Sprintf("fd00:%d::1/64", n)), netip.MustParsePrefix(fmt.Sprintf("fd00:%d::2/64", n)))
		p.AddAddr(t, ifP, netip.MustParsePrefix(fmt.Sprintf("10.%d.0.1/24", n)))
		q.AddAddr(t, ifQ, netip.MustParsePrefix(fmt.Sprintf("10.%d.0.2/24", n)))
	}
	link(a, b, 212)
	link(a, x, 213)
	link(x, b, 214)

	bundle, token, ca := startCA(t, bin, b, "10.212.0.2:8443")
	serveHTTP(t, b, 8080, "b")
	serveHTTP(t, b, 9090, "b-admin-app")
	serveHTTP(t, x, 8080, "outside")
	x.ServeUDP(t, ":9999", "echo")
	serveDNS(t, x, "[fd00:213::2]:53", "192.0.2.53")

	init := filepath.Join(bin, "tether-sidecar")
	t.Logf("B: %s", strings.TrimSpace(b.Run(t, init, "init", "--exclude-inbound-ports", "8443")))
	t.Logf("A: %s", strings.TrimSpace(a.Run(t, init, "init", "--outbound-mode", "registry-only", "--capture-dns")))
	for _, ns := range []*netns.NS{a, b} {
		if rules := ns.Run(t, "ip6tables-save", "-t", "nat"); !strings.Contains(rules, "-j TETHER_INBOUND") || !strings.Contains(rules, "-s ::6/128 -o lo -j RETURN") {
			t.Fatalf("no IPv6 capture rules in %s after init:\n%s", ns.Name(), rules)
		}
		if lo := ns.Run(t, "ip", "-6", "addr", "show", "dev", "lo"); !strings.Contains(lo, "::6/128") {
			t.Fatalf("no ::6 on lo in %s after init:\n%s", ns.Name(), lo)
		}
	}

	const bID = "spiffe://cluster.local/ns/default/sa/b"
	sa := startSidecar(t, bin, a, "10.212.0.2:8443", bundle, token("a"), "--outbound-mode", "registry-only",
		"--dns-listen", "127.0.0.1:15053", "--dns-upstream", "[fd00:213::2]:53",
		"--mesh-endpoint", "[fd00:212::2]:8080="+bID, "--mesh-endpoint", "[fd00:212::2]:9090="+bID)
	sb := startSidecar(t, bin, b, "10.212.0.2:8443", bundle, token("b"), "--allow", "spiffe://cluster.local/ns/default/sa/a=8080")
	waitFor(t, "sidecar A ready", 20*time.Second, sidecarReady(a, curl))
	waitFor(t, "sidecar B ready", 20*time.Second, sidecarReady(b, curl))
	logOnFailure(t, namedProc{"sidecar A", sa}, namedProc{"sidecar B", sb}, namedProc{"CA", ca})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	get := func(ns *netns.NS, url string) (string, error) {
		return ns.Output(ctx, 0, curl, "-gsS", "--max-time", "5", url)
	}

	// The mesh over IPv6: mTLS between the identities, delivered from ::6.
	// Each attack is reported on its own (Errorf), so one run shows all
	// that get through.
	if out, err := get(a, "http://[fd00:212::2]:8080/"); err != nil || !strings.HasPrefix(out, "hello from b, you came from [::6]:") {
		t.Errorf("A → B over IPv6: %q, %v; want B's app, reached from ::6 (B's sidecar)", out, err)
	} else {
		waitFor(t, "B's log of A's IPv6 call", 5*time.Second, func() bool {
			return strings.Contains(sb.Output(), `"source_id":"spiffe://cluster.local/ns/default/sa/a"`) &&
				strings.Contains(sb.Output(), `"destination":"[fd00:212::2]:8080"`)
		})
	}

	// A denied identity over IPv6: B's policy lets A in on 8080 only.
	if out, err := get(a, "http://[fd00:212::2]:9090/"); err == nil {
		t.Errorf("A → B:9090 over IPv6, which B's policy denies A: %q", out)
	} else {
		waitFor(t, "B's denial of A's IPv6 call to 9090", 5*time.Second, func() bool {
			return strings.Contains(sb.Output(), "may not reach port 9090")
		})
	}

	// Plaintext from outside the mesh, over IPv6 (and IPv4): refused.
	for _, url := range []string{"http://[fd00:214::2]:8080/", "http://10.214.0.2:8080/", "http://[fd00:214::2]:9090/"} {
		if out, err := get(x, url); err == nil {
			t.Errorf("plaintext from X to %s reached B's app through a strict sidecar: %q", url, out)
		}
	}
	if !t.Failed() {
		waitFor(t, "B's refusal of X's plaintext", 5*time.Second, func() bool {
			return strings.Contains(sb.Output(), `"source":"[fd00:214::1]:`)
		})
	}

	// Registry-only: X is not a mesh destination. TCP over IPv6 and IPv4
	// is refused by A's sidecar...
	for _, url := range []string{"http://[fd00:213::2]:8080/", "http://10.213.0.2:8080/"} {
		if out, err := get(a, url); err == nil {
			t.Errorf("A (registry-only) → X %s: %q", url, out)
		}
	}
	if !t.Failed() {
		waitFor(t, "A's registry-only refusal over IPv6", 5*time.Second, func() bool {
			return strings.Contains(sa.Output(), "registry-only: [fd00:213::2]:8080 is not a mesh destination")
		})
	}
	// DNS to an IPv6 resolver (an IPv6-only cluster's) is captured to A's
	// sidecar on [::1]:15053, which forwards it: it still works.
	if ip, err := lookupA(a, "[fd00:213::2]:53", "api.example.com."); err != nil || ip != "192.0.2.53" {
		t.Errorf("A's app: DNS over IPv6 through the sidecar: %q, %v", ip, err)
	}
	waitFor(t, "A's sidecar serving DNS on [::1]", 5*time.Second, func() bool {
		return strings.Contains(sa.Output(), "also=[::1]:15053")
	})
	// ...and UDP by A's capture rules.
	for _, addr := range []string{"[fd00:213::2]:9999", "10.213.0.2:9999"} {
		if reply, err := udpExchange(a, addr); err == nil {
			t.Errorf("A's app (registry-only) → X udp %s: answered %q", addr, reply)
		} else if !errors.Is(err, os.ErrPermission) && !strings.Contains(err.Error(), "operation not permitted") {
			t.Errorf("A's app → X udp %s: %v, want the write refused (EPERM)", addr, err)
		}
	}
}

// serveDNS answers every A query to addr inside ns with ip.
func serveDNS(t *testing.T, ns *netns.NS, addr, ip string) {
	t.Helper()
	pc, err := ns.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.ParseIP(ip)})
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
}

// lookupA asks server for name's A record from inside ns as root (an app
// process, captured) and returns the first address.
func lookupA(ns *netns.NS, server, name string) (string, error) {
	var ip string
	err := ns.Do(func() error {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Timeout: 3 * time.Second}
		r, _, err := c.Exchange(m, server)
		if err != nil {
			return err
		}
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				ip = a.A.String()
				return nil
			}
		}
		return fmt.Errorf("no A record in %v", r)
	})
	return ip, err
}

// udpExchange sends one datagram to addr from inside ns as root (the test
// process: an app process, captured) and returns the reply.
func udpExchange(ns *netns.NS, addr string) (string, error) {
	var reply string
	err := ns.Do(func() error {
		c, err := net.DialTimeout("udp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("hello")); err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		reply = string(buf[:n])
		return err
	})
	return reply, err
}
