package discovery

import (
	"cmp"
	"errors"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// ServiceKey names a service: its namespace and name.
type ServiceKey = wire.ServiceKey

func compareKeys(a, b ServiceKey) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// Port is one port of a service.
type Port struct {
	// Name is optional; if set it is a DNS label unique within the service.
	Name string
	// Port is the service port callers dial (1-65535). Policies name this port.
	Port uint16
	// TargetPort is the port the endpoints listen on; 0 means Port.
	TargetPort uint16
	// AppProtocol is a hint such as "http" or "grpc"; optional.
	AppProtocol string
}

// Endpoint is one backend of a service.
type Endpoint struct {
	Addr netip.Addr
	// Port overrides the service port's target port when not 0. The
	// standalone mesh uses it: each endpoint is a sidecar's inbound listener.
	Port uint16
	// ServiceAccount the workload runs as; with the service's namespace it
	// gives the identity when ID is zero.
	ServiceAccount string
	// Pod is the workload's name, for logs; optional.
	Pod string
	// ID is the workload's explicit identity. When zero, the identity is
	// spiffe://<trust-domain>/ns/<namespace>/sa/<ServiceAccount>.
	ID spiffeid.ID
}

// ErrNoIdentity is returned by Endpoint.Identity for an endpoint with
// neither an ID nor a service account.
var ErrNoIdentity = errors.New("endpoint has neither an identity nor a service account")

// Identity returns the endpoint's SPIFFE ID in trust domain td, for an
// endpoint of a service in namespace.
func (e Endpoint) Identity(td spiffeid.TrustDomain, namespace string) (spiffeid.ID, error) {
	if !e.ID.IsZero() {
		return e.ID, nil
	}
	if e.ServiceAccount == "" {
		return spiffeid.ID{}, ErrNoIdentity
	}
	return wire.WorkloadID(td, namespace, e.ServiceAccount)
}

// Service is a mesh service and its endpoints.
type Service struct {
	Key ServiceKey
	// ClusterIPs are the virtual addresses; none means headless.
	ClusterIPs []netip.Addr
	Ports      []Port
	Endpoints  []Endpoint
	// Remote is zero for a service of this mesh; for a RemoteService, the
	// other mesh's trust domain (its endpoints carry explicit IDs of that
	// domain and their own ports, and ClusterIPs are its virtual
	// addresses).
	Remote spiffeid.TrustDomain
}

// Port returns the service port numbered p.
func (s *Service) Port(p uint16) (Port, bool) {
	for _, sp := range s.Ports {
		if sp.Port == p {
			return sp, true
		}
	}
	return Port{}, false
}

// Identities returns the distinct identities of the service's endpoints in
// trust domain td, sorted. Endpoints without an identity are skipped (a
// Registry never holds one).
func (s *Service) Identities(td spiffeid.TrustDomain) []spiffeid.ID {
	var ids []spiffeid.ID
	for _, e := range s.Endpoints {
		if id, err := e.Identity(td, s.Key.Namespace); err == nil {
			ids = append(ids, id)
		}
	}
	return sortIDs(ids)
}

func sortIDs(ids []spiffeid.ID) []spiffeid.ID {
	slices.SortFunc(ids, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(ids)
}

func (s *Service) clone() Service {
	c := *s
	c.ClusterIPs = slices.Clone(s.ClusterIPs)
	c.Ports = slices.Clone(s.Ports)
	c.Endpoints = slices.Clone(s.Endpoints)
	return c
}

// Namespace is a namespace with an optional default policy override.
type Namespace struct {
	Name string
	// DefaultPolicy is "allow-mesh", "same-namespace", "deny", or empty for
	// the mesh default (the tether.dev/default-policy annotation).
	DefaultPolicy string
	// DefaultPolicyMode is "enforce", "audit", or empty for enforce: the
	// mode of the namespace's default, its own or the mesh default it
	// inherits (the tether.dev/default-policy-mode annotation).
	DefaultPolicyMode string
}

// State is what a source reports: the whole registry, not a delta.
type State struct {
	Services   []Service
	Namespaces []Namespace
	Policies   []policy.AccessPolicy
	// RemoteServices are the services of other meshes declared here.
	RemoteServices []RemoteService
	// Refused are RemoteServices the source left out itself (an object
	// that does not validate, a name a Service of the source's own holds);
	// the Registry adds those it refuses and keeps them all in the
	// Snapshot, so that the refusal is visible.
	Refused []Refusal
}

// RemoteService is a service of another mesh (another SPIFFE trust
// domain) that local workloads call over tether/1 like a service of this
// mesh, with their own identity: the caller's sidecar dials one of its
// endpoints (a sidecar of the other mesh) and requires it to present one
// of the declared identities. The Registry turns it into a Service whose
// Remote is the foreign trust domain, in the same key space as Services.
type RemoteService struct {
	Key ServiceKey
	// TrustDomain is the other mesh's trust domain; never this mesh's.
	TrustDomain spiffeid.TrustDomain
	// Addresses are the virtual addresses callers dial (the sidecars' DNS
	// answers the name with them). None: the Registry allocates one from
	// RemoteAddressRange.
	Addresses []netip.Addr
	Ports     []Port
	// Endpoints are the other mesh's sidecars serving it; at least one.
	Endpoints []RemoteEndpoint
}

// RemoteEndpoint is one sidecar of the other mesh serving a RemoteService.
type RemoteEndpoint struct {
	// Addr and Port are where the other mesh's sidecar accepts tether/1
	// (its inbound listener, or a pass-through load balancer in front).
	Addr netip.Addr
	Port uint16
	// ID is the identity it must present, in the RemoteService's trust
	// domain.
	ID spiffeid.ID
}

// Refusal is a RemoteService left out of the registry, and why.
type Refusal struct {
	Key ServiceKey
	// Cause is the reason of the RemoteService's Accepted=False condition:
	// one of the v1alpha1.RemoteServiceReason constants (NameConflict,
	// AddressConflict, ...).
	Cause string
	// Reason says what it collides with, or what is wrong, and what to do.
	Reason string
}

func (rs *RemoteService) clone() RemoteService {
	c := *rs
	c.Addresses = slices.Clone(rs.Addresses)
	c.Ports = slices.Clone(rs.Ports)
	c.Endpoints = slices.Clone(rs.Endpoints)
	return c
}
