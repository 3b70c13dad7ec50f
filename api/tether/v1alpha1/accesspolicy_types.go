package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MaxSources and MaxPorts bound the lists of a policy; the CRD's maxItems
// markers below say the same.
const (
	MaxSources = 256
	MaxPorts   = 64
)

// AccessPolicy allows a list of sources to reach one Service in the policy's
// namespace. Once any AccessPolicy names a Service, only what the policies
// naming it allow reaches it.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced,shortName=ap,categories=tether
// +kubebuilder:printcolumn:name="Service",type=string,JSONPath=".spec.destination.service",description="The destination Service, in the policy's namespace."
// +kubebuilder:printcolumn:name="Ports",type=string,JSONPath=".spec.destination.ports",description="The destination ports (empty means all)."
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=".spec.mode",description="Enforce, or Audit: only log and count what the policy would deny."
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type AccessPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says which Service is protected and who may reach it.
	Spec AccessPolicySpec `json:"spec"`
}

// AccessPolicySpec is the desired behaviour of an AccessPolicy.
type AccessPolicySpec struct {
	// Destination is the Service being protected, optionally only some of
	// its ports.
	Destination Destination `json:"destination"`
	// Sources lists who may reach the destination; each item sets exactly
	// one kind.
	//
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	Sources []Source `json:"sources"`
	// Mode is Enforce (the default): the policy decides who reaches the
	// destination; or Audit: the policy decides nothing, and the
	// connections it would deny (while the enforcing policies and defaults
	// allow them) pass and are logged and counted as "audit-deny".
	//
	// +optional
	// +kubebuilder:default=Enforce
	// +kubebuilder:validation:Enum=Enforce;Audit
	Mode PolicyMode `json:"mode,omitempty"`
}

// PolicyMode says whether an AccessPolicy is enforced or only audited.
type PolicyMode string

// The policy modes. An empty mode (a mesh.yaml policy that does not set
// it) means Enforce.
const (
	// Enforce: the policy decides.
	Enforce PolicyMode = "Enforce"
	// Audit: the policy decides nothing; what it would deny is logged.
	Audit PolicyMode = "Audit"
)

// Audited reports whether m is Audit.
func (m PolicyMode) Audited() bool { return m == Audit }

// Destination names a Service and, optionally, some of its ports.
type Destination struct {
	// Service is the name of a Service in the policy's namespace.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Service string `json:"service"`
	// Ports are the ports (1-65535) this policy covers; empty or absent
	// means all.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	// +listType=set
	Ports []int32 `json:"ports,omitempty"`
}

// Source is exactly one of a service account, a whole namespace, an exact
// SPIFFE ID, or a whole trust domain. serviceAccount and namespace are of
// the mesh's own trust domain; a caller of another (federated) trust
// domain is matched only by spiffeID or trustDomain.
//
// +kubebuilder:validation:XValidation:rule="[has(self.serviceAccount), has(self.__namespace__), has(self.spiffeID), has(self.trustDomain)].filter(x, x).size() == 1",message="set exactly one of serviceAccount, namespace, spiffeID or trustDomain"
type Source struct {
	// ServiceAccount matches the workloads running as this service account,
	// in the policy's namespace unless its namespace is set.
	//
	// +optional
	ServiceAccount *ServiceAccountSource `json:"serviceAccount,omitempty"`
	// Namespace matches every workload of this namespace.
	//
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
	// SpiffeID matches exactly this SPIFFE ID (spiffe://<trust-domain>/<path>).
	//
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^spiffe://[a-z0-9._-]+(/[a-zA-Z0-9._-]+)*$`
	SpiffeID string `json:"spiffeID,omitempty"`
	// TrustDomain matches every workload of this trust domain, e.g.
	// b.example: for callers of a federated trust domain. It never matches
	// the mesh's own trust domain (use namespace or serviceAccount sources,
	// or the defaults, for the mesh's own workloads).
	//
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[a-z0-9._-]+$`
	TrustDomain string `json:"trustDomain,omitempty"`
}

// ServiceAccountSource names a service account.
type ServiceAccountSource struct {
	// Name of the service account.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
	// Namespace of the service account; empty means the policy's namespace.
	//
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`
}

// AccessPolicyList is a list of AccessPolicy objects.
//
// +kubebuilder:object:root=true
type AccessPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	// Items are the policies.
	Items []AccessPolicy `json:"items"`
}
