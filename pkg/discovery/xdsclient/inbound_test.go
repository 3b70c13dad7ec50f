package xdsclient_test

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/discoverytest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

// callers are the identities the property test decides: every source the
// mesh knows, and IDs of every shape near them (issue 11 item 6).
func callers(snap *discovery.Snapshot) []spiffeid.ID {
	td := snap.TrustDomain()
	out := snap.Sources()
	for _, p := range []string{
		"/ns/ns0/sa/stranger", "/ns/ns1/sa/stranger", "/ns/ns0/batch/job1", "/ns/ns0/sa/sa0/extra",
		"/ns/ns0/sa", "/ns/ns0", "/ns/ns2/sa/sa0", "/vm/sa0", "/vm/sa0/x", "/vm", "/other", "/ns/ns0/ns/ns1/sa/sa0",
	} {
		out = append(out, spiffeid.RequireFromPath(td, p))
	}
	out = append(out, spiffeid.RequireFromString("spiffe://other.example/ns/ns0/sa/sa0"), spiffeid.RequireFromString("spiffe://other.example/vm/sa0"))
	// Callers of the federated trust domains the random policies name.
	for _, ftd := range discoverytest.ForeignTrustDomains {
		for _, p := range []string{"/ns/ns0/sa/sa0", "/ns/ns1/sa/sa2", "/ns/ns0/sa/stranger", "/vm/sa0"} {
			out = append(out, spiffeid.RequireFromPath(ftd, p))
		}
		out = append(out, ftd.ID())
	}
	return out
}

// Issue 11 item 2, property: on random meshes whose services share pods,
// service accounts and target ports, for every caller, every pod (by its
// address, and one the mesh does not list) and every port (covered by a
// service or not), the sidecar's decision, parsed from what discovery
// sends through a View, is the decision of discovery.Snapshot.Inbound
// (what `tether policy check` answers), audit denials included (half the
// meshes have policies and defaults in audit mode); and the invariant holds: a caller
// an AccessPolicy does not admit to a service port reaches none of the
// service's pods on its target port.
func TestInboundSidecarAgreesWithPolicyCheck(t *testing.T) {
	ports := []uint16{8080, 8081, 9090, 7777}
	checked, denied, audited, foreignAdmitted := 0, 0, 0, 0
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 2))
		def := []wire.Default{wire.AllowMesh, wire.SameNamespace, wire.Deny}[seed%3]
		st := discoverytest.RandomPods(r, testutil.TrustDomain)
		var opts []discovery.RegistryOption
		if seed%2 == 1 { // audit modes: shadow rules, audit denials
			discoverytest.RandomModes(r, &st)
			opts = append(opts, discovery.WithMeshDefaultMode([]policy.Mode{policy.Enforce, policy.Audit}[seed/2%2]))
		}
		snap := discoverytest.Snapshot(t, testutil.TrustDomain, def, st, opts...)
		eng := snap.Engine()
		cs := callers(snap)
		// Every pod of every identity: its address, and an address
		// discovery does not list (a pod that is not ready).
		pods := map[spiffeid.ID]map[netip.Addr]bool{}
		for _, svc := range snap.Services() {
			for _, e := range svc.Endpoints {
				id, _ := e.Identity(snap.TrustDomain(), svc.Key.Namespace)
				if pods[id] == nil {
					pods[id] = map[netip.Addr]bool{netip.MustParseAddr("10.9.9.9"): true}
				}
				pods[id][e.Addr] = true
			}
		}
		for id, addrs := range pods {
			res := resources(t, snap, id)
			for addr := range addrs {
				v, err := xdsclient.NewViewForPod(id, []netip.Addr{addr}, res)
				if err != nil {
					t.Fatalf("seed %d: view of %s at %s: %v", seed, id, addr, err)
				}
				for _, src := range cs {
					// The handshake's check: some port admits a foreign src.
					foreign := !src.MemberOf(snap.TrustDomain())
					if some := slices.ContainsFunc(ports, func(p uint16) bool { return v.Authorize(src, p).Allowed }); v.AdmitsForeign(src) != (foreign && some) {
						t.Fatalf("seed %d: %s -> pod %s (%s): AdmitsForeign %v; foreign %v, allowed on some port %v", seed, src, addr, id, v.AdmitsForeign(src), foreign, some)
					} else if foreign && some {
						foreignAdmitted++
					}
					for _, port := range ports {
						got := v.Authorize(src, port)
						want := snap.Inbound(src, id, []netip.Addr{addr}, port)
						checked++
						if !got.Allowed {
							denied++
						}
						if got.Allowed != want.Allowed {
							t.Fatalf("seed %d: %s -> pod %s (%s) port %d: sidecar allowed %v (%s); policy check %v (%s)",
								seed, src, addr, id, port, got.Allowed, got.Rule, want.Allowed, want.Rule)
						}
						if got.AuditDenied != want.AuditDenied || (got.AuditRule == "") == got.AuditDenied {
							t.Fatalf("seed %d: %s -> pod %s (%s) port %d: sidecar audit-denied %v (%q); policy check %v (%q)",
								seed, src, addr, id, port, got.AuditDenied, got.AuditRule, want.AuditDenied, want.AuditRule)
						}
						if got.AuditDenied {
							audited++
						}
					}
				}
			}
		}
		// The invariant, from the services and the engine alone.
		for _, svc := range snap.Services() {
			if !eng.Restricted(svc.Key.Namespace, svc.Key.Name) {
				continue
			}
			for _, e := range svc.Endpoints {
				id, _ := e.Identity(snap.TrustDomain(), svc.Key.Namespace)
				for _, addr := range []netip.Addr{e.Addr, netip.MustParseAddr("10.9.9.9")} {
					v, err := xdsclient.NewViewForPod(id, []netip.Addr{addr}, resources(t, snap, id))
					if err != nil {
						t.Fatal(err)
					}
					for _, p := range svc.Ports {
						for _, src := range cs {
							if eng.Allowed(src, svc.Key.Namespace, svc.Key.Name, p.Port) {
								continue
							}
							if d := v.Authorize(src, p.TargetPort); d.Allowed {
								t.Fatalf("seed %d: %s may not reach %s:%d, but pod %s (%s) admits it on %d: %s",
									seed, src, svc.Key, p.Port, addr, id, p.TargetPort, d.Rule)
							}
						}
					}
				}
			}
		}
	}
	if denied == 0 || denied == checked || audited == 0 || foreignAdmitted == 0 {
		t.Fatalf("%d decisions, %d denied, %d audit-denied, %d foreign callers admitted by a pod: the meshes do not exercise every outcome",
			checked, denied, audited, foreignAdmitted)
	}
	t.Logf("%d decisions checked, %d denied, %d audit-denied, %d foreign callers admitted by a pod", checked, denied, audited, foreignAdmitted)
}
