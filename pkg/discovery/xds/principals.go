package xds

import (
	"fmt"
	"regexp"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// namespaceRegexTail ends the regex of a namespace-wide principal: one
// path segment, the service account. (Envoy matches a safe_regex against
// the whole principal name.)
const namespaceRegexTail = "/sa/[^/]+"

// NamespaceRegex is the safe_regex of the RBAC principal for every
// workload of namespace ns in trust domain td: exactly the IDs
// spiffe://<td>/ns/<ns>/sa/<one segment>, as the policy engine's
// namespace rules admit (a prefix would also admit
// spiffe://<td>/ns/<ns>/batch/job1 and /ns/<ns>/sa/a/b).
func NamespaceRegex(td spiffeid.TrustDomain, ns string) string {
	return regexp.QuoteMeta(NamespacePrefix(td, ns)) + "[^/]+"
}

// NamespacePrefix is spiffe://<td>/ns/<ns>/sa/, what every ID that
// NamespaceRegex matches starts with.
func NamespacePrefix(td spiffeid.TrustDomain, ns string) string {
	return td.IDString() + "/ns/" + ns + "/sa/"
}

// ParseNamespaceRegex returns the prefix spiffe://<td>/ns/<ns>/sa/ of a
// regex NamespaceRegex made, and an error for any other regex: a client
// matches the IDs that start with the prefix and add exactly one path
// segment, and understands no other regex.
func ParseNamespaceRegex(re string) (string, error) {
	body, ok := strings.CutSuffix(re, `[^/]+`)
	if !ok {
		return "", fmt.Errorf("regex %q is not a namespace principal (%s<td>/ns/<ns>/sa/[^/]+)", re, "spiffe://")
	}
	// QuoteMeta escapes with a backslash only; undo it, then check that
	// quoting gives the regex back (so no metacharacter was unescaped).
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		if body[i] == '\\' && i+1 < len(body) {
			i++
		}
		b.WriteByte(body[i])
	}
	prefix := b.String()
	if regexp.QuoteMeta(prefix) != body {
		return "", fmt.Errorf("regex %q is not a namespace principal: it has unescaped metacharacters", re)
	}
	id, err := spiffeid.FromString(strings.TrimSuffix(prefix, "/"))
	if err != nil || !strings.HasSuffix(prefix, "/") {
		return "", fmt.Errorf("regex %q is not a namespace principal: %q is not a SPIFFE ID prefix", re, prefix)
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 3 || seg[0] != "ns" || seg[2] != "sa" {
		return "", fmt.Errorf("regex %q is not a namespace principal: want the prefix %s<td>/ns/<ns>/sa/", re, "spiffe://")
	}
	return prefix, nil
}

// admissionPrincipals are the RBAC principals of a: the trust domain
// prefix spiffe://<td>/ for the whole mesh, a NamespaceRegex per
// namespace, and every ID exactly. Sorted: mesh, namespaces, identities.
func admissionPrincipals(a policy.Admission) []*rbacv3.Principal {
	if a.Mesh {
		return []*rbacv3.Principal{principal(prefix(a.TrustDomain.IDString() + "/"))}
	}
	var out []*rbacv3.Principal
	for _, ns := range a.Namespaces {
		out = append(out, principal(safeRegex(NamespaceRegex(a.TrustDomain, ns))))
	}
	for _, id := range a.IDs {
		out = append(out, principal(exact(id.String())))
	}
	return out
}

func safeRegex(re string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}
}
