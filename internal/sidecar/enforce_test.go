package sidecar

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/proxy"
)

var (
	webID = testutil.ID("/ns/default/sa/web")
	apiID = testutil.ID("/ns/default/sa/api")
	dbID  = testutil.ID("/ns/default/sa/db")
)

// enforceMesh: mesh default deny; web may reach api:8080 (not api:9090)
// and cache; api may reach db; cache has no endpoints.
const enforceMesh = `
defaultPolicy: deny
services:
  - name: web
    clusterIPs: [10.96.0.10]
    ports: [{name: http, port: 80, targetPort: 8080}]
    endpoints: [{address: 10.0.0.1, serviceAccount: web}]
  - name: api
    clusterIPs: [10.96.0.11]
    ports: [{name: http, port: 8080}, {name: admin, port: 9090}]
    endpoints: [{address: 10.0.0.2, serviceAccount: api}, {address: 10.0.0.3, serviceAccount: api}]
  - name: db
    clusterIPs: [10.96.0.12]
    ports: [{name: sql, port: 5432}]
    endpoints: [{address: 10.0.0.4, serviceAccount: db}]
  - name: cache
    clusterIPs: [10.96.0.13]
    ports: [{port: 6379}]
policies:
` + webToAPIPolicy + `
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-to-db, namespace: default}
    spec:
      destination: {service: db}
      sources: [{serviceAccount: {name: api}}]
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: web-to-cache, namespace: default}
    spec:
      destination: {service: cache}
      sources: [{serviceAccount: {name: web}}]
`

// webToAPIPolicy is the AccessPolicy both enforceMesh and the permissive
// mesh of TestUnauthenticatedInboundFromView hold: web may reach api on
// port 8080 only.
const webToAPIPolicy = `  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: web-to-api, namespace: default}
    spec:
      destination: {service: api, ports: [8080]}
      sources: [{serviceAccount: {name: web}}]`

// viewOf builds id's view of the registry described by meshYAML, through
// the same code discovery serves it with (xds.BuildResources).
func viewOf(t testing.TB, meshYAML string, id spiffeid.ID) *xdsclient.View {
	t.Helper()
	v, err := xdsclient.NewViewFor(id, resourcesOf(t, meshYAML, id))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// resourcesOf is what discovery serves id for the mesh file meshYAML.
func resourcesOf(t testing.TB, meshYAML string, id spiffeid.ID) map[resource.Type][]types.Resource {
	t.Helper()
	mf, err := discovery.ParseMeshFile([]byte(meshYAML))
	if err != nil {
		t.Fatal(err)
	}
	def := mf.DefaultPolicy
	if def == 0 {
		def = wire.AllowMesh
	}
	reg, err := discovery.NewRegistry(testutil.TrustDomain, def)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(mf.State); err != nil {
		t.Fatal(err)
	}
	res, err := xds.BuildResources(reg.Snapshot(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// testSidecar is a Sidecar with only what the decisions need.
func testSidecar(v *xdsclient.View) *Sidecar {
	s := &Sidecar{cfg: Config{DiscoveryAddr: "127.0.0.1:1"}, log: slog.New(slog.DiscardHandler)}
	if v != nil {
		s.setView(v, true)
	}
	return s
}

func key(name string) wire.ServiceKey {
	return wire.ServiceKey{Namespace: "default", Name: name}
}

func TestOutboundFromView(t *testing.T) {
	s := testSidecar(viewOf(t, enforceMesh, webID))
	cases := []struct {
		svc  string
		port uint16
		// want is "mesh" or the start of the denial's rule.
		want   string
		reason string // in the denial's reason
	}{
		{"api", 8080, "mesh", ""},
		{"api", 9090, "no AccessPolicy allows " + webID.String() + " to default/api:9090", "denied"},
		{"db", 5432, ruleUnknownService, "default/db is not a mesh service"}, // the view does not know hidden names
		{"api", 7777, ruleUnknownPort, "has no port 7777"},
		{"cache", 6379, ruleNoEndpoints, "nothing serves default/cache:6379"},
		{"nosuch", 80, ruleUnknownService, "default/nosuch is not a mesh service"},
	}
	for _, tc := range cases {
		r := s.serviceRouter(key(tc.svc), tc.port)(nil)
		target := serviceTarget(key(tc.svc), tc.port)
		switch {
		case tc.want == "mesh":
			if r.Mesh == nil {
				t.Errorf("%s: %+v, want a mesh route", target, r)
				continue
			}
			if r.Mesh.Name != target || len(r.Mesh.IDs) != 1 || r.Mesh.IDs[0] != apiID || r.Mesh.Rule != "AccessPolicy default/web-to-api" {
				t.Errorf("%s: destination %+v", target, *r.Mesh)
			}
		case r.Mesh != nil || r.Passthrough != "":
			t.Errorf("%s: %+v, want a denial", target, r)
		default:
			if r.Target != target || !strings.HasPrefix(r.Rule, tc.want) || !strings.Contains(r.Deny, tc.reason) {
				t.Errorf("%s: denial %+v, want rule %q and reason mentioning %q", target, r, tc.want, tc.reason)
			}
		}
	}
	// New connections are spread over the endpoints.
	seen := map[string]bool{}
	for range 4 {
		seen[s.serviceRouter(key("api"), 8080)(nil).Mesh.Addr] = true
	}
	if !seen["10.0.0.2:8080"] || !seen["10.0.0.3:8080"] || len(seen) != 2 {
		t.Errorf("endpoints used: %v", seen)
	}
	// Before the first view, everything is refused.
	r := testSidecar(nil).serviceRouter(key("api"), 8080)(nil)
	if r.Mesh != nil || r.Rule != ruleNoView {
		t.Errorf("without a view: %+v", r)
	}
}

func TestInboundFromView(t *testing.T) {
	s := testSidecar(viewOf(t, enforceMesh, dbID))
	if err := s.authorize(apiID, 5432); err != nil {
		t.Errorf("api → db:5432: %v", err)
	}
	for _, tc := range []struct {
		src  spiffeid.ID
		port uint16
		rule string
	}{
		{webID, 5432, "admits " + webID.String()},
		{testutil.ID("/batch/report"), 5432, "admits spiffe://cluster.local/batch/report"},
		{apiID, 9999, "inbound default deny (no Service covers port 9999)"},
	} {
		err := s.authorize(tc.src, tc.port)
		de, ok := errors.AsType[*proxy.DeniedError](err)
		if !ok || !errors.Is(err, proxy.ErrDenied) || !strings.Contains(de.Rule, tc.rule) {
			t.Errorf("%s → db:%d: %v, want a denial naming %q", tc.src, tc.port, err, tc.rule)
		}
	}
	err := testSidecar(nil).authorize(apiID, 5432)
	if de, ok := errors.AsType[*proxy.DeniedError](err); !ok || de.Rule != ruleNoView {
		t.Errorf("without a view: %v", err)
	}
}

// TestUnauthenticatedInboundFromView: in permissive mode, a caller with no
// identity reaches only the ports of this pod no AccessPolicy restricts.
func TestUnauthenticatedInboundFromView(t *testing.T) {
	const mesh = `
defaultPolicy: allow-mesh
services:
  - name: api
    clusterIPs: [10.96.0.11]
    ports: [{name: http, port: 8080}]
    endpoints: [{address: 10.0.0.2, serviceAccount: api}]
  - name: status
    clusterIPs: [10.96.0.14]
    ports: [{name: metrics, port: 9090}]
    endpoints: [{address: 10.0.0.2, serviceAccount: api}]
policies:
` + webToAPIPolicy
	s := testSidecar(viewOf(t, mesh, apiID))
	if err := s.authorizeUnauthenticated(9090); err != nil {
		t.Errorf("plaintext → status:9090 (no policy): %v", err)
	}
	if err := s.authorizeUnauthenticated(12345); err != nil {
		t.Errorf("plaintext → a port no Service covers (allow-mesh): %v", err)
	}
	err := s.authorizeUnauthenticated(8080)
	if de, ok := errors.AsType[*proxy.DeniedError](err); !ok || !strings.Contains(de.Rule, "restricts port 8080") {
		t.Errorf("plaintext → api:8080 (web-to-api): %v, want a denial naming the restriction", err)
	}
	if err := testSidecar(nil).authorizeUnauthenticated(9090); err == nil {
		t.Error("without a view: plaintext allowed")
	}
}

// tcpConn is a real TCP connection for routers that need one.
func tcpConn(t *testing.T) net.Conn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// describe renders a route for comparisons.
func describe(r proxy.Route) string {
	switch {
	case r.Mesh != nil:
		return "mesh " + r.Mesh.Addr
	case r.Passthrough != "":
		return "passthrough " + r.Passthrough
	}
	return "deny " + r.Rule
}

func TestTransparentFromView(t *testing.T) {
	s := testSidecar(viewOf(t, enforceMesh, webID))
	c := tcpConn(t)
	route := func(mode, dst string, egress func(netip.Addr) bool) proxy.Route {
		tr := &Transparent{OutboundAddr: "127.0.0.1:15001", OutboundMode: mode}
		ap := netip.MustParseAddrPort(dst)
		return tr.router(func(*net.TCPConn) (netip.AddrPort, error) { return ap, nil }, s.viewLookup, egress)(c)
	}
	for _, tc := range []struct {
		mode, dst string
		want      []string // any of
	}{
		{Passthrough, "10.96.0.11:8080", []string{"mesh 10.0.0.2:8080", "mesh 10.0.0.3:8080"}}, // ClusterIP: round robin
		{Passthrough, "10.0.0.3:8080", []string{"mesh 10.0.0.3:8080"}},                         // an endpoint: that endpoint
		{Passthrough, "10.96.0.11:9090", []string{"deny no AccessPolicy allows " + webID.String() + " to default/api:9090"}},
		{RegistryOnly, "10.96.0.11:8080", []string{"mesh 10.0.0.2:8080", "mesh 10.0.0.3:8080"}},
		{Passthrough, "203.0.113.7:443", []string{"passthrough 203.0.113.7:443"}},
		{RegistryOnly, "203.0.113.7:443", []string{"deny registry-only"}},
		// db is unreachable: web learns only its ClusterIP (for DNS), which
		// is refused at once on any port and in either mode, rather than
		// passed through in plaintext (found on the real node by
		// test/cluster). Its endpoints' addresses are not sent: a call to
		// them leaves as any non-mesh destination, and db's inbound
		// refuses it.
		{Passthrough, "10.96.0.12:5432", []string{"deny " + ruleUnknownService}},
		{Passthrough, "10.96.0.12:80", []string{"deny " + ruleUnknownService}},
		{RegistryOnly, "10.96.0.12:5432", []string{"deny " + ruleUnknownService}},
		{Passthrough, "10.0.0.4:5432", []string{"passthrough 10.0.0.4:5432"}},
		{RegistryOnly, "10.0.0.4:5432", []string{"deny registry-only"}},
	} {
		got := describe(route(tc.mode, tc.dst, nil))
		ok := false
		for _, w := range tc.want {
			ok = ok || got == w
		}
		if !ok {
			t.Errorf("%s, %s: %q, want one of %q", tc.mode, tc.dst, got, tc.want)
		}
	}
	r := route(RegistryOnly, "203.0.113.7:443", nil)
	if r.Target != "203.0.113.7:443" || !strings.Contains(r.Deny, "not a mesh destination") {
		t.Errorf("registry-only denial %+v", r)
	}
	allowed := func(a netip.Addr) bool { return a == netip.MustParseAddr("203.0.113.7") }
	if got := describe(route(RegistryOnly, "203.0.113.7:443", allowed)); got != "passthrough 203.0.113.7:443" {
		t.Errorf("registry-only to an egress-allowed address: %s", got)
	}
	if got := describe(route(RegistryOnly, "203.0.113.8:443", allowed)); got != "deny registry-only" {
		t.Errorf("registry-only to another address: %s", got)
	}
}

// TestNewViewAppliesToNewDecisions: a new view changes the next decision,
// with nothing restarted.
func TestNewViewAppliesToNewDecisions(t *testing.T) {
	s := testSidecar(viewOf(t, enforceMesh, webID))
	if r := s.serviceRouter(key("db"), 5432)(nil); r.Mesh != nil {
		t.Fatalf("web → db allowed before the policy change: %+v", r)
	}
	opened := strings.Replace(enforceMesh, "sources: [{serviceAccount: {name: api}}]", "sources: [{serviceAccount: {name: api}}, {serviceAccount: {name: web}}]", 1)
	s.setView(viewOf(t, opened, webID), false)
	r := s.serviceRouter(key("db"), 5432)(nil)
	if r.Mesh == nil || r.Mesh.Addr != "10.0.0.4:5432" || r.Mesh.Rule != "AccessPolicy default/api-to-db" {
		t.Fatalf("web → db after the policy allows it: %+v", r)
	}
	db := testSidecar(viewOf(t, enforceMesh, dbID))
	if db.authorize(webID, 5432) == nil {
		t.Fatal("db let web in before the policy change")
	}
	db.setView(viewOf(t, opened, dbID), false)
	if err := db.authorize(webID, 5432); err != nil {
		t.Fatalf("db refuses web after the policy allows it: %v", err)
	}
}

// fakeResolver answers A queries for names from a fixed map on UDP.
func fakeResolver(t *testing.T, answers map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		if ip, ok := answers[mdns.CanonicalName(q.Name)]; ok && q.Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.ParseIP(ip)})
		} else if !ok {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func query(t *testing.T, server, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	c := &mdns.Client{Timeout: 3 * time.Second}
	resp, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return resp
}

func aRecords(m *mdns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*mdns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

// TestDNSWithViewAndEgress: the sidecar's DNS server answers mesh names
// from the view (NXDOMAIN for unreachable ones), forwards the rest, and
// registry-only mode lets through exactly the addresses that answered
// --egress-allow names.
func TestDNSWithViewAndEgress(t *testing.T) {
	// The upstream knows db as kube-dns would; web may not reach it.
	upstream := fakeResolver(t, map[string]string{"api.example.com.": "203.0.113.7", "evil.example.org.": "203.0.113.9",
		"db.default.svc.cluster.local.": "10.96.0.12"})
	srv, err := newDNS(Config{ClusterDomain: "cluster.local", Logger: slog.New(slog.DiscardHandler), DNS: &DNS{
		Listen: "127.0.0.1:0", Upstreams: []string{upstream}, EgressAllow: []string{"*.example.com"},
	}}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// The search path comes from --resolv-conf in the sidecar; set it here.
	s := testSidecar(nil)
	s.dns = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-srv.Ready()
	addr := srv.Addr()

	if r := query(t, addr, "api.default.svc.cluster.local", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
		t.Errorf("mesh name before the first view: %s, want NXDOMAIN (forwarded, unknown upstream)", mdns.RcodeToString[r.Rcode])
	}
	s.setView(viewOf(t, enforceMesh, webID), true)
	if r := query(t, addr, "api.default.svc.cluster.local", mdns.TypeA); r.Rcode != mdns.RcodeSuccess || strings.Join(aRecords(r), ",") != "10.96.0.11" {
		t.Errorf("reachable mesh name: %s %v", mdns.RcodeToString[r.Rcode], aRecords(r))
	}
	if r := query(t, addr, "db.default.svc.cluster.local", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
		t.Errorf("unreachable mesh name: %s %v, want NXDOMAIN though the upstream answers it", mdns.RcodeToString[r.Rcode], aRecords(r))
	}

	tr := &Transparent{OutboundAddr: "127.0.0.1:15001", OutboundMode: RegistryOnly}
	c := tcpConn(t)
	route := func(dst string) string {
		ap := netip.MustParseAddrPort(dst)
		return describe(tr.router(func(*net.TCPConn) (netip.AddrPort, error) { return ap, nil }, s.viewLookup, s.egressAllowed)(c))
	}
	if got := route("203.0.113.7:443"); got != "deny registry-only" {
		t.Errorf("before the name was resolved: %s", got)
	}
	if r := query(t, addr, "api.example.com", mdns.TypeA); strings.Join(aRecords(r), ",") != "203.0.113.7" {
		t.Fatalf("forwarded answer %v", r)
	}
	if r := query(t, addr, "evil.example.org", mdns.TypeA); strings.Join(aRecords(r), ",") != "203.0.113.9" {
		t.Fatalf("forwarded answer %v", r)
	}
	if got := route("203.0.113.7:443"); got != "passthrough 203.0.113.7:443" {
		t.Errorf("address of an allowed name: %s", got)
	}
	if got := route("203.0.113.9:443"); got != "deny registry-only" {
		t.Errorf("address of a name not on the allow-list: %s", got)
	}
}
