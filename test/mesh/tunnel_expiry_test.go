//go:build linux

package mesh

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPooledTunnelAcrossClientSVIDExpiry: a client sidecar keeps 16 mTLS
// tunnels to a server busy while the SVID the client presented when it
// made them expires (the client has renewed meanwhile; the server's SVID
// of those handshakes is still valid, as the server starts 15s after the
// client). The server refuses a stream on a tunnel whose caller's SVID has
// expired, so the client must stop reusing such tunnels in time, also
// when a stream starts a moment before the expiry and reaches the server
// after it. No call may fail. Static configuration (no discovery), SVIDs
// of one minute.
func TestPooledTunnelAcrossClientSVIDExpiry(t *testing.T) {
	needMesh(t)
	t.Parallel()
	ca := startCA(t)
	app := startApp(t, "api")
	serverIn := loopback(t)
	client := startSidecar(t, ca, nil, sidecarSpec{sa: "web", outbound: []string{serverIn + "@" + workloadID("default", "api").String()}})
	first, err := client.debugIdentity()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(first.NotAfter.Add(-45 * time.Second)))
	startSidecar(t, ca, nil, sidecarSpec{sa: "api", inbound: serverIn, app: app.addr,
		extra: []string{"--allow", workloadID("default", "web").String()}})
	if d, err := client.debugIdentity(); err != nil || d.Serial != first.Serial {
		t.Fatalf("the client renewed its first SVID too early for this test (%v)", err)
	}
	t.Logf("the client's first SVID expires at %s", first.NotAfter.Format(time.TimeOnly))
	// 16 workers make their tunnels now, with the client's first SVID, and
	// keep them busy (the pool reuses them) until 2s after it expired:
	// every 50ms, and as fast as they can in the second around expiry.
	var calls, failed atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for time.Now().Before(first.NotAfter.Add(2 * time.Second)) {
				calls.Add(1)
				if err := call(client.outbound[0], "api"); err != nil && failed.Add(1) <= 5 {
					t.Errorf("call at %s (the client's first SVID expires at %s): %v", time.Now().Format("15:04:05.000"), first.NotAfter.Format(time.TimeOnly), err)
				}
				if d := time.Until(first.NotAfter); d > time.Second || d < -time.Second {
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	hs := metric(client.metrics(t), "tether_sidecar_handshake_duration_seconds_count", `direction="outbound"`)
	t.Logf("%d calls, %d failed; the client made %v handshakes", calls.Load(), failed.Load(), hs)
	if hs < 32 {
		t.Errorf("the client made %v handshakes: it did not replace its 16 tunnels", hs)
	}
}
