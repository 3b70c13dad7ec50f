package discovery

import (
	"bytes"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// remoteMesh declares b.example's api twice: shop/api with a declared
// address, shop/ledger with an allocated one; and a local web.
const remoteMesh = `
trustDomain: cluster.local
defaultPolicy: deny
services:
  - name: web
    namespace: shop
    clusterIPs: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [{address: 10.0.0.1, serviceAccount: web}]
remoteServices:
  - name: api
    namespace: shop
    trustDomain: b.example
    addresses: [10.200.0.7]
    ports:
      - {name: http, port: 80, targetPort: 8080, appProtocol: http}
      - {port: 9090}
    endpoints:
      - {address: 192.0.2.10, port: 15006, identity: spiffe://b.example/ns/shop/sa/api}
      - {address: 192.0.2.11, port: 15006, identity: spiffe://b.example/ns/shop/sa/api-canary}
  - name: ledger
    namespace: shop
    trustDomain: b.example
    ports: [{port: 5432}]
    endpoints: [{address: 192.0.2.20, port: 15006, identity: spiffe://b.example/ns/pay/sa/ledger}]
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-from-web, namespace: shop}
    spec:
      destination: {service: api, ports: [80]}
      sources: [{serviceAccount: {name: web}}]
`

func remoteRegistry(t *testing.T, mesh string) (*Registry, error) {
	t.Helper()
	r, err := NewRegistry(td, policy.Deny)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := ParseMeshFile([]byte(mesh))
	if err != nil {
		return r, err
	}
	return r, r.Update(mf.State)
}

func TestRemoteServiceFromFile(t *testing.T) {
	r, err := remoteRegistry(t, remoteMesh)
	if err != nil {
		t.Fatal(err)
	}
	snap := r.Snapshot()
	bTD := spiffeid.RequireTrustDomainFromString("b.example")
	api, ok := snap.Service(ServiceKey{Namespace: "shop", Name: "api"})
	if !ok {
		t.Fatal("shop/api is not a service of the snapshot")
	}
	if api.Remote != bTD {
		t.Errorf("Remote = %v, want b.example", api.Remote)
	}
	if want := []netip.Addr{netip.MustParseAddr("10.200.0.7")}; !slices.Equal(api.ClusterIPs, want) {
		t.Errorf("ClusterIPs = %v, want the declared %v", api.ClusterIPs, want)
	}
	if len(api.Ports) != 2 || api.Ports[1].TargetPort != 9090 || api.Ports[0].TargetPort != 8080 || api.Ports[0].Name != "http" {
		t.Errorf("ports = %+v", api.Ports)
	}
	// The identities are the declared foreign ones, whatever the mesh's
	// own trust domain.
	ids := api.Identities(td)
	if len(ids) != 2 || ids[0].String() != "spiffe://b.example/ns/shop/sa/api" || ids[1].String() != "spiffe://b.example/ns/shop/sa/api-canary" {
		t.Errorf("identities = %v", ids)
	}
	if e := api.Endpoints[0]; e.Port != 15006 || e.Addr != netip.MustParseAddr("192.0.2.10") {
		t.Errorf("endpoint = %+v", e)
	}

	ledger, ok := snap.Service(ServiceKey{Namespace: "shop", Name: "ledger"})
	if !ok {
		t.Fatal("shop/ledger is not a service of the snapshot")
	}
	if len(ledger.ClusterIPs) != 1 || !RemoteAddressRange.Contains(ledger.ClusterIPs[0]) {
		t.Fatalf("ledger's allocated address %v is not in %s", ledger.ClusterIPs, RemoteAddressRange)
	}
	if a := ledger.ClusterIPs[0]; a == RemoteAddressRange.Addr() || a == netip.MustParseAddr("240.240.255.255") {
		t.Errorf("allocated the range's network or broadcast address %s", a)
	}
	// Another replica given the same file allocates the same address.
	r2, err := remoteRegistry(t, remoteMesh)
	if err != nil {
		t.Fatal(err)
	}
	ledger2, _ := r2.Snapshot().Service(ledger.Key)
	if !slices.Equal(ledger2.ClusterIPs, ledger.ClusterIPs) {
		t.Errorf("two registries allocate %v and %v for the same file", ledger.ClusterIPs, ledger2.ClusterIPs)
	}
	if got := snap.RemoteServices(); len(got) != 2 {
		t.Errorf("RemoteServices = %d, want 2", len(got))
	}
	if got := snap.RefusedRemoteServices(); len(got) != 0 {
		t.Errorf("refused = %v", got)
	}

	// Local policies decide who reaches it; the defaults (deny here)
	// apply where no policy names it.
	web := id("/ns/shop/sa/web")
	eng := snap.Engine()
	if d := eng.Decide(web, "shop", "api", 80); !d.Allowed {
		t.Errorf("web to api:80 denied: %s", d.Rule)
	}
	if d := eng.Decide(web, "shop", "api", 9090); d.Allowed {
		t.Errorf("web to api:9090 allowed (the policy names port 80 only): %s", d.Rule)
	}
	if d := eng.Decide(id("/ns/shop/sa/other"), "shop", "api", 80); d.Allowed {
		t.Errorf("another caller allowed to api:80: %s", d.Rule)
	}
	if d := eng.Decide(web, "shop", "ledger", 5432); d.Allowed {
		t.Errorf("web to ledger allowed under the deny default: %s", d.Rule)
	}
	// The other mesh's workloads are no sources of this one, and they get
	// no inbound chain here.
	for _, src := range snap.Sources() {
		if src.TrustDomain() == bTD {
			t.Errorf("Sources holds the remote endpoint identity %s", src)
		}
	}
	if c := snap.InboundChains(spiffeid.RequireFromString("spiffe://b.example/ns/shop/sa/api")); len(c) != 0 {
		t.Errorf("remote identity has inbound chains %v", c)
	}
}

func TestRemoteServiceInvalid(t *testing.T) {
	const head = "trustDomain: cluster.local\nremoteServices:\n"
	ep := "    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://b.example/api}]\n"
	for _, tc := range []struct{ name, entry, want string }{
		{"own trust domain", "  - name: api\n    trustDomain: cluster.local\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://cluster.local/api}]\n",
			"trustDomain cluster.local is this mesh's own"},
		{"no trust domain", "  - name: api\n    ports: [{port: 80}]\n" + ep, "trustDomain is missing"},
		{"bad trust domain", "  - name: api\n    trustDomain: B_Example\n    ports: [{port: 80}]\n" + ep, `trustDomain "B_Example"`},
		{"identity outside", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://c.example/api}]\n",
			"identity spiffe://c.example/api is outside trust domain b.example"},
		{"identity of the own domain", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://cluster.local/ns/shop/sa/api}]\n",
			"is outside trust domain b.example"},
		{"missing identity", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 15006}]\n", "identity is missing"},
		{"bad identity", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 15006, identity: 'spiffe://b.example/a b'}]\n", `identity "spiffe://b.example/a b"`},
		{"bad address", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: api.b.example, port: 15006, identity: spiffe://b.example/api}]\n", `address "api.b.example" is not an IP address`},
		{"unspecified address", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 0.0.0.0, port: 15006, identity: spiffe://b.example/api}]\n", "not a unicast IP address"},
		{"missing port", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, identity: spiffe://b.example/api}]\n", "port is missing"},
		{"port out of range", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 70000, identity: spiffe://b.example/api}]\n", "port 70000 is outside 1-65535"},
		{"no endpoints", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n", "at least one endpoint"},
		{"no ports", "  - name: api\n    trustDomain: b.example\n" + ep, "at least one port"},
		{"duplicate ports", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}, {port: 80, targetPort: 81}]\n" + ep, "port 80 is listed twice"},
		{"service port out of range", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 0}]\n" + ep, "port 0 is outside 1-65535"},
		{"bad port name", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80, name: HTTP}]\n" + ep, `name "HTTP" is not a valid port name`},
		{"bad virtual address", "  - name: api\n    trustDomain: b.example\n    addresses: [nope]\n    ports: [{port: 80}]\n" + ep, `addresses[0]: "nope" is not an IP address`},
		{"loopback virtual address", "  - name: api\n    trustDomain: b.example\n    addresses: [127.0.0.9]\n    ports: [{port: 80}]\n" + ep, "127.0.0.9 is not a unicast address a sidecar captures"},
		{"bad name", "  - name: API\n    trustDomain: b.example\n    ports: [{port: 80}]\n" + ep, `name "API" is not a valid Service name`},
		{"listed twice", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" + ep +
			"  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n" + ep, "remote service default/api is listed twice"},
		{"too many addresses", "  - name: api\n    trustDomain: b.example\n    addresses: [10.9.0.1, 10.9.0.2, 10.9.0.3, 10.9.0.4, 10.9.0.5, 10.9.0.6, 10.9.0.7, 10.9.0.8, 10.9.0.9]\n    ports: [{port: 80}]\n" + ep,
			"addresses: 9 listed, at most 8 allowed"},
		{"unknown field", "  - name: api\n    trustDomain: b.example\n    ports: [{port: 80}]\n    gateway: x\n" + ep, `unknown field "gateway"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := remoteRegistry(t, head+tc.entry)
			if err == nil {
				t.Fatalf("accepted; services %v", r.Snapshot().Services())
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if r.Snapshot().Version() != 0 {
				t.Error("the registry installed a snapshot")
			}
		})
	}
}

// TestRemoteServiceCannotTakeLocal tries to make a remote service take
// what a local service has: its name, its ClusterIP, an endpoint address
// of a headless service, an endpoint. Each is refused (the local service
// keeps it, the rest of the state is served) and logged once.
func TestRemoteServiceCannotTakeLocal(t *testing.T) {
	const local = `
services:
  - name: web
    namespace: shop
    clusterIPs: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [{address: 10.0.0.1, serviceAccount: web}]
  - name: peers
    namespace: shop
    ports: [{port: 7000}]
    endpoints: [{address: 10.0.0.2, serviceAccount: peers}]
remoteServices:
  - name: fine
    namespace: shop
    trustDomain: b.example
    addresses: [10.200.0.1]
    ports: [{port: 80}]
    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://b.example/api}]
`
	for _, tc := range []struct{ name, entry, want, cause string }{
		{"name of a Service", "  - name: web\n    namespace: shop\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://b.example/api}]\n",
			"a Service shop/web of this mesh has the name; the Service keeps it", v1alpha1.RemoteServiceReasonNameConflict},
		{"ClusterIP", "  - name: steal\n    namespace: other\n    trustDomain: b.example\n    addresses: [10.96.0.10]\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://b.example/api}]\n",
			"address 10.96.0.10 is already an address of shop/web", v1alpha1.RemoteServiceReasonAddressConflict},
		{"IPv4-mapped ClusterIP", "  - name: steal\n    namespace: other\n    trustDomain: b.example\n    addresses: ['::ffff:10.96.0.10']\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://b.example/api}]\n",
			"is already an address of shop/web", v1alpha1.RemoteServiceReasonAddressConflict},
		{"headless endpoint address", "  - name: steal\n    trustDomain: b.example\n    addresses: [10.0.0.2]\n    ports: [{port: 7000}]\n" +
			"    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://b.example/api}]\n",
			"address 10.0.0.2 is already an address of shop/peers", v1alpha1.RemoteServiceReasonAddressConflict},
		{"endpoint", "  - name: steal\n    trustDomain: b.example\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 10.0.0.1, port: 8080, identity: spiffe://b.example/api}]\n",
			"endpoint 10.0.0.1:8080 is already an endpoint of shop/web", v1alpha1.RemoteServiceReasonEndpointConflict},
		{"another remote service's address", "  - name: steal\n    namespace: zzz\n    trustDomain: b.example\n    addresses: [10.200.0.1]\n    ports: [{port: 80}]\n" +
			"    endpoints: [{address: 192.0.2.30, port: 15006, identity: spiffe://b.example/api}]\n",
			"address 10.200.0.1 is already an address of shop/fine", v1alpha1.RemoteServiceReasonAddressConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := remoteRegistry(t, local+tc.entry)
			if err != nil {
				t.Fatalf("the whole state was rejected: %v", err)
			}
			snap := r.Snapshot()
			refused := snap.RefusedRemoteServices()
			if len(refused) != 1 || !strings.Contains(refused[0].Reason, tc.want) || refused[0].Cause != tc.cause {
				t.Fatalf("refused = %+v, want one saying %q, cause %s", refused, tc.want, tc.cause)
			}
			web, ok := snap.Service(ServiceKey{Namespace: "shop", Name: "web"})
			if !ok || !web.Remote.IsZero() || len(web.Endpoints) != 1 {
				t.Errorf("local shop/web = %+v, %v: want the local Service", web, ok)
			}
			if fine, ok := snap.Service(ServiceKey{Namespace: "shop", Name: "fine"}); !ok || fine.Remote.IsZero() {
				t.Error("the other remote service is not served")
			}
			if len(snap.RemoteServices()) != 1 {
				t.Errorf("remote services served: %v", snap.RemoteServices())
			}
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, nil))
			LogRefusals(log, nil, snap)
			LogRefusals(log, snap, snap) // unchanged: not logged again
			if n := strings.Count(buf.String(), "remote service refused"); n != 1 || !strings.Contains(buf.String(), tc.want) {
				t.Errorf("logged %d refusals: %s", n, buf.String())
			}
		})
	}
}

// TestRemoteAddressDeclaredWins: an address one remote service declares
// is never allocated to another; the one it would have had moves.
func TestRemoteAddressDeclaredWins(t *testing.T) {
	const mesh = `
remoteServices:
  - name: ledger
    namespace: shop
    trustDomain: b.example
    ports: [{port: 80}]
    endpoints: [{address: 192.0.2.10, port: 15006, identity: spiffe://b.example/api}]
`
	r, err := remoteRegistry(t, mesh)
	if err != nil {
		t.Fatal(err)
	}
	key := ServiceKey{Namespace: "shop", Name: "ledger"}
	before, _ := r.Snapshot().Service(key)
	r, err = remoteRegistry(t, mesh+`  - name: other
    namespace: zzz
    trustDomain: b.example
    addresses: [`+before.ClusterIPs[0].String()+`]
    ports: [{port: 80}]
    endpoints: [{address: 192.0.2.11, port: 15006, identity: spiffe://b.example/api}]
`)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := r.Snapshot().Service(key)
	other, _ := r.Snapshot().Service(ServiceKey{Namespace: "zzz", Name: "other"})
	if len(after.ClusterIPs) != 1 || after.ClusterIPs[0] == before.ClusterIPs[0] || !slices.Equal(other.ClusterIPs, before.ClusterIPs) {
		t.Errorf("ledger %v, other %v: want other to have %v and ledger another", after.ClusterIPs, other.ClusterIPs, before.ClusterIPs)
	}
	if got := r.Snapshot().RefusedRemoteServices(); len(got) != 0 {
		t.Errorf("refused %v", got)
	}
}

func TestRemoteAddressAllocation(t *testing.T) {
	key := ServiceKey{Namespace: "shop", Name: "ledger"}
	a, ok := allocate(key, nil)
	if !ok || !RemoteAddressRange.Contains(a) {
		t.Fatalf("allocate = %v, %v", a, ok)
	}
	// Taken (by a local service or an earlier remote one): the next one.
	b, ok := allocate(key, map[netip.Addr]ServiceKey{a: {Name: "x"}})
	if !ok || b == a || !RemoteAddressRange.Contains(b) {
		t.Errorf("with %s taken, allocate = %v, %v", a, b, ok)
	}
	if c, _ := allocate(ServiceKey{Namespace: "shop", Name: "ledger2"}, nil); c == a {
		t.Errorf("two names got %s (possible, but not for these two)", a)
	}
	// A full range: refused, not looping or panicking.
	full := make(map[netip.Addr]ServiceKey, 1<<16)
	for x := RemoteAddressRange.Addr(); RemoteAddressRange.Contains(x); x = x.Next() {
		full[x] = key
	}
	if a, ok := allocate(key, full); ok {
		t.Errorf("a full range allocated %s", a)
	}
}

// TestRemoteServiceSourceRefusals: what a source left out is kept in the
// snapshot with what the registry refuses.
func TestRemoteServiceSourceRefusals(t *testing.T) {
	r := newRegistry(t)
	left := Refusal{Key: ServiceKey{Namespace: "a", Name: "b"}, Reason: "a Kubernetes Service a/b has the name"}
	if err := r.Update(State{Refused: []Refusal{left}}); err != nil {
		t.Fatal(err)
	}
	if got := r.Snapshot().RefusedRemoteServices(); !slices.Equal(got, []Refusal{left}) {
		t.Errorf("refused = %v", got)
	}
}
