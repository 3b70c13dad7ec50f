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

// modeCase is a configuration with objects in audit mode.
type modeCase struct {
	meshMode Mode
	nsModes  map[string]Mode
	audit    map[string]bool // names of the policies in audit mode
}

// TestAdmissionIsDecideWithModes checks the two layers against their
// definitions, for every ID shape, default, mode and port: the enforced
// decision is that of the configuration without the audit-mode policies
// (with audited defaults replaced), Admitted admits exactly what Decide
// allows, the would-be decision is that of the configuration with every
// mode Enforce, WouldBeAdmitted and WouldAllow agree with it, and Decide is
// audit-denied exactly when it allows and the would-be decision denies.
func TestAdmissionIsDecideWithModes(t *testing.T) {
	all := []AccessPolicy{
		policy("shop", "web-a", "web", []int32{8080}, fromSA("frontend", ""), fromSA("jobs", "batch")),
		policy("shop", "web-b", "web", []int32{9090}, fromID("spiffe://example.org/vm/billing")),
		policy("shop", "db", "db", nil, fromNS("shop"), fromID("spiffe://example.org/ns/monitoring/sa/prom")),
		policy("shop", "vault", "vault", nil, fromID("spiffe://example.org/ns/monitoring/sa/prom")),
	}
	nsDefaults := map[string]Default{"open": AllowMesh, "closed": Deny, "near": SameNamespace}
	cases := []modeCase{
		{audit: map[string]bool{"web-a": true}},
		{audit: map[string]bool{"web-b": true, "db": true, "vault": true}},
		{meshMode: Audit},
		{meshMode: Audit, nsModes: map[string]Mode{"closed": Audit, "near": Enforce}},
		{nsModes: map[string]Mode{"closed": Audit, "near": Audit, "shop": Audit, "monitoring": Audit}, audit: map[string]bool{"vault": true}},
		{meshMode: Audit, nsModes: map[string]Mode{"open": Audit, "shop": Audit}, audit: map[string]bool{"web-a": true, "web-b": true, "db": true, "vault": true}},
	}
	for _, def := range []Default{AllowMesh, SameNamespace, Deny} {
		for ci, c := range cases {
			var ps []AccessPolicy
			for _, p := range all {
				if c.audit[p.Name] {
					p = audited(p)
				}
				ps = append(ps, p)
			}
			e, err := NewEngine(Config{TrustDomain: td, MeshDefault: def, MeshDefaultMode: c.meshMode, NamespaceDefaults: nsDefaults, NamespaceDefaultModes: c.nsModes, Policies: ps})
			if err != nil {
				t.Fatal(err)
			}
			wouldBe, err := NewEngine(Config{TrustDomain: td, MeshDefault: def, NamespaceDefaults: nsDefaults, Policies: all})
			if err != nil {
				t.Fatal(err)
			}
			enforced := enforcedReference(t, def, c, nsDefaults, ps)
			for _, dst := range [][2]string{{"shop", "web"}, {"shop", "db"}, {"shop", "vault"}, {"shop", "open"}, {"open", "x"}, {"closed", "x"}, {"near", "x"}, {"monitoring", "x"}} {
				for _, port := range []uint16{8080, 9090, 1} {
					a, wa := e.Admitted(dst[0], dst[1], port), e.WouldBeAdmitted(dst[0], dst[1], port)
					for _, s := range idShapes {
						src := spiffeid.RequireFromString(s)
						got, want, wb := e.Decide(src, dst[0], dst[1], port), enforced.Decide(src, dst[0], dst[1], port), wouldBe.Decide(src, dst[0], dst[1], port)
						where := func() string { return def.String() + " case " + string(rune('0'+ci)) + " " + dst[0] + "/" + dst[1] + " " + s }
						if got.Allowed != want.Allowed {
							t.Errorf("%s:%d: enforced %v (%s), reference %v (%s)", where(), port, got.Allowed, got.Rule, want.Allowed, want.Rule)
						}
						if a.Admits(src) != got.Allowed {
							t.Errorf("%s:%d: Admitted admits %v, Decide %v", where(), port, a.Admits(src), got.Allowed)
						}
						if wa.Admits(src) != wb.Allowed || e.WouldAllow(src, dst[0], dst[1], port) != wb.Allowed {
							t.Errorf("%s:%d: WouldBeAdmitted admits %v, WouldAllow %v, would-be Decide %v", where(), port, wa.Admits(src), e.WouldAllow(src, dst[0], dst[1], port), wb.Allowed)
						}
						if got.AuditDenied != (got.Allowed && !wb.Allowed) {
							t.Errorf("%s:%d: AuditDenied %v with enforced %v and would-be %v", where(), port, got.AuditDenied, got.Allowed, wb.Allowed)
						}
						if got.AuditDenied && got.AuditRule == "" {
							t.Errorf("%s:%d: audit-denied without a rule", where(), port)
						}
					}
				}
			}
		}
	}
}

// enforcedReference builds, without audit modes, the engine the contract
// says decides: the enforcing policies only, audited namespace defaults
// replaced by the mesh default if it is enforcing (else by allow-mesh; a
// namespace in audit mode without a default of its own audits the mesh
// default), an audited mesh default replaced by allow-mesh.
func enforcedReference(t *testing.T, def Default, c modeCase, nsDefaults map[string]Default, ps []AccessPolicy) *Engine {
	t.Helper()
	mesh := def
	if c.meshMode == Audit {
		mesh = AllowMesh
	}
	nd := map[string]Default{}
	for ns, d := range nsDefaults {
		nd[ns] = d
	}
	for ns, m := range c.nsModes {
		if m != Audit {
			continue
		}
		if _, own := nsDefaults[ns]; own && c.meshMode != Audit {
			nd[ns] = def
		} else {
			nd[ns] = AllowMesh
		}
	}
	var enforcing []AccessPolicy
	for _, p := range ps {
		if p.Spec.Mode != Audit {
			enforcing = append(enforcing, p)
		}
	}
	e, err := NewEngine(Config{TrustDomain: td, MeshDefault: mesh, NamespaceDefaults: nd, Policies: enforcing})
	if err != nil {
		t.Fatal(err)
	}
	return e
}
