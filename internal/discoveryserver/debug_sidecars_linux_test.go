//go:build linux

package discoveryserver

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/netns"
	"github.com/tether-mesh/tether/internal/testutil"
)

// TestDebugSidecarsOnlyOnLoopback runs discovery with its admin port on
// every address of a "pod" network namespace (as deployed: :15014) and
// asks another pod, over a veth at the pod IP, for the list of every
// sidecar's identity, IP and admin address, and for the observed-traffic
// table (/debug/flows): refused, while the kubelet's and Prometheus's
// paths answer. On the pod's loopback both answer.
func TestDebugSidecarsOnlyOnLoopback(t *testing.T) {
	pod, other, podIP := netns.PodPair(t, "disc-admin", netip.MustParsePrefix("10.215.0.0/24"))

	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	cfg := baseConfig(t, ca, mesh)
	cfg.AdminAddr = ":0"
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	// Run binds both ports on the thread Do switched into the pod.
	go func() { done <- pod.Do(func() error { return s.Run(ctx) }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	testutil.Eventually(t, "admin listener", 15*time.Second, func() bool { return s.Addr("admin") != nil })
	port := uint16(s.Addr("admin").(*net.TCPAddr).Port)
	url := func(ip netip.Addr, path string) string {
		return "http://" + netip.AddrPortFrom(ip, port).String() + path
	}

	testutil.Eventually(t, "ready at the pod IP", 15*time.Second, func() bool {
		code, _ := other.HTTP(t, netip.Addr{}, "GET", url(podIP.Addr(), "/readyz"))
		return code == http.StatusOK
	})
	for _, path := range []string{"/healthz", "/metrics"} {
		if code, body := other.HTTP(t, netip.Addr{}, "GET", url(podIP.Addr(), path)); code != http.StatusOK {
			t.Errorf("another pod: GET %s = %d %q, want 200", path, code, body)
		}
	}
	// The observed-traffic table says who calls whom: the same rule.
	for path, want := range map[string]string{"/debug/sidecars": `"sidecars"`, "/debug/flows": `"edges"`} {
		code, body := other.HTTP(t, netip.Addr{}, "GET", url(podIP.Addr(), path))
		if code != http.StatusForbidden || !strings.Contains(body, "served only to callers on loopback") {
			t.Errorf("another pod: GET %s = %d %q, want 403 saying it is served on loopback only", path, code, body)
		}
		if code, body := pod.HTTP(t, netip.Addr{}, "GET", url(netip.MustParseAddr("127.0.0.1"), path)); code != http.StatusOK ||
			!strings.Contains(body, want) {
			t.Errorf("pod loopback: GET %s = %d %q", path, code, body)
		}
	}
	_, metrics := pod.HTTP(t, netip.Addr{}, "GET", url(netip.MustParseAddr("127.0.0.1"), "/metrics"))
	if !strings.Contains(metrics, `tether_admin_refused_total{component="discovery",reason="not_loopback"} 2`) {
		t.Errorf("the refusal is not counted:\n%s", metrics)
	}
}
