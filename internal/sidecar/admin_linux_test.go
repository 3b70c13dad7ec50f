//go:build linux

package sidecar

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/internal/netns"
	"github.com/tether-mesh/tether/pkg/proxy"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// TestAdminPortAnswersOtherPodsOnlyProbesAndMetrics runs a sidecar with its
// admin port on every address of a "pod" network namespace (as injected:
// :15020) and calls it from another pod over a veth, at the pod IP: only
// the kubelet's and Prometheus's paths answer; /debug/... and
// /quitquitquit are refused and the sidecar keeps running. From the pod's
// own loopback everything answers, and /quitquitquit stops the sidecar.
func TestAdminPortAnswersOtherPodsOnlyProbesAndMetrics(t *testing.T) {
	pod, other, podIP := netns.PodPair(t, "sc-admin", netip.MustParsePrefix("10.214.0.0/24"))

	ca := startCA(t)
	s, err := New(Config{TrustDomain: "cluster.local", CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, serverID),
		AdminAddr: ":0", InboundMode: proxy.Strict, AccessLog: "off", DrainTimeout: time.Second,
		Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: echoApp(t)}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	// Run binds its listeners before it starts other goroutines, on the
	// thread Do switched into the pod: the admin port is the pod's.
	go func() { done <- pod.Do(func() error { return s.Run(ctx) }) }()
	waitFor(t, "admin", func() bool { return s.Addr("admin") != nil })
	port := uint16(s.Addr("admin").(*net.TCPAddr).Port)

	call := func(from *netns.NS, dst netip.Addr, method, path string) (int, string) {
		t.Helper()
		return from.HTTP(t, netip.Addr{}, method, "http://"+netip.AddrPortFrom(dst, port).String()+path)
	}
	waitFor(t, "ready at the pod IP", func() bool {
		code, _ := call(other, podIP.Addr(), "GET", "/healthz/ready")
		return code == http.StatusOK
	})
	for _, path := range []string{"/healthz/ready", "/healthz/live", "/metrics"} {
		if code, body := call(other, podIP.Addr(), "GET", path); code != http.StatusOK {
			t.Errorf("another pod: GET %s = %d %q, want 200 (the kubelet and Prometheus need it)", path, code, body)
		}
	}
	for _, req := range []string{"GET /debug/identity", "GET /debug/discovery", "GET /debug/denials", "POST /quitquitquit"} {
		method, path, _ := strings.Cut(req, " ")
		code, body := call(other, podIP.Addr(), method, path)
		if code != http.StatusForbidden || !strings.Contains(body, "served only to callers on loopback") {
			t.Errorf("another pod: %s = %d %q, want 403 saying it is served on loopback only", req, code, body)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the sidecar stopped after another pod's requests: %v", err)
	case <-time.After(200 * time.Millisecond):
	}

	loop := netip.MustParseAddr("127.0.0.1")
	if code, body := call(pod, loop, "GET", "/debug/identity"); code != http.StatusOK || !strings.Contains(body, serverID.String()) {
		t.Errorf("pod loopback: GET /debug/identity = %d %q", code, body)
	}
	if code, body := call(pod, loop, "GET", "/debug/denials"); code != http.StatusOK || !strings.Contains(body, `"capacity"`) {
		t.Errorf("pod loopback: GET /debug/denials = %d %q", code, body)
	}
	if code, body := call(pod, loop, "POST", "/quitquitquit"); code != http.StatusOK {
		t.Errorf("pod loopback: POST /quitquitquit = %d %q", code, body)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after /quitquitquit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar did not stop after POST /quitquitquit on loopback")
	}
}

// The admin package refuses the sidecar's own deliveries as local callers:
// it must name the address capture delivers from.
func TestAdminRefusesCaptureDeliverySource(t *testing.T) {
	if admin.DeliverySource != capture.DeliverySource {
		t.Fatalf("admin.DeliverySource %s != capture.DeliverySource %s", admin.DeliverySource, capture.DeliverySource)
	}
}
