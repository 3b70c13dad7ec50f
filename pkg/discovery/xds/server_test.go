package xds_test

import (
	"context"
	"crypto/x509"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/identity"
)

var (
	webID = testutil.ID("/ns/default/sa/web")
	apiID = testutil.ID("/ns/default/sa/api")
	dbID  = testutil.ID("/ns/default/sa/db")
)

// meshState: web → api allowed, api → db allowed, mesh default deny; db's
// endpoint is at dbAddr.
func meshState(dbAddr string) discovery.State {
	ip := netip.MustParseAddr
	allow := func(name, dst, sa string) policy.AccessPolicy {
		return policy.AccessPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: policy.AccessPolicySpec{
				Destination: policy.Destination{Service: dst},
				Sources:     []policy.Source{{ServiceAccount: &policy.ServiceAccountSource{Name: sa}}},
			},
		}
	}
	return discovery.State{
		Services: []discovery.Service{
			{
				Key:       discovery.ServiceKey{Namespace: "default", Name: "web"},
				Ports:     []discovery.Port{{Port: 80, TargetPort: 8080}},
				Endpoints: []discovery.Endpoint{{Addr: ip("10.0.0.1"), ServiceAccount: "web"}},
			},
			{
				Key:   discovery.ServiceKey{Namespace: "default", Name: "api"},
				Ports: []discovery.Port{{Name: "http", Port: 80, TargetPort: 8080}, {Name: "grpc", Port: 9090}},
				Endpoints: []discovery.Endpoint{
					{Addr: ip("10.0.0.2"), ServiceAccount: "api"},
					{Addr: ip("10.0.0.3"), Port: 15006, ServiceAccount: "api"},
				},
			},
			{
				Key:       discovery.ServiceKey{Namespace: "default", Name: "db"},
				Ports:     []discovery.Port{{Port: 5432}},
				Endpoints: []discovery.Endpoint{{Addr: ip(dbAddr), ServiceAccount: "db"}},
			},
		},
		Policies: []policy.AccessPolicy{allow("web-to-api", "api", "web"), allow("api-to-db", "db", "api")},
	}
}

type mesh struct {
	t    *testing.T
	ca   *identity.CA
	reg  *discovery.Registry
	addr string
}

// newMesh serves meshState; opts set fields of the xds.Server.
func newMesh(t *testing.T, opts ...func(*xds.Server)) *mesh {
	t.Helper()
	ca := testutil.NewCA(t, identity.RealClock, nil)
	reg, err := discovery.NewRegistry(testutil.TrustDomain, policy.Deny)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Update(meshState("10.0.0.4")); err != nil {
		t.Fatal(err)
	}
	m := &mesh{t: t, ca: ca, reg: reg}
	serverID := testutil.ID("/discovery")
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(
		tlsconfig.MTLSServerConfig(m.svid(serverID), ca.Bundle().Bundle, tlsconfig.AuthorizeMemberOf(testutil.TrustDomain)))))
	srv := &xds.Server{Registry: reg}
	for _, o := range opts {
		o(srv)
	}
	srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); g.Serve(l) }()
	go func() {
		defer wg.Done()
		if err := srv.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		g.Stop()
		wg.Wait()
	})
	return m
}

func (m *mesh) svid(id spiffeid.ID) *x509svid.SVID {
	m.t.Helper()
	csr, key := testutil.NewCSR(m.t, nil, nil)
	iss, err := m.ca.Sign(id, csr)
	if err != nil {
		m.t.Fatal(err)
	}
	var certs []*x509.Certificate
	for _, der := range iss.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			m.t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
}

// client is an ADS client connected as id, sending node.id node.
type client struct {
	t      *testing.T
	node   *corev3.Node
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	resps  chan *discoveryv3.DiscoveryResponse
	err    chan error
}

// dial connects to discovery as id over mTLS; closeConn (also run at the
// end of the test) cancels ctx and closes the connection.
func (m *mesh) dial(id spiffeid.ID) (conn *grpc.ClientConn, ctx context.Context, closeConn func()) {
	m.t.Helper()
	conn, err := grpc.NewClient(m.addr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(m.svid(id), m.ca.Bundle().Bundle, tlsconfig.AuthorizeID(testutil.ID("/discovery"))))))
	if err != nil {
		m.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	closeConn = func() { cancel(); conn.Close() }
	m.t.Cleanup(closeConn)
	return conn, ctx, closeConn
}

func (m *mesh) connect(id spiffeid.ID, node string) *client {
	m.t.Helper()
	conn, ctx, _ := m.dial(id)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		m.t.Fatal(err)
	}
	c := &client{t: m.t, node: &corev3.Node{Id: node}, stream: stream,
		resps: make(chan *discoveryv3.DiscoveryResponse, 16), err: make(chan error, 1)}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				c.err <- err
				return
			}
			c.resps <- r
		}
	}()
	return c
}

func (c *client) send(typeURL string, names []string, ack *discoveryv3.DiscoveryResponse) {
	c.t.Helper()
	req := &discoveryv3.DiscoveryRequest{Node: c.node, TypeUrl: typeURL, ResourceNames: names}
	if ack != nil {
		req.VersionInfo, req.ResponseNonce = ack.GetVersionInfo(), ack.GetNonce()
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send %s: %v", typeURL, err)
	}
}

// recv waits up to timeout for the next response; nil if none came.
func (c *client) recv(timeout time.Duration) *discoveryv3.DiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.err:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(timeout):
	}
	return nil
}

// view is what a client has learned, by type.
type view map[string]*discoveryv3.DiscoveryResponse

// subscribe subscribes to clusters and listeners, then to the endpoints of
// every cluster, ACKing each response, and returns the latest responses.
func (c *client) subscribe() view {
	c.t.Helper()
	v := view{}
	c.send(resource.ClusterType, nil, nil)
	c.send(resource.ListenerType, nil, nil)
	for len(v) < 3 {
		r := c.recv(2 * time.Second)
		if r == nil {
			c.t.Fatalf("timed out subscribing; have %v", slices.Collect(mapsKeys(v)))
		}
		v[r.TypeUrl] = r
		c.send(r.TypeUrl, requestedNames(r), r) // ACK
		if r.TypeUrl == resource.ClusterType {
			var names []string
			for _, cl := range decode[*clusterv3.Cluster](c.t, r) {
				names = append(names, cl.Name)
			}
			c.send(resource.EndpointType, names, v[resource.EndpointType])
		}
	}
	return v
}

func requestedNames(r *discoveryv3.DiscoveryResponse) []string {
	if r.TypeUrl != resource.EndpointType {
		return nil
	}
	var names []string
	for _, a := range r.Resources {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err == nil {
			names = append(names, cla.ClusterName)
		}
	}
	return names
}

func mapsKeys(v view) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range v {
			if !yield(k) {
				return
			}
		}
	}
}

func decode[T proto.Message](t *testing.T, r *discoveryv3.DiscoveryResponse) []T {
	t.Helper()
	var out []T
	for _, a := range r.Resources {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		v, ok := m.(T)
		if !ok {
			t.Fatalf("resource of type %s in a %s response", a.TypeUrl, r.TypeUrl)
		}
		out = append(out, v)
	}
	return out
}

func sans(t *testing.T, c *clusterv3.Cluster) []string {
	t.Helper()
	var tc tlsv3.UpstreamTlsContext
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&tc); err != nil {
		t.Fatalf("cluster %s transport socket: %v", c.Name, err)
	}
	var out []string
	for _, m := range tc.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
		if m.SanType != tlsv3.SubjectAltNameMatcher_URI {
			t.Errorf("SAN matcher type %v, want URI", m.SanType)
		}
		out = append(out, m.GetMatcher().GetExact())
	}
	return out
}

func endpoints(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.Endpoints {
		for _, e := range l.LbEndpoints {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, netip.AddrPortFrom(netip.MustParseAddr(sa.Address), uint16(sa.GetPortValue())).String())
		}
	}
	slices.Sort(out)
	return out
}

func TestClientSeesOnlyReachableServices(t *testing.T) {
	m := newMesh(t)
	v := m.connect(webID, webID.String()).subscribe()

	clusters := decode[*clusterv3.Cluster](t, v[resource.ClusterType])
	if len(clusters) != 1 || clusters[0].Name != "default/api" {
		t.Fatalf("web's clusters = %v, want only default/api", clusters)
	}
	if got, want := sans(t, clusters[0]), []string{apiID.String()}; !slices.Equal(got, want) {
		t.Errorf("default/api SAN matchers = %v, want %v", got, want)
	}
	if clusters[0].GetType() != clusterv3.Cluster_EDS {
		t.Errorf("cluster type %v, want EDS", clusters[0].GetType())
	}
	clas := decode[*endpointv3.ClusterLoadAssignment](t, v[resource.EndpointType])
	if len(clas) != 1 || clas[0].ClusterName != "default/api" {
		t.Fatalf("web's CLAs = %v, want only default/api", clas)
	}
	// 10.0.0.2 on both target ports; 10.0.0.3 has its own port.
	if got, want := endpoints(clas[0]), []string{"10.0.0.2:8080", "10.0.0.2:9090", "10.0.0.3:15006"}; !slices.Equal(got, want) {
		t.Errorf("default/api endpoints = %v, want %v", got, want)
	}
	listeners := decode[*listenerv3.Listener](t, v[resource.ListenerType])
	if len(listeners) != 1 || listeners[0].Name != wire.InboundListenerName {
		t.Fatalf("web's listeners = %v, want only %s", listeners, wire.InboundListenerName)
	}
	if got := principals(t, listeners[0]); len(got) != 0 {
		t.Errorf("nobody may reach web, but its RBAC allows %v", got)
	}
}

// principals returns the RBAC principals of every filter chain, as
// "exact:<id>", "prefix:<id>" or "regex:<re>", deduplicated.
func principals(t *testing.T, l *listenerv3.Listener) []string {
	t.Helper()
	var out []string
	for _, fc := range l.FilterChains {
		n := len(fc.Filters)
		if n < 2 || fc.Filters[n-1].Name != "envoy.filters.network.tcp_proxy" {
			t.Fatalf("filter chain %s: want rbac filters then tcp_proxy, got %v", fc.Name, fc.Filters)
		}
		for _, f := range fc.Filters[:n-1] {
			if f.Name != "envoy.filters.network.rbac" {
				t.Fatalf("filter chain %s: want rbac filters then tcp_proxy, got %v", fc.Name, fc.Filters)
			}
			out = append(out, rbacPrincipals(t, f)...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func rbacPrincipals(t *testing.T, f *listenerv3.Filter) []string {
	t.Helper()
	var out []string
	{
		var rb rbacfilterv3.RBAC
		if err := f.GetTypedConfig().UnmarshalTo(&rb); err != nil {
			t.Fatal(err)
		}
		if rb.Rules.GetAction().String() != "ALLOW" {
			t.Errorf("RBAC action %v, want ALLOW", rb.Rules.GetAction())
		}
		for _, p := range rb.Rules.GetPolicies() {
			for _, pr := range p.Principals {
				m := pr.GetAuthenticated().GetPrincipalName()
				switch {
				case m.GetExact() != "":
					out = append(out, "exact:"+m.GetExact())
				case m.GetPrefix() != "":
					out = append(out, "prefix:"+m.GetPrefix())
				case m.GetSafeRegex() != nil:
					out = append(out, "regex:"+m.GetSafeRegex().GetRegex())
				default:
					t.Errorf("unexpected principal %v", pr)
				}
			}
		}
	}
	return out
}

func TestInboundListenerNamesAllowedSources(t *testing.T) {
	m := newMesh(t)
	v := m.connect(apiID, apiID.String()).subscribe()

	listeners := decode[*listenerv3.Listener](t, v[resource.ListenerType])
	if len(listeners) != 1 || listeners[0].Name != wire.InboundListenerName {
		t.Fatalf("api's listeners = %v, want only %s", listeners, wire.InboundListenerName)
	}
	if n := len(listeners[0].FilterChains); n != 2 {
		t.Errorf("api's inbound listener has %d filter chains, want one per port (2)", n)
	}
	if got, want := principals(t, listeners[0]), []string{"exact:" + webID.String()}; !slices.Equal(got, want) {
		t.Errorf("api's inbound principals = %v, want %v", got, want)
	}
	clusters := decode[*clusterv3.Cluster](t, v[resource.ClusterType])
	if len(clusters) != 1 || clusters[0].Name != "default/db" {
		t.Errorf("api's clusters = %v, want only default/db", clusters)
	}
}

func TestRefusesAnotherIdentitysView(t *testing.T) {
	m := newMesh(t)
	c := m.connect(webID, apiID.String())
	c.send(resource.ClusterType, nil, nil)
	select {
	case r := <-c.resps:
		t.Fatalf("web asking as api got a response: %v", r)
	case err := <-c.err:
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err = %v, want PermissionDenied", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no answer to a request for another identity's view")
	}
}

func TestChangeReachesOnlyAffectedClients(t *testing.T) {
	m := newMesh(t)
	web := m.connect(webID, webID.String())
	web.subscribe()
	api := m.connect(apiID, apiID.String())
	api.subscribe()
	// Drain any response already in flight (none is expected).
	if r := web.recv(100 * time.Millisecond); r != nil {
		t.Fatalf("web got an unexpected push before the change: %s", r.TypeUrl)
	}

	if err := m.reg.Update(meshState("10.0.0.9")); err != nil {
		t.Fatal(err)
	}
	r := api.recv(time.Second)
	if r == nil {
		t.Fatal("api got no push within 1s of db's endpoints changing")
	}
	if r.TypeUrl != resource.EndpointType {
		t.Fatalf("api got a %s push, want only endpoints", r.TypeUrl)
	}
	clas := decode[*endpointv3.ClusterLoadAssignment](t, r)
	if len(clas) != 1 || clas[0].ClusterName != "default/db" {
		t.Fatalf("api's CLAs = %v, want default/db", clas)
	}
	if got, want := endpoints(clas[0]), []string{"10.0.0.9:5432"}; !slices.Equal(got, want) {
		t.Errorf("default/db endpoints = %v, want %v", got, want)
	}
	api.send(resource.EndpointType, []string{"default/db"}, r) // ACK
	if r := api.recv(200 * time.Millisecond); r != nil {
		t.Errorf("api got a second push (%s) for one change", r.TypeUrl)
	}
	if r := web.recv(300 * time.Millisecond); r != nil {
		t.Errorf("web got a push (%s) for a service it may not reach", r.TypeUrl)
	}
}
