package xds_test

import (
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/tether-mesh/tether/pkg/discovery/xds"
)

// firstSync subscribes c to clusters and returns the response, not ACKed.
func firstSync(c *deltaClient, timeout time.Duration) *discoveryv3.DeltaDiscoveryResponse {
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType})
	return c.recv(timeout)
}

// With one sync slot, a second stream is served only once the first has
// answered everything it was sent, or has ended.
func TestFirstSyncsWaitForASlot(t *testing.T) {
	m := newMesh(t, func(s *xds.Server) { s.MaxConcurrentSyncs = 1; s.SyncSlotTimeout = time.Minute })
	web := m.connectDelta(webID)
	r := firstSync(web, 2*time.Second)
	if r == nil {
		t.Fatal("web: no first response")
	}
	api := m.connectDelta(apiID)
	if got := firstSync(api, 300*time.Millisecond); got != nil {
		t.Fatalf("api was served (%s) while web held the only slot", got.TypeUrl)
	}
	// web subscribes to one more type: the slot stays held until that
	// response is answered too.
	web.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	web.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType})
	// (web's ACK may free the slot before the listener request arrives;
	// then api is served now, which is also correct.)
	if l := web.recv(2 * time.Second); l == nil {
		t.Fatal("web: no listener response")
	} else {
		web.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: l.TypeUrl, ResponseNonce: l.Nonce})
	}
	if got := api.recv(2 * time.Second); got == nil || got.TypeUrl != resource.ClusterType {
		t.Fatalf("api: got %v after web answered everything, want its clusters", got)
	}
	// api does not answer; db waits until api's stream ends.
	db := m.connectDelta(dbID)
	if got := firstSync(db, 300*time.Millisecond); got != nil {
		t.Fatalf("db was served while api held the only slot")
	}
	api.close()
	if got := db.recv(2 * time.Second); got == nil || got.TypeUrl != resource.ClusterType {
		t.Fatalf("db: got %v after api's stream ended, want its clusters", got)
	}
}

// A client that never answers holds its slot only for SyncSlotTimeout.
func TestSyncSlotTimesOut(t *testing.T) {
	m := newMesh(t, func(s *xds.Server) { s.MaxConcurrentSyncs = 1; s.SyncSlotTimeout = 200 * time.Millisecond })
	web := m.connectDelta(webID)
	if firstSync(web, 2*time.Second) == nil {
		t.Fatal("web: no first response")
	}
	start := time.Now()
	api := m.connectDelta(apiID)
	if got := firstSync(api, 3*time.Second); got == nil {
		t.Fatal("api was not served after web's slot timed out")
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("api was served after %s, before web's slot could time out", d)
	}
}
