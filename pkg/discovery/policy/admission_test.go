package policy

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// idShapes are SPIFFE IDs of every shape a caller's SVID may carry: Kubernetes
// workload IDs and their near misses (extra or missing segments, other
// path shapes, characters that are not a path separator but look like one
// when decoded, names that extend a namespace), in and out of the trust
// domain. Strings that are not SPIFFE IDs (trailing slash, percent
// encoding, empty segments, "." and "..") cannot be an SVID's ID and are
// checked to be refused by spiffeid.
var idShapes = []string{
	"spiffe://example.org/ns/shop/sa/web",
	"spiffe://example.org/ns/shop/sa/frontend",
	"spiffe://example.org/ns/shop/sa/web.v2",
	"spiffe://example.org/ns/shop/sa/_x-y.z",
	"spiffe://example.org/ns/shop/batch/job1",
	"spiffe://example.org/ns/shop/sa/web/extra",
	"spiffe://example.org/ns/shop/sa/web/sa/web",
	"spiffe://example.org/ns/shop/sa",
	"spiffe://example.org/ns/shop",
	"spiffe://example.org/ns/shopx/sa/web",
	"spiffe://example.org/ns/sho/sa/web",
	"spiffe://example.org/ns/shop/ns/shop/sa/web",
	"spiffe://example.org/x/ns/shop/sa/web",
	"spiffe://example.org/NS/shop/sa/web",
	"spiffe://example.org/ns/SHOP/sa/web",
	"spiffe://example.org/ns/monitoring/sa/prom",
	"spiffe://example.org/ns/monitoring/sa/prom/x",
	"spiffe://example.org/ns/monitoring/job/prom",
	"spiffe://example.org/vm/billing",
	"spiffe://example.org/vm/billing/x",
	"spiffe://example.org/vm",
	"spiffe://example.org/ns/batch/sa/jobs",
	"spiffe://example.org/ns/batch/sa/jobsx",
	"spiffe://example.org/anything",
	"spiffe://example.org",
	"spiffe://other.example/ns/shop/sa/web",
	"spiffe://other.example/ns/monitoring/sa/prom",
	"spiffe://other.example/vm/billing",
	"spiffe://example.org.evil/ns/shop/sa/web",
}

var notIDs = []string{
	"spiffe://example.org/ns/shop/sa/web/",
	"spiffe://example.org/ns/shop/sa/a%2Fb",
	"spiffe://example.org/ns/shop/sa//web",
	"spiffe://example.org/ns/shop/sa/..",
	"spiffe://example.org/ns/shop/sa/.",
	"spiffe://Example.org/ns/shop/sa/web",
	"spiffe://example.org/ns/shop/sa/w eb",
}

// Admitted describes exactly the IDs Decide allows, for every ID shape,
// every kind of source and default, and ports in and out of a policy's.
func TestAdmissionIsDecide(t *testing.T) {
	for _, s := range notIDs {
		if _, err := spiffeid.FromString(s); err == nil {
			t.Errorf("%q parses as a SPIFFE ID", s)
		}
	}
	for _, def := range []Default{AllowMesh, SameNamespace, Deny} {
		e, err := NewEngine(Config{
			TrustDomain: td, MeshDefault: def,
			NamespaceDefaults: map[string]Default{"open": AllowMesh, "closed": Deny, "near": SameNamespace},
			Policies: []AccessPolicy{
				policy("shop", "web-a", "web", []int32{8080}, fromSA("frontend", ""), fromSA("jobs", "batch"), fromNS("monitoring")),
				policy("shop", "web-b", "web", []int32{9090}, fromID("spiffe://example.org/vm/billing"), fromID("spiffe://other.example/vm/billing")),
				policy("shop", "db", "db", nil, fromNS("shop"), fromSA("web", "shop"), fromID("spiffe://example.org/ns/shop/sa/web")),
				policy("shop", "id-only", "vault", nil, fromID("spiffe://example.org/ns/monitoring/sa/prom")),
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		dsts := [][2]string{{"shop", "web"}, {"shop", "db"}, {"shop", "vault"}, {"shop", "open"}, {"open", "x"}, {"closed", "x"}, {"near", "x"}, {"monitoring", "x"}}
		for _, dst := range dsts {
			for _, port := range []uint16{8080, 9090, 1} {
				a := e.Admitted(dst[0], dst[1], port)
				for _, s := range idShapes {
					src := spiffeid.RequireFromString(s)
					want := e.Decide(src, dst[0], dst[1], port)
					if got := a.Admits(src); got != want.Allowed {
						t.Errorf("default %s, %s/%s:%d, %s: Admitted %+v admits %v; Decide %v (%s)", def, dst[0], dst[1], port, s, a, got, want.Allowed, want.Rule)
					}
				}
			}
		}
	}
}
