package xdsclient_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/discoverytest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

// TestInboundServicePorts: on random meshes whose services share pods and
// target ports, the service ports a pod's view names for each target port
// (the destination of its flow summary) are the deciders of discovery's
// chains for that pod and port.
func TestInboundServicePorts(t *testing.T) {
	compared := 0
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 3))
		snap := discoverytest.Snapshot(t, testutil.TrustDomain, wire.AllowMesh, discoverytest.RandomPods(r, testutil.TrustDomain))
		for _, svc := range snap.Services() {
			for _, e := range svc.Endpoints {
				id, _ := e.Identity(snap.TrustDomain(), svc.Key.Namespace)
				addrs := []netip.Addr{e.Addr}
				v := viewForPod(t, snap, id, addrs)
				want := map[uint16][]string{}
				for _, c := range discovery.PodChains(snap.InboundChains(id), addrs) {
					for _, d := range c.Deciders {
						want[c.TargetPort] = append(want[c.TargetPort], d.String())
					}
				}
				got := map[uint16][]string{}
				for port, sps := range v.InboundServicePorts() {
					for _, sp := range sps {
						got[port] = append(got[port], fmt.Sprintf("%s:%d", sp.Service, sp.Port))
					}
				}
				for port := range want {
					slices.Sort(want[port])
					want[port] = slices.Compact(want[port])
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("seed %d: pod %s (%s): view names %v, discovery's chains %v", seed, e.Addr, id, got, want)
				}
				compared += len(want)
			}
		}
	}
	if compared == 0 {
		t.Fatal("no pod had a chain: the test compared nothing")
	}
	t.Logf("compared %d pod ports", compared)
}

func viewForPod(t *testing.T, snap *discovery.Snapshot, id spiffeid.ID, addrs []netip.Addr) *xdsclient.View {
	t.Helper()
	v, err := xdsclient.NewViewForPod(id, addrs, resources(t, snap, id))
	if err != nil {
		t.Fatal(err)
	}
	return v
}
