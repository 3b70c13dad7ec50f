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
}
