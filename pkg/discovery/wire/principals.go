package wire

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
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
