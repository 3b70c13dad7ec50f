package discovery

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// exampleMesh is the package documentation's example.
const exampleMesh = `
trustDomain: cluster.local
defaultPolicy: allow-mesh
namespaces:
  - name: payments
    defaultPolicy: same-namespace
services:
  - name: web
    namespace: default
    clusterIPs: [10.96.0.10]
    ports:
      - name: http
        port: 80
        targetPort: 8080
        appProtocol: http
    endpoints:
      - address: 127.0.0.1
        port: 15006
        serviceAccount: web
  - name: api
    ports:
      - port: 8080
    endpoints:
      - address: 127.0.0.2
        identity: spiffe://cluster.local/ns/default/sa/api
  - name: ledger
    namespace: payments
    ports:
      - port: 5432
    endpoints:
      - address: 127.0.0.3
        serviceAccount: ledger
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata:
      name: api-from-web
      namespace: default
    spec:
      destination:
        service: api
        ports: [8080]
      sources:
        - serviceAccount:
            name: web
        - namespace: payments
        - spiffeID: spiffe://cluster.local/batch/report
`

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func id(path string) spiffeid.ID { return spiffeid.RequireFromPath(td, path) }

func newRegistry(t *testing.T) *Registry {
	t.Helper()
	r, err := NewRegistry(td, policy.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestExampleFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, exampleMesh)
	mf, err := LoadMeshFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if mf.TrustDomain != td || mf.DefaultPolicy != policy.AllowMesh {
		t.Errorf("file settings: %v %v", mf.TrustDomain, mf.DefaultPolicy)
	}
	r := newRegistry(t)
	if err := r.Update(mf.State); err != nil {
		t.Fatal(err)
	}
	snap := r.Snapshot()
	if snap.Version() != 1 {
		t.Errorf("version %d, want 1", snap.Version())
	}
	var keys []string
	for _, s := range snap.Services() {
		keys = append(keys, s.Key.String())
	}
	if got := strings.Join(keys, " "); got != "default/api default/web payments/ledger" {
		t.Errorf("services sorted: %s", got)
	}
	web, ok := snap.Service(ServiceKey{Namespace: "default", Name: "web"})
	if !ok {
		t.Fatal("no default/web")
	}
	if p := web.Ports[0]; p.Port != 80 || p.TargetPort != 8080 || p.Name != "http" || p.AppProtocol != "http" {
		t.Errorf("web port %+v", p)
	}
	if e := web.Endpoints[0]; e.Port != 15006 || e.Addr.String() != "127.0.0.1" {
		t.Errorf("web endpoint %+v", e)
	}
	if ids := web.Identities(td); len(ids) != 1 || ids[0] != id("/ns/default/sa/web") {
		t.Errorf("web identities %v", ids)
	}
	api, _ := snap.Service(ServiceKey{Namespace: "default", Name: "api"})
	if ids := api.Identities(td); len(ids) != 1 || ids[0] != id("/ns/default/sa/api") {
		t.Errorf("api identities %v", ids)
	}
	if ip := web.ClusterIPs; len(ip) != 1 || ip[0].String() != "10.96.0.10" {
		t.Errorf("cluster IPs %v", ip)
	}

	eng := snap.Engine()
	for _, c := range []struct {
		src, ns, svc string
		port         uint16
		allowed      bool
		rule         string
	}{
		{"/ns/default/sa/web", "default", "api", 8080, true, "AccessPolicy default/api-from-web"},
		{"/ns/payments/sa/ledger", "default", "api", 8080, true, "AccessPolicy default/api-from-web"},
		{"/batch/report", "default", "api", 8080, true, "AccessPolicy default/api-from-web"},
		{"/ns/default/sa/api", "default", "api", 8080, false, "no AccessPolicy"},
		{"/ns/default/sa/api", "default", "web", 80, true, "mesh default allow-mesh"},
		{"/ns/default/sa/web", "payments", "ledger", 5432, false, "namespace default same-namespace"},
		{"/ns/payments/sa/other", "payments", "ledger", 5432, true, "namespace default same-namespace"},
	} {
		d := eng.Decide(id(c.src), c.ns, c.svc, c.port)
		if d.Allowed != c.allowed || !strings.Contains(d.Rule, c.rule) {
			t.Errorf("%s -> %s/%s:%d = %+v, want %v by %q", c.src, c.ns, c.svc, c.port, d, c.allowed, c.rule)
		}
	}

	if got := snap.Reachable(id("/ns/default/sa/web")); len(got) != 2 || got[0] != (ServiceKey{Namespace: "default", Name: "api"}) || got[1] != (ServiceKey{Namespace: "default", Name: "web"}) {
		t.Errorf("web reaches %v", got)
	}
	var srcs []string
	for _, s := range snap.Sources() {
		srcs = append(srcs, s.String())
	}
	if got, want := strings.Join(srcs, " "), "spiffe://cluster.local/batch/report spiffe://cluster.local/ns/default/sa/api spiffe://cluster.local/ns/default/sa/web spiffe://cluster.local/ns/payments/sa/ledger"; got != want {
		t.Errorf("sources\n got %s\nwant %s", got, want)
	}
	pairs := snap.AllowedPairs()
	// 4 sources reach web by the mesh default, 3 reach api by the policy,
	// ledger reaches itself by the namespace default.
	if len(pairs) != 8 {
		t.Errorf("%d pairs: %+v", len(pairs), pairs)
	}
	for _, p := range pairs {
		if p.Service == (ServiceKey{Namespace: "default", Name: "api"}) && (p.Source == id("/ns/default/sa/api") || p.Rule != "AccessPolicy default/api-from-web") {
			t.Errorf("unexpected pair %+v", p)
		}
	}
}

func TestRegistryUpdateRejects(t *testing.T) {
	good := func() State {
		mf, err := ParseMeshFile([]byte(exampleMesh))
		if err != nil {
			t.Fatal(err)
		}
		return mf.State
	}
	for _, c := range []struct {
		name   string
		change func(*State)
		want   string
	}{
		{"bad service name", func(s *State) { s.Services[0].Key.Name = "Web_1" }, `default/Web_1: name "Web_1" is not a valid Service name`},
		{"bad namespace", func(s *State) { s.Services[0].Key.Namespace = "x.y" }, `namespace "x.y" is not a valid namespace name`},
		{"port zero", func(s *State) { s.Services[1].Ports[0].Port = 0 }, "default/api: ports[0]: port 0 is outside 1-65535"},
		{"duplicate port", func(s *State) { s.Services[1].Ports = append(s.Services[1].Ports, Port{Port: 8080}) }, "default/api: ports[1]: port 8080 is listed twice"},
		{"duplicate service", func(s *State) { s.Services = append(s.Services, s.Services[1]) }, "service default/api is listed twice"},
		{"no identity", func(s *State) { s.Services[0].Endpoints[0].ServiceAccount = "" }, "default/web: endpoints[0]: endpoint has neither an identity nor a service account"},
		{"foreign identity", func(s *State) {
			s.Services[1].Endpoints[0].ID = spiffeid.RequireFromString("spiffe://other.org/x")
		}, "identity spiffe://other.org/x is outside trust domain cluster.local"},
		{"bad namespace default", func(s *State) { s.Namespaces[0].DefaultPolicy = "open" }, `namespace payments: defaultPolicy: unknown default policy "open"`},
		{"bad namespace default mode", func(s *State) { s.Namespaces[0].DefaultPolicyMode = "Audit" }, `namespace payments: defaultPolicyMode: unknown policy mode "Audit": use enforce or audit`},
		{"bad policy mode", func(s *State) { s.Policies[0].Spec.Mode = "dry-run" }, `invalid AccessPolicy default/api-from-web: spec.mode: "dry-run" is not a mode: use Enforce or Audit`},
		{"duplicate namespace", func(s *State) { s.Namespaces = append(s.Namespaces, s.Namespaces[0]) }, "namespace payments is listed twice"},
		{"invalid policy", func(s *State) { s.Policies[0].Spec.Sources = nil }, "invalid AccessPolicy default/api-from-web: spec.sources: at least one source is required"},
		{"duplicate policy", func(s *State) { s.Policies = append(s.Policies, s.Policies[0]) }, "AccessPolicy default/api-from-web is listed twice"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRegistry(t)
			if err := r.Update(good()); err != nil {
				t.Fatal(err)
			}
			before := r.Snapshot()
			st := good()
			c.change(&st)
			err := r.Update(st)
			if !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			if r.Snapshot() != before {
				t.Error("a rejected state replaced the snapshot")
			}
			select {
			case <-before.Changed():
				t.Error("Changed closed by a rejected state")
			default:
			}
		})
	}
}

func TestRegistryVersionsAndChanged(t *testing.T) {
	r := newRegistry(t)
	s0 := r.Snapshot()
	if s0.Version() != 0 || len(s0.Services()) != 0 || s0.Engine() == nil {
		t.Fatalf("initial snapshot %+v", s0)
	}
	changed := r.Changed()
	st := State{Services: []Service{{Key: ServiceKey{Name: "a"}, Ports: []Port{{Port: 1}}}}}
	if err := r.Update(st); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed not closed by Update")
	}
	// The registry owns a copy: changing the caller's state changes nothing.
	st.Services[0].Ports[0].Port = 2
	s1 := r.Snapshot()
	if svc, ok := s1.Service(ServiceKey{Namespace: "default", Name: "a"}); !ok || svc.Ports[0].Port != 1 || svc.Ports[0].TargetPort != 1 {
		t.Errorf("snapshot service %+v %v", svc, ok)
	}
	if err := r.Update(st); err != nil {
		t.Fatal(err)
	}
	if s1.Version() != 1 || r.Snapshot().Version() != 2 {
		t.Errorf("versions %d %d", s1.Version(), r.Snapshot().Version())
	}
	if _, err := NewRegistry(spiffeid.TrustDomain{}, policy.AllowMesh); err == nil {
		t.Error("registry without a trust domain")
	}
}

func TestParseMeshFileErrors(t *testing.T) {
	for _, c := range []struct{ name, doc, want string }{
		{"empty", "  \n", "file is empty"},
		{"bad yaml", "services:\n  - name: a\n   ports: [", "line 2"},
		{"unknown top field", "servces: []\n", `line 1: unknown field "servces"`},
		{"unknown nested field", "services:\n  - name: a\n    prots: []\n", `line 3: unknown field "prots"`},
		{"unknown policy field", "policies:\n  - apiVersion: tether.dev/v1alpha1\n    kind: AccessPolicy\n    metadata: {name: p}\n    spec: {destination: {service: a}, sources: [{namespace: x}], extra: 1}\n", `unknown field "extra"`},
		{"duplicate key", "trustDomain: a\ntrustDomain: b\n", `line 2: key "trustDomain" already set`},
		{"port range", "services:\n  - name: a\n    ports: [{port: 70000}]\n", "service default/a: ports[0]: port 70000 is outside 1-65535"},
		{"bad address", "services:\n  - name: a\n    endpoints: [{address: nope, serviceAccount: a}]\n", `service default/a: endpoints[0]: address "nope" is not an IP address`},
		{"bad cluster IP", "services:\n  - name: a\n    clusterIPs: [1.2.3]\n", `clusterIPs[0]: "1.2.3" is not an IP address`},
		{"bad identity", "services:\n  - name: a\n    endpoints: [{address: 1.2.3.4, identity: 'http://x'}]\n", `identity "http://x"`},
		{"identity and sa", "services:\n  - name: a\n    endpoints: [{address: 1.2.3.4, identity: 'spiffe://cluster.local/x', serviceAccount: a}]\n", "not both"},
		{"bad trust domain", "trustDomain: 'Bad Domain'\n", "trustDomain"},
		{"bad default", "defaultPolicy: open\n", "defaultPolicy"},
		{"bad default mode", "defaultPolicyMode: Audit\n", `defaultPolicyMode: unknown policy mode "Audit": use enforce or audit`},
		{"bad policy mode", "policies:\n  - apiVersion: tether.dev/v1alpha1\n    kind: AccessPolicy\n    metadata: {name: p, namespace: shop}\n    spec: {destination: {service: a}, sources: [{namespace: x}], mode: audit}\n", `shop/p: spec.mode: "audit" is not a mode: use Enforce or Audit`},
		{"unknown namespace field", "namespaces:\n  - name: shop\n    defaultMode: audit\n", `unknown field "defaultMode"`},
		{"wrong apiVersion", "policies:\n  - apiVersion: v1\n    kind: AccessPolicy\n    metadata: {name: p}\n    spec: {destination: {service: a}, sources: [{namespace: x}]}\n", `AccessPolicy default/p: apiVersion "v1": want tether.dev/v1alpha1`},
		{"wrong kind", "policies:\n  - apiVersion: tether.dev/v1alpha1\n    kind: Policy\n    metadata: {name: p}\n    spec: {destination: {service: a}, sources: [{namespace: x}]}\n", `kind "Policy"`},
		{"invalid policy", "policies:\n  - apiVersion: tether.dev/v1alpha1\n    kind: AccessPolicy\n    metadata: {name: p, namespace: shop}\n    spec: {destination: {service: a}, sources: []}\n", "shop/p: spec.sources: at least one source"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseMeshFile([]byte(c.doc))
			if !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestFileSourceReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, path, exampleMesh)
	r := newRegistry(t)
	var logs testutil.SyncBuffer
	src := &FileSource{Path: path, Interval: 5 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	changed := r.Changed()
	go func() { done <- src.Run(ctx, r) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	<-changed
	if v := r.Snapshot().Version(); v != 1 {
		t.Fatalf("first load: version %d", v)
	}

	// A change is picked up, as a new version, and Changed fires.
	changed = r.Changed()
	writeFile(t, path, exampleMesh+"  - apiVersion: tether.dev/v1alpha1\n    kind: AccessPolicy\n    metadata: {name: web-locked}\n    spec: {destination: {service: web}, sources: [{namespace: payments}]}\n")
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no reload after the file changed")
	}
	good := r.Snapshot()
	if good.Version() != 2 || len(good.Policies()) != 2 {
		t.Fatalf("reload: version %d, %d policies", good.Version(), len(good.Policies()))
	}

	for _, c := range []struct{ name, doc, want string }{
		{"bad yaml", "services: [", "mesh file rejected"},
		{"unknown field", exampleMesh + "extra: 1\n", `unknown field \"extra\"`},
		{"invalid policy", strings.Replace(exampleMesh, "service: api", "service: API", 1), `\"API\" is not a valid Service name`},
		{"duplicate service", strings.Replace(exampleMesh, "policies:", "  - name: api\n    ports: [{port: 9}]\npolicies:", 1), "service default/api is listed twice"},
		{"other trust domain", strings.Replace(exampleMesh, "trustDomain: cluster.local", "trustDomain: other.org", 1), "trustDomain other.org differs"},
	} {
		t.Run(c.name, func(t *testing.T) {
			writeFile(t, path, c.doc)
			waitFor(t, "a warning containing "+c.want, func() bool { return strings.Contains(logs.String(), c.want) })
			if r.Snapshot() != good {
				t.Error("a bad file replaced the snapshot")
			}
		})
	}

	// Deleted: kept and logged; restored: reloaded.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a warning about the missing file", func() bool { return strings.Contains(logs.String(), "mesh file unreadable") })
	if r.Snapshot() != good {
		t.Error("a deleted file replaced the snapshot")
	}
	changed = r.Changed()
	writeFile(t, path, exampleMesh)
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no reload after the file came back")
	}
	if n := len(r.Snapshot().Policies()); n != 1 {
		t.Errorf("restored file: %d policies", n)
	}
	if strings.Count(logs.String(), "mesh file unreadable") != 1 {
		t.Errorf("a missing file is logged once:\n%s", logs.String())
	}
}

func TestFileSourceStartErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "services:\n  - name: a\n    bogus: 1\n")
	for _, c := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "none.yaml"), "no such file"},
		{"bad", bad, `line 3: unknown field "bogus"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRegistry(t)
			err := (&FileSource{Path: c.path}).Run(context.Background(), r)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Run: %v, want an error containing %q", err, c.want)
			}
			if r.Snapshot().Version() != 0 {
				t.Error("snapshot changed")
			}
		})
	}
}

func FuzzParseMeshFile(f *testing.F) {
	f.Add([]byte(exampleMesh))
	f.Add([]byte("services: [{name: a, ports: [{port: 1}], endpoints: [{address: '::1', port: 2, identity: 'spiffe://x/y'}]}]"))
	f.Add([]byte("policies: [{apiVersion: tether.dev/v1alpha1, kind: AccessPolicy, metadata: {name: p}, spec: {destination: {service: a, ports: [0]}, sources: [{}]}}]"))
	f.Add([]byte("a: &x [*x]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		mf, err := ParseMeshFile(data)
		if err != nil {
			return
		}
		r := newRegistry(t)
		if r.Update(mf.State) == nil {
			r.Snapshot().AllowedPairs()
		}
	})
}

// meshWithModes audits: the mesh default deny, namespace shop's default,
// and one policy; namespace pay stays enforced.
const meshWithModes = `
trustDomain: cluster.local
defaultPolicy: deny
defaultPolicyMode: audit
namespaces:
  - name: shop
    defaultPolicy: same-namespace
    defaultPolicyMode: audit
  - name: pay
    defaultPolicy: same-namespace
    defaultPolicyMode: enforce
services:
  - name: web
    namespace: shop
    ports: [{port: 80}]
    endpoints: [{address: 10.0.0.1, serviceAccount: web}]
  - name: api
    namespace: pay
    ports: [{port: 80}]
    endpoints: [{address: 10.0.0.2, serviceAccount: api}]
  - name: db
    namespace: pay
    ports: [{port: 5432}]
    endpoints: [{address: 10.0.0.3, serviceAccount: db}]
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: db-from-api, namespace: pay}
    spec:
      destination: {service: db}
      sources: [{serviceAccount: {name: api}}]
      mode: Audit
`

func TestMeshFileModes(t *testing.T) {
	mf, err := ParseMeshFile([]byte(meshWithModes))
	if err != nil {
		t.Fatal(err)
	}
	if mf.DefaultPolicyMode != policy.Audit || mf.State.Namespaces[0].DefaultPolicyMode != "audit" || mf.State.Policies[0].Spec.Mode != policy.Audit {
		t.Fatalf("modes not read: %+v", mf)
	}
	reg, err := NewRegistry(mf.TrustDomain, mf.DefaultPolicy, WithMeshDefaultMode(mf.DefaultPolicyMode))
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(mf.State); err != nil {
		t.Fatal(err)
	}
	eng := reg.Snapshot().Engine()
	batch := spiffeid.RequireFromString("spiffe://cluster.local/ns/batch/sa/jobs")
	for _, c := range []struct {
		ns, svc            string
		port               uint16
		allowed, auditDeny bool
	}{
		{"shop", "web", 80, true, true},  // audited same-namespace under an audited mesh default: allow-mesh
		{"pay", "api", 80, false, false}, // enforced same-namespace
		{"pay", "db", 5432, false, false},
	} {
		d := eng.Decide(batch, c.ns, c.svc, c.port)
		if d.Allowed != c.allowed || d.AuditDenied != c.auditDeny {
			t.Errorf("%s/%s: %+v; want allowed %v, audit-denied %v", c.ns, c.svc, d, c.allowed, c.auditDeny)
		}
	}
	// pay/db: the audit policy is invisible; pay's default decides.
	if d := eng.Decide(spiffeid.RequireFromString("spiffe://cluster.local/ns/pay/sa/web"), "pay", "db", 5432); !d.Allowed || !d.AuditDenied ||
		!strings.Contains(d.AuditRule, "in audit mode: AccessPolicy pay/db-from-api") {
		t.Errorf("pay/web to pay/db: %+v; want allowed by pay's default, audit-denied by db-from-api", d)
	}

	// The mesh default's mode is fixed at start, like the default.
	enforcing, err := NewRegistry(mf.TrustDomain, mf.DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	err = (&FileSource{Path: "mesh.yaml"}).apply(enforcing, []byte(meshWithModes))
	if !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), "defaultPolicyMode audit differs from the registry's enforce (restart to change it)") {
		t.Errorf("apply = %v; want the mode change refused", err)
	}
}
