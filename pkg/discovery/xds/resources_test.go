package xds_test

import (
	"net/netip"
	"slices"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
)

// Defaults that let in whole namespaces or the mesh become URI prefixes.
func TestBuildResourcesDefaultsAsPrefixes(t *testing.T) {
	td := "spiffe://" + testutil.TrustDomain.Name()
	tests := []struct {
		name, nsDefault string
		want            []string
	}{
		{"allow-mesh", "allow-mesh", []string{"prefix:" + td + "/"}},
		{"same-namespace", "same-namespace", []string{"prefix:" + td + "/ns/shop/"}},
		{"deny", "deny", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg, err := discovery.NewRegistry(testutil.TrustDomain, policy.Deny)
			if err != nil {
				t.Fatal(err)
			}
			err = reg.Update(discovery.State{
				Namespaces: []discovery.Namespace{{Name: "shop", DefaultPolicy: tt.nsDefault}},
				Services: []discovery.Service{
					{
						Key:       discovery.ServiceKey{Namespace: "shop", Name: "cart"},
						Ports:     []discovery.Port{{Port: 80}},
						Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddr("10.1.0.1"), ServiceAccount: "cart"}},
					},
					{
						Key:       discovery.ServiceKey{Namespace: "other", Name: "client"},
						Ports:     []discovery.Port{{Port: 80}},
						Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddr("10.1.0.2"), ServiceAccount: "client"}},
					},
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			res, err := xds.BuildResources(reg.Snapshot(), testutil.ID("/ns/shop/sa/cart"))
			if err != nil {
				t.Fatal(err)
			}
			ls := res[resource.ListenerType]
			if len(ls) != 1 {
				t.Fatalf("got %d listeners, want 1", len(ls))
			}
			if got := principals(t, ls[0].(*listenerv3.Listener)); !slices.Equal(got, tt.want) {
				t.Errorf("principals = %v, want %v", got, tt.want)
			}
		})
	}
}
