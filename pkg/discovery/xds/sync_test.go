package xds_test

import (
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-mesh/tether/internal/testutil"
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

// attackStreams opens n delta streams as id over conns connections; each
// sends its first request and never answers. It returns once discovery
// has seen every first request (each holds a slot or waits for one).
func attackStreams(t *testing.T, m *mesh, srv *xds.Server, id spiffeid.ID, conns, n int) {
	t.Helper()
	for i := range conns {
		conn, ctx, _ := m.dial(id)
		for range n / conns {
			st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			err = st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: id.String()}, TypeUrl: resource.ClusterType})
			if err != nil {
				t.Fatal(err)
			}
			// Read nothing, answer nothing: the stream's window and the
			// slot stay taken.
		}
	}
	testutil.Eventually(t, "every attacking stream to ask", 30*time.Second, func() bool {
		syncing, waiting := srv.SyncStats()
		return syncing+waiting >= n
	})
}

// The attack of issue 11 item 11: one mesh identity holds a few hundred
// ADS streams that never ACK. A new sidecar of another identity still
// gets its first view in under a second, with the default limits.
func TestOneIdentityCannotStarveFirstSyncs(t *testing.T) {
	var srv *xds.Server
	m := newMesh(t, func(s *xds.Server) { srv = s })
	attacker := testutil.ID("/ns/default/sa/attacker")
	attackStreams(t, m, srv, attacker, 3, 300)
	syncing, waiting := srv.SyncStats()
	t.Logf("attacker: %d streams syncing, %d waiting", syncing, waiting)

	start := time.Now()
	api := m.connectDelta(apiID)
	r := firstSync(api, 5*time.Second)
	took := time.Since(start)
	if r == nil {
		t.Fatalf("api got no first view within 5s while %s held %d streams", attacker, 300)
	}
	if took >= time.Second {
		t.Fatalf("api's first view took %s, want under 1s", took)
	}
	t.Logf("api's first view after %s", took)
}

// The streams of one identity are capped: the one over the limit is
// refused with ResourceExhausted and counted; another identity is not
// affected, and a freed place can be taken again.
func TestStreamsPerIdentityCap(t *testing.T) {
	var srv *xds.Server
	m := newMesh(t, func(s *xds.Server) { srv = s; s.MaxStreamsPerIdentity = 3 })
	var webs []*deltaClient
	for range 3 {
		c := m.connectDelta(webID)
		if firstSync(c, 2*time.Second) == nil {
			t.Fatal("web: no first response within the limit")
		}
		webs = append(webs, c)
	}
	over := m.connectDelta(webID)
	// (The stream is refused as it opens: the request may find it closed.)
	_ = over.stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: over.node, TypeUrl: resource.ClusterType})
	err := streamEnd(over, 2*time.Second)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "max-streams-per-identity") {
		t.Fatalf("4th stream of web ended with %v, want ResourceExhausted naming the limit", err)
	}
	if got := srv.StreamsOverLimit(); got != 1 {
		t.Errorf("StreamsOverLimit = %d, want 1", got)
	}
	if firstSync(m.connectDelta(apiID), 2*time.Second) == nil {
		t.Error("api refused while web is at its limit")
	}
	webs[0].close()
	testutil.Eventually(t, "a new web stream to be served after one closed", 5*time.Second, func() bool {
		c := m.connectDelta(webID)
		defer c.close()
		return firstSync(c, time.Second) != nil
	})
}
