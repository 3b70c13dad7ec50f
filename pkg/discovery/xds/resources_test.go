package xds_test

import (
	"encoding/hex"
	"net/netip"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
)

// Defaults that let in the mesh become a trust domain prefix; those that
// let in a namespace, a regex for its workload IDs only (issue 11 item 6).
func TestBuildResourcesDefaultsAsPrefixes(t *testing.T) {
	td := "spiffe://" + testutil.TrustDomain.Name()
	tests := []struct {
		name, nsDefault string
		want            []string
	}{
		{"allow-mesh", "allow-mesh", []string{"prefix:" + td + "/"}},
		{"same-namespace", "same-namespace", []string{`regex:spiffe://cluster\.local/ns/shop/sa/[^/]+`}},
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
			res, err := xds.BuildResources(reg.Snapshot(), testutil.ID("/ns/shop/sa/cart"), "")
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

// The name table lists what the caller may reach with per-port decisions,
// and of the services it may not reach only keyed ids and addresses.
func TestBuildResourcesNameTable(t *testing.T) {
	reg, err := discovery.NewRegistry(testutil.TrustDomain, policy.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	err = reg.Update(discovery.State{
		Namespaces: []discovery.Namespace{{Name: "vault", DefaultPolicy: "deny"}},
		Services: []discovery.Service{
			{
				Key:        discovery.ServiceKey{Namespace: "shop", Name: "cart"},
				ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
				Ports:      []discovery.Port{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "admin", Port: 9000, TargetPort: 9000}},
				Endpoints:  []discovery.Endpoint{{Addr: netip.MustParseAddr("10.1.0.1"), ServiceAccount: "cart"}},
			},
			{
				Key:       discovery.ServiceKey{Namespace: "vault", Name: "secrets"},
				Ports:     []discovery.Port{{Port: 443, TargetPort: 8443}},
				Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddr("10.1.0.9"), ServiceAccount: "secrets"}},
			},
		},
		Policies: []policy.AccessPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-http"},
			Spec: policy.AccessPolicySpec{
				Destination: policy.Destination{Service: "cart", Ports: []int32{80}},
				Sources:     []policy.Source{{ServiceAccount: &policy.ServiceAccountSource{Name: "web"}}},
			},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	web := testutil.ID("/ns/shop/sa/web")
	res, err := xds.BuildResources(reg.Snapshot(), web, "Example.org.")
	if err != nil {
		t.Fatal(err)
	}
	ecs := res[resource.ExtensionConfigType]
	var names []string
	for _, r := range ecs {
		names = append(names, r.(*corev3.TypedExtensionConfig).Name)
	}
	secrets := wire.NameHiddenPrefix + hex.EncodeToString(xds.HiddenID(discovery.ServiceKey{Namespace: "vault", Name: "secrets"}))
	if want := []string{wire.NameGlobalsName, secrets, wire.NameServicePrefix + "shop/cart"}; !slices.Equal(names, want) {
		t.Fatalf("extension configs %q, want %q", names, want)
	}
	merged, err := wire.MergeNameTables(ecs)
	if err != nil {
		t.Fatal(err)
	}
	nt := merged
	if nt.ClusterDomain != "Example.org" || nt.InboundDefault != "allow-mesh" {
		t.Errorf("cluster domain %q, inbound default %q", nt.ClusterDomain, nt.InboundDefault)
	}
	if len(nt.Services) != 1 {
		t.Fatalf("services = %v, want only shop/cart", nt.Services)
	}
	s := nt.Services[0]
	if s.Fqdn != "cart.shop.svc.example.org." || !slices.Equal(s.Addresses, []string{"10.96.0.10"}) {
		t.Errorf("service %s: fqdn %q addresses %v", s.Name, s.Fqdn, s.Addresses)
	}
	if len(s.Ports) != 2 || !s.Ports[0].Allowed || s.Ports[0].Rule != "AccessPolicy shop/cart-http" ||
		s.Ports[0].TargetPort != 8080 || s.Ports[1].Allowed {
		t.Errorf("ports = %v, want 80 allowed by shop/cart-http and 9000 denied", s.Ports)
	}
	if want := []string{"10.1.0.9"}; !slices.Equal(nt.UnreachableAddresses, want) { // headless: its endpoints
		t.Errorf("unreachable addresses = %q, want %q", nt.UnreachableAddresses, want)
	}
	// The vault workload's own namespace denies by default.
	res, err = xds.BuildResources(reg.Snapshot(), testutil.ID("/ns/vault/sa/secrets"), "")
	if err != nil {
		t.Fatal(err)
	}
	if nt, err = wire.MergeNameTables(res[resource.ExtensionConfigType]); err != nil {
		t.Fatal(err)
	}
	if nt.InboundDefault != "deny" || nt.ClusterDomain != "cluster.local" {
		t.Errorf("vault: inbound default %q, cluster domain %q", nt.InboundDefault, nt.ClusterDomain)
	}
}
