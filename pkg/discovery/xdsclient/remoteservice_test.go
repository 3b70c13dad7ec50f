package xdsclient_test

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

// remoteMesh: shop/web may call b.example's shop/pay (a RemoteService
// with an allocated virtual address) on port 443; report may not; the
// mesh default is deny.
const remoteMesh = `
services:
  - name: web
    namespace: shop
    clusterIPs: [10.96.0.10]
    ports: [{port: 80}]
    endpoints: [{address: 10.0.0.1, serviceAccount: web}]
remoteServices:
  - name: pay
    namespace: shop
    trustDomain: b.example
    ports: [{name: https, port: 443, targetPort: 8443}]
    endpoints:
      - {address: 192.0.2.10, port: 15006, identity: spiffe://b.example/ns/pay/sa/api}
      - {address: 192.0.2.11, port: 15006, identity: spiffe://b.example/ns/pay/sa/api}
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: pay-from-web, namespace: shop}
    spec:
      destination: {service: pay}
      sources: [{serviceAccount: {name: web}}]
`

// TestRemoteServiceInView follows a RemoteService from mesh.yaml through
// discovery's resources into the caller's view: the name answers the
// virtual address, the address routes to the service, and Outbound dials
// the other mesh's sidecars expecting exactly the declared identities. A
// caller the policy does not name learns neither the name nor a route,
// and the virtual address is hidden from it.
func TestRemoteServiceInView(t *testing.T) {
	reg, err := discovery.NewRegistry(testutil.TrustDomain, policy.Deny)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := discovery.ParseMeshFile([]byte(remoteMesh))
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(mf.State); err != nil {
		t.Fatal(err)
	}
	snap := reg.Snapshot()
	payKey := wire.ServiceKey{Namespace: "shop", Name: "pay"}
	pay, ok := snap.Service(payKey)
	if !ok || len(pay.ClusterIPs) != 1 {
		t.Fatalf("shop/pay = %+v, %v", pay, ok)
	}
	vip := pay.ClusterIPs[0]
	payID := spiffeid.RequireFromString("spiffe://b.example/ns/pay/sa/api")
	web := testutil.ID("/ns/shop/sa/web")

	v, err := xdsclient.NewViewFor(web, resources(t, snap, web))
	if err != nil {
		t.Fatal(err)
	}
	rec, ok := v.Lookup("pay.shop.svc.cluster.local.")
	if !ok || !rec.Reachable || !slices.Equal(rec.Addrs, []netip.Addr{vip}) {
		t.Fatalf("web's lookup of pay = %+v, %v; want %s", rec, ok, vip)
	}
	if len(rec.Ports) != 1 || rec.Ports[0].Name != "https" || rec.Ports[0].Port != 443 {
		t.Errorf("SRV ports = %+v", rec.Ports)
	}
	svc, port, ok := v.LookupAddr(netip.AddrPortFrom(vip, 443))
	if !ok || svc.Key != payKey || port.Port != 443 || !port.Allowed {
		t.Fatalf("LookupAddr(%s:443) = %v %+v %v", vip, svc.Key, port, ok)
	}
	if _, _, ok := v.LookupAddr(netip.AddrPortFrom(vip, 80)); ok {
		t.Error("the virtual address routes a port the remote service does not have")
	}
	if !slices.Equal(svc.IDs, []spiffeid.ID{payID}) {
		t.Errorf("serving identities = %v, want only the declared %s", svc.IDs, payID)
	}
	seen := map[string]bool{}
	for range 2 {
		d, err := v.Outbound(payKey, 443)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(d.IDs, []spiffeid.ID{payID}) {
			t.Errorf("Outbound IDs = %v", d.IDs)
		}
		// The remote sidecar is dialled at its tether/1 listener; the
		// stream names the app's port, which a transparent (Kubernetes)
		// destination delivers to and authorizes.
		if d.Port != 8443 {
			t.Errorf("Outbound sends port %d to the remote sidecar, want the target port 8443", d.Port)
		}
		seen[d.Addr] = true
	}
	if !seen["192.0.2.10:15006"] || !seen["192.0.2.11:15006"] {
		t.Errorf("Outbound dialled %v, want both remote sidecars' listeners", seen)
	}

	// A caller the policy does not name: nothing but the hidden address.
	report := testutil.ID("/ns/shop/sa/report")
	rv, err := xdsclient.NewViewFor(report, resources(t, snap, report))
	if err != nil {
		t.Fatal(err)
	}
	if rec, ok := rv.Lookup("pay.shop.svc.cluster.local."); ok {
		t.Errorf("report resolves pay: %+v", rec)
	}
	if _, _, ok := rv.LookupAddr(netip.AddrPortFrom(vip, 443)); ok {
		t.Error("report's view routes the virtual address")
	}
	if !rv.HiddenAddr(vip) {
		t.Error("the virtual address is not hidden from report (its sidecar would pass it through)")
	}
	if _, err := rv.Outbound(payKey, 443); !errors.Is(err, xdsclient.ErrUnknownService) {
		t.Errorf("report's Outbound = %v, want ErrUnknownService", err)
	}
}
