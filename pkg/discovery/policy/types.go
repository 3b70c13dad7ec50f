// Package policy holds the engine that decides, from AccessPolicies and the
// mesh and namespace defaults, whether a workload identity may reach a
// service.
//
// The AccessPolicy API itself (group tether.dev, version v1alpha1) is
// defined in api/tether/v1alpha1, whose kubebuilder markers generate the CRD;
// the names below are aliases of it, so the engine, mesh.yaml and the
// Kubernetes source share one model. Validate holds a policy read from
// mesh.yaml (which never passes through an API server) to the CRD's rules.
package policy

import (
	v1alpha1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
)

const (
	// GroupName is the API group of AccessPolicy.
	GroupName = v1alpha1.GroupName
	// Version is the API version of AccessPolicy.
	Version = v1alpha1.Version
	// Kind is the kind of an AccessPolicy object.
	Kind = v1alpha1.Kind
	// Resource is the plural resource name served by the API server.
	Resource = v1alpha1.Resource

	// MaxSources and MaxPorts bound the lists of a policy (same limits as the CRD).
	MaxSources = v1alpha1.MaxSources
	MaxPorts   = v1alpha1.MaxPorts
)

var (
	// SchemeGroupVersion is the group and version of AccessPolicy.
	SchemeGroupVersion = v1alpha1.SchemeGroupVersion
	// SchemeGroupVersionResource names the accesspolicies resource, for dynamic clients.
	SchemeGroupVersionResource = v1alpha1.SchemeGroupVersionResource
	// AddToScheme adds AccessPolicy and AccessPolicyList to a scheme.
	AddToScheme = v1alpha1.AddToScheme

	// ErrInvalidPolicy marks every error returned by Validate.
	ErrInvalidPolicy = v1alpha1.ErrInvalidPolicy
)

// The AccessPolicy types of api/tether/v1alpha1 (see there).
type (
	// AccessPolicy allows a list of sources to reach one Service.
	AccessPolicy = v1alpha1.AccessPolicy
	// AccessPolicySpec is the desired behaviour of an AccessPolicy.
	AccessPolicySpec = v1alpha1.AccessPolicySpec
	// Destination names a Service and, optionally, some of its ports.
	Destination = v1alpha1.Destination
	// Source is exactly one of a service account, a namespace, a SPIFFE ID or
	// a trust domain.
	Source = v1alpha1.Source
	// ServiceAccountSource names a service account.
	ServiceAccountSource = v1alpha1.ServiceAccountSource
	// AccessPolicyList is a list of AccessPolicy objects.
	AccessPolicyList = v1alpha1.AccessPolicyList
)

// Mode is an AccessPolicy's mode, Enforce or Audit (empty means Enforce).
type Mode = v1alpha1.PolicyMode

// The modes.
const (
	// Enforce: the policy or default decides.
	Enforce = v1alpha1.Enforce
	// Audit: the policy or default decides nothing; the connections it
	// would deny while the enforcing ones allow them are audit-denied.
	Audit = v1alpha1.Audit
)
