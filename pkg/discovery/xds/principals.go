package xds

import (
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// admissionPrincipals are the RBAC principals of a: the trust domain
// prefix spiffe://<td>/ for the whole mesh, a wire.NamespaceRegex per
// namespace, and every ID exactly. Sorted: mesh, namespaces, identities.
func admissionPrincipals(a policy.Admission) []*rbacv3.Principal {
	if a.Mesh {
		return []*rbacv3.Principal{principal(prefix(a.TrustDomain.IDString() + "/"))}
	}
	var out []*rbacv3.Principal
	for _, ns := range a.Namespaces {
		out = append(out, principal(safeRegex(wire.NamespaceRegex(a.TrustDomain, ns))))
	}
	for _, id := range a.IDs {
		out = append(out, principal(exact(id.String())))
	}
	return out
}

func safeRegex(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}
