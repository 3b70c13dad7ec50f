package xdsclient_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// auditState is shopState with web under an audit policy that names only
// api, and namespace locked's default (deny) in audit mode.
func auditState(mode policy.Mode) discovery.State {
	st := shopState()
	p := allow("shop", "web-audit", "web", nil, saSource("api"))
	p.Spec.Mode = mode
	st.Policies = append(st.Policies, p)
	st.Namespaces[1].DefaultPolicyMode = "audit"
	if mode == policy.Enforce {
		st.Namespaces[1].DefaultPolicyMode = "enforce"
	}
	return st
}

func auditRegistry(t *testing.T, mode policy.Mode) *discovery.Registry {
	t.Helper()
	reg, err := discovery.NewRegistry(testutil.TrustDomain, wire.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(auditState(mode)); err != nil {
		t.Fatal(err)
	}
	return reg
}

// shadowOf returns the shadow rules of the RBAC filters of id's inbound
// listener, by stat prefix.
func shadowOf(t *testing.T, res map[resource.Type][]types.Resource) map[string]*rbacv3.RBAC {
	t.Helper()
	out := map[string]*rbacv3.RBAC{}
	for _, r := range res[resource.ListenerType] {
		for _, fc := range r.(*listenerv3.Listener).GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetName() != wellknown.RoleBasedAccessControl {
					continue
				}
				var rb rbacfilterv3.RBAC
				if err := f.GetTypedConfig().UnmarshalTo(&rb); err != nil {
					t.Fatal(err)
				}
				if rb.GetShadowRules() != nil {
					out[rb.GetStatPrefix()] = rb.GetShadowRules()
				}
			}
		}
	}
	return out
}

// Audit mode end to end through the wire: discovery's name table and RBAC
// shadow rules, parsed by the sidecar's view, give the audit verdict at
// both ends; switched to Enforce, the same callers are denied (and the
// name is hidden), and the shadow rules are gone.
func TestAuditRoundTrip(t *testing.T) {
	snap := auditRegistry(t, policy.Audit).Snapshot()

	// The caller's end: db may reach web (mesh default), audit-denied.
	dbView, err := xdsclient.NewViewFor(dbID, resources(t, snap, dbID))
	if err != nil {
		t.Fatal(err)
	}
	web, ok := dbView.Service(webKey)
	if !ok {
		t.Fatal("db's view does not list web while its policy audits")
	}
	if p, _ := web.Port(80); !p.Allowed || !p.AuditDenied || !strings.Contains(p.AuditRule, "in audit mode: AccessPolicy shop/web-audit") {
		t.Errorf("db's port web:80 = %+v; want allowed and audit-denied by shop/web-audit", p)
	}
	d, err := dbView.Outbound(webKey, 80)
	if err != nil || d.AuditRule == "" || d.Rule != "mesh default allow-mesh" {
		t.Errorf("db Outbound(web:80) = %+v, %v; want a destination with the audit rule", d, err)
	}
	if _, ok := dbView.Lookup("web.shop.svc.cluster.local."); !ok {
		t.Error("web's name is not answered while its policy audits")
	}
	apiView, err := xdsclient.NewViewFor(apiID, resources(t, snap, apiID))
	if err != nil {
		t.Fatal(err)
	}
	apiWeb := mustService(t, apiView, webKey)
	if p, _ := apiWeb.Port(80); !p.Allowed || p.AuditDenied || p.AuditRule != "" {
		t.Errorf("api's port web:80 = %+v; want allowed, not audit-denied (the policy names api)", p)
	}

	// The destination's end: web's RBAC carries shadow rules named by the
	// would-be rule, admitting api only.
	webRes := resources(t, snap, webID)
	shadows := shadowOf(t, webRes)
	sh, ok := shadows["inbound_shop_web_80"]
	if len(shadows) != 1 || !ok {
		t.Fatalf("web's shadow rules = %v; want one, on shop/web:80", shadows)
	}
	for name, p := range sh.GetPolicies() {
		if name != "no AccessPolicy allows the caller to shop/web:80 (in audit mode: AccessPolicy shop/web-audit)" ||
			len(p.GetPrincipals()) != 1 || p.GetPrincipals()[0].GetAuthenticated().GetPrincipalName().GetExact() != apiID.String() {
			t.Errorf("shadow policy %q = %v", name, p)
		}
	}
	webView, err := xdsclient.NewViewForPod(webID, []netip.Addr{ip("10.1.0.1")}, webRes)
	if err != nil {
		t.Fatal(err)
	}
	if d := webView.Authorize(dbID, 8080); !d.Allowed || !d.AuditDenied || !strings.Contains(d.AuditRule, "shop/web-audit") {
		t.Errorf("web Authorize(db) = %+v; want allowed, audit-denied", d)
	}
	if d := webView.Authorize(apiID, 8080); !d.Allowed || d.AuditDenied {
		t.Errorf("web Authorize(api) = %+v; want allowed", d)
	}
	if d := webView.Authorize(foreign, 8080); d.Allowed || d.AuditDenied {
		t.Errorf("web Authorize(foreign) = %+v; want denied, never merely audited", d)
	}
	if rule, err := webView.AuditAuthorizer()(dbID, 8080); err != nil || !strings.Contains(rule, "shop/web-audit") {
		t.Errorf("AuditAuthorizer(db) = %q, %v", rule, err)
	}
	if rule, err := webView.AuditAuthorizer()(foreign, 8080); !errors.Is(err, proxy.ErrDenied) || rule != "" {
		t.Errorf("AuditAuthorizer(foreign) = %q, %v; want a denial", rule, err)
	}

	// An audited deny default: shadow rules that admit nobody.
	vaultView, err := xdsclient.NewViewForPod(vaultID, []netip.Addr{ip("10.3.0.1")}, resources(t, snap, vaultID))
	if err != nil {
		t.Fatal(err)
	}
	if d := vaultView.Authorize(webID, 8200); !d.Allowed || !d.AuditDenied ||
		!strings.Contains(d.AuditRule, "namespace default deny (annotation tether.dev/default-policy on locked, audit mode)") {
		t.Errorf("vault Authorize(web) = %+v; want allowed, audit-denied by locked's default", d)
	}

	// Enforce: denied at both ends, the name hidden, no shadow rules.
	snap = auditRegistry(t, policy.Enforce).Snapshot()
	dbView, err = xdsclient.NewViewFor(dbID, resources(t, snap, dbID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dbView.Outbound(webKey, 80); err == nil {
		t.Error("db still reaches web once the policy is enforced")
	}
	if _, ok := dbView.Lookup("web.shop.svc.cluster.local."); ok {
		t.Error("web's name is still answered to db once the policy is enforced")
	}
	webRes = resources(t, snap, webID)
	if s := shadowOf(t, webRes); len(s) != 0 {
		t.Errorf("shadow rules %v with nothing in audit mode", s)
	}
	webView, err = xdsclient.NewViewForPod(webID, []netip.Addr{ip("10.1.0.1")}, webRes)
	if err != nil {
		t.Fatal(err)
	}
	if d := webView.Authorize(dbID, 8080); d.Allowed || d.AuditDenied {
		t.Errorf("web Authorize(db) = %+v once enforced; want denied", d)
	}
}

func mustService(t *testing.T, v *xdsclient.View, key wire.ServiceKey) xdsclient.Service {
	t.Helper()
	s, ok := v.Service(key)
	if !ok {
		t.Fatalf("%s not in the view", key)
	}
	return s
}

// editShadow applies f to the first RBAC filter of the inbound listener
// with shadow rules.
func editShadow(t *testing.T, res map[resource.Type][]types.Resource, f func(*rbacfilterv3.RBAC)) {
	t.Helper()
	for _, fc := range res[resource.ListenerType][0].(*listenerv3.Listener).FilterChains {
		for _, fl := range fc.Filters {
			var rb rbacfilterv3.RBAC
			if fl.GetName() != wellknown.RoleBasedAccessControl || fl.GetTypedConfig().UnmarshalTo(&rb) != nil || rb.ShadowRules == nil {
				continue
			}
			f(&rb)
			a, err := anypb.New(&rb)
			if err != nil {
				t.Fatal(err)
			}
			fl.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
			return
		}
	}
	t.Fatal("no RBAC filter with shadow rules")
}

func shadowPolicy(rb *rbacfilterv3.RBAC) (string, *rbacv3.Policy) {
	for n, p := range rb.ShadowRules.Policies {
		return n, p
	}
	return "", nil
}

func renameShadow(rb *rbacfilterv3.RBAC, name string) {
	n, p := shadowPolicy(rb)
	delete(rb.ShadowRules.Policies, n)
	rb.ShadowRules.Policies[name] = p
}

func nobody() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}}}
}

// Malformed audit fields and shadow rules are refused (and so NACKed):
// each case is one way an attacker on the wire, or a bug, could make the
// sidecar let in, or log, something discovery did not mean.
func TestNewViewRejectsMalformedAudit(t *testing.T) {
	snap := auditRegistry(t, policy.Audit).Snapshot()
	inbound := resources(t, snap, webID)
	outbound := resources(t, snap, dbID)
	for _, good := range []map[resource.Type][]types.Resource{inbound, outbound} {
		if _, err := xdsclient.NewView(good); err != nil {
			t.Fatalf("the unmodified resources: %v", err)
		}
	}
	webPort := func(nt *discoveryv1.NameTable) *discoveryv1.ServicePort {
		for _, s := range nt.Services {
			if s.Name == "web" {
				return s.Ports[0]
			}
		}
		panic("no web")
	}
	tests := []struct {
		name   string
		res    map[resource.Type][]types.Resource
		f      func(map[resource.Type][]types.Resource)
		errHas string
	}{
		{"shadow rules with two policies", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) {
				_, p := shadowPolicy(rb)
				rb.ShadowRules.Policies["second"] = p
			})
		}, "2 policies, want exactly one"},
		{"shadow rules without a policy", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) { rb.ShadowRules.Policies = nil })
		}, "0 policies"},
		{"shadow policy without a name", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) { renameShadow(rb, "") })
		}, "no name"},
		{"shadow rule with a newline", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) { renameShadow(rb, "AccessPolicy a\n{\"decision\":\"allow\"}") })
		}, "not printable UTF-8"},
		{"shadow rule too long", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) { renameShadow(rb, strings.Repeat("x", xdsclient.MaxAuditRuleLen+1)) })
		}, "at most 4096"},
		{"shadow action deny", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) { rb.ShadowRules.Action = rbacv3.RBAC_DENY })
		}, "want ALLOW"},
		{"shadow principal any", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) {
				_, p := shadowPolicy(rb)
				p.Principals[0] = &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
			})
		}, "not an authenticated principal name"},
		{"shadow principal not_id of an ID", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) {
				_, p := shadowPolicy(rb)
				p.Principals[0] = &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p.Principals[0]}}
			})
		}, "not an authenticated principal name"},
		{"shadow nobody beside a principal", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) {
				_, p := shadowPolicy(rb)
				p.Principals = append(p.Principals, nobody())
			})
		}, "principal 1"},
		{"shadow prefix narrower than a trust domain", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) {
				_, p := shadowPolicy(rb)
				p.Principals[0].GetAuthenticated().PrincipalName = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://cluster.local/ns/shop/"}}
			})
		}, "only whole trust domains"},
		{"shadow permission not any", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) {
				_, p := shadowPolicy(rb)
				p.Permissions = []*rbacv3.Permission{{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: 8080}}}
			})
		}, "only the any permission"},
		{"nobody in the enforced rules", inbound, func(r map[resource.Type][]types.Resource) {
			editShadow(t, r, func(rb *rbacfilterv3.RBAC) {
				rb.Rules.Policies = map[string]*rbacv3.Policy{"allowed": {
					Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}}, Principals: []*rbacv3.Principal{nobody()},
				}}
			})
		}, "not an authenticated principal name"},
		{"audit_denied on a denied port", outbound, func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) { webPort(nt).Allowed = false })
		}, "audit_denied on a port that is not allowed"},
		{"audit_denied without a rule", outbound, func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) { webPort(nt).AuditRule = "" })
		}, "audit_denied without audit_rule"},
		{"audit_rule without audit_denied", outbound, func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) { webPort(nt).AuditDenied = false })
		}, "audit_rule without audit_denied"},
		{"audit_rule with control characters", outbound, func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) { webPort(nt).AuditRule = "x\r\ny" })
		}, "not printable UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := mutate(tt.res, tt.f)
			v, err := xdsclient.NewView(bad)
			if err == nil {
				t.Fatalf("NewView accepted it: %d services", len(v.Services()))
			}
			if !errors.Is(err, xdsclient.ErrMalformed) || !strings.Contains(err.Error(), tt.errHas) {
				t.Errorf("err = %v, want ErrMalformed saying %q", err, tt.errHas)
			}
		})
	}
}

// A sidecar NACKs shadow rules it cannot read and keeps its view.
func TestClientNACKsMalformedShadowRules(t *testing.T) {
	p := newPKI(t)
	cs := startCacheServer(t, p)
	good := resources(t, auditRegistry(t, policy.Audit).Snapshot(), webID)
	cs.set(t, webID, "1", good)
	c := runClient(t, p, cs.addr, webID, nil)
	v := c.ready(t, 5*time.Second)
	bad := mutate(good, func(r map[resource.Type][]types.Resource) {
		editShadow(t, r, func(rb *rbacfilterv3.RBAC) { renameShadow(rb, "") })
	})
	cs.set(t, webID, "2", bad)
	testutil.Eventually(t, "an LDS NACK", 2*time.Second, func() bool {
		for _, n := range cs.nacked() {
			if n.GetTypeUrl() == resource.ListenerType && strings.Contains(n.GetErrorDetail().GetMessage(), "shadow_rules") {
				return true
			}
		}
		return false
	})
	if c.View() != v {
		t.Error("a NACKed listener replaced the view")
	}
}
