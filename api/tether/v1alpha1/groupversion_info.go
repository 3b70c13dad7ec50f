// Package v1alpha1 holds Tether's Kubernetes API, group tether.dev, version
// v1alpha1: the AccessPolicy kind.
//
// These Go types, with their kubebuilder markers, are the source of truth:
// controller-gen (a Go tool pinned in go.mod) generates their deep copies
// (zz_generated.deepcopy.go) and the CRD (charts/tether/crds/
// tether.dev_accesspolicies.yaml, copied to manifests/crds/) from them with
// `make generate`; a test fails when the committed output is not current.
// The same types are the policies of mesh.yaml, which never passes through an
// API server: Validate holds them to the rules the CRD's schema enforces.
//
// +kubebuilder:object:generate=true
// +groupName=tether.dev
package v1alpha1

import (
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
)

var (
	// SchemeGroupVersion is the group and version of the types in this package.
	SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: Version}
	// SchemeGroupVersionResource names the accesspolicies resource, for dynamic clients.
	SchemeGroupVersionResource = SchemeGroupVersion.WithResource(Resource)

	// SchemeBuilder registers AccessPolicy, TrustDomainFederation, RemoteService and their lists.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the types of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &AccessPolicy{}, &AccessPolicyList{}, &TrustDomainFederation{}, &TrustDomainFederationList{},
		&RemoteService{}, &RemoteServiceList{})
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
