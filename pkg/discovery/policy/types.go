// Package policy holds Tether's AccessPolicy API (group tether.dev, version
// v1alpha1) and the engine that decides, from the policies and the mesh and
// namespace defaults, whether a workload identity may reach a service.
//
// The CRD that serves these types is manifests/crds/accesspolicies.tether.dev.yaml;
// its OpenAPI schema and Validate check the same things, so a policy read from
// mesh.yaml (which never passes through an API server) is held to the same rules.
package policy

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

const (
	// GroupName is the API group of AccessPolicy.
	GroupName = "tether.dev"
	// Version is the API version of AccessPolicy.
	Version = "v1alpha1"
	// Kind is the kind of an AccessPolicy object.
	Kind = "AccessPolicy"
	// Resource is the plural resource name served by the API server.
	Resource = "accesspolicies"

	// MaxSources and MaxPorts bound the lists of a policy (same limits as the CRD).
	MaxSources = 256
	MaxPorts   = 64
)

var (
	// SchemeGroupVersion is the group and version of the types in this package.
	SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: Version}
	// SchemeGroupVersionResource names the accesspolicies resource, for dynamic clients.
	SchemeGroupVersionResource = SchemeGroupVersion.WithResource(Resource)

	// SchemeBuilder registers AccessPolicy and AccessPolicyList.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &AccessPolicy{}, &AccessPolicyList{})
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}

// AccessPolicy allows a list of sources to reach one Service, in the
// policy's own namespace. Once any AccessPolicy names a service, only what
// the policies naming it allow reaches it.
type AccessPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec AccessPolicySpec `json:"spec"`
}

// AccessPolicySpec is the desired behaviour of an AccessPolicy.
type AccessPolicySpec struct {
	// Destination is the Service (in the policy's namespace) being protected.
	Destination Destination `json:"destination"`
	// Sources lists who may reach the destination; at least one.
	Sources []Source `json:"sources"`
}

// Destination names a Service and, optionally, some of its ports.
type Destination struct {
	// Service is the name of a Service in the policy's namespace.
	Service string `json:"service"`
	// Ports restricts the policy to these ports (1-65535); empty means all.
	Ports []int32 `json:"ports,omitempty"`
}

// Source is exactly one of a service account, a whole namespace, or an
// exact SPIFFE ID.
type Source struct {
	// ServiceAccount matches the workloads running as this service account.
	ServiceAccount *ServiceAccountSource `json:"serviceAccount,omitempty"`
	// Namespace matches every workload of this namespace.
	Namespace string `json:"namespace,omitempty"`
	// SpiffeID matches exactly this SPIFFE ID (spiffe://...).
	SpiffeID string `json:"spiffeID,omitempty"`
}

// ServiceAccountSource names a service account.
type ServiceAccountSource struct {
	// Name of the service account.
	Name string `json:"name"`
	// Namespace of the service account; empty means the policy's namespace.
	Namespace string `json:"namespace,omitempty"`
}

// AccessPolicyList is a list of AccessPolicy objects.
type AccessPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []AccessPolicy `json:"items"`
}

// ErrInvalidPolicy marks every error returned by Validate.
var ErrInvalidPolicy = errors.New("invalid AccessPolicy")

// The same patterns as the CRD schema.
var (
	// DNS-1035 label: Service names.
	serviceRE = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	// DNS-1123 label: namespaces.
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// DNS-1123 subdomain: service account names.
	subdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	// SPIFFE ID: trust domain and path segments in the characters the SPIFFE spec allows.
	spiffeIDRE = regexp.MustCompile(`^spiffe://[a-z0-9._-]+(/[a-zA-Z0-9._-]+)*$`)
)

// Validate checks the policy as the CRD schema does: a name, a valid
// destination service, ports in 1-65535 without repeats, and 1 to
// MaxSources sources each setting exactly one kind. All problems are
// reported, joined; each wraps ErrInvalidPolicy.
func (p *AccessPolicy) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w %s: %s: %s", ErrInvalidPolicy, p.ref(), field, fmt.Sprintf(format, args...)))
	}
	if p.Name == "" {
		bad("metadata.name", "required")
	}
	if p.Namespace != "" && !validName(namespaceRE, p.Namespace, 63) {
		bad("metadata.namespace", "%q is not a valid namespace name", p.Namespace)
	}
	d := p.Spec.Destination
	switch {
	case d.Service == "":
		bad("spec.destination.service", "required")
	case !validName(serviceRE, d.Service, 63):
		bad("spec.destination.service", "%q is not a valid Service name (lower-case DNS label)", d.Service)
	}
	if len(d.Ports) > MaxPorts {
		bad("spec.destination.ports", "%d ports, at most %d allowed", len(d.Ports), MaxPorts)
	}
	seen := make(map[int32]bool, len(d.Ports))
	for i, port := range d.Ports {
		if port < 1 || port > 65535 {
			bad(fmt.Sprintf("spec.destination.ports[%d]", i), "%d is outside 1-65535", port)
		}
		if seen[port] {
			bad(fmt.Sprintf("spec.destination.ports[%d]", i), "port %d is listed twice", port)
		}
		seen[port] = true
	}
	switch n := len(p.Spec.Sources); {
	case n == 0:
		bad("spec.sources", "at least one source is required")
	case n > MaxSources:
		bad("spec.sources", "%d sources, at most %d allowed", n, MaxSources)
	}
	for i, s := range p.Spec.Sources {
		field := fmt.Sprintf("spec.sources[%d]", i)
		kinds := 0
		if s.ServiceAccount != nil {
			kinds++
			switch sa := s.ServiceAccount; {
			case sa.Name == "":
				bad(field+".serviceAccount.name", "required")
			case !validName(subdomainRE, sa.Name, 253):
				bad(field+".serviceAccount.name", "%q is not a valid service account name", sa.Name)
			}
			if ns := s.ServiceAccount.Namespace; ns != "" && !validName(namespaceRE, ns, 63) {
				bad(field+".serviceAccount.namespace", "%q is not a valid namespace name", ns)
			}
		}
		if s.Namespace != "" {
			kinds++
			if !validName(namespaceRE, s.Namespace, 63) {
				bad(field+".namespace", "%q is not a valid namespace name", s.Namespace)
			}
		}
		if s.SpiffeID != "" {
			kinds++
			if !validName(spiffeIDRE, s.SpiffeID, 2048) {
				bad(field+".spiffeID", "%q is not a SPIFFE ID (spiffe://<trust-domain>/<path>)", s.SpiffeID)
			} else if _, err := spiffeid.FromString(s.SpiffeID); err != nil {
				bad(field+".spiffeID", "%q: %v", s.SpiffeID, err)
			}
		}
		if kinds != 1 {
			bad(field, "set exactly one of serviceAccount, namespace or spiffeID (%d set)", kinds)
		}
	}
	return errors.Join(errs...)
}

func validName(re *regexp.Regexp, s string, maxLen int) bool {
	return len(s) <= maxLen && re.MatchString(s)
}

// ref is "namespace/name" for messages.
func (p *AccessPolicy) ref() string {
	if p.Namespace == "" {
		return p.Name
	}
	return p.Namespace + "/" + p.Name
}

// DeepCopyInto copies p into out; out shares no memory with p.
func (p *AccessPolicy) DeepCopyInto(out *AccessPolicy) {
	*out = *p
	out.TypeMeta = p.TypeMeta
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	p.Spec.DeepCopyInto(&out.Spec)
}

// DeepCopy returns a copy of p sharing no memory with it.
func (p *AccessPolicy) DeepCopy() *AccessPolicy {
	if p == nil {
		return nil
	}
	out := new(AccessPolicy)
	p.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (p *AccessPolicy) DeepCopyObject() runtime.Object {
	if c := p.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies s into out; out shares no memory with s.
func (s *AccessPolicySpec) DeepCopyInto(out *AccessPolicySpec) {
	*out = *s
	if s.Destination.Ports != nil {
		out.Destination.Ports = append([]int32(nil), s.Destination.Ports...)
	}
	if s.Sources != nil {
		out.Sources = make([]Source, len(s.Sources))
		for i, src := range s.Sources {
			out.Sources[i] = src
			if src.ServiceAccount != nil {
				sa := *src.ServiceAccount
				out.Sources[i].ServiceAccount = &sa
			}
		}
	}
}

// DeepCopyInto copies l into out; out shares no memory with l.
func (l *AccessPolicyList) DeepCopyInto(out *AccessPolicyList) {
	*out = *l
	out.TypeMeta = l.TypeMeta
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]AccessPolicy, len(l.Items))
		for i := range l.Items {
			l.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a copy of l sharing no memory with it.
func (l *AccessPolicyList) DeepCopy() *AccessPolicyList {
	if l == nil {
		return nil
	}
	out := new(AccessPolicyList)
	l.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *AccessPolicyList) DeepCopyObject() runtime.Object {
	if c := l.DeepCopy(); c != nil {
		return c
	}
	return nil
}

var (
	_ runtime.Object = (*AccessPolicy)(nil)
	_ runtime.Object = (*AccessPolicyList)(nil)
)
