package xds

import (
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// admissionPrincipals are the RBAC principals of a: the trust domain
// prefix spiffe://<td>/ for the whole mesh, a wire.NamespaceRegex per
// namespace, the prefix spiffe://<td>/ of each foreign trust domain, and
// every ID (own or foreign) exactly. Sorted: mesh, namespaces, foreign
// trust domains, identities. (A sidecar older than federation parses the
// foreign ones like its own, and its TLS layer never lets a foreign peer
// reach them.)
func admissionPrincipals(a policy.Admission) []*rbacv3.Principal {
	var out []*rbacv3.Principal
	if a.Mesh {
		out = append(out, principal(prefix(a.TrustDomain.IDString()+"/")))
	} else {
		for _, ns := range a.Namespaces {
			out = append(out, principal(safeRegex(wire.NamespaceRegex(a.TrustDomain, ns))))
		}
	}
	for _, td := range a.TrustDomains {
		out = append(out, principal(prefix(td.IDString()+"/")))
	}
	for _, id := range a.IDs {
		out = append(out, principal(exact(id.String())))
	}
	return out
}

func safeRegex(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}
