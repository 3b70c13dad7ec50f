package discovery_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/discoverytest"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// An identity's pods are grouped by target port and deciders: the
// restricting Services' ports where one selects the pod, else every
// Service's; other identities' pods are left out.
func TestInboundChains(t *testing.T) {
	mf, err := discovery.ParseMeshFile([]byte(discoverytest.SharedPodsMesh))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	snap := discoverytest.Snapshot(t, td, policy.AllowMesh, mf.State)
	shared := spiffeid.RequireFromPath(td, "/ns/default/sa/shared")
	var got []string
	for _, c := range snap.InboundChains(shared) {
		var addrs []string
		for _, a := range c.Addrs {
			addrs = append(addrs, a.String())
		}
		got = append(got, c.Name()+" @"+strings.Join(addrs, ","))
	}
	want := []string{
		"8080|default/all:8080,default/status:80 @10.0.1.2",
		"8080|default/payments:80 @10.0.1.1",
		"8080|default/status:80 @10.0.1.3",
		"8081|default/status:81 @10.0.1.2,10.0.1.3",
	}
	if !slices.Equal(got, want) {
		t.Errorf("chains:\n got %q\nwant %q", got, want)
	}
	chains := snap.InboundChains(shared)
	if n := len(discovery.PodChains(chains, []netip.Addr{netip.MustParseAddr("10.0.1.1")})); n != 1 {
		t.Errorf("pod 10.0.1.1 has %d chains, want 1", n)
	}
	if n := len(discovery.PodChains(chains, []netip.Addr{netip.MustParseAddr("10.0.9.9")})); n != len(chains) {
		t.Errorf("an unlisted pod has %d chains, want all %d", n, len(chains))
	}
	intruder := spiffeid.RequireFromPath(td, "/ns/default/sa/intruder")
	for _, tc := range []struct {
		pod     string
		port    uint16
		allowed bool
		rule    string
	}{
		{"10.0.1.1", 8080, false, "pod port 8080 is default/payments's port 80: no AccessPolicy allows"},
		{"10.0.1.2", 8080, true, "mesh default allow-mesh"},
		{"10.0.1.1", 8081, true, "no Service covers port 8081: mesh default allow-mesh"},
		{"10.0.9.9", 8080, false, "default/payments"},
	} {
		d := snap.Inbound(intruder, shared, []netip.Addr{netip.MustParseAddr(tc.pod)}, tc.port)
		if d.Allowed != tc.allowed || !strings.Contains(d.Rule, tc.rule) {
			t.Errorf("intruder → %s:%d = %+v, want allowed %v saying %q", tc.pod, tc.port, d, tc.allowed, tc.rule)
		}
	}
}
