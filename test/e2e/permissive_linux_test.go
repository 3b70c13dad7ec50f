//go:build linux

package e2e

import (
	"context"
	"path/filepath"
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
	curl := needCurl(t)
	bin := buildBinaries(t, "tether-ca", "tether-sidecar", "tether")
	a, b := twoPods(t, "perm", 212)
	bundle, token, ca := startCA(t, bin, b, "10.212.0.2:8443")
	serveHTTP(t, b, 8080, "b")
	b.Run(t, filepath.Join(bin, "tether-sidecar"), "init", "--exclude-inbound-ports", "8443")
	sb := startSidecar(t, bin, b, "10.212.0.2:8443", bundle, token("b"), "--inbound-mode", "permissive",
		"--allow", "spiffe://cluster.local/ns/default/sa/a=8080")
	logOnFailure(t, namedProc{"sidecar B", sb}, namedProc{"CA", ca})
	waitFor(t, "sidecar B ready", 20*time.Second, sidecarReady(b, curl))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
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
