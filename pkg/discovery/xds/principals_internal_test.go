package xds

import (
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// TestForeignPrincipals: a foreign trust domain of an Admission is the
// prefix spiffe://<td>/ (never a regex or a prefix of the own domain), a
// foreign ID is matched exactly, both after the own domain's principals.
func TestForeignPrincipals(t *testing.T) {
	own := spiffeid.RequireTrustDomainFromString("cluster.local")
	b := spiffeid.RequireTrustDomainFromString("b.example")
	for _, tc := range []struct {
		name string
		a    policy.Admission
		want []string
	}{
		{"namespaces and foreign", policy.Admission{TrustDomain: own, Namespaces: []string{"shop"}, TrustDomains: []spiffeid.TrustDomain{b},
			IDs: []spiffeid.ID{spiffeid.RequireFromString("spiffe://c.example/ns/default/sa/api"), spiffeid.RequireFromString("spiffe://cluster.local/vm/x")}},
			[]string{"regex:spiffe://cluster\\.local/ns/shop/sa/[^/]+", "prefix:spiffe://b.example/", "exact:spiffe://c.example/ns/default/sa/api", "exact:spiffe://cluster.local/vm/x"}},
		{"mesh", policy.Admission{TrustDomain: own, Mesh: true}, []string{"prefix:spiffe://cluster.local/"}},
		{"foreign only", policy.Admission{TrustDomain: own, TrustDomains: []spiffeid.TrustDomain{b}}, []string{"prefix:spiffe://b.example/"}},
	} {
		var got []string
		for _, p := range admissionPrincipals(tc.a) {
			m := p.GetAuthenticated().GetPrincipalName()
			switch {
			case m.GetExact() != "":
				got = append(got, "exact:"+m.GetExact())
			case m.GetPrefix() != "":
				got = append(got, "prefix:"+m.GetPrefix())
			default:
				got = append(got, "regex:"+m.GetSafeRegex().GetRegex())
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: principals %q, want %q", tc.name, got, tc.want)
		}
	}
}
