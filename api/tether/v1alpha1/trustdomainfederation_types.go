package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrustDomainFederationResource is the plural of TrustDomainFederation.
const TrustDomainFederationResource = "trustdomainfederations"

// TrustDomainFederationGVR names the trustdomainfederations resource, for
// dynamic clients.
var TrustDomainFederationGVR = SchemeGroupVersion.WithResource(TrustDomainFederationResource)

// TrustDomainFederation declares a foreign SPIFFE trust domain whose bundle
// tether-ca fetches from the domain's bundle endpoint (SPIFFE Federation
// standard) and keeps fresh. Trusting the bundle lets nothing in by itself:
// AccessPolicies decide which of the domain's identities may call what.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=tdf,categories=tether
// +kubebuilder:printcolumn:name="Trust Domain",type=string,JSONPath=".spec.trustDomain"
// +kubebuilder:printcolumn:name="Profile",type=string,JSONPath=".spec.profile"
// +kubebuilder:printcolumn:name="Sequence",type=integer,JSONPath=".status.sequence"
// +kubebuilder:printcolumn:name="Last Refresh",type=date,JSONPath=".status.lastRefresh"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type TrustDomainFederation struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says which trust domain, and where and how to fetch its bundle.
	Spec TrustDomainFederationSpec `json:"spec"`
	// Status is where the refresh of the bundle stands.
	Status TrustDomainFederationStatus `json:"status,omitempty"`
}

// TrustDomainFederationSpec is the desired federation with one domain.
//
// +kubebuilder:validation:XValidation:rule="self.profile == 'https_spiffe' ? has(self.endpointSPIFFEID) : !has(self.endpointSPIFFEID)",message="endpointSPIFFEID is required with profile https_spiffe and not allowed with https_web"
// +kubebuilder:validation:XValidation:rule="!has(self.webRoots) || self.profile == 'https_web'",message="webRoots are for profile https_web only (https_spiffe verifies the endpoint's SVID with the domain's bundle)"
// +kubebuilder:validation:XValidation:rule="self.profile != 'https_spiffe' || !has(self.endpointSPIFFEID) || !self.endpointSPIFFEID.startsWith('spiffe://' + self.trustDomain + '/') || has(self.initialBundle)",message="initialBundle is required with profile https_spiffe when the endpoint's SPIFFE ID is in the federated trust domain: it verifies the endpoint's first SVID"
type TrustDomainFederationSpec struct {
	// TrustDomain is the foreign trust domain's name, e.g. b.example.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[a-z0-9._-]+$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="trustDomain is immutable; create another TrustDomainFederation"
	TrustDomain string `json:"trustDomain"`
	// BundleEndpointURL is the domain's SPIFFE bundle endpoint; https only.
	//
	// +kubebuilder:validation:MinLength=9
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^https://[^/?#@\s]+(/[^\s]*)?$`
	BundleEndpointURL string `json:"bundleEndpointURL"`
	// Profile is how the endpoint is authenticated: https_spiffe (it
	// presents an SVID for EndpointSPIFFEID) or https_web (a web PKI
	// certificate, verified with WebRoots or else the system roots).
	//
	// +kubebuilder:default=https_spiffe
	// +kubebuilder:validation:Enum=https_spiffe;https_web
	// +optional
	Profile string `json:"profile"`
	// EndpointSPIFFEID is the SPIFFE ID the https_spiffe endpoint presents,
	// e.g. spiffe://b.example/tether/bundle-endpoint for a Tether mesh or
	// spiffe://b.example/spire/server for SPIRE.
	//
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^spiffe://[a-z0-9._-]+(/[a-zA-Z0-9._-]+)+$`
	// +optional
	EndpointSPIFFEID string `json:"endpointSPIFFEID,omitempty"`
	// InitialBundle is the domain's bundle trusted before the first fetch,
	// as PEM certificates or a SPIFFE bundle (JWKS) document, obtained from
	// the other domain's operator over a channel you trust.
	//
	// +kubebuilder:validation:MaxLength=262144
	// +optional
	InitialBundle string `json:"initialBundle,omitempty"`
	// WebRoots are PEM certificates of the private roots an https_web
	// endpoint's certificate chains to (your organisation's CA); they
	// replace the system roots for this endpoint. https_web only.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=262144
	// +optional
	WebRoots string `json:"webRoots,omitempty"`
}

// TrustDomainFederationStatus is written by tether-ca's leader.
type TrustDomainFederationStatus struct {
	// LastRefresh is when the bundle was last fetched successfully.
	// +optional
	LastRefresh *metav1.Time `json:"lastRefresh,omitempty"`
	// Sequence is the sequence number of the bundle held.
	// +optional
	Sequence int64 `json:"sequence,omitempty"`
	// LastError is the last failed fetch's error; empty after a success.
	// +optional
	LastError string `json:"lastError,omitempty"`
}

// +kubebuilder:object:root=true

// TrustDomainFederationList is a list of TrustDomainFederations.
type TrustDomainFederationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrustDomainFederation `json:"items"`
}
