package policy

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func id(path string) spiffeid.ID { return spiffeid.RequireFromPath(td, path) }

func sa(ns, name string) spiffeid.ID { return id("/ns/" + ns + "/sa/" + name) }

func policy(ns, name, svc string, ports []int32, sources ...Source) AccessPolicy {
	return AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: AccessPolicySpec{
			Destination: Destination{Service: svc, Ports: ports},
			Sources:     sources,
		},
	}
}

func fromSA(name, ns string) Source {
	return Source{ServiceAccount: &ServiceAccountSource{Name: name, Namespace: ns}}
}
func fromNS(ns string) Source { return Source{Namespace: ns} }
func fromID(id string) Source { return Source{SpiffeID: id} }
func fromTD(td string) Source { return Source{TrustDomain: td} }

func TestParseDefault(t *testing.T) {
	for _, d := range []Default{AllowMesh, SameNamespace, Deny} {
		got, err := wire.ParseDefault(d.String())
		if err != nil || got != d {
			t.Errorf("wire.ParseDefault(%q) = %v, %v; want %v", d.String(), got, err, d)
		}
	}
	for _, s := range []string{"", "allow", "Deny", "same_namespace"} {
		_, err := wire.ParseDefault(s)
		if !errors.Is(err, wire.ErrUnknownDefault) || !strings.Contains(err.Error(), "allow-mesh, same-namespace or deny") {
			t.Errorf("wire.ParseDefault(%q) error = %v; want wire.ErrUnknownDefault naming the choices", s, err)
		}
	}
}

func TestDecide(t *testing.T) {
	policies := []AccessPolicy{
		// shop/web: frontend SA (same namespace), batch SA from jobs, only on 8080.
		policy("shop", "web-from-frontend", "web", []int32{8080}, fromSA("frontend", ""), fromSA("batch", "jobs")),
		// shop/web on all ports for monitoring.
		policy("shop", "web-from-monitoring", "web", nil, fromNS("monitoring")),
		// shop/db: one exact SPIFFE ID, a non-Kubernetes workload.
		policy("shop", "db-from-vm", "db", []int32{5432}, fromID("spiffe://example.org/vm/billing")),
		// A policy whose SA source looks like another namespace's SA must not match shop's.
		policy("pay", "api", "api", nil, fromSA("frontend", "")),
	}
	e, err := NewEngine(Config{
		TrustDomain: td,
		MeshDefault: AllowMesh,
		NamespaceDefaults: map[string]Default{
			"private": SameNamespace,
			"vault":   Deny,
			"open":    AllowMesh,
		},
		Policies: policies,
	})
	if err != nil {
		t.Fatal(err)
	}
	foreign := spiffeid.RequireFromString("spiffe://other.org/ns/shop/sa/frontend")

	tests := []struct {
		name     string
		src      spiffeid.ID
		ns, svc  string
		port     uint16
		allowed  bool
		ruleHave string
	}{
		{"SA in policy namespace", sa("shop", "frontend"), "shop", "web", 8080, true, "AccessPolicy shop/web-from-frontend"},
		{"SA on a port the policy leaves out", sa("shop", "frontend"), "shop", "web", 9090, false, "no AccessPolicy allows spiffe://example.org/ns/shop/sa/frontend to shop/web:9090"},
		{"same SA name in another namespace", sa("other", "frontend"), "shop", "web", 8080, false, "no AccessPolicy allows"},
		{"cross-namespace SA", sa("jobs", "batch"), "shop", "web", 8080, true, "AccessPolicy shop/web-from-frontend"},
		{"cross-namespace SA name in policy namespace", sa("shop", "batch"), "shop", "web", 8080, false, "no AccessPolicy allows"},
		{"namespace source, any port", sa("monitoring", "prometheus"), "shop", "web", 9100, true, "AccessPolicy shop/web-from-monitoring"},
		{"same namespace is not enough once a policy exists", sa("shop", "cart"), "shop", "web", 8080, false, "no AccessPolicy allows"},
		{"exact SPIFFE ID", id("/vm/billing"), "shop", "db", 5432, true, "AccessPolicy shop/db-from-vm"},
		{"exact SPIFFE ID, wrong port", id("/vm/billing"), "shop", "db", 5433, false, "no AccessPolicy allows"},
		{"SPIFFE ID prefix does not match", id("/vm/billing/extra"), "shop", "db", 5432, false, "no AccessPolicy allows"},
		{"SA source in pay", sa("pay", "frontend"), "pay", "api", 443, true, "AccessPolicy pay/api"},
		{"SA source in pay, shop's SA", sa("shop", "frontend"), "pay", "api", 443, false, "no AccessPolicy allows"},
		{"unnamed service, mesh default", sa("shop", "frontend"), "shop", "cart", 80, true, "mesh default allow-mesh"},
		{"non-k8s ID, mesh default allow-mesh", id("/vm/billing"), "shop", "cart", 80, true, "mesh default allow-mesh"},
		{"namespace same-namespace, same", sa("private", "a"), "private", "svc", 80, true, "namespace default same-namespace (annotation tether.dev/default-policy on private)"},
		{"namespace same-namespace, other", sa("shop", "a"), "private", "svc", 80, false, "namespace default same-namespace (annotation tether.dev/default-policy on private)"},
		{"namespace same-namespace, non-k8s ID", id("/vm/private"), "private", "svc", 80, false, "namespace default same-namespace"},
		{"namespace same-namespace, ns-like but not SA path", id("/ns/private"), "private", "svc", 80, false, "namespace default same-namespace"},
		{"namespace deny", sa("vault", "a"), "vault", "svc", 80, false, "namespace default deny (annotation tether.dev/default-policy on vault)"},
		{"namespace allow-mesh", sa("shop", "a"), "open", "svc", 80, true, "namespace default allow-mesh"},
		{"foreign trust domain, named service", foreign, "shop", "web", 8080, false, "no AccessPolicy allows " + foreign.String()},
		{"foreign trust domain, default allow-mesh", foreign, "shop", "cart", 80, false, "outside trust domain example.org, and no AccessPolicy names shop/cart"},
		{"zero ID", spiffeid.ID{}, "shop", "cart", 80, false, "no SPIFFE ID"},
		{"SA path with an extra segment", id("/ns/private/sa/a/b"), "private", "svc", 80, false, "namespace default same-namespace"},
		{"namespace path with a slash", id("/ns/private/x/sa/a"), "private", "svc", 80, false, "namespace default same-namespace"},
		{"namespace named sa", sa("sa", "a"), "sa", "svc", 80, true, "mesh default allow-mesh"},
		{"policy source, SA named sa", sa("shop", "sa"), "shop", "web", 8080, false, "no AccessPolicy allows"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			agrees(t, e, tc.src, tc.ns, tc.svc, tc.port) // Explain decides as Decide
			d := e.Decide(tc.src, tc.ns, tc.svc, tc.port)
			if d.Allowed != tc.allowed || !strings.Contains(d.Rule, tc.ruleHave) {
				t.Fatalf("Decide(%s, %s/%s:%d) = %+v; want allowed=%v, rule containing %q",
					tc.src, tc.ns, tc.svc, tc.port, d, tc.allowed, tc.ruleHave)
			}
			if got := e.Allowed(tc.src, tc.ns, tc.svc, tc.port); got != tc.allowed {
				t.Fatalf("Allowed(%s, %s/%s:%d) = %v, Decide says %v", tc.src, tc.ns, tc.svc, tc.port, got, tc.allowed)
			}
		})
	}
}

func TestDecideMeshDefaults(t *testing.T) {
	tests := []struct {
		def     Default
		src     spiffeid.ID
		allowed bool
	}{
		{AllowMesh, sa("a", "x"), true},
		{SameNamespace, sa("b", "x"), true},
		{SameNamespace, sa("a", "x"), false},
		{SameNamespace, id("/vm/b"), false},
		{Deny, sa("b", "x"), false},
	}
	for _, tc := range tests {
		t.Run(tc.def.String()+" "+tc.src.String(), func(t *testing.T) {
			e, err := NewEngine(Config{TrustDomain: td, MeshDefault: tc.def})
			if err != nil {
				t.Fatal(err)
			}
			agrees(t, e, tc.src, "b", "svc", 80)
			d := e.Decide(tc.src, "b", "svc", 80)
			if want := "mesh default " + tc.def.String(); d.Allowed != tc.allowed || d.Rule != want {
				t.Fatalf("Decide = %+v; want allowed=%v rule %q", d, tc.allowed, want)
			}
		})
	}
}

// TestDecideOrder checks that the first allowing policy by name is reported,
// and that an empty namespace means "default".
func TestDecideOrder(t *testing.T) {
	e, err := NewEngine(Config{TrustDomain: td, MeshDefault: Deny, Policies: []AccessPolicy{
		policy("", "zz", "web", nil, fromNS("a")),
		policy("", "aa", "web", nil, fromNS("a")),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(sa("a", "x"), "default", "web", 1); !d.Allowed || d.Rule != "AccessPolicy default/aa" {
		t.Fatalf("Decide = %+v", d)
	}
}

func TestNewEngineErrors(t *testing.T) {
	good := policy("shop", "p", "web", nil, fromNS("a"))
	bad := policy("shop", "broken", "web", nil)
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no trust domain", Config{MeshDefault: Deny}, "trust domain is required"},
		{"no mesh default", Config{TrustDomain: td}, "mesh default"},
		{"bad namespace default", Config{TrustDomain: td, MeshDefault: Deny, NamespaceDefaults: map[string]Default{"x": 42}}, "namespace x default"},
		{"invalid policy", Config{TrustDomain: td, MeshDefault: Deny, Policies: []AccessPolicy{good, bad}}, "shop/broken"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEngine(tc.cfg)
			if err == nil || e != nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewEngine = %v, %v; want an error containing %q", e, err, tc.want)
			}
		})
	}
}

// TestEngineImmutable checks that changing the caller's policies after
// NewEngine does not change decisions, and that Decide is safe for
// concurrent use (run with -race).
func TestEngineImmutable(t *testing.T) {
	ps := []AccessPolicy{policy("shop", "p", "web", []int32{80}, fromSA("frontend", ""))}
	nsd := map[string]Default{"shop": Deny}
	e, err := NewEngine(Config{TrustDomain: td, MeshDefault: AllowMesh, NamespaceDefaults: nsd, Policies: ps})
	if err != nil {
		t.Fatal(err)
	}
	ps[0].Spec.Sources[0].ServiceAccount.Name = "attacker"
	ps[0].Spec.Destination.Ports[0] = 443
	nsd["shop"] = AllowMesh

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if d := e.Decide(sa("shop", "frontend"), "shop", "web", 80); !d.Allowed {
					t.Errorf("Decide = %+v after the caller changed its copy", d)
					return
				}
				if d := e.Decide(sa("shop", "attacker"), "shop", "web", 80); d.Allowed {
					t.Errorf("attacker allowed: %+v", d)
					return
				}
				if d := e.Decide(sa("shop", "x"), "shop", "cart", 80); d.Allowed {
					t.Errorf("namespace default changed: %+v", d)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkDecide(b *testing.B) {
	var ps []AccessPolicy
	for _, svc := range []string{"a", "b", "c", "d", "web"} {
		ps = append(ps, policy("shop", svc+"-p", svc, []int32{8080}, fromNS("x"), fromSA("y", "z"), fromSA("frontend", "")))
	}
	e, err := NewEngine(Config{TrustDomain: td, MeshDefault: Deny, Policies: ps})
	if err != nil {
		b.Fatal(err)
	}
	src := sa("shop", "frontend")
	for b.Loop() {
		if !e.Decide(src, "shop", "web", 8080).Allowed {
			b.Fatal("denied")
		}
	}
}
