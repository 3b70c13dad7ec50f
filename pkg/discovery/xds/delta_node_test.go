package xds_test

import (
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// streamEnd waits for c's stream to end and returns why; nil if it is
// still open after timeout. Responses still arriving are skipped.
func streamEnd(c *deltaClient, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-c.resps:
			if !ok {
				return c.end
			}
		case <-deadline:
			return nil
		}
	}
}

// Envoy (set_node_on_first_message_only) sends node on a delta stream's
// first request only: its ACKs and later subscriptions carry none, and
// mean the stream's node. They are ACKed and the stream gets updates.
func TestDeltaNodeOnFirstRequestOnly(t *testing.T) {
	m := newMesh(t)
	api := m.connectDelta(apiID)
	api.nodeOnce = true
	held := api.subscribe() // one request with node, then ACKs without
	if got := held[resource.ClusterType]; !slices.Equal(got, []string{"default/db"}) {
		t.Fatalf("api's clusters = %v, want default/db", got)
	}
	if err := m.reg.Update(meshState("10.0.0.9")); err != nil {
		t.Fatal(err)
	}
	r := api.recv(2 * time.Second)
	if r == nil {
		t.Fatalf("api got no update after ACKing without node (stream ended: %v)", api.end)
	}
	if r.TypeUrl != resource.EndpointType || !slices.Equal(deltaNames(r), []string{"default/db"}) {
		t.Fatalf("api got %s %v, want EDS default/db", r.TypeUrl, deltaNames(r))
	}
	api.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	if err := streamEnd(api, 300*time.Millisecond); err != nil {
		t.Fatalf("stream ended after an ACK without node: %v", err)
	}
}

// A missing node is the stream's node, never another: the first request
// must name the caller, and a later request that names another identity
// is still refused.
func TestDeltaNodeStillChecked(t *testing.T) {
	m := newMesh(t)
	t.Run("first request without node", func(t *testing.T) {
		c := m.connectDelta(webID)
		c.node = nil
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType})
		if err := streamEnd(c, 2*time.Second); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stream end = %v, want PermissionDenied", err)
		}
	})
	t.Run("later request for another identity", func(t *testing.T) {
		c := m.connectDelta(webID)
		c.subscribe()
		c.node = &corev3.Node{Id: apiID.String()}
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResourceNamesSubscribe: []string{"default/db"}})
		if err := streamEnd(c, 2*time.Second); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stream end = %v, want PermissionDenied", err)
		}
	})
}
