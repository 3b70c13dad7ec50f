package xdsclient_test

import (
	"encoding/hex"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/proxy"
	"github.com/tether-mesh/tether/pkg/proxy/dns"
)

var (
	webID    = testutil.ID("/ns/shop/sa/web")
	apiID    = testutil.ID("/ns/shop/sa/api")
	dbID     = testutil.ID("/ns/shop/sa/db")
	reportID = testutil.ID("/ns/other/sa/report")
	vaultID  = testutil.ID("/ns/locked/sa/vault")
	batchID  = testutil.ID("/ns/batch/sa/job")
	foreign  = spiffeid.RequireFromString("spiffe://evil.example/ns/shop/sa/web")

	apiKey    = wire.ServiceKey{Namespace: "shop", Name: "api"}
	webKey    = wire.ServiceKey{Namespace: "shop", Name: "web"}
	dbKey     = wire.ServiceKey{Namespace: "shop", Name: "db"}
	cacheKey  = wire.ServiceKey{Namespace: "shop", Name: "cache"}
	peersKey  = wire.ServiceKey{Namespace: "shop", Name: "peers"}
	secretKey = wire.ServiceKey{Namespace: "shop", Name: "secret"}
	reportKey = wire.ServiceKey{Namespace: "other", Name: "report"}
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func allow(ns, name, dst string, ports []int32, srcs ...policy.Source) policy.AccessPolicy {
	return policy.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: policy.AccessPolicySpec{
			Destination: policy.Destination{Service: dst, Ports: ports},
			Sources:     srcs,
		},
	}
}

func saSource(name string) policy.Source {
	return policy.Source{ServiceAccount: &policy.ServiceAccountSource{Name: name}}
}

// shopState is the mesh the view tests decide against. The mesh default is
// allow-mesh; namespace other is same-namespace, locked is deny.
//
//   - shop/web: allow-mesh (no policy).
//   - shop/api: web may reach ports 80 and 9090 (policy api-from-web), not 7000.
//   - shop/db (headless): api and namespace batch only.
//   - shop/cache: allow-mesh, no endpoints.
//   - shop/peers (headless): allow-mesh.
//   - shop/secret: sa admin only.
//   - other/report: same-namespace.
//   - locked/vault: deny.
func shopState() discovery.State {
	return discovery.State{
		Namespaces: []discovery.Namespace{
			{Name: "other", DefaultPolicy: "same-namespace"},
			{Name: "locked", DefaultPolicy: "deny"},
		},
		Services: []discovery.Service{
			{
				Key: webKey, ClusterIPs: []netip.Addr{ip("10.96.0.10")},
				Ports:     []discovery.Port{{Name: "http", Port: 80, TargetPort: 8080}},
				Endpoints: []discovery.Endpoint{{Addr: ip("10.1.0.1"), ServiceAccount: "web"}},
			},
			{
				Key: apiKey, ClusterIPs: []netip.Addr{ip("10.96.0.11")},
				Ports: []discovery.Port{
					{Name: "http", Port: 80, TargetPort: 8080},
					{Name: "grpc", Port: 9090},
					{Name: "admin", Port: 7000},
				},
				Endpoints: []discovery.Endpoint{
					{Addr: ip("10.1.0.3"), ServiceAccount: "api"},
					{Addr: ip("10.1.0.4"), Port: 15006, ServiceAccount: "api"},
				},
			},
			{
				Key:   dbKey,
				Ports: []discovery.Port{{Name: "pg", Port: 5432}},
				Endpoints: []discovery.Endpoint{
					{Addr: ip("10.1.0.5"), ServiceAccount: "db"},
					{Addr: ip("10.1.0.6"), ServiceAccount: "db"},
				},
			},
			{
				Key: cacheKey, ClusterIPs: []netip.Addr{ip("10.96.0.12")},
				Ports: []discovery.Port{{Port: 6379}},
			},
			{
				Key:   peersKey,
				Ports: []discovery.Port{{Name: "gossip", Port: 7946}},
				Endpoints: []discovery.Endpoint{
					{Addr: ip("10.1.0.8"), ServiceAccount: "peers"},
					{Addr: ip("10.1.0.7"), ServiceAccount: "peers"},
				},
			},
			{
				Key: secretKey, ClusterIPs: []netip.Addr{ip("10.96.0.13")},
				Ports:     []discovery.Port{{Port: 443}},
				Endpoints: []discovery.Endpoint{{Addr: ip("10.1.0.9"), ServiceAccount: "secret"}},
			},
			{
				Key: reportKey, ClusterIPs: []netip.Addr{ip("10.96.1.1")},
				Ports:     []discovery.Port{{Port: 8080}},
				Endpoints: []discovery.Endpoint{{Addr: ip("10.2.0.1"), ServiceAccount: "report"}},
			},
			{
				Key: wire.ServiceKey{Namespace: "locked", Name: "vault"}, ClusterIPs: []netip.Addr{ip("10.96.2.1")},
				Ports:     []discovery.Port{{Port: 8200}},
				Endpoints: []discovery.Endpoint{{Addr: ip("10.3.0.1"), ServiceAccount: "vault"}},
			},
		},
		Policies: []policy.AccessPolicy{
			allow("shop", "api-from-web", "api", []int32{80, 9090}, saSource("web")),
			allow("shop", "db-clients", "db", nil, saSource("api"), policy.Source{Namespace: "batch"}),
			allow("shop", "secret-admin", "secret", nil, saSource("admin")),
		},
	}
}

func shopRegistry(t testing.TB) *discovery.Registry {
	t.Helper()
	reg, err := discovery.NewRegistry(testutil.TrustDomain, wire.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(shopState()); err != nil {
		t.Fatal(err)
	}
	return reg
}

func resources(t testing.TB, snap *discovery.Snapshot, id spiffeid.ID) map[resource.Type][]types.Resource {
	t.Helper()
	res, err := xds.BuildResources(snap, id, "")
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func viewFor(t testing.TB, id spiffeid.ID) *xdsclient.View {
	t.Helper()
	v, err := xdsclient.NewViewFor(id, resources(t, shopRegistry(t).Snapshot(), id))
	if err != nil {
		t.Fatalf("NewViewFor(%s): %v", id, err)
	}
	return v
}

func keys(ss []xdsclient.Service) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Key.String())
	}
	return out
}

func TestViewServices(t *testing.T) {
	v := viewFor(t, webID)
	if got, want := keys(v.Services()), []string{"shop/api", "shop/cache", "shop/peers", "shop/web"}; !slices.Equal(got, want) {
		t.Fatalf("web's services = %v, want %v", got, want)
	}
	api, ok := v.Service(apiKey)
	if !ok {
		t.Fatal("Service(shop/api) not found")
	}
	if api.FQDN != "api.shop.svc.cluster.local." {
		t.Errorf("FQDN = %q", api.FQDN)
	}
	if !slices.Equal(api.Addrs, []netip.Addr{ip("10.96.0.11")}) {
		t.Errorf("Addrs = %v", api.Addrs)
	}
	if !slices.Equal(api.IDs, []spiffeid.ID{apiID}) {
		t.Errorf("IDs = %v, want [%s]", api.IDs, apiID)
	}
	wantEps := []netip.AddrPort{
		netip.MustParseAddrPort("10.1.0.3:8080"), netip.MustParseAddrPort("10.1.0.3:9090"),
		netip.MustParseAddrPort("10.1.0.3:7000"), netip.MustParseAddrPort("10.1.0.4:15006"),
	}
	if got := slices.SortedFunc(slices.Values(api.Endpoints), netip.AddrPort.Compare); !slices.Equal(got, slices.SortedFunc(slices.Values(wantEps), netip.AddrPort.Compare)) {
		t.Errorf("Endpoints = %v, want %v", api.Endpoints, wantEps)
	}
	wantPorts := []xdsclient.Port{
		{Name: "http", Port: 80, TargetPort: 8080, Allowed: true, Rule: "AccessPolicy shop/api-from-web"},
		{Name: "grpc", Port: 9090, TargetPort: 9090, Allowed: true, Rule: "AccessPolicy shop/api-from-web"},
		{Name: "admin", Port: 7000, TargetPort: 7000, Allowed: false, Rule: "no AccessPolicy allows " + webID.String() + " to shop/api:7000"},
	}
	if !slices.Equal(api.Ports, wantPorts) {
		t.Errorf("Ports =\n%+v\nwant\n%+v", api.Ports, wantPorts)
	}
	web, _ := v.Service(webKey)
	if len(web.Ports) != 1 || !web.Ports[0].Allowed || web.Ports[0].Rule != "mesh default allow-mesh" {
		t.Errorf("web's own service ports = %+v, want allowed by mesh default allow-mesh", web.Ports)
	}
	for _, k := range []wire.ServiceKey{dbKey, secretKey, reportKey} {
		if _, ok := v.Service(k); ok {
			t.Errorf("web's view has %s, which it may not reach", k)
		}
		if rec, ok := v.Lookup(k.Name + "." + k.Namespace + ".svc.cluster.local."); ok {
			t.Errorf("Lookup(%s) = %+v: the view knows the name of a service web may not reach", k, rec)
		}
	}
	// It knows their addresses (db is headless: its endpoints), and only
	// theirs.
	for _, a := range []string{"10.1.0.5", "10.1.0.6", "10.96.0.13", "10.96.1.1"} {
		if !v.HiddenAddr(ip(a)) {
			t.Errorf("HiddenAddr(%s) = false", a)
		}
	}
	for _, a := range []string{"10.96.0.11", "10.1.0.3", "10.96.0.10"} {
		if v.HiddenAddr(ip(a)) {
			t.Errorf("HiddenAddr(%s) = true for a service web may reach", a)
		}
	}
	if v.ID() != webID || v.ClusterDomain() != "cluster.local" || v.InboundDefault() != wire.AllowMesh {
		t.Errorf("ID, ClusterDomain, InboundDefault = %s, %s, %s", v.ID(), v.ClusterDomain(), v.InboundDefault())
	}
}

func TestViewOutbound(t *testing.T) {
	v := viewFor(t, webID)
	tests := []struct {
		name    string
		key     wire.ServiceKey
		port    uint16
		addrs   []string // the endpoints round robin goes through, in order
		ids     []spiffeid.ID
		wantErr error
		errHas  string
	}{
		{name: "allowed port, own-port endpoint too", key: apiKey, port: 80,
			addrs: []string{"10.1.0.3:8080", "10.1.0.4:15006"}, ids: []spiffeid.ID{apiID}},
		{name: "second allowed port", key: apiKey, port: 9090,
			addrs: []string{"10.1.0.3:9090", "10.1.0.4:15006"}, ids: []spiffeid.ID{apiID}},
		{name: "headless", key: peersKey, port: 7946,
			addrs: []string{"10.1.0.8:7946", "10.1.0.7:7946"}, ids: []spiffeid.ID{testutil.ID("/ns/shop/sa/peers")}},
		{name: "denied port", key: apiKey, port: 7000, wantErr: proxy.ErrDenied,
			errHas: "no AccessPolicy allows " + webID.String() + " to shop/api:7000"},
		{name: "unreachable service", key: dbKey, port: 5432, wantErr: xdsclient.ErrUnknownService,
			errHas: "shop/db is not a mesh service " + webID.String() + " may reach"},
		{name: "unknown service", key: wire.ServiceKey{Namespace: "shop", Name: "nope"}, port: 80, wantErr: xdsclient.ErrUnknownService},
		{name: "unknown port", key: apiKey, port: 1234, wantErr: xdsclient.ErrUnknownPort},
		{name: "no endpoints", key: cacheKey, port: 6379, wantErr: xdsclient.ErrNoEndpoints},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.wantErr != nil {
				_, err := v.Outbound(tt.key, tt.port)
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Outbound = %v, want %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.errHas) {
					t.Errorf("error %q does not say %q", err, tt.errHas)
				}
				return
			}
			var got []string
			for range 2 * len(tt.addrs) {
				d, err := v.Outbound(tt.key, tt.port)
				if err != nil {
					t.Fatal(err)
				}
				if want := tt.key.String() + ":" + strconv.Itoa(int(tt.port)); d.Name != want {
					t.Errorf("Name = %q, want %q", d.Name, want)
				}
				if ap := netip.MustParseAddrPort(d.Addr); ap.Port() != d.Port {
					t.Errorf("Port = %d, but Addr is %s", d.Port, d.Addr)
				}
				if !slices.Equal(d.IDs, tt.ids) {
					t.Errorf("IDs = %v, want %v", d.IDs, tt.ids)
				}
				got = append(got, d.Addr)
			}
			want := append(slices.Clone(tt.addrs), tt.addrs...)
			if !slices.Equal(got, want) {
				t.Errorf("round robin went %v, want %v", got, want)
			}
		})
	}
}

func TestViewLookup(t *testing.T) {
	v := viewFor(t, webID)
	var _ dns.Table = v
	tests := []struct {
		fqdn   string
		ok     bool
		want   dns.Record
		detail string
	}{
		{fqdn: "api.shop.svc.cluster.local.", ok: true, want: dns.Record{
			Addrs:     []netip.Addr{ip("10.96.0.11")},
			Ports:     []dns.SRVPort{{Name: "http", Proto: "tcp", Port: 80}, {Name: "grpc", Proto: "tcp", Port: 9090}, {Name: "admin", Proto: "tcp", Port: 7000}},
			Reachable: true,
		}},
		{fqdn: "API.Shop.svc.cluster.local", ok: true, want: dns.Record{
			Addrs:     []netip.Addr{ip("10.96.0.11")},
			Ports:     []dns.SRVPort{{Name: "http", Proto: "tcp", Port: 80}, {Name: "grpc", Proto: "tcp", Port: 9090}, {Name: "admin", Proto: "tcp", Port: 7000}},
			Reachable: true,
		}},
		{fqdn: "peers.shop.svc.cluster.local.", ok: true, detail: "headless: endpoint addresses", want: dns.Record{
			Addrs:     []netip.Addr{ip("10.1.0.7"), ip("10.1.0.8")},
			Ports:     []dns.SRVPort{{Name: "gossip", Proto: "tcp", Port: 7946}},
			Reachable: true,
		}},
		{fqdn: "cache.shop.svc.cluster.local.", ok: true, detail: "unnamed port: no SRV", want: dns.Record{
			Addrs: []netip.Addr{ip("10.96.0.12")}, Reachable: true,
		}},
		// The names of services web may not reach are not in its view at
		// all (the DNS server refuses upstream answers by address).
		{fqdn: "db.shop.svc.cluster.local.", ok: false},
		{fqdn: "report.other.svc.cluster.local.", ok: false},
		{fqdn: "vault.locked.svc.cluster.local.", ok: false},
		{fqdn: "nope.shop.svc.cluster.local.", ok: false},
		{fqdn: "example.com.", ok: false},
		{fqdn: "db.shop.svc.other.domain.", ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.fqdn, func(t *testing.T) {
			rec, ok := v.Lookup(tt.fqdn)
			if ok != tt.ok {
				t.Fatalf("Lookup ok = %v, want %v (%s)", ok, tt.ok, tt.detail)
			}
			if !slices.Equal(rec.Addrs, tt.want.Addrs) || !slices.Equal(rec.Ports, tt.want.Ports) || rec.Reachable != tt.want.Reachable {
				t.Errorf("Lookup = %+v, want %+v", rec, tt.want)
			}
		})
	}
}

func TestViewLookupAddr(t *testing.T) {
	v := viewFor(t, webID)
	tests := []struct {
		dst       string
		ok        bool
		key       wire.ServiceKey
		port, tgt uint16
		allowed   bool
	}{
		{"10.96.0.11:80", true, apiKey, 80, 8080, true},
		{"10.96.0.11:7000", true, apiKey, 7000, 7000, false},
		{"10.1.0.3:8080", true, apiKey, 80, 8080, true},
		{"10.1.0.3:9090", true, apiKey, 9090, 9090, true},
		{"[::ffff:10.1.0.3]:9090", true, apiKey, 9090, 9090, true},
		{"10.1.0.7:7946", true, peersKey, 7946, 7946, true},
		{"10.96.0.10:80", true, webKey, 80, 8080, true},
		{"10.96.0.11:8080", false, wire.ServiceKey{}, 0, 0, false}, // a ClusterIP on a target port
		{"10.1.0.3:9999", false, wire.ServiceKey{}, 0, 0, false},
		{"10.1.0.5:5432", false, wire.ServiceKey{}, 0, 0, false},  // db: unreachable, not in the view
		{"10.96.0.13:443", false, wire.ServiceKey{}, 0, 0, false}, // secret
	}
	for _, tt := range tests {
		t.Run(tt.dst, func(t *testing.T) {
			svc, p, ok := v.LookupAddr(netip.MustParseAddrPort(tt.dst))
			if ok != tt.ok {
				t.Fatalf("LookupAddr ok = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if svc.Key != tt.key || p.Port != tt.port || p.TargetPort != tt.tgt || p.Allowed != tt.allowed {
				t.Errorf("LookupAddr = %s %+v, want %s port %d→%d allowed %v", svc.Key, p, tt.key, tt.port, tt.tgt, tt.allowed)
			}
		})
	}
}

func TestViewAuthorize(t *testing.T) {
	td := "spiffe://" + testutil.TrustDomain.Name()
	tests := []struct {
		name    string
		view    spiffeid.ID // whose view
		src     spiffeid.ID
		port    uint16 // local target port
		allowed bool
		ruleHas string
	}{
		// api: chains for 8080 (web, exact), 9090 (web), 7000 (nobody).
		{"exact principal", apiID, webID, 8080, true, "exact:" + webID.String()},
		{"exact principal names the listener and chain", apiID, webID, 9090, true, "listener inbound|15006 chain 9090|shop/api:9090"},
		{"not the principal", apiID, dbID, 8080, false, "admits " + dbID.String()},
		{"chain with no principals", apiID, webID, 7000, false, "inbound|15006 chain 7000|shop/api:7000"},
		{"foreign trust domain, same path", apiID, foreign, 8080, false, "admits"},
		// db: api exactly, namespace batch by prefix.
		{"namespace prefix", dbID, batchID, 5432, true, "regex:" + td + "/ns/batch/sa/[^/]+"},
		{"exact next to prefix", dbID, apiID, 5432, true, "exact:" + apiID.String()},
		{"outside the prefix", dbID, webID, 5432, false, "admits " + webID.String()},
		{"prefix is a path boundary", dbID, testutil.ID("/ns/batchx/sa/job"), 5432, false, "admits"},
		// web: allow-mesh is a trust-domain prefix.
		{"mesh prefix", webID, testutil.ID("/anything/at/all"), 8080, true, "prefix:" + td + "/"},
		{"mesh prefix, other trust domain", webID, foreign, 8080, false, "admits"},
		// Ports no chain covers: the inbound default of the workload's namespace.
		{"default allow-mesh", apiID, testutil.ID("/x"), 12345, true, "inbound default allow-mesh (no Service covers port 12345)"},
		{"default allow-mesh, other trust domain", apiID, foreign, 12345, false, "inbound default allow-mesh"},
		{"default same-namespace, same", reportID, testutil.ID("/ns/other/sa/friend"), 9999, true, "inbound default same-namespace"},
		{"default same-namespace, other", reportID, webID, 9999, false, "inbound default same-namespace"},
		{"default same-namespace, not a workload ID", reportID, testutil.ID("/other"), 9999, false, "inbound default same-namespace"},
		{"default same-namespace, foreign", reportID, spiffeid.RequireFromString("spiffe://evil.example/ns/other/sa/x"), 9999, false, "same-namespace"},
		{"default deny", vaultID, testutil.ID("/ns/locked/sa/friend"), 9999, false, "inbound default deny"},
		{"covered port under default deny", vaultID, testutil.ID("/ns/locked/sa/friend"), 8200, false, "inbound|15006 chain 8200|locked/vault:8200"},
		{"zero source", apiID, spiffeid.ID{}, 8080, false, "no SPIFFE ID"},
	}
	views := map[spiffeid.ID]*xdsclient.View{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := views[tt.view]
			if v == nil {
				v = viewFor(t, tt.view)
				views[tt.view] = v
			}
			d := v.Authorize(tt.src, tt.port)
			if d.Allowed != tt.allowed || !strings.Contains(d.Rule, tt.ruleHas) {
				t.Errorf("Authorize(%s, %d) = %+v, want allowed %v with a rule saying %q", tt.src, tt.port, d, tt.allowed, tt.ruleHas)
			}
			err := v.Authorizer()(tt.src, tt.port)
			if tt.allowed != (err == nil) || (err != nil && !errors.Is(err, proxy.ErrDenied)) {
				t.Errorf("Authorizer = %v, want allowed %v (or ErrDenied)", err, tt.allowed)
			}
		})
	}
}

// TestViewAuthorizeUnauthenticated: a caller with no identity (plaintext
// in permissive mode) reaches only ports no policy restricts.
func TestViewAuthorizeUnauthenticated(t *testing.T) {
	tests := []struct {
		name    string
		view    spiffeid.ID
		port    uint16
		allowed bool
		ruleHas string
	}{
		{"port restricted to exact principals", apiID, 8080, false, "restricts port 8080"},
		{"port restricted to nobody", apiID, 7000, false, "restricts port 7000"},
		{"port restricted to a namespace", dbID, 5432, false, "restricts port 5432"},
		{"port open to the mesh", webID, 8080, true, "no policy restricts port 8080"},
		{"uncovered port, default allow-mesh", apiID, 12345, true, "inbound default allow-mesh"},
		{"uncovered port, default same-namespace", reportID, 9999, false, "inbound default same-namespace"},
		{"uncovered port, default deny", vaultID, 9999, false, "inbound default deny"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := viewFor(t, tt.view).AuthorizeUnauthenticated(tt.port)
			if d.Allowed != tt.allowed || !strings.Contains(d.Rule, tt.ruleHas) {
				t.Errorf("AuthorizeUnauthenticated(%d) = %+v, want allowed %v with a rule saying %q", tt.port, d, tt.allowed, tt.ruleHas)
			}
		})
	}
	var nilView *xdsclient.View
	if d := nilView.AuthorizeUnauthenticated(8080); d.Allowed {
		t.Errorf("nil view: %+v, want denied", d)
	}
}

// A View from NewView does not know its identity: defaults that depend on
// it fail closed, and errors speak of "this workload".
func TestNewViewWithoutIdentity(t *testing.T) {
	v, err := xdsclient.NewView(resources(t, shopRegistry(t).Snapshot(), apiID))
	if err != nil {
		t.Fatal(err)
	}
	if d := v.Authorize(webID, 8080); !d.Allowed {
		t.Errorf("covered port: %+v, want allowed", d)
	}
	if d := v.Authorize(webID, 12345); d.Allowed || !strings.Contains(d.Rule, "does not know its own trust domain") {
		t.Errorf("uncovered port: %+v, want denied: unknown trust domain", d)
	}
	if _, err := v.Outbound(secretKey, 443); !errors.Is(err, xdsclient.ErrUnknownService) || !strings.Contains(err.Error(), "shop/secret is not a mesh service this workload may reach") {
		t.Errorf("Outbound(secret) = %v", err)
	}
}

// A workload that serves nothing and reaches nothing still gets a view
// (the name table with every service unreachable).
func TestViewEmpty(t *testing.T) {
	reg, err := discovery.NewRegistry(testutil.TrustDomain, wire.Deny)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(shopState()); err != nil {
		t.Fatal(err)
	}
	lonely := testutil.ID("/ns/nowhere/sa/lonely")
	v, err := xdsclient.NewViewFor(lonely, resources(t, reg.Snapshot(), lonely))
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(v.Services()); len(got) != 0 {
		t.Errorf("lonely reaches %v under mesh default deny", got)
	}
	if rec, ok := v.Lookup("api.shop.svc.cluster.local."); ok {
		t.Errorf("Lookup(api) = %+v, want not a name the view knows", rec)
	}
	if !v.HiddenAddr(netip.MustParseAddr("10.96.0.11")) {
		t.Error("HiddenAddr(api's ClusterIP) = false")
	}
	if d := v.Authorize(webID, 80); d.Allowed || !strings.Contains(d.Rule, "inbound default deny") {
		t.Errorf("Authorize = %+v, want the mesh default deny", d)
	}
}

// mutate returns a deep copy of res with f applied to it.
func mutate(res map[resource.Type][]types.Resource, f func(map[resource.Type][]types.Resource)) map[resource.Type][]types.Resource {
	out := make(map[resource.Type][]types.Resource, len(res))
	for k, items := range res {
		for _, r := range items {
			out[k] = append(out[k], proto.Clone(r))
		}
		if out[k] == nil {
			out[k] = []types.Resource{}
		}
	}
	f(out)
	return out
}

func find[T types.Resource](res map[resource.Type][]types.Resource, typ resource.Type, name func(T) string, want string) T {
	for _, r := range res[typ] {
		if m, ok := r.(T); ok && name(m) == want {
			return m
		}
	}
	panic("no " + want)
}

func setSAN(t *testing.T, c *clusterv3.Cluster, f func(*tlsv3.SubjectAltNameMatcher)) {
	var tc tlsv3.UpstreamTlsContext
	if err := c.TransportSocket.GetTypedConfig().UnmarshalTo(&tc); err != nil {
		t.Fatal(err)
	}
	f(tc.CommonTlsContext.GetCombinedValidationContext().DefaultValidationContext.MatchTypedSubjectAltNames[0])
	a, err := anypb.New(&tc)
	if err != nil {
		t.Fatal(err)
	}
	c.TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: a}
}

// editNameTable merges res's name-table entries, applies f, and splits
// the table again, as discovery sends it.
func editNameTable(t *testing.T, res map[resource.Type][]types.Resource, f func(*discoveryv1.NameTable)) {
	nt, err := wire.MergeNameTables(res[resource.ExtensionConfigType])
	if err != nil {
		t.Fatal(err)
	}
	f(nt)
	tec := func(name string, m *discoveryv1.NameTable) types.Resource {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return &corev3.TypedExtensionConfig{Name: name, TypedConfig: a}
	}
	out := []types.Resource{tec(wire.NameGlobalsName, &discoveryv1.NameTable{ClusterDomain: nt.ClusterDomain, InboundDefault: nt.InboundDefault})}
	for _, sn := range nt.Services {
		out = append(out, tec(wire.NameServicePrefix+sn.Namespace+"/"+sn.Name, &discoveryv1.NameTable{Services: []*discoveryv1.ServiceName{sn}}))
	}
	for i, a := range nt.UnreachableAddresses {
		id := make([]byte, 16)
		id[15] = byte(i)
		out = append(out, tec(wire.NameHiddenPrefix+hex.EncodeToString(id), &discoveryv1.NameTable{UnreachableAddresses: []string{a}}))
	}
	res[resource.ExtensionConfigType] = out
}

// nameEntry returns res's name-table entry called name.
func nameEntry(res map[resource.Type][]types.Resource, name string) *corev3.TypedExtensionConfig {
	return find(res, resource.ExtensionConfigType, (*corev3.TypedExtensionConfig).GetName, name)
}

// editRBAC applies f to the first RBAC filter of the inbound listener
// that lets someone in.
func editRBAC(t *testing.T, res map[resource.Type][]types.Resource, f func(*rbacfilterv3.RBAC)) {
	l := res[resource.ListenerType][0].(*listenerv3.Listener)
	var fl *listenerv3.Filter
	var rb rbacfilterv3.RBAC
	for _, fc := range l.FilterChains {
		fl = fc.Filters[0]
		if err := fl.GetTypedConfig().UnmarshalTo(&rb); err != nil {
			t.Fatal(err)
		}
		if len(rb.Rules.GetPolicies()) > 0 {
			break
		}
	}
	f(&rb)
	a, err := anypb.New(&rb)
	if err != nil {
		t.Fatal(err)
	}
	fl.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
}

func TestNewViewRejectsMalformed(t *testing.T) {
	// api's view: it reaches db and serves api (one listener), so every
	// type has something to break.
	good := resources(t, shopRegistry(t).Snapshot(), apiID)
	if _, err := xdsclient.NewViewFor(apiID, good); err != nil {
		t.Fatalf("the unmodified resources: %v", err)
	}
	if len(good[resource.ListenerType]) != 1 || len(good[resource.ClusterType]) == 0 {
		t.Fatalf("test setup: api's view has %d listeners and %d clusters", len(good[resource.ListenerType]), len(good[resource.ClusterType]))
	}
	dbCluster := func(res map[resource.Type][]types.Resource) *clusterv3.Cluster {
		return find(res, resource.ClusterType, (*clusterv3.Cluster).GetName, "shop/db")
	}
	dbCLA := func(res map[resource.Type][]types.Resource) *endpointv3.ClusterLoadAssignment {
		return find(res, resource.EndpointType, (*endpointv3.ClusterLoadAssignment).GetClusterName, "shop/db")
	}
	sa := func(cla *endpointv3.ClusterLoadAssignment) *corev3.SocketAddress {
		return cla.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress()
	}
	tests := []struct {
		name   string
		f      func(map[resource.Type][]types.Resource)
		errHas string
	}{
		{"listener in the cluster list", func(r map[resource.Type][]types.Resource) {
			r[resource.ClusterType] = append(r[resource.ClusterType], r[resource.ListenerType][0])
		}, "want a Cluster"},
		{"cluster in the endpoint list", func(r map[resource.Type][]types.Resource) {
			r[resource.EndpointType] = append(r[resource.EndpointType], dbCluster(r))
		}, "want a ClusterLoadAssignment"},
		{"CLA in the listener list", func(r map[resource.Type][]types.Resource) {
			r[resource.ListenerType] = append(r[resource.ListenerType], dbCLA(r))
		}, "want a Listener"},
		{"cluster in the extension config list", func(r map[resource.Type][]types.Resource) {
			r[resource.ExtensionConfigType] = append(r[resource.ExtensionConfigType], dbCluster(r))
		}, "want a TypedExtensionConfig"},
		{"unexpected type", func(r map[resource.Type][]types.Resource) {
			r[resource.SecretType] = []types.Resource{dbCluster(r)}
		}, "unexpected resource type"},
		{"SAN not a SPIFFE ID", func(r map[resource.Type][]types.Resource) {
			setSAN(t, dbCluster(r), func(m *tlsv3.SubjectAltNameMatcher) {
				m.Matcher = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "https://db.example"}}
			})
		}, "SAN matcher 0"},
		{"SAN of DNS type", func(r map[resource.Type][]types.Resource) {
			setSAN(t, dbCluster(r), func(m *tlsv3.SubjectAltNameMatcher) { m.SanType = tlsv3.SubjectAltNameMatcher_DNS })
		}, "want URI"},
		{"SAN prefix match", func(r map[resource.Type][]types.Resource) {
			setSAN(t, dbCluster(r), func(m *tlsv3.SubjectAltNameMatcher) {
				m.Matcher = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://cluster.local/"}}
			})
		}, "want an exact match"},
		{"no transport socket", func(r map[resource.Type][]types.Resource) { dbCluster(r).TransportSocket = nil }, "no TLS transport socket"},
		{"bad cluster name", func(r map[resource.Type][]types.Resource) { dbCluster(r).Name = "db" }, "not <namespace>/<service>"},
		{"bad endpoint address", func(r map[resource.Type][]types.Resource) { sa(dbCLA(r)).Address = "10.1.0.999" }, `"10.1.0.999" is not an IP address`},
		{"hostname endpoint", func(r map[resource.Type][]types.Resource) { sa(dbCLA(r)).Address = "db.example" }, "is not an IP address"},
		{"endpoint port 0", func(r map[resource.Type][]types.Resource) {
			sa(dbCLA(r)).PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 0}
		}, "port is missing"},
		{"endpoint port too big", func(r map[resource.Type][]types.Resource) {
			sa(dbCLA(r)).PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: 70000}
		}, "port is missing"},
		{"endpoint without address", func(r map[resource.Type][]types.Resource) {
			dbCLA(r).Endpoints[0].LbEndpoints[0].GetEndpoint().Address = nil
		}, "without a socket address"},
		{"cluster without CLA", func(r map[resource.Type][]types.Resource) {
			r[resource.EndpointType] = slices.DeleteFunc(r[resource.EndpointType], func(x types.Resource) bool {
				return x.(*endpointv3.ClusterLoadAssignment).ClusterName == "shop/db"
			})
		}, `cluster "shop/db" has no ClusterLoadAssignment`},
		{"CLA without cluster", func(r map[resource.Type][]types.Resource) {
			cla := proto.Clone(dbCLA(r)).(*endpointv3.ClusterLoadAssignment)
			cla.ClusterName = "shop/ghost"
			r[resource.EndpointType] = append(r[resource.EndpointType], cla)
		}, `"shop/ghost" has no Cluster`},
		{"cluster not in the name table", func(r map[resource.Type][]types.Resource) {
			c := proto.Clone(dbCluster(r)).(*clusterv3.Cluster)
			c.Name = "shop/ghost"
			cla := proto.Clone(dbCLA(r)).(*endpointv3.ClusterLoadAssignment)
			cla.ClusterName = "shop/ghost"
			r[resource.ClusterType] = append(r[resource.ClusterType], c)
			r[resource.EndpointType] = append(r[resource.EndpointType], cla)
		}, "not in the name table"},
		{"duplicate cluster", func(r map[resource.Type][]types.Resource) {
			r[resource.ClusterType] = append(r[resource.ClusterType], proto.Clone(dbCluster(r)))
		}, "sent twice"},
		{"missing name table", func(r map[resource.Type][]types.Resource) { delete(r, resource.ExtensionConfigType) }, "no name table"},
		{"name table under another name", func(r map[resource.Type][]types.Resource) {
			nameEntry(r, wire.NameGlobalsName).Name = "other"
		}, "no name table"},
		{"name table of the wrong message", func(r map[resource.Type][]types.Resource) {
			a, _ := anypb.New(dbCluster(r))
			nameEntry(r, wire.NameGlobalsName).TypedConfig = a
		}, `extension config "tether.names/global"`},
		{"service entry of the wrong message", func(r map[resource.Type][]types.Resource) {
			a, _ := anypb.New(dbCluster(r))
			nameEntry(r, wire.NameServicePrefix+"shop/db").TypedConfig = a
		}, `extension config "tether.names/svc/shop/db"`},
		{"service entry under another service's name", func(r map[resource.Type][]types.Resource) {
			nameEntry(r, wire.NameServicePrefix+"shop/db").Name = wire.NameServicePrefix + "shop/dbx"
		}, "holds service shop/db"},
		{"service entry with globals", func(r map[resource.Type][]types.Resource) {
			e := nameEntry(r, wire.NameServicePrefix+"shop/db")
			var nt discoveryv1.NameTable
			if err := e.TypedConfig.UnmarshalTo(&nt); err != nil {
				t.Fatal(err)
			}
			nt.InboundDefault = "deny"
			e.TypedConfig, _ = anypb.New(&nt)
		}, "does not hold exactly one service"},
		{"globals with addresses", func(r map[resource.Type][]types.Resource) {
			e := nameEntry(r, wire.NameGlobalsName)
			var nt discoveryv1.NameTable
			if err := e.TypedConfig.UnmarshalTo(&nt); err != nil {
				t.Fatal(err)
			}
			nt.UnreachableAddresses = []string{"10.96.9.9"}
			e.TypedConfig, _ = anypb.New(&nt)
		}, "holds services or addresses"},
		{"hidden entry with a short id", func(r map[resource.Type][]types.Resource) {
			for _, x := range r[resource.ExtensionConfigType] {
				if e := x.(*corev3.TypedExtensionConfig); strings.HasPrefix(e.Name, wire.NameHiddenPrefix) {
					e.Name = wire.NameHiddenPrefix + "00"
					return
				}
			}
			t.Fatal("no hidden entry")
		}, "want 16 bytes of hex"},
		{"unknown name-table entry", func(r map[resource.Type][]types.Resource) {
			e := proto.Clone(nameEntry(r, wire.NameGlobalsName)).(*corev3.TypedExtensionConfig)
			e.Name = "tether.names/other"
			r[resource.ExtensionConfigType] = append(r[resource.ExtensionConfigType], e)
		}, "unknown name-table entry"},
		{"globals sent twice", func(r map[resource.Type][]types.Resource) {
			r[resource.ExtensionConfigType] = append(r[resource.ExtensionConfigType], proto.Clone(nameEntry(r, wire.NameGlobalsName)))
		}, "sent twice"},
		{"whole table with split entries", func(r map[resource.Type][]types.Resource) {
			e := proto.Clone(nameEntry(r, wire.NameGlobalsName)).(*corev3.TypedExtensionConfig)
			e.Name = wire.NameTableName
			r[resource.ExtensionConfigType] = append(r[resource.ExtensionConfigType], e)
		}, "sent with split name-table entries"},
		{"bad ClusterIP in the name table", func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) { nt.Services[0].Addresses = []string{"bogus"} })
		}, `bad address "bogus"`},
		{"bad inbound default", func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) { nt.InboundDefault = "allow-all" })
		}, "inbound_default"},
		{"bad unreachable address", func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) { nt.UnreachableAddresses[0] = "db.shop" })
		}, `"db.shop" is not an IP address`},
		{"wrong fqdn", func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) { nt.Services[0].Fqdn = "db.example.com." })
		}, "fqdn"},
		{"port 0 in the name table", func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) { nt.Services[0].Ports[0].Port = 0 })
		}, "outside 1-65535"},
		{"name table lists a service without a cluster", func(r map[resource.Type][]types.Resource) {
			editNameTable(t, r, func(nt *discoveryv1.NameTable) {
				nt.Services = append(nt.Services, &discoveryv1.ServiceName{Namespace: "shop", Name: "ghost", Fqdn: "ghost.shop.svc.cluster.local."})
			})
		}, `no Cluster "shop/ghost"`},
		{"principal prefix not at a segment", func(r map[resource.Type][]types.Resource) {
			editRBAC(t, r, func(rb *rbacfilterv3.RBAC) {
				rb.Rules.Policies["allowed"].Principals[0].GetAuthenticated().PrincipalName =
					&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://cluster.local/ns/sh"}}
			})
		}, "is not spiffe://<trust domain>/"},
		// Issue 11 item 6: a namespace prefix admits more than the engine.
		{"principal prefix narrower than a trust domain", func(r map[resource.Type][]types.Resource) {
			editRBAC(t, r, func(rb *rbacfilterv3.RBAC) {
				rb.Rules.Policies["allowed"].Principals[0].GetAuthenticated().PrincipalName =
					&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://cluster.local/ns/shop/"}}
			})
		}, "only whole trust domains are matched by prefix"},
		{"principal regex of another shape", func(r map[resource.Type][]types.Resource) {
			editRBAC(t, r, func(rb *rbacfilterv3.RBAC) {
				rb.Rules.Policies["allowed"].Principals[0].GetAuthenticated().PrincipalName =
					&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "spiffe://cluster.local/ns/shop/.*"}}}
			})
		}, "is not a namespace principal"},
		{"principal regex with an unescaped dot", func(r map[resource.Type][]types.Resource) {
			editRBAC(t, r, func(rb *rbacfilterv3.RBAC) {
				rb.Rules.Policies["allowed"].Principals[0].GetAuthenticated().PrincipalName =
					&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "spiffe://cluster.local/ns/shop/sa/[^/]+"}}}
			})
		}, "unescaped metacharacters"},
		{"principal regex with extra segments", func(r map[resource.Type][]types.Resource) {
			editRBAC(t, r, func(rb *rbacfilterv3.RBAC) {
				rb.Rules.Policies["allowed"].Principals[0].GetAuthenticated().PrincipalName =
					&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: `spiffe://cluster\.local/ns/shop/x/sa/[^/]+`}}}
			})
		}, "want the prefix"},
		// Issue 11 item 14: without original_dst, chains match port 15006.
		{"listener without original_dst", func(r map[resource.Type][]types.Resource) {
			r[resource.ListenerType][0].(*listenerv3.Listener).ListenerFilters = nil
		}, "envoy.filters.listener.original_dst"},
		{"chain without pod addresses", func(r map[resource.Type][]types.Resource) {
			r[resource.ListenerType][0].(*listenerv3.Listener).FilterChains[0].FilterChainMatch.PrefixRanges = nil
		}, "no prefix_ranges"},
		{"chain for a subnet", func(r map[resource.Type][]types.Resource) {
			r[resource.ListenerType][0].(*listenerv3.Listener).FilterChains[0].FilterChainMatch.PrefixRanges[0].PrefixLen.Value = 24
		}, "is not one address"},
		{"two chains for one pod port", func(r map[resource.Type][]types.Resource) {
			l := r[resource.ListenerType][0].(*listenerv3.Listener)
			l.FilterChains = append(l.FilterChains, proto.Clone(l.FilterChains[0]).(*listenerv3.FilterChain))
		}, "matches"},
		{"tcp_proxy to another port", func(r map[resource.Type][]types.Resource) {
			l := r[resource.ListenerType][0].(*listenerv3.Listener)
			l.FilterChains[0].FilterChainMatch.DestinationPort.Value = 1234
		}, "the app on the chain's port"},
		{"listener sent twice", func(r map[resource.Type][]types.Resource) {
			r[resource.ListenerType] = append(r[resource.ListenerType], proto.Clone(r[resource.ListenerType][0]))
		}, "sent twice"},
		{"principal exact not a SPIFFE ID", func(r map[resource.Type][]types.Resource) {
			editRBAC(t, r, func(rb *rbacfilterv3.RBAC) {
				rb.Rules.Policies["allowed"].Principals[0].GetAuthenticated().PrincipalName =
					&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "web"}}
			})
		}, "principal 0"},
		{"principal by regex", func(r map[resource.Type][]types.Resource) {
			editRBAC(t, r, func(rb *rbacfilterv3.RBAC) {
				rb.Rules.Policies["allowed"].Principals[0].GetAuthenticated().PrincipalName =
					&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: "/sa/web"}}
			})
		}, "want an exact, trust domain prefix or namespace regex match"},
		{"principal not authenticated", func(r map[resource.Type][]types.Resource) {
			editRBAC(t, r, func(rb *rbacfilterv3.RBAC) {
				rb.Rules.Policies["allowed"].Principals[0] = &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
			})
		}, "not an authenticated principal name"},
		{"RBAC deny action", func(r map[resource.Type][]types.Resource) {
			editRBAC(t, r, func(rb *rbacfilterv3.RBAC) { rb.Rules.Action = rbacv3.RBAC_DENY })
		}, "want ALLOW"},
		{"chain without a destination port", func(r map[resource.Type][]types.Resource) {
			r[resource.ListenerType][0].(*listenerv3.Listener).FilterChains[0].FilterChainMatch.DestinationPort = nil
		}, "no destination port"},
		{"chain without RBAC", func(r map[resource.Type][]types.Resource) {
			fc := r[resource.ListenerType][0].(*listenerv3.Listener).FilterChains[0]
			fc.Filters = fc.Filters[1:]
		}, "want one or more"},
		{"not the inbound listener", func(r map[resource.Type][]types.Resource) {
			r[resource.ListenerType][0].(*listenerv3.Listener).Name = "outbound"
		}, "not the inbound listener"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := mutate(good, tt.f)
			v, err := xdsclient.NewViewFor(apiID, bad)
			if err == nil {
				t.Fatalf("NewViewFor accepted it: %d services", len(v.Services()))
			}
			if !errors.Is(err, xdsclient.ErrMalformed) || !strings.Contains(err.Error(), tt.errHas) {
				t.Errorf("err = %v, want ErrMalformed saying %q", err, tt.errHas)
			}
		})
	}
}

// The round robin is safe under concurrent use and fair.
func TestViewOutboundConcurrent(t *testing.T) {
	v := viewFor(t, webID)
	const n = 400
	counts := make(chan string, n)
	for range n {
		go func() {
			d, err := v.Outbound(apiKey, 80)
			if err != nil {
				t.Error(err)
			}
			counts <- d.Addr
		}()
	}
	seen := map[string]int{}
	for range n {
		seen[<-counts]++
	}
	if seen["10.1.0.3:8080"] != n/2 || seen["10.1.0.4:15006"] != n/2 {
		t.Errorf("round robin over %d calls: %v, want %d each", n, seen, n/2)
	}
}

// A nil View (no configuration yet) answers without panicking and denies.
func TestNilView(t *testing.T) {
	var v *xdsclient.View
	if _, err := v.Outbound(apiKey, 80); !errors.Is(err, xdsclient.ErrNoView) {
		t.Errorf("Outbound = %v, want ErrNoView", err)
	}
	if _, ok := v.Lookup("api.shop.svc.cluster.local."); ok {
		t.Error("Lookup found a name")
	}
	if _, _, ok := v.LookupAddr(netip.MustParseAddrPort("10.96.0.11:80")); ok {
		t.Error("LookupAddr found an address")
	}
	if d := v.Authorize(webID, 8080); d.Allowed {
		t.Error("Authorize allowed")
	}
	if err := v.Authorizer()(webID, 8080); !errors.Is(err, proxy.ErrDenied) {
		t.Errorf("Authorizer = %v, want ErrDenied", err)
	}
	if v.Services() != nil || !v.ID().IsZero() {
		t.Error("Services or ID not empty")
	}
	var table dns.Table = v
	if _, ok := table.Lookup("x."); ok {
		t.Error("Lookup through the interface found a name")
	}
}

// A View is the same from the split name table and from the unsplit one
// ("tether.names", as discovery sent it before the split).
func TestNewViewAcceptsUnsplitNameTable(t *testing.T) {
	split := resources(t, shopRegistry(t).Snapshot(), webID)
	whole := mutate(split, func(r map[resource.Type][]types.Resource) {
		nt, err := wire.MergeNameTables(r[resource.ExtensionConfigType])
		if err != nil {
			t.Fatal(err)
		}
		a, err := anypb.New(nt)
		if err != nil {
			t.Fatal(err)
		}
		r[resource.ExtensionConfigType] = []types.Resource{&corev3.TypedExtensionConfig{Name: wire.NameTableName, TypedConfig: a}}
	})
	vs, err := xdsclient.NewViewFor(webID, split)
	if err != nil {
		t.Fatal(err)
	}
	vw, err := xdsclient.NewViewFor(webID, whole)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs.Services()) == 0 || !reflect.DeepEqual(vs.Services(), vw.Services()) {
		t.Errorf("services from the split table %v, from the whole one %v", vs.Services(), vw.Services())
	}
}
