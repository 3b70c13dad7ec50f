//go:build linux

package e2e

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/netns"
)

// TestPermissiveModeKeepsPolicyAndRefusesLoops: pod B's sidecar runs in
// permissive mode with the capture rules `tether-sidecar init` installs and
// an allow-list that restricts its app's port to A's identity. Pod A has
// no sidecar: its plaintext has no identity. A's plaintext to B's app is
// refused (the port is restricted), and plaintext straight to B's inbound
// capture port 15006 is refused at once as a loop, with B's sidecar
// accepting that one connection only.
func TestPermissiveModeKeepsPolicyAndRefusesLoops(t *testing.T) {
	netns.RequireRoot(t)
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl not installed (make deps installs it)")
		}
		t.Skip("needs curl")
	}
	bin := buildBinaries(t, "tether-ca", "tether-sidecar", "tether")
	a, b := netns.New(t, "perm-a"), netns.New(t, "perm-b")
	netns.Link(t, a, b, netip.MustParsePrefix("10.212.0.1/24"), netip.MustParsePrefix("10.212.0.2/24"))
	state, err := os.MkdirTemp("", "tether-e2e-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	os.Chmod(state, 0o755)
	caDir := filepath.Join(state, "ca")
	ca := b.Start(t, 0, filepath.Join(bin, "tether-ca"), "--store-dir", caDir, "--listen", "10.212.0.2:8443", "--admin-listen", "127.0.0.1:15914")
	waitFor(t, "tether-ca", 15*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(caDir, "admin.sock"))
		return err == nil
	})
	bundle := filepath.Join(state, "bundle.pem")
	data, err := os.ReadFile(filepath.Join(caDir, "bundle.pem"))
	if err != nil {
		t.Fatalf("%v\n%s", err, ca.Output())
	}
	os.WriteFile(bundle, data, 0o644)
	out, err := exec.Command(filepath.Join(bin, "tether"), "ca", "token", "create", "--socket", filepath.Join(caDir, "admin.sock"),
		"--spiffe-id", "spiffe://cluster.local/ns/default/sa/b", "--ttl", "10m").Output()
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	serveHTTP(t, b, 8080, "b")
	b.Run(t, filepath.Join(bin, "tether-sidecar"), "init", "--exclude-inbound-ports", "8443")
	sb := b.Start(t, 1337, filepath.Join(bin, "tether-sidecar"), "--transparent", "--inbound-mode", "permissive", "--ca", "10.212.0.2:8443",
		"--bundle", bundle, "--join-token", strings.TrimSpace(string(out)), "--workload-socket", "", "--log-level", "debug",
		"--allow", "spiffe://cluster.local/ns/default/sa/a=8080")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sidecar B:\n%s\nCA:\n%s", sb.Output(), ca.Output())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	waitFor(t, "sidecar B ready", 20*time.Second, func() bool {
		out, err := b.Output(ctx, 0, curl, "-sf", "--max-time", "2", "http://127.0.0.1:15020/healthz/ready")
		return err == nil && strings.Contains(out, "ready")
	})
	metric := func(series string) float64 {
		m, err := b.Output(ctx, 0, curl, "-sf", "--max-time", "5", "http://127.0.0.1:15020/metrics")
		if err != nil {
			t.Fatalf("B's metrics: %v", err)
		}
		return max(sample(m, series), 0) // absent: 0
	}

	// Plaintext, no identity, to a port the policy restricts.
	if out, err := a.Output(ctx, 0, curl, "-sS", "--max-time", "5", "http://10.212.0.2:8080/"); err == nil {
		t.Fatalf("plaintext from a pod without identity reached a restricted port in permissive mode: %q", out)
	}
	waitFor(t, "B's denial of the unauthenticated caller", 5*time.Second, func() bool {
		return metric(`tether_sidecar_authz_denials_total{destination="10.212.0.2:8080",direction="inbound",reason="no identity",source_id="unauthenticated"}`) == 1
	})

	// Plaintext straight to the capture port: refused once, no loop.
	before := metric(`tether_sidecar_connections_total{direction="inbound",result="loop"}`)
	if out, err := a.Output(ctx, 0, curl, "-sS", "--max-time", "5", "http://10.212.0.2:15006/"); err == nil {
		t.Fatalf("plaintext to the capture port got an answer: %q", out)
	}
	time.Sleep(time.Second) // a loop would go on meanwhile
	if got := metric(`tether_sidecar_connections_total{direction="inbound",result="loop"}`); got != before+1 {
		t.Errorf("loop refusals: %v, want %v", got, before+1)
	}
	if n := metric(`tether_sidecar_active_connections{direction="inbound"}`); n > 1 {
		t.Errorf("%v inbound connections open after the refusal; a loop holds them", n)
	}
}
