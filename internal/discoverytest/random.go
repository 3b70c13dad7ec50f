// Package discoverytest makes random discovery states and changes, for the
// tests that check what is computed incrementally (discovery's per-node
// views, the sidecar's parse memo) against what is computed from scratch.
package discoverytest

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// Size of a RandomState: namespaces ns0..ns3, services s0..s11 (service i
// in namespace i mod 4, run as service account s<i>).
const (
	namespaces = 4
	services   = 12
)

// RandomState is a small mesh with every kind of rule: namespace
// defaults, headless services, one to three ports, zero to three
// endpoints (some on their own port, some with an explicit SPIFFE ID in
// td), and policies with service account, namespace and SPIFFE ID sources
// and port restrictions.
func RandomState(r *rand.Rand, td spiffeid.TrustDomain) discovery.State {
	var st discovery.State
	defaults := []string{"", "", "allow-mesh", "same-namespace", "deny"}
	for n := range namespaces {
		st.Namespaces = append(st.Namespaces, discovery.Namespace{Name: fmt.Sprintf("ns%d", n), DefaultPolicy: defaults[r.IntN(len(defaults))]})
	}
	for i := range services {
		svc := discovery.Service{Key: discovery.ServiceKey{Namespace: fmt.Sprintf("ns%d", i%namespaces), Name: fmt.Sprintf("s%d", i)}}
		if r.IntN(4) > 0 {
			svc.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})}
		}
		for p := range 1 + r.IntN(3) {
			svc.Ports = append(svc.Ports, discovery.Port{Name: fmt.Sprintf("p%d", p), Port: uint16(80 + p), TargetPort: uint16(8080 + p)})
		}
		for e := range r.IntN(4) {
			ep := discovery.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 0, byte(i), byte(e)}), ServiceAccount: fmt.Sprintf("s%d", i)}
			switch r.IntN(5) {
			case 0:
				ep.Port = 15006
			case 1:
				ep.ID = spiffeid.RequireFromPath(td, fmt.Sprintf("/vm/s%d", i))
			}
			svc.Endpoints = append(svc.Endpoints, ep)
		}
		st.Services = append(st.Services, svc)
	}
	for k := range 6 {
		st.Policies = append(st.Policies, RandomPolicy(r, td, k))
	}
	return st
}

// RandomPolicy is a policy named p<k> on one of RandomState's services,
// letting in one or two sources of any kind, sometimes on port 80 only.
func RandomPolicy(r *rand.Rand, td spiffeid.TrustDomain, k int) policy.AccessPolicy {
	return randomPolicy(r, k, services, namespaces, func() policy.Source {
		switch j := r.IntN(services); r.IntN(3) {
		case 0:
			return policy.Source{ServiceAccount: &policy.ServiceAccountSource{Name: fmt.Sprintf("s%d", j), Namespace: fmt.Sprintf("ns%d", j%namespaces)}}
		case 1:
			return policy.Source{Namespace: fmt.Sprintf("ns%d", j%namespaces)}
		default:
			return policy.Source{SpiffeID: spiffeid.RequireFromPath(td, fmt.Sprintf("/vm/s%d", j)).String()}
		}
	})
}

// randomPolicy is a policy named p<k> on one of services s0..s<svcs-1>
// (service i in namespace i mod nss), sometimes on port 80 only, letting
// in one or two sources that source draws.
func randomPolicy(r *rand.Rand, k, svcs, nss int, source func() policy.Source) policy.AccessPolicy {
	i := r.IntN(svcs)
	p := policy.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", k), Namespace: fmt.Sprintf("ns%d", i%nss)},
		Spec:       policy.AccessPolicySpec{Destination: policy.Destination{Service: fmt.Sprintf("s%d", i)}},
	}
	if r.IntN(3) == 0 {
		p.Spec.Destination.Ports = []int32{80}
	}
	for range 1 + r.IntN(2) {
		p.Spec.Sources = append(p.Spec.Sources, source())
	}
	return p
}

// Mutate makes one random change of the kinds a registry sees: an
// endpoint added or removed, a policy added, removed or edited, a
// namespace default changed, a port added, a service removed or added. It
// copies what it changes, so a State taken before (and handed to a
// registry) stays as it was.
func Mutate(r *rand.Rand, td spiffeid.TrustDomain, st *discovery.State) {
	// service returns service i of a copy of the services, to change.
	service := func(i int) *discovery.Service {
		st.Services = slices.Clone(st.Services)
		return &st.Services[i]
	}
	switch r.IntN(8) {
	case 0: // endpoint added
		s := service(r.IntN(len(st.Services)))
		s.Endpoints = append(slices.Clone(s.Endpoints), discovery.Endpoint{
			Addr: netip.AddrFrom4([4]byte{10, 1, byte(r.IntN(256)), byte(r.IntN(256))}), ServiceAccount: s.Key.Name,
		})
	case 1: // endpoint removed
		if s := service(r.IntN(len(st.Services))); len(s.Endpoints) > 0 {
			s.Endpoints = slices.Clone(s.Endpoints[1:])
		}
	case 2: // policy added
		st.Policies = append(slices.Clone(st.Policies), RandomPolicy(r, td, 100+r.IntN(1000)))
	case 3: // policy removed
		if len(st.Policies) > 0 {
			st.Policies = slices.Delete(slices.Clone(st.Policies), 0, 1)
		}
	case 4: // policy edited
		if len(st.Policies) > 0 {
			st.Policies = slices.Clone(st.Policies)
			p := &st.Policies[r.IntN(len(st.Policies))]
			p.Spec.Sources = append(slices.Clone(p.Spec.Sources), policy.Source{Namespace: fmt.Sprintf("ns%d", r.IntN(namespaces))})
		}
	case 5: // namespace default changed
		defaults := []string{"", "allow-mesh", "same-namespace", "deny"}
		st.Namespaces = slices.Clone(st.Namespaces)
		st.Namespaces[r.IntN(len(st.Namespaces))].DefaultPolicy = defaults[r.IntN(len(defaults))]
	case 6: // port added
		if s := service(r.IntN(len(st.Services))); len(s.Ports) < 4 {
			s.Ports = append(slices.Clone(s.Ports), discovery.Port{Port: uint16(90 + len(s.Ports))})
		}
	case 7: // a service removed, or a new one added
		key := discovery.ServiceKey{Namespace: fmt.Sprintf("ns%d", r.IntN(namespaces)), Name: fmt.Sprintf("n%d", r.IntN(100))}
		switch {
		case len(st.Services) > 6 && r.IntN(2) == 0:
			i := r.IntN(len(st.Services))
			st.Services = slices.Delete(slices.Clone(st.Services), i, i+1)
		case !slices.ContainsFunc(st.Services, func(s discovery.Service) bool { return s.Key == key }):
			st.Services = append(slices.Clone(st.Services), discovery.Service{
				Key:       key,
				Ports:     []discovery.Port{{Port: 80}},
				Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddr("10.2.0.1"), ServiceAccount: "new"}},
			})
		}
	}
}

// RandomPods is a mesh whose services share pods, accounts and ports, for
// the inbound property test: pods p0..p11 (10.5.0.<n>, run as one of
// three service accounts of their namespace, or an explicit /vm/ ID),
// services each selecting a random subset of the pods of its namespace
// (so a pod backs zero, one or several services, and services share
// service accounts and target ports), ports whose target ports are drawn
// from 8080, 8081 and 9090 (some ports of a pod are covered by no
// service), some headless services, and policies as RandomPolicy makes
// them, on these services, whose sources also name callers of federated
// trust domains (ForeignTrustDomains: by spiffeID and by trustDomain) and
// the mesh's own trust domain by trustDomain (which matches nothing).
func RandomPods(r *rand.Rand, td spiffeid.TrustDomain) discovery.State {
	const pods, svcs, nss = 12, 10, 2
	var st discovery.State
	defaults := []string{"", "allow-mesh", "same-namespace", "deny"}
	for n := range nss {
		st.Namespaces = append(st.Namespaces, discovery.Namespace{Name: fmt.Sprintf("ns%d", n), DefaultPolicy: defaults[r.IntN(len(defaults))]})
	}
	type pod struct {
		ns string
		ep discovery.Endpoint
	}
	var all []pod
	for p := range pods {
		ns := fmt.Sprintf("ns%d", p%nss)
		ep := discovery.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 5, 0, byte(p)}), ServiceAccount: fmt.Sprintf("sa%d", r.IntN(3)), Pod: fmt.Sprintf("p%d", p)}
		if r.IntN(8) == 0 {
			ep.ID = spiffeid.RequireFromPath(td, fmt.Sprintf("/vm/sa%d", r.IntN(2)))
		}
		all = append(all, pod{ns, ep})
	}
	targets := []uint16{8080, 8081, 9090}
	for i := range svcs {
		ns := fmt.Sprintf("ns%d", i%nss)
		svc := discovery.Service{Key: discovery.ServiceKey{Namespace: ns, Name: fmt.Sprintf("s%d", i)}}
		if r.IntN(3) > 0 {
			svc.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 5, byte(i)})}
		}
		for p := range 1 + r.IntN(3) {
			svc.Ports = append(svc.Ports, discovery.Port{Port: uint16(80 + p), TargetPort: targets[r.IntN(len(targets))]})
		}
		for _, p := range all {
			if p.ns == ns && r.IntN(3) == 0 {
				svc.Endpoints = append(svc.Endpoints, p.ep)
			}
		}
		st.Services = append(st.Services, svc)
	}
	for k := range 5 {
		st.Policies = append(st.Policies, randomPolicy(r, k, svcs, nss, func() policy.Source {
			switch n, a := fmt.Sprintf("ns%d", r.IntN(nss)), fmt.Sprintf("sa%d", r.IntN(3)); r.IntN(5) {
			case 0:
				return policy.Source{ServiceAccount: &policy.ServiceAccountSource{Name: a, Namespace: n}}
			case 1:
				return policy.Source{Namespace: n}
			case 3:
				// A caller of a federated trust domain, by its ID.
				return policy.Source{SpiffeID: spiffeid.RequireFromPath(ForeignTrustDomains[r.IntN(2)], "/ns/"+n+"/sa/"+a).String()}
			case 4:
				// Every caller of a federated trust domain, or (matching
				// nothing) of the mesh's own.
				return policy.Source{TrustDomain: append(ForeignTrustDomains[:2:2], td)[r.IntN(3)].Name()}
			default:
				return policy.Source{SpiffeID: spiffeid.RequireFromPath(td, "/vm/"+a).String()}
			}
		}))
	}
	return st
}

// ForeignTrustDomains are the other trust domains RandomPods' policies
// name (spiffeID and trustDomain sources), and one none names.
var ForeignTrustDomains = []spiffeid.TrustDomain{
	spiffeid.RequireTrustDomainFromString("b.example"),
	spiffeid.RequireTrustDomainFromString("c.example"),
	spiffeid.RequireTrustDomainFromString("d.example"),
}

// RandomModes puts about half of st's policies, and of its namespaces'
// defaults, in audit mode (copying what it changes).
func RandomModes(r *rand.Rand, st *discovery.State) {
	st.Policies = slices.Clone(st.Policies)
	for i := range st.Policies {
		if r.IntN(2) == 0 {
			st.Policies[i].Spec.Mode = policy.Audit
		}
	}
	st.Namespaces = slices.Clone(st.Namespaces)
	for i := range st.Namespaces {
		st.Namespaces[i].DefaultPolicyMode = []string{"", "enforce", "audit", "audit"}[r.IntN(4)]
	}
}

// FlipMode switches the mode of one random policy or namespace default,
// Audit to Enforce or back (copying what it changes).
func FlipMode(r *rand.Rand, st *discovery.State) {
	if len(st.Policies) > 0 && r.IntN(2) == 0 {
		st.Policies = slices.Clone(st.Policies)
		p := &st.Policies[r.IntN(len(st.Policies))]
		if p.Spec.Mode.Audited() {
			p.Spec.Mode = policy.Enforce
		} else {
			p.Spec.Mode = policy.Audit
		}
		return
	}
	st.Namespaces = slices.Clone(st.Namespaces)
	ns := &st.Namespaces[r.IntN(len(st.Namespaces))]
	if ns.DefaultPolicyMode == "audit" {
		ns.DefaultPolicyMode = "enforce"
	} else {
		ns.DefaultPolicyMode = "audit"
	}
}
