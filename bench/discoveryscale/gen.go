package main

import (
	"fmt"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// trustDomain is the benchmark mesh's trust domain.
var trustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")

// Scale is the size of a generated registry.
type Scale struct {
	Services     int // services, spread round-robin over the namespaces
	Namespaces   int
	EndpointsPer int // endpoints per service
	Policies     int // AccessPolicies, each naming its own service
	Clients      int // ADS clients, each the service account of one service
}

// scaled returns s with every count but Clients divided by div (at least 1).
func (s Scale) scaled(div int) Scale {
	d := func(n int) int { return max(1, n/div) }
	return Scale{Services: d(s.Services), Namespaces: d(s.Namespaces), EndpointsPer: s.EndpointsPer,
		Policies: d(s.Policies), Clients: s.Clients}
}

func (s Scale) String() string {
	return fmt.Sprintf("%d services / %d endpoints / %d policies / %d namespaces",
		s.Services, s.Services*s.EndpointsPer, s.Policies, s.Namespaces)
}

// The namespace default mix, by namespace index modulo 10: 6 of 10 keep the
// mesh default (allow-mesh), 3 are same-namespace, 1 is deny.
func nsDefault(i int) string {
	switch i % 10 {
	case 6, 7, 8:
		return policy.SameNamespace.String()
	case 9:
		return policy.Deny.String()
	}
	return ""
}

// Port shapes: a service has 1 to 3 ports (by index modulo 3).
var portSets = [][]discovery.Port{
	{{Name: "http", Port: 80, TargetPort: 8080, AppProtocol: "http"}},
	{{Name: "http", Port: 80, TargetPort: 8080, AppProtocol: "http"}, {Name: "grpc", Port: 9090, AppProtocol: "grpc"}},
	{{Name: "http", Port: 8080}, {Name: "grpc", Port: 9090, AppProtocol: "grpc"}, {Name: "metrics", Port: 9100}},
}

// mesh is a generated registry and the indexes the benchmark needs.
type mesh struct {
	scale    Scale
	state    discovery.State
	svcIndex map[discovery.ServiceKey]int
	policied map[int]bool // services some AccessPolicy names
	clients  []int        // index of the service whose service account each client runs as
}

func nsName(i int) string  { return fmt.Sprintf("team-%03d", i) }
func svcName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// svcNS is the namespace index of service i.
func (m *mesh) svcNS(i int) int { return i % m.scale.Namespaces }

// clusterIP of service i: 10.96.0.0/12.
func clusterIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)})
}

// podIP n: 10.0.0.0/12 upwards from 10.1.0.0.
func podIP(n int) netip.Addr {
	n += 1 << 16
	return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
}

const clientStride = 7919

// generate builds a registry of sc: service i is svc-<i> in namespace
// team-<i mod namespaces>, runs as service account svc-<i>, has 1-3 ports
// and EndpointsPer endpoints. Policies name every (services/policies)-th
// service and let in 1-3 sources: service accounts of other services (in
// the same namespace or another) and whole namespaces. Client j runs as the
// service account of service j*7919 mod services.
func generate(sc Scale) *mesh {
	m := &mesh{scale: sc, svcIndex: map[discovery.ServiceKey]int{}, policied: map[int]bool{}}
	for i := range sc.Namespaces {
		m.state.Namespaces = append(m.state.Namespaces, discovery.Namespace{Name: nsName(i), DefaultPolicy: nsDefault(i)})
	}
	pod := 0
	for i := range sc.Services {
		key := discovery.ServiceKey{Namespace: nsName(m.svcNS(i)), Name: svcName(i)}
		svc := discovery.Service{Key: key, ClusterIPs: []netip.Addr{clusterIP(i)}, Ports: portSets[i%len(portSets)]}
		for range sc.EndpointsPer {
			svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{
				Addr: podIP(pod), ServiceAccount: svcName(i), Pod: fmt.Sprintf("%s-%d", svcName(i), pod),
			})
			pod++
		}
		m.svcIndex[key] = i
		m.state.Services = append(m.state.Services, svc)
	}
	step := max(1, sc.Services/max(1, sc.Policies))
	for k := range min(sc.Policies, sc.Services) {
		dst := k * step
		m.policied[dst] = true
		m.state.Policies = append(m.state.Policies, m.policyFor(k, dst))
	}
	// A stride prime to the service count spreads the clients over the
	// namespaces and gives each its own service (while Clients <= Services).
	for j := range sc.Clients {
		m.clients = append(m.clients, j*clientStride%sc.Services)
	}
	return m
}

// policyFor is policy k, naming service dst: one to three sources, a mix
// of service accounts (callers in the same namespace and in others) and
// namespaces; every fourth one only covers the service's first port.
func (m *mesh) policyFor(k, dst int) policy.AccessPolicy {
	n := m.scale.Services
	ns := nsName(m.svcNS(dst))
	p := policy.AccessPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: policy.SchemeGroupVersion.String(), Kind: policy.Kind},
		ObjectMeta: metav1.ObjectMeta{Name: "allow-" + svcName(dst), Namespace: ns},
		Spec:       policy.AccessPolicySpec{Destination: policy.Destination{Service: svcName(dst)}},
	}
	if k%4 == 3 {
		p.Spec.Destination.Ports = []int32{int32(portSets[dst%len(portSets)][0].Port)}
	}
	// A caller in the same namespace (services i and i+namespaces share one).
	same := (dst + m.scale.Namespaces) % n
	p.Spec.Sources = append(p.Spec.Sources, policy.Source{ServiceAccount: &policy.ServiceAccountSource{Name: svcName(same)}})
	if k%2 == 0 { // a caller from another namespace
		other := (dst + 7*k + 1) % n
		p.Spec.Sources = append(p.Spec.Sources, policy.Source{ServiceAccount: &policy.ServiceAccountSource{
			Name: svcName(other), Namespace: nsName(m.svcNS(other))}})
	}
	if k%3 == 0 { // a whole namespace
		p.Spec.Sources = append(p.Spec.Sources, policy.Source{Namespace: nsName((m.svcNS(dst) + 1 + k) % m.scale.Namespaces)})
	}
	return p
}

// clientID is the SPIFFE ID of client j.
func (m *mesh) clientID(j int) spiffeid.ID {
	id, err := wire.WorkloadID(trustDomain, nsName(m.svcNS(m.clients[j])), svcName(m.clients[j]))
	if err != nil {
		panic(err) // the names are generated valid
	}
	return id
}

// Change kinds.
const (
	changeEndpoint = "endpoint-add"
	changePolicy   = "policy-add"
	changeEdit     = "policy-edit"
)

var changeKinds = []string{changeEndpoint, changePolicy, changeEdit}

// change is one edit of the registry and what the clients should see.
type change struct {
	Kind string
	N    int // n-th change of its kind
	// Type is the xDS type URL that carries it to every client in Expect.
	Type string
	// Marker is a byte string one of that response's resources contains
	// (empty: any new version counts).
	Marker []string
	// Expect lists the clients whose view it changes.
	Expect []int
}

// openServices returns the services every client may reach on every port:
// no AccessPolicy names them and their namespace keeps the mesh default
// (allow-mesh). The changes pick their targets from these.
func (m *mesh) openServices() []int {
	var out []int
	for i := range m.state.Services {
		if !m.policied[i] && nsDefault(m.svcNS(i)) == "" {
			out = append(out, i)
		}
	}
	return out
}

// apply makes change (kind, n) to m.state and describes it. Changes of the
// same kind pick different targets, so each one changes every expected
// client's view.
//
//	endpoint-add  one more endpoint for an open service: every client's
//	              ClusterLoadAssignment of it (EDS)
//	policy-add    a new AccessPolicy on an open service, letting in one
//	              namespace: every client's name table changes (its rule,
//	              or the service becomes unreachable), ECDS
//	policy-edit   an existing AccessPolicy gains a service account source,
//	              one client: only that client's view gains the service
//	              (CDS)
func (m *mesh) apply(kind string, n int) (change, error) {
	open := m.openServices()
	all := make([]int, len(m.clients))
	for j := range all {
		all[j] = j
	}
	switch kind {
	case changeEndpoint:
		i := open[(2*n)%len(open)]
		addr := netip.AddrFrom4([4]byte{10, 15, byte(n >> 8), byte(n)})
		svc := &m.state.Services[i]
		svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Addr: addr, ServiceAccount: svcName(i)})
		return change{Kind: kind, N: n, Type: typeEDS, Marker: []string{addr.String()}, Expect: all}, nil
	case changePolicy:
		i := open[(2*n+1)%len(open)]
		ns := nsName(m.svcNS(i))
		p := policy.AccessPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: policy.SchemeGroupVersion.String(), Kind: policy.Kind},
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-change-%d", n), Namespace: ns},
			Spec: policy.AccessPolicySpec{
				Destination: policy.Destination{Service: svcName(i)},
				Sources:     []policy.Source{{Namespace: ns}},
			},
		}
		m.state.Policies = append(m.state.Policies, p)
		m.policied[i] = true
		// Allowed clients see the new rule; the others see its hidden entry.
		marker := []string{"AccessPolicy " + ns + "/" + p.Name, string(hiddenOf(i, m))}
		return change{Kind: kind, N: n, Type: typeECDS, Marker: marker, Expect: all}, nil
	case changeEdit:
		// Client j gains service account access to a policied service
		// whose policy did not let it in (namespace deny and no source
		// matches, since the policies name other service accounts).
		j := (37*n + 11) % len(m.clients)
		src := m.clients[j]
		for k := range m.state.Policies {
			p := &m.state.Policies[(k+n*13)%len(m.state.Policies)]
			if len(p.Spec.Destination.Ports) > 0 || hasNamespaceSource(p) || namesAccount(p, svcName(src)) {
				continue
			}
			p.Spec.Sources = append(p.Spec.Sources, policy.Source{ServiceAccount: &policy.ServiceAccountSource{
				Name: svcName(src), Namespace: nsName(m.svcNS(src))}})
			return change{Kind: kind, N: n, Type: typeCDS,
				Marker: []string{p.Namespace + "/" + p.Spec.Destination.Service}, Expect: []int{j}}, nil
		}
		return change{}, fmt.Errorf("policy-edit %d: no policy to edit", n)
	}
	return change{}, fmt.Errorf("unknown change kind %q", kind)
}

func namesAccount(p *policy.AccessPolicy, sa string) bool {
	for _, s := range p.Spec.Sources {
		if s.ServiceAccount != nil && s.ServiceAccount.Name == sa {
			return true
		}
	}
	return false
}

func hasNamespaceSource(p *policy.AccessPolicy) bool {
	for _, s := range p.Spec.Sources {
		if s.Namespace != "" {
			return true
		}
	}
	return false
}
