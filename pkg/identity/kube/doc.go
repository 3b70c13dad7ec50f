// Package kube connects Tether's CA (package identity) to Kubernetes.
//
// Each piece implements one contract of the CA core or serves one row of the
// Kubernetes contract in docs/architecture.md:
//   - TokenReviewAttestor attests sidecars by their projected ServiceAccount
//     token (identity.Attestor for identity.KindK8sSAT);
//   - SecretStore keeps the CA state in the Secret tether-system/tether-ca
//     (identity.Store);
//   - LeaderElector holds the Lease tether-system/tether-ca, so that one CA
//     replica takes scheduled rotation steps (identity.Config.IsLeader);
//   - BundlePublisher writes the ConfigMap tether-trust-bundle into every
//     namespace with injection enabled;
//   - CertManagerUpstream takes the signing intermediate from a cert-manager
//     issuer (identity.Upstream).
//
// The RBAC each piece needs is written in its doc comment; errors caused by
// missing permissions say which one to grant.
package kube

// Names from the Kubernetes contract in docs/architecture.md.
const (
	// DefaultNamespace is the control plane namespace.
	DefaultNamespace = "tether-system"
	// DefaultSecretName names the Secret holding the CA state.
	DefaultSecretName = "tether-ca"
	// DefaultLeaseName names the Lease the CA replicas elect a leader with.
	DefaultLeaseName = "tether-ca"
	// DefaultAudience is the audience of the projected token sidecars present.
	DefaultAudience = "tether-ca"
	// BundleConfigMapName names the ConfigMap holding the trust bundle.
	BundleConfigMapName = "tether-trust-bundle"
	// InjectLabel with InjectEnabled or InjectRequired selects the
	// namespaces with injection (pkg/inject's webhooks).
	InjectLabel    = "tether.dev/inject"
	InjectEnabled  = "enabled"
	InjectRequired = "required"
	// PartOfLabel and PartOfValue mark every object Tether writes.
	PartOfLabel = "app.kubernetes.io/part-of"
	PartOfValue = "tether"
)
