package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// agrees fails t unless Explain's decision is Decide's, and every policy
// it reports as matching lists a matching source.
func agrees(t *testing.T, e *Engine, src spiffeid.ID, ns, svc string, port uint16) Explanation {
	t.Helper()
	x := e.Explain(src, ns, svc, port)
	if want := e.Decide(src, ns, svc, port); x.Decision() != want {
		t.Errorf("Explain(%s, %s/%s:%d) decides %+v; Decide %+v", src, ns, svc, port, x.Decision(), want)
	}
	for _, p := range x.Policies {
		if p.Matched != slices.ContainsFunc(p.Sources, func(s SourceExplanation) bool { return s.Matched }) {
			t.Errorf("Explain(%s, %s/%s:%d): policy %s matched=%v, sources %+v", src, ns, svc, port, p.Name, p.Matched, p.Sources)
		}
		if p.Matched && x.Rule != p.Rule && !slices.ContainsFunc(x.Policies, func(q PolicyExplanation) bool { return q.Matched && q.Rule == x.Rule }) {
			t.Errorf("Explain(%s, %s/%s:%d): policy %s matches but the rule is %q", src, ns, svc, port, p.Name, x.Rule)
		}
	}
	if e.Audits() != (x.WouldBe != nil) || x.WouldBe != nil && x.WouldBe.Allowed != e.WouldAllow(src, ns, svc, port) {
		t.Errorf("Explain(%s, %s/%s:%d): would-be %+v; engine audits %v, would allow %v", src, ns, svc, port, x.WouldBe, e.Audits(), e.WouldAllow(src, ns, svc, port))
	}
	if (x.Default == nil) == (len(x.Policies) == 0) {
		t.Errorf("Explain(%s, %s/%s:%d): %d policies and default %+v: want exactly one of them", src, ns, svc, port, len(x.Policies), x.Default)
	}
	return x
}

// Explain decides as Decide does for every ID shape of the admission
// test, against every kind of source, default and port.
func TestExplainIsDecideShapes(t *testing.T) {
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
				agrees(t, e, spiffeid.ID{}, dst[0], dst[1], port)
				for _, s := range idShapes {
					agrees(t, e, spiffeid.RequireFromString(s), dst[0], dst[1], port)
				}
			}
		}
	}
}

// Explain decides as Decide does for random meshes and callers.
func TestExplainIsDecideRandom(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	names := []string{"a", "b", "c", "sa", "ns"}
	pick := func() string { return names[r.IntN(len(names))] }
	defaults := []Default{AllowMesh, SameNamespace, Deny}
	randomID := func() spiffeid.ID {
		switch r.IntN(6) {
		case 0:
			return spiffeid.ID{}
		case 1:
			return spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("other.example"), "/ns/"+pick()+"/sa/"+pick())
		case 2:
			return id("/vm/" + pick())
		case 3:
			return id("/ns/" + pick() + "/sa/" + pick() + "/x")
		default:
			return sa(pick(), pick())
		}
	}
	for range 300 {
		modes := []Mode{"", Enforce, Audit}
		cfg := Config{TrustDomain: td, MeshDefault: defaults[r.IntN(3)], MeshDefaultMode: modes[r.IntN(3)],
			NamespaceDefaults: map[string]Default{}, NamespaceDefaultModes: map[string]Mode{}}
		for range r.IntN(3) {
			cfg.NamespaceDefaults[pick()] = defaults[r.IntN(3)]
		}
		for range r.IntN(3) {
			cfg.NamespaceDefaultModes[pick()] = modes[r.IntN(3)]
		}
		for i := range r.IntN(6) {
			var srcs []Source
			for range 1 + r.IntN(3) {
				switch r.IntN(5) {
				case 4:
					srcs = append(srcs, fromTD([]string{"other.example", "example.org", "third.example"}[r.IntN(3)]))
				case 0:
					srcs = append(srcs, fromNS(pick()))
				case 1:
					srcs = append(srcs, fromID(randomID().String()))
				case 2:
					srcs = append(srcs, fromSA(pick(), ""))
				default:
					srcs = append(srcs, fromSA(pick(), pick()))
				}
			}
			srcs = slices.DeleteFunc(srcs, func(s Source) bool {
				return s.SpiffeID == "" && s.Namespace == "" && s.ServiceAccount == nil && s.TrustDomain == ""
			})
			if len(srcs) == 0 {
				srcs = []Source{fromNS(pick())}
			}
			var ports []int32
			for range r.IntN(3) {
				ports = append(ports, int32(1+r.IntN(3)))
			}
			slices.Sort(ports)
			p := policy(pick(), fmt.Sprintf("p%d", i), pick(), slices.Compact(ports), srcs...)
			p.Spec.Mode = modes[r.IntN(3)]
			cfg.Policies = append(cfg.Policies, p)
		}
		e, err := NewEngine(cfg)
		if err != nil {
			continue // a random policy can be invalid (an empty SPIFFE ID source)
		}
		for range 50 {
			agrees(t, e, randomID(), pick(), pick(), uint16(1+r.IntN(3)))
			src, ns := randomID(), pick()
			if x, want := e.ExplainDefault(src, ns), e.DecideDefault(src, ns); x.Decision() != want {
				t.Errorf("ExplainDefault(%s, %s) = %+v; DecideDefault %+v", src, ns, x.Decision(), want)
			}
		}
	}
}

// Explain says why each policy and source did not match, and where the
// default comes from.
func TestExplainReasons(t *testing.T) {
	e, err := NewEngine(Config{
		TrustDomain: td, MeshDefault: SameNamespace,
		NamespaceDefaults: map[string]Default{"vault": Deny},
		Policies: []AccessPolicy{
			policy("shop", "web-ports", "web", []int32{80, 443}, fromNS("web")),
			policy("shop", "web-sources", "web", nil, fromSA("frontend", "web"), fromNS("ops"), fromID("spiffe://example.org/vm/billing")),
			policy("shop", "api-from-b", "api", nil, fromTD("example.org"), fromTD("b.example")),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		allowed bool
		lines   []string // each in the flattened explanation
	}
	for _, c := range []struct {
		name    string
		src     spiffeid.ID
		ns, svc string
		port    uint16
		want    want
	}{
		{"port not covered, other SA", sa("web", "backend"), "shop", "web", 8080, want{false, []string{
			"shop/web-ports: port 8080 is not one of its ports (80, 443)",
			"serviceAccount web/frontend: other service account: the caller is web/backend",
			"namespace ops: other namespace: the caller is in web",
			"spiffeID spiffe://example.org/vm/billing: other SPIFFE ID: the caller is spiffe://example.org/ns/web/sa/backend",
			"rule: no AccessPolicy allows spiffe://example.org/ns/web/sa/backend to shop/web:8080",
		}}},
		{"other namespace for an SA source", sa("jobs", "frontend"), "shop", "web", 80, want{false, []string{
			"shop/web-ports: none of its sources matches the caller",
			"serviceAccount web/frontend: other namespace: the caller is in jobs",
		}}},
		{"first matching policy decides", sa("web", "frontend"), "shop", "web", 80, want{true, []string{
			"shop/web-ports: allows it: namespace web matches",
			"shop/web-sources: allows it: serviceAccount web/frontend matches",
			"rule: AccessPolicy shop/web-ports",
		}}},
		{"not a workload", id("/vm/other"), "shop", "web", 80, want{false, []string{
			"namespace web: the caller spiffe://example.org/vm/other is not a Kubernetes workload ID",
		}}},
		{"outside the trust domain", spiffeid.RequireFromString("spiffe://other.example/vm/billing"), "shop", "web", 80, want{false, []string{
			"rule: no AccessPolicy allows spiffe://other.example/vm/billing to shop/web:80",
			"namespace web: the caller is of trust domain other.example: namespace and serviceAccount sources match only workloads of trust domain example.org",
			"spiffeID spiffe://example.org/vm/billing: other SPIFFE ID: the caller is spiffe://other.example/vm/billing",
		}}},
		{"outside the trust domain, default", spiffeid.RequireFromString("spiffe://other.example/vm/billing"), "shop", "cart", 1, want{false, []string{
			"rule: source spiffe://other.example/vm/billing is outside trust domain example.org, and no AccessPolicy names shop/cart: its default (mesh default same-namespace) never admits a caller of another trust domain",
			"the caller is of trust domain other.example, and a default never admits a caller of another trust domain",
		}}},
		{"trust domain source", spiffeid.RequireFromString("spiffe://b.example/ns/default/sa/api"), "shop", "api", 80, want{true, []string{
			"rule: AccessPolicy shop/api-from-b",
			"trustDomain example.org: names this mesh's own trust domain, which a trustDomain source never matches",
			"trustDomain b.example: the caller is of trust domain b.example",
		}}},
		{"trust domain source, other domain", spiffeid.RequireFromString("spiffe://c.example/ns/default/sa/api"), "shop", "api", 80, want{false, []string{
			"trustDomain b.example: other trust domain: the caller is of c.example",
		}}},
		{"own trust domain source", sa("shop", "x"), "shop", "api", 80, want{false, []string{
			"trustDomain example.org: names this mesh's own trust domain",
			"trustDomain b.example: other trust domain: the caller is of this mesh's trust domain example.org",
		}}},
		{"namespace annotation", sa("vault", "x"), "vault", "kms", 1, want{false, []string{
			"default deny from namespace annotation: no AccessPolicy names the service, and namespace vault sets tether.dev/default-policy=deny: nobody may call",
			"rule: namespace default deny (annotation tether.dev/default-policy on vault)",
		}}},
		{"mesh default", sa("web", "x"), "shop", "cart", 1, want{false, []string{
			"default same-namespace from mesh default: no AccessPolicy names the service, and namespace shop has no tether.dev/default-policy annotation: " +
				"the mesh default same-namespace applies: only workloads of namespace shop may call; the caller is in web",
		}}},
		{"mesh default admits", sa("shop", "x"), "shop", "cart", 1, want{true, []string{
			"the mesh default same-namespace applies: the caller is in shop, like the service",
		}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			x := agrees(t, e, c.src, c.ns, c.svc, c.port)
			flat := flatten(x)
			if x.Allowed != c.want.allowed {
				t.Errorf("allowed %v, want %v:\n%s", x.Allowed, c.want.allowed, flat)
			}
			for _, l := range c.want.lines {
				if !strings.Contains(flat, l) {
					t.Errorf("no %q in\n%s", l, flat)
				}
			}
		})
	}
}

// flatten writes x as lines, for the reason tests.
func flatten(x Explanation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "rule: %s\n", x.Rule)
	if x.SourceRefused != "" {
		fmt.Fprintf(&b, "refused: %s\n", x.SourceRefused)
	}
	for _, p := range x.Policies {
		fmt.Fprintf(&b, "%s: %s\n", p.Name, p.Reason)
		for _, s := range p.Sources {
			fmt.Fprintf(&b, "  %s: %s\n", s.Source, s.Reason)
		}
	}
	if d := x.Default; d != nil {
		fmt.Fprintf(&b, "default %s from %s: %s\n", d.Default, d.From, d.Reason)
	}
	return b.String()
}

// ExplainDefault decides as DecideDefault does, for every ID shape and
// default, in namespaces with and without an annotation, and none.
func TestExplainDefaultIsDecideDefault(t *testing.T) {
	for _, def := range []Default{AllowMesh, SameNamespace, Deny} {
		e, err := NewEngine(Config{TrustDomain: td, MeshDefault: def,
			NamespaceDefaults: map[string]Default{"open": AllowMesh, "closed": Deny, "near": SameNamespace}})
		if err != nil {
			t.Fatal(err)
		}
		for _, ns := range []string{"shop", "open", "closed", "near", "monitoring", ""} {
			srcs := []spiffeid.ID{{}}
			for _, s := range idShapes {
				srcs = append(srcs, spiffeid.RequireFromString(s))
			}
			for _, src := range srcs {
				x := e.ExplainDefault(src, ns)
				if want := e.DecideDefault(src, ns); x.Decision() != want {
					t.Errorf("default %s, namespace %q, %s: ExplainDefault %+v; DecideDefault %+v", def, ns, src, x.Decision(), want)
				}
				if x.Default == nil || len(x.Policies) != 0 {
					t.Errorf("default %s, namespace %q, %s: %+v", def, ns, src, x)
				}
			}
		}
	}
}

// Explain reports each policy's mode, the enforced decision over the
// enforcing policies and defaults, and the would-be one with the
// audit-mode ones enforcing.
func TestExplainAuditModes(t *testing.T) {
	e, err := NewEngine(Config{
		TrustDomain: td, MeshDefault: AllowMesh,
		NamespaceDefaults:     map[string]Default{"vault": Deny},
		NamespaceDefaultModes: map[string]Mode{"vault": Audit},
		Policies: []AccessPolicy{
			audited(policy("shop", "web-audit", "web", nil, fromSA("frontend", "web"))),
			policy("shop", "db-enforce", "db", nil, fromNS("shop")),
			audited(policy("shop", "db-audit", "db", nil, fromNS("ops"))),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Only an audit policy names shop/web: the mesh default enforces, the
	// audit policy would deny.
	x := agrees(t, e, sa("web", "backend"), "shop", "web", 80)
	if !x.Allowed || !x.AuditDenied || x.Default == nil || x.Default.From != FromMeshDefault || len(x.Policies) != 0 {
		t.Errorf("shop/web, enforced: %s", flatten(x))
	}
	if w := x.WouldBe; w == nil || w.Allowed || len(w.Policies) != 1 || w.Policies[0].Mode != Audit || w.Policies[0].Rule != "AccessPolicy shop/web-audit (audit mode)" ||
		!strings.Contains(flatten(*w), "serviceAccount web/frontend: other service account: the caller is web/backend") || x.AuditRule != w.Rule {
		t.Errorf("shop/web, would-be: %+v", x.WouldBe)
	}
	// Both modes on shop/db: the enforcing one decides, the audit one
	// only in the would-be decision.
	x = agrees(t, e, sa("ops", "x"), "shop", "db", 5432)
	if x.Allowed || len(x.Policies) != 1 || x.Policies[0].Mode != Enforce || x.Rule != "no AccessPolicy allows spiffe://example.org/ns/ops/sa/x to shop/db:5432" {
		t.Errorf("shop/db, enforced: %s", flatten(x))
	}
	if w := x.WouldBe; w == nil || !w.Allowed || w.Rule != "AccessPolicy shop/db-audit (audit mode)" || len(w.Policies) != 2 {
		t.Errorf("shop/db, would-be: %+v", x.WouldBe)
	}
	// vault's deny is in audit mode: allow-mesh enforces, in its place.
	x = agrees(t, e, sa("shop", "x"), "vault", "kms", 1)
	if !x.Allowed || !x.AuditDenied || x.Default == nil || x.Default.From != FromMeshDefault || !strings.Contains(x.Default.Reason, "is in audit mode") {
		t.Errorf("vault, enforced: %s", flatten(x))
	}
	if w := x.WouldBe; w == nil || w.Default == nil || w.Default.From != FromNamespaceAnnotation || !strings.Contains(w.Rule, "audit mode") {
		t.Errorf("vault, would-be: %+v", x.WouldBe)
	}
}
