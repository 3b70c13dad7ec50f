package xdsclient_test

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

// Issue 11 item 2: payments (AccessPolicy: only frontend) and status (no
// policy, allow-mesh) are backed by different pods running as the same
// service account on the same target port. Today a payments pod admits
// any mesh identity on 8080 (status's chain), though policy check denies.
func TestSecondServiceDoesNotOpenProtectedOne(t *testing.T) {
	payments := wire.ServiceKey{Namespace: "shop", Name: "payments"}
	status := wire.ServiceKey{Namespace: "shop", Name: "status"}
	reg, err := discovery.NewRegistry(testutil.TrustDomain, wire.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(discovery.State{
		Services: []discovery.Service{
			{Key: payments, ClusterIPs: []netip.Addr{ip("10.96.0.1")}, Ports: []discovery.Port{{Port: 80, TargetPort: 8080}},
				Endpoints: []discovery.Endpoint{{Addr: ip("10.1.0.1"), ServiceAccount: "shared"}}},
			{Key: status, ClusterIPs: []netip.Addr{ip("10.96.0.2")}, Ports: []discovery.Port{{Port: 80, TargetPort: 8080}},
				Endpoints: []discovery.Endpoint{{Addr: ip("10.1.0.2"), ServiceAccount: "shared"}, {Addr: ip("10.1.0.3"), ServiceAccount: "shared"}}},
			// A headless service selecting a payments pod and the pod 10.1.0.3.
			{Key: wire.ServiceKey{Namespace: "shop", Name: "peers"}, Ports: []discovery.Port{{Port: 8080}},
				Endpoints: []discovery.Endpoint{{Addr: ip("10.1.0.1"), ServiceAccount: "shared"}, {Addr: ip("10.1.0.3"), ServiceAccount: "shared"}}},
		},
		Policies: []policy.AccessPolicy{allow("shop", "payments-from-frontend", "payments", nil, saSource("frontend"))},
	}); err != nil {
		t.Fatal(err)
	}
	snap := reg.Snapshot()
	shared := testutil.ID("/ns/shop/sa/shared")
	attacker := testutil.ID("/ns/shop/sa/intruder")
	frontend := testutil.ID("/ns/shop/sa/frontend")
	if d := snap.Engine().Decide(attacker, "shop", "payments", 80); d.Allowed {
		t.Fatalf("engine allows the intruder to payments: %+v", d)
	}
	res := resources(t, snap, shared)
	// Without its address, a sidecar of shared holds every pod of
	// shared to payments' rule (fail closed).
	v, err := xdsclient.NewViewFor(shared, res)
	if err != nil {
		t.Fatal(err)
	}
	if d := v.Authorize(attacker, 8080); d.Allowed {
		t.Errorf("a payments pod admits %s on 8080 (%s), but only frontend may reach payments", attacker, d.Rule)
	}
	if d := v.Authorize(frontend, 8080); !d.Allowed {
		t.Errorf("frontend denied: %s", d.Rule)
	}
	for _, tc := range []struct {
		pod              string
		attacker, friend bool
	}{
		{"10.1.0.1", false, true}, // payments (and the headless peers): only frontend
		{"10.1.0.2", true, true},  // status only: allow-mesh
		{"10.1.0.3", true, true},  // status and peers: neither restricted
		{"10.1.0.9", false, true}, // not an endpoint (not ready): every pod of shared at once
	} {
		v, err := xdsclient.NewViewForPod(shared, []netip.Addr{ip(tc.pod)}, res)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			src  spiffeid.ID
			want bool
		}{{attacker, tc.attacker}, {frontend, tc.friend}} {
			got := v.Authorize(c.src, 8080)
			check := snap.Inbound(c.src, shared, []netip.Addr{ip(tc.pod)}, 8080)
			if got.Allowed != c.want || check.Allowed != c.want {
				t.Errorf("pod %s, %s on 8080: sidecar %v (%s), policy check %v (%s); want %v", tc.pod, c.src, got.Allowed, got.Rule, check.Allowed, check.Rule, c.want)
			}
		}
	}
}

// Issue 11 item 6: what a namespace-wide allow admits on the sidecar is
// exactly what the engine admits, for every ID shape.
func TestNamespaceRuleAdmitsExactlyWhatEngineDoes(t *testing.T) {
	reg := shopRegistry(t)
	snap := reg.Snapshot()
	v, err := xdsclient.NewViewFor(dbID, resources(t, snap, dbID))
	if err != nil {
		t.Fatal(err)
	}
	td := testutil.TrustDomain
	// shop/db admits sa api and every workload of namespace batch.
	for _, path := range []string{
		"/ns/batch/sa/job", "/ns/batch/sa/job.v2", "/ns/batch/batch/job1", "/ns/batch/sa/job/extra",
		"/ns/batch/sa/job/sa/x", "/ns/batch", "/ns/batch/sa", "/ns/batch/x", "/ns/batchx/sa/job",
		"/ns/batch/sa/a%2Fb", "/ns/batch/sa/j_o-b", "/ns/batch/ns/batch/sa/job", "/x/ns/batch/sa/job",
		"/ns/shop/sa/api", "/ns/shop/sa/api/x", "/ns/shop/sa/apix",
	} {
		id, err := spiffeid.FromPath(td, path)
		if err != nil {
			continue // not a SPIFFE ID: no SVID can carry it
		}
		want := snap.Engine().Decide(id, "shop", "db", 5432)
		if got := v.Authorize(id, 5432); got.Allowed != want.Allowed {
			t.Errorf("%s: sidecar allowed %v (%s), engine %v (%s)", id, got.Allowed, got.Rule, want.Allowed, want.Rule)
		}
	}
	other := spiffeid.RequireFromString("spiffe://other.example/ns/batch/sa/job")
	if got := v.Authorize(other, 5432); got.Allowed {
		t.Errorf("%s from another trust domain admitted: %s", other, got.Rule)
	}
}
