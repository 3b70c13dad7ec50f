//go:build linux

package admin_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/internal/netns"
)

// TestLocalOnlyPathsRefuseThePodIP serves an admin port on every address of
// a "pod" network namespace and calls it as another pod would (over a
// veth, at the pod IP), as a process in the pod would (loopback), and as
// a proxy acting for a remote caller would (loopback from 127.0.0.6).
func TestLocalOnlyPathsRefuseThePodIP(t *testing.T) {
	pod, other, podIP := netns.PodPair(t, "admin", netip.MustParsePrefix("10.213.0.0/24"))

	l, err := pod.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	s := admin.New("", func() error { return nil }, prometheus.NewRegistry(), quiet)
	s.HandleLocal("POST /quitquitquit", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "bye\n") })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	defer func() { cancel(); <-done }()
	port := l.Addr().(*net.TCPAddr).Port

	call := func(ns *netns.NS, src, dst netip.Addr, method, path string) (int, string) {
		t.Helper()
		return ns.HTTP(t, src, method, "http://"+netip.AddrPortFrom(dst, uint16(port)).String()+path)
	}
	loop := netip.MustParseAddr("127.0.0.1")
	for _, tc := range []struct {
		name     string
		ns       *netns.NS
		src, dst netip.Addr
		method   string
		path     string
		want     int
	}{
		{"another pod: liveness", other, netip.Addr{}, podIP.Addr(), "GET", "/healthz", 200},
		{"another pod: readiness", other, netip.Addr{}, podIP.Addr(), "GET", "/readyz", 200},
		{"another pod: quitquitquit", other, netip.Addr{}, podIP.Addr(), "POST", "/quitquitquit", 403},
		{"the pod itself at its pod IP: quitquitquit", pod, netip.Addr{}, podIP.Addr(), "POST", "/quitquitquit", 403},
		{"the pod on loopback: quitquitquit", pod, netip.Addr{}, loop, "POST", "/quitquitquit", 200},
		{"the pod on ::1: quitquitquit", pod, netip.Addr{}, netip.IPv6Loopback(), "POST", "/quitquitquit", 200},
		{"a proxied caller on loopback: quitquitquit", pod, netip.MustParseAddr("127.0.0.6"), loop, "POST", "/quitquitquit", 403},
	} {
		if tc.dst.Is6() {
			// lo has ::1 only if IPv6 is enabled in the namespace.
			if out, err := pod.Output(context.Background(), 0, "ip", "-6", "addr", "show", "dev", "lo"); err != nil || !strings.Contains(out, "::1") {
				t.Logf("%s: skipped, no ::1 in the namespace", tc.name)
				continue
			}
		}
		code, body := call(tc.ns, tc.src, tc.dst, tc.method, tc.path)
		if code != tc.want {
			t.Errorf("%s: %d %q, want %d", tc.name, code, body, tc.want)
		}
		if code == 403 && !strings.Contains(body, "served only to callers on loopback") {
			t.Errorf("%s: refusal does not say why: %q", tc.name, body)
		}
	}
}
