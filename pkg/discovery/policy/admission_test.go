package policy

import (
	"strings"
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
	"spiffe://other.example/vm/billing/x",
	"spiffe://other.example/anything",
	"spiffe://other.example",
	"spiffe://third.example/ns/shop/sa/web",
	"spiffe://third.example/vm/billing",
	"spiffe://example.org.evil/ns/shop/sa/web",
	"spiffe://other.example.evil/vm/billing",
	"spiffe://evil.other.example/vm/billing",
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
				policy("shop", "foreign", "api", []int32{8080}, fromTD("other.example"), fromID("spiffe://third.example/vm/billing"), fromNS("shop")),
				policy("shop", "foreign-all", "api", []int32{9090}, fromID("spiffe://other.example"), fromTD("example.org"), fromTD("third.example")),
				policy("shop", "own-td", "cache", nil, fromTD("example.org")),
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		dsts := [][2]string{{"shop", "web"}, {"shop", "db"}, {"shop", "vault"}, {"shop", "api"}, {"shop", "cache"}, {"shop", "open"}, {"open", "x"}, {"closed", "x"}, {"near", "x"}, {"monitoring", "x"}}
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
		policy("shop", "api-b", "api", nil, fromTD("other.example"), fromID("spiffe://third.example/vm/billing")),
		policy("shop", "web-c", "web", []int32{8080}, fromTD("other.example")),
	}
	nsDefaults := map[string]Default{"open": AllowMesh, "closed": Deny, "near": SameNamespace}
	cases := []modeCase{
		{audit: map[string]bool{"web-a": true}},
		{audit: map[string]bool{"web-b": true, "db": true, "vault": true}},
		{audit: map[string]bool{"api-b": true}},
		{audit: map[string]bool{"web-c": true, "web-a": true}},
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
			for _, dst := range [][2]string{{"shop", "web"}, {"shop", "db"}, {"shop", "vault"}, {"shop", "api"}, {"shop", "open"}, {"open", "x"}, {"closed", "x"}, {"near", "x"}, {"monitoring", "x"}} {
				for _, port := range []uint16{8080, 9090, 1} {
					a, wa := e.Admitted(dst[0], dst[1], port), e.WouldBeAdmitted(dst[0], dst[1], port)
					for _, s := range idShapes {
						src := spiffeid.RequireFromString(s)
						got, want, wb := e.Decide(src, dst[0], dst[1], port), enforced.Decide(src, dst[0], dst[1], port), wouldBe.Decide(src, dst[0], dst[1], port)
						where := func() string {
							return def.String() + " case " + string(rune('0'+ci)) + " " + dst[0] + "/" + dst[1] + " " + s
						}
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

// TestForeignSources: a caller of another trust domain is allowed only by
// a spiffeID or trustDomain source of an enforcing policy that names it;
// never by a default, a namespace or serviceAccount source, a policy in
// audit mode, or a trustDomain source naming the own trust domain.
func TestForeignSources(t *testing.T) {
	const (
		bWeb   = "spiffe://b.example/ns/shop/sa/web"
		bAPI   = "spiffe://b.example/ns/default/sa/api"
		cWeb   = "spiffe://c.example/ns/shop/sa/web"
		ownWeb = "spiffe://example.org/ns/shop/sa/web"
	)
	e, err := NewEngine(Config{
		TrustDomain: td, MeshDefault: AllowMesh, NamespaceDefaults: map[string]Default{"near": SameNamespace},
		Policies: []AccessPolicy{
			policy("shop", "by-ns", "ns", nil, fromNS("shop"), fromSA("web", "shop")),
			policy("shop", "by-id", "id", []int32{80}, fromID(bAPI)),
			policy("shop", "by-td", "td", []int32{80}, fromTD("b.example")),
			policy("shop", "own-td", "own", nil, fromTD("example.org")),
			audited(policy("shop", "audit-td", "audited", nil, fromTD("b.example"))),
			audited(policy("shop", "audit-extra", "td", []int32{80}, fromTD("c.example"))),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, ns, svc string
		port         uint16
		allowed      bool
		rule         string // substring of the rule
	}{
		{bWeb, "shop", "open", 80, false, "never admits a caller of another trust domain"},
		{bWeb, "near", "x", 80, false, "is outside trust domain example.org"},
		{ownWeb, "shop", "open", 80, true, "mesh default allow-mesh"},
		{bWeb, "shop", "ns", 80, false, "no AccessPolicy allows spiffe://b.example/ns/shop/sa/web"},
		{ownWeb, "shop", "ns", 80, true, "AccessPolicy shop/by-ns"},
		{bAPI, "shop", "id", 80, true, "AccessPolicy shop/by-id"},
		{bAPI, "shop", "id", 81, false, "no AccessPolicy allows"},
		{bWeb, "shop", "id", 80, false, "no AccessPolicy allows"},
		{bWeb, "shop", "td", 80, true, "AccessPolicy shop/by-td"},
		{bAPI, "shop", "td", 80, true, "AccessPolicy shop/by-td"},
		{cWeb, "shop", "td", 80, false, "no AccessPolicy allows " + cWeb},
		{"spiffe://b.example", "shop", "td", 80, false, "has no path"},
		{ownWeb, "shop", "own", 80, false, "no AccessPolicy allows"},
		{bWeb, "shop", "audited", 80, false, "never admits a caller of another trust domain"},
	} {
		src := spiffeid.RequireFromString(tc.src)
		d := e.Decide(src, tc.ns, tc.svc, tc.port)
		if d.Allowed != tc.allowed || !strings.Contains(d.Rule, tc.rule) {
			t.Errorf("%s -> %s/%s:%d: %+v, want allowed %v with rule containing %q", tc.src, tc.ns, tc.svc, tc.port, d, tc.allowed, tc.rule)
		}
		if d.AuditDenied {
			t.Errorf("%s -> %s/%s:%d: audit-denied (%s): audit-mode policies only widen", tc.src, tc.ns, tc.svc, tc.port, d.AuditRule)
		}
	}
	// The would-be decision: the audit-mode policy would let b.example
	// in, the enforced one does not (it is invisible, and allow-mesh
	// admits no foreign caller).
	if !e.WouldAllow(spiffeid.RequireFromString(bWeb), "shop", "audited", 80) {
		t.Error("the would-be decision does not admit b.example to shop/audited")
	}
	want := Admission{TrustDomain: td, TrustDomains: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("b.example")}}
	if a := e.Admitted("shop", "td", 80); !a.Equal(want) {
		t.Errorf("Admitted(shop/td:80) = %+v, want %+v", a, want)
	}
	want.TrustDomains = nil
	want.IDs = []spiffeid.ID{spiffeid.RequireFromString(bAPI)}
	if a := e.Admitted("shop", "id", 80); !a.Equal(want) {
		t.Errorf("Admitted(shop/id:80) = %+v, want %+v", a, want)
	}
	if a := e.Admitted("shop", "own", 80); !a.Equal(Admission{TrustDomain: td}) {
		t.Errorf("Admitted(shop/own) = %+v, want nobody: a trustDomain source of the own domain matches nothing", a)
	}
}
