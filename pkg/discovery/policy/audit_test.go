package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func audited(p AccessPolicy) AccessPolicy {
	p.Spec.Mode = Audit
	return p
}

func TestParseDefaultMode(t *testing.T) {
	for s, want := range map[string]Mode{"enforce": Enforce, "audit": Audit} {
		if got, err := ParseDefaultMode(s); err != nil || got != want {
			t.Errorf("ParseDefaultMode(%q) = %q, %v; want %q", s, got, err, want)
		}
		if DefaultModeString(want) != s {
			t.Errorf("DefaultModeString(%q) = %q, want %q", want, DefaultModeString(want), s)
		}
	}
	for _, s := range []string{"", "Audit", "Enforce", "dry-run", "audit "} {
		_, err := ParseDefaultMode(s)
		if !errors.Is(err, ErrUnknownMode) || !strings.Contains(err.Error(), "use enforce or audit") {
			t.Errorf("ParseDefaultMode(%q) error = %v; want ErrUnknownMode naming the choices", s, err)
		}
	}
}

func TestNewEngineRefusesBadModes(t *testing.T) {
	bad := policy("shop", "web", "web", nil, fromNS("shop"))
	bad.Spec.Mode = "audit" // the CRD's spelling is Audit
	for name, cfg := range map[string]Config{
		"policy":    {TrustDomain: td, MeshDefault: AllowMesh, Policies: []AccessPolicy{bad}},
		"mesh":      {TrustDomain: td, MeshDefault: AllowMesh, MeshDefaultMode: "dry-run"},
		"namespace": {TrustDomain: td, MeshDefault: AllowMesh, NamespaceDefaultModes: map[string]Mode{"shop": "AUDIT"}},
	} {
		if _, err := NewEngine(cfg); err == nil {
			t.Errorf("%s: NewEngine accepted an unknown mode", name)
		} else if !strings.Contains(err.Error(), "mode") {
			t.Errorf("%s: error %v does not name the mode", name, err)
		}
	}
}

// decision is what a test expects of Decide.
type decision struct {
	allowed, auditDenied bool
	rule, auditRule      string // substrings
}

func checkDecision(t *testing.T, e *Engine, src spiffeid.ID, ns, svc string, port uint16, want decision) {
	t.Helper()
	d := e.Decide(src, ns, svc, port)
	if d.Allowed != want.allowed || d.AuditDenied != want.auditDenied ||
		!strings.Contains(d.Rule, want.rule) || !strings.Contains(d.AuditRule, want.auditRule) || (!d.AuditDenied && d.AuditRule != "") {
		t.Errorf("Decide(%s, %s/%s:%d) = %+v; want %+v", src, ns, svc, port, d, want)
	}
	if got := e.Allowed(src, ns, svc, port); got != d.Allowed {
		t.Errorf("Allowed(%s, %s/%s:%d) = %v, Decide says %v", src, ns, svc, port, got, d.Allowed)
	}
}

func TestAuditPolicy(t *testing.T) {
	web := policy("shop", "web-from-frontend", "web", nil, fromSA("frontend", ""))
	foreign := spiffeid.RequireFromString("spiffe://other.org/ns/shop/sa/frontend")
	for _, meshDefault := range []Default{AllowMesh, Deny} {
		engine := func(ps ...AccessPolicy) *Engine {
			e, err := NewEngine(Config{TrustDomain: td, MeshDefault: meshDefault, Policies: ps})
			if err != nil {
				t.Fatal(err)
			}
			return e
		}
		// Audit: the default decides; the policy only reports.
		auditing := engine(audited(web))
		if meshDefault == AllowMesh {
			checkDecision(t, auditing, sa("shop", "intruder"), "shop", "web", 80, decision{allowed: true, rule: "mesh default allow-mesh",
				auditDenied: true, auditRule: "no AccessPolicy allows spiffe://example.org/ns/shop/sa/intruder to shop/web:80 (in audit mode: AccessPolicy shop/web-from-frontend)"})
			checkDecision(t, auditing, sa("shop", "frontend"), "shop", "web", 80, decision{allowed: true, rule: "mesh default allow-mesh"})
		} else {
			// An audit policy opens nothing: the deny default still decides.
			checkDecision(t, auditing, sa("shop", "frontend"), "shop", "web", 80, decision{rule: "mesh default deny"})
			checkDecision(t, auditing, sa("shop", "intruder"), "shop", "web", 80, decision{rule: "mesh default deny"})
		}
		// Outside the trust domain is denied, never merely audited.
		checkDecision(t, auditing, foreign, "shop", "web", 80, decision{rule: "outside trust domain"})
		checkDecision(t, auditing, spiffeid.RequireFromString("spiffe://example.org"), "shop", "web", 80, decision{rule: "has no path"})
		checkDecision(t, auditing, spiffeid.ID{}, "shop", "web", 80, decision{rule: "no SPIFFE ID"})
		if auditing.Restricted("shop", "web") {
			t.Error("an audit policy restricts its service")
		}

		// Enforce: the policy decides. And back to Audit.
		enforcing := engine(web)
		checkDecision(t, enforcing, sa("shop", "intruder"), "shop", "web", 80, decision{rule: "no AccessPolicy allows spiffe://example.org/ns/shop/sa/intruder to shop/web:80"})
		checkDecision(t, enforcing, sa("shop", "frontend"), "shop", "web", 80, decision{allowed: true, rule: "AccessPolicy shop/web-from-frontend"})
		if !enforcing.Restricted("shop", "web") || enforcing.Audits() {
			t.Error("an enforcing policy does not restrict its service, or the engine audits")
		}
		if meshDefault == AllowMesh {
			checkDecision(t, engine(audited(web)), sa("shop", "intruder"), "shop", "web", 80, decision{allowed: true, auditDenied: true, auditRule: "no AccessPolicy allows"})
		}
	}
}

// TestMixedModes puts an enforcing and an audit policy on one service: the
// enforcing one alone decides; the audit one never opens anything (the
// would-be decision is their union, so it cannot deny what the enforcing
// one allows).
func TestMixedModes(t *testing.T) {
	e, err := NewEngine(Config{TrustDomain: td, MeshDefault: AllowMesh, Policies: []AccessPolicy{
		policy("shop", "a-enforced", "web", []int32{8080}, fromSA("frontend", "")),
		audited(policy("shop", "b-audited", "web", nil, fromNS("batch"))),
		audited(policy("shop", "db-audited", "db", nil, fromSA("web", ""))),
		policy("shop", "db-enforced", "db", []int32{5432}, fromNS("shop")),
	}})
	if err != nil {
		t.Fatal(err)
	}
	checkDecision(t, e, sa("shop", "frontend"), "shop", "web", 8080, decision{allowed: true, rule: "AccessPolicy shop/a-enforced"})
	checkDecision(t, e, sa("batch", "jobs"), "shop", "web", 8080, decision{rule: "no AccessPolicy allows"})
	checkDecision(t, e, sa("shop", "frontend"), "shop", "web", 9090, decision{rule: "no AccessPolicy allows"})
	// shop/db: shop's workloads pass on 5432; the audit policy would
	// have let only web in, but the enforcing one allows them: no audit denial.
	checkDecision(t, e, sa("shop", "cache"), "shop", "db", 5432, decision{allowed: true, rule: "AccessPolicy shop/db-enforced"})
	checkDecision(t, e, sa("shop", "web"), "shop", "db", 6000, decision{rule: "no AccessPolicy allows"})
}

func TestAuditNamespaceDefault(t *testing.T) {
	cfg := func(meshDefault Default, meshMode Mode, nsDefaults map[string]Default) *Engine {
		e, err := NewEngine(Config{TrustDomain: td, MeshDefault: meshDefault, MeshDefaultMode: meshMode,
			NamespaceDefaults: nsDefaults, NamespaceDefaultModes: map[string]Mode{"shop": Audit, "pay": Enforce}})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	// Audited namespace default deny, enforcing mesh default allow-mesh:
	// the mesh default decides, deny is reported.
	e := cfg(AllowMesh, "", map[string]Default{"shop": Deny, "pay": Deny})
	checkDecision(t, e, sa("batch", "jobs"), "shop", "web", 80, decision{allowed: true, rule: "mesh default allow-mesh (namespace default deny of shop is in audit mode)",
		auditDenied: true, auditRule: "namespace default deny (annotation tether.dev/default-policy on shop, audit mode)"})
	checkDecision(t, e, sa("batch", "jobs"), "pay", "web", 80, decision{rule: "namespace default deny"})
	if d := e.DecideDefault(sa("batch", "jobs"), "shop"); !d.Allowed || !d.AuditDenied || !strings.Contains(d.AuditRule, "audit mode") {
		t.Errorf("DecideDefault = %+v; want allowed, audit-denied", d)
	}
	if e.DefaultFor("shop") != AllowMesh {
		t.Errorf("DefaultFor(shop) = %v, want the enforcing mesh default", e.DefaultFor("shop"))
	}
	// Enforcing mesh default deny: an audited namespace default falls back to it.
	e = cfg(Deny, Enforce, map[string]Default{"shop": AllowMesh})
	checkDecision(t, e, sa("shop", "web"), "shop", "web", 80, decision{rule: "mesh default deny (namespace default allow-mesh of shop is in audit mode)"})
	// A namespace in audit mode without a default of its own audits the
	// mesh default it inherits.
	e = cfg(Deny, Enforce, nil)
	checkDecision(t, e, sa("batch", "jobs"), "shop", "web", 80, decision{allowed: true, rule: "allow-mesh (the default deny of namespace shop is in audit mode)",
		auditDenied: true, auditRule: "mesh default deny (audit mode in namespace shop)"})
	checkDecision(t, e, sa("batch", "jobs"), "pay", "web", 80, decision{rule: "mesh default deny"})
	// Same-namespace in audit: callers of the namespace pass unreported.
	e = cfg(AllowMesh, Enforce, map[string]Default{"shop": SameNamespace})
	checkDecision(t, e, sa("shop", "a"), "shop", "web", 80, decision{allowed: true})
	checkDecision(t, e, sa("batch", "jobs"), "shop", "web", 80, decision{allowed: true, auditDenied: true, auditRule: "namespace default same-namespace"})
}

func TestAuditMeshDefault(t *testing.T) {
	e, err := NewEngine(Config{TrustDomain: td, MeshDefault: Deny, MeshDefaultMode: Audit,
		NamespaceDefaults: map[string]Default{"pay": SameNamespace}})
	if err != nil {
		t.Fatal(err)
	}
	checkDecision(t, e, sa("batch", "jobs"), "shop", "web", 80, decision{allowed: true, rule: "allow-mesh (the mesh default deny is in audit mode)",
		auditDenied: true, auditRule: "mesh default deny (audit mode)"})
	// An enforcing namespace default still decides.
	checkDecision(t, e, sa("batch", "jobs"), "pay", "web", 80, decision{rule: "namespace default same-namespace"})
	checkDecision(t, e, sa("pay", "jobs"), "pay", "web", 80, decision{allowed: true})
	// And the trust domain still holds.
	checkDecision(t, e, spiffeid.RequireFromString("spiffe://other.org/ns/batch/sa/jobs"), "shop", "web", 80, decision{rule: "outside trust domain"})
	if d := e.DecideDefault(spiffeid.RequireFromString("spiffe://other.org/ns/batch/sa/jobs"), "shop"); d.Allowed || d.AuditDenied {
		t.Errorf("DecideDefault of a foreign ID = %+v; want denied", d)
	}
	// Audited namespace default under an audited mesh default: allow-mesh.
	e, err = NewEngine(Config{TrustDomain: td, MeshDefault: Deny, MeshDefaultMode: Audit,
		NamespaceDefaults: map[string]Default{"pay": SameNamespace}, NamespaceDefaultModes: map[string]Mode{"pay": Audit}})
	if err != nil {
		t.Fatal(err)
	}
	checkDecision(t, e, sa("batch", "jobs"), "pay", "web", 80, decision{allowed: true, rule: "allow-mesh (the default same-namespace of namespace pay is in audit mode)",
		auditDenied: true, auditRule: "namespace default same-namespace"})
}

// TestAllowedAllocatesNothing holds Allowed and WouldAllow to their
// promise on an engine with audit-mode objects.
func TestAllowedAllocatesNothing(t *testing.T) {
	e, err := NewEngine(Config{TrustDomain: td, MeshDefault: Deny, MeshDefaultMode: Audit, Policies: []AccessPolicy{
		audited(policy("shop", "web", "web", nil, fromSA("frontend", ""))),
	}})
	if err != nil {
		t.Fatal(err)
	}
	src := sa("batch", "jobs")
	if n := testing.AllocsPerRun(100, func() {
		e.Allowed(src, "shop", "web", 80)
		e.WouldAllow(src, "shop", "web", 80)
		e.Allowed(spiffeid.RequireFromString("spiffe://other.org/ns/batch/sa/jobs"), "shop", "db", 80)
	}); n != 0 {
		t.Errorf("Allowed and WouldAllow allocate %v times per run", n)
	}
}
