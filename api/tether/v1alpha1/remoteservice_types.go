package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RemoteServiceResource is the plural of RemoteService.
const RemoteServiceResource = "remoteservices"

// RemoteServiceGVR names the remoteservices resource, for dynamic clients.
var RemoteServiceGVR = SchemeGroupVersion.WithResource(RemoteServiceResource)

// The bounds of a RemoteService's lists; the CRD's maxItems markers below
// say the same.
const (
	MaxRemotePorts     = 64
	MaxRemoteEndpoints = 256
	MaxRemoteAddresses = 8
)

// RemoteService declares a service of another mesh (another SPIFFE trust
// domain): local workloads call <name>.<namespace>.svc.<cluster domain>
// like a Service of this mesh, and their sidecars carry each call over
// tether/1 straight to one of its endpoints (a sidecar of the other mesh),
// with the caller's own SVID, requiring the endpoint to present the
// identity declared for it. AccessPolicies whose destination names it
// decide which local workloads may call it, as for a Service; the other
// mesh decides by its own policies whom it lets in. A RemoteService named
// like a Service of its namespace is not served (the Service keeps the
// name; tether-discovery says so in the object's status).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=rsvc,categories=tether
// +kubebuilder:printcolumn:name="Trust Domain",type=string,JSONPath=".spec.trustDomain",description="The other mesh's trust domain."
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`,description="Whether tether-discovery serves it."
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`,description="Why (NameConflict, AddressConflict, ...)."
// +kubebuilder:printcolumn:name="Addresses",type=string,JSONPath=".status.addresses",description="The virtual addresses callers reach it at: declared, or allocated from 240.240.0.0/16."
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type RemoteService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says which mesh serves it, where, and as whom.
	Spec RemoteServiceSpec `json:"spec"`
	// Status is written by tether-discovery through the status
	// subresource; nothing reads it back as input.
	//
	// +optional
	Status RemoteServiceStatus `json:"status,omitempty"`
}

// The condition tether-discovery writes on a RemoteService, and its reasons.
const (
	// RemoteServiceAccepted is the condition type: True when discovery
	// serves the object, False (with one of the reasons below) when it
	// leaves it out.
	RemoteServiceAccepted = "Accepted"
	// RemoteServiceReasonAccepted: served, at Status.Addresses.
	RemoteServiceReasonAccepted = "Accepted"
	// RemoteServiceReasonNameConflict: a Service of its namespace has the
	// name; the Service keeps it.
	RemoteServiceReasonNameConflict = "NameConflict"
	// RemoteServiceReasonAddressConflict: a declared address is a
	// ClusterIP, an endpoint address of a service of the mesh, or another
	// remote service's address.
	RemoteServiceReasonAddressConflict = "AddressConflict"
	// RemoteServiceReasonEndpointConflict: an endpoint is another
	// service's endpoint.
	RemoteServiceReasonEndpointConflict = "EndpointConflict"
	// RemoteServiceReasonAddressRangeFull: no address to allocate is left
	// in 240.240.0.0/16.
	RemoteServiceReasonAddressRangeFull = "AddressRangeFull"
	// RemoteServiceReasonInvalid: the object does not decode or validate
	// (e.g. its trust domain is this mesh's own, which the CRD cannot
	// know).
	RemoteServiceReasonInvalid = "Invalid"
)

// RemoteServiceStatus is what tether-discovery made of a RemoteService.
type RemoteServiceStatus struct {
	// ObservedGeneration is the metadata.generation the status is about.
	//
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Addresses are the virtual addresses callers reach it at while it is
	// accepted: the declared ones, or the one allocated.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	Addresses []string `json:"addresses,omitempty"`
	// Conditions holds Accepted.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// RemoteServiceSpec is a service of another mesh.
//
// +kubebuilder:validation:XValidation:rule="self.endpoints.all(e, e.identity.startsWith('spiffe://' + self.trustDomain + '/'))",message="every endpoint's identity must be a SPIFFE ID in spec.trustDomain (spiffe://<trustDomain>/...)"
// +kubebuilder:validation:XValidation:rule="self.ports.all(p, !has(p.name) || self.ports.exists_one(q, has(q.name) && q.name == p.name))",message="port names must be unique"
type RemoteServiceSpec struct {
	// TrustDomain is the other mesh's SPIFFE trust domain, e.g. b.example:
	// a domain federated with this one (TrustDomainFederation), never this
	// mesh's own.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[a-z0-9._-]+$`
	TrustDomain string `json:"trustDomain"`
	// Addresses are the virtual IPs local callers reach it at (their
	// sidecars' DNS answers the name with them). Empty: tether-discovery
	// allocates one from 240.240.0.0/16. An address another service of
	// the mesh has is refused.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=45
	// +kubebuilder:validation:items:XValidation:rule="isIP(self) && ip(self).isGlobalUnicast()",message="must be a unicast IP address (not loopback, link-local, multicast or unspecified)"
	// +listType=set
	Addresses []string `json:"addresses,omitempty"`
	// Ports are the ports callers dial; AccessPolicies name them.
	//
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +listType=map
	// +listMapKey=port
	Ports []RemoteServicePort `json:"ports"`
	// Endpoints are the other mesh's sidecars that serve it.
	//
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +listType=atomic
	Endpoints []RemoteEndpoint `json:"endpoints"`
}

// RemoteServicePort is one port of a RemoteService.
type RemoteServicePort struct {
	// Port is the port local callers dial (1-65535).
	//
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// TargetPort is the port of the app behind the other mesh's sidecars;
	// default Port.
	//
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	TargetPort int32 `json:"targetPort,omitempty"`
	// Name is optional; a DNS label unique in the service (SRV records).
	//
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name,omitempty"`
	// AppProtocol is a hint such as http or grpc.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=63
	AppProtocol string `json:"appProtocol,omitempty"`
}

// RemoteEndpoint is one sidecar of the other mesh serving the service.
type RemoteEndpoint struct {
	// Address is where the caller's sidecar reaches it: the other pod's IP
	// on a flat network, or an L4 pass-through load balancer in front of
	// it (TLS must reach the sidecar untouched).
	//
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip(self).isGlobalUnicast()",message="must be a unicast IP address"
	Address string `json:"address"`
	// Port is the port of its tether/1 inbound listener (15006 on a
	// Tether sidecar), or the load balancer's port for it.
	//
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// Identity is the SPIFFE ID it must present, in spec.trustDomain; a
	// peer with any other identity is refused.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^spiffe://[a-z0-9._-]+(/[a-zA-Z0-9._-]+)+$`
	Identity string `json:"identity"`
}

// +kubebuilder:object:root=true

// RemoteServiceList is a list of RemoteServices.
type RemoteServiceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RemoteService `json:"items"`
}
