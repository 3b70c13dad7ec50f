package xdsclient

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
)

// recordStream is an ADS stream that records what the session sends.
type recordStream struct {
	discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	sent []*discoveryv3.DeltaDiscoveryRequest
}

func (r *recordStream) Send(req *discoveryv3.DeltaDiscoveryRequest) error {
	r.sent = append(r.sent, req)
	return nil
}

// last returns the last request sent.
func (r *recordStream) last() *discoveryv3.DeltaDiscoveryRequest { return r.sent[len(r.sent)-1] }

// noSVIDs is an SVID source without an SVID.
type noSVIDs struct{}

func (noSVIDs) GetX509SVID() (*x509svid.SVID, error) { return nil, errors.New("no SVID") }

// testSession returns a session of a client for id on a recordStream, as
// Client.session sets one up, without a connection.
func testSession(tb testing.TB, id spiffeid.ID) (*session, *recordStream) {
	tb.Helper()
	m, err := newMetrics(nil)
	if err != nil {
		tb.Fatal(err)
	}
	c := &Client{cfg: Config{ID: id, SVIDs: noSVIDs{}}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: m, ready: make(chan struct{})}
	c.cur.Store(&published{changed: make(chan struct{})})
	rs := &recordStream{}
	return newSession(c, rs), rs
}

// deltaResponse is a response of typ carrying rs and removing removed.
func deltaResponse(tb testing.TB, typ resource.Type, nonce string, rs []types.Resource, removed ...string) *discoveryv3.DeltaDiscoveryResponse {
	tb.Helper()
	resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typ, Nonce: nonce, SystemVersionInfo: nonce, RemovedResources: removed}
	for _, r := range rs {
		a, err := anypb.New(r)
		if err != nil {
			tb.Fatal(err)
		}
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: cachev3.GetResourceName(r), Version: nonce, Resource: a})
	}
	return resp
}

// largeResources is a sidecar's configuration at full scale: 10,000
// services of five endpoints and one to three ports in 100 namespaces, 4
// of 10 namespaces keeping the mesh default (allow-mesh), 5 of 10
// same-namespace, 1 of 10 deny, and 400 AccessPolicies that each let one
// namespace in. The sidecar, svc-00000 in team-000, may reach about 4,000
// services.
func largeResources(tb testing.TB) (spiffeid.ID, map[resource.Type][]types.Resource) {
	tb.Helper()
	const services, namespaces = 10000, 100
	var st discovery.State
	for i := range namespaces {
		def := ""
		switch {
		case i%10 == 9:
			def = wire.Deny.String()
		case i%10 >= 4:
			def = wire.SameNamespace.String()
		}
		st.Namespaces = append(st.Namespaces, discovery.Namespace{Name: fmt.Sprintf("team-%03d", i), DefaultPolicy: def})
	}
	pod := 1 << 16
	for i := range services {
		svc := discovery.Service{
			Key:        wire.ServiceKey{Namespace: fmt.Sprintf("team-%03d", i%namespaces), Name: fmt.Sprintf("svc-%05d", i)},
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)})},
		}
		for p := range 1 + i%3 {
			svc.Ports = append(svc.Ports, discovery.Port{Name: fmt.Sprintf("p%d", p), Port: uint16(80 + p), TargetPort: uint16(8080 + p)})
		}
		for range 5 {
			svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{
				Addr: netip.AddrFrom4([4]byte{10, byte(pod >> 16), byte(pod >> 8), byte(pod)}), ServiceAccount: svc.Key.Name,
			})
			pod++
		}
		st.Services = append(st.Services, svc)
		if i%25 == 7 {
			st.Policies = append(st.Policies, policy.AccessPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: svc.Key.Namespace, Name: "allow-" + svc.Key.Name},
				Spec: policy.AccessPolicySpec{
					Destination: policy.Destination{Service: svc.Key.Name},
					Sources:     []policy.Source{{Namespace: svc.Key.Namespace}},
				},
			})
		}
	}
	reg, err := discovery.NewRegistry(testutil.TrustDomain, wire.AllowMesh)
	if err != nil {
		tb.Fatal(err)
	}
	if err := reg.Update(st); err != nil {
		tb.Fatal(err)
	}
	id, err := wire.WorkloadID(testutil.TrustDomain, "team-000", "svc-00000")
	if err != nil {
		tb.Fatal(err)
	}
	res, err := xds.BuildResources(reg.Snapshot(), id, "")
	if err != nil {
		tb.Fatal(err)
	}
	return id, res
}

// BenchmarkSessionUpdate is what a sidecar does with one response at full
// scale (see largeResources): the whole configuration is held, and an
// endpoint is added to or removed from one ClusterLoadAssignment, in turn.
// Each response is applied, checked and gives a new View.
func BenchmarkSessionUpdate(b *testing.B) {
	id, res := largeResources(b)
	s, _ := testSession(b, id)
	for i, typ := range subscribed {
		if err := s.handle(deltaResponse(b, typ, fmt.Sprint(i), res[typ])); err != nil {
			b.Fatal(err)
		}
	}
	v := s.c.View()
	if v == nil {
		b.Fatal("no view from the whole configuration")
	}
	b.Logf("%d services reachable; %d clusters, %d name-table entries", len(v.Services()),
		len(res[resource.ClusterType]), len(res[resource.ExtensionConfigType]))
	cla := res[resource.EndpointType][len(res[resource.EndpointType])/2].(*endpointv3.ClusterLoadAssignment)
	more := proto.Clone(cla).(*endpointv3.ClusterLoadAssignment)
	more.Endpoints[0].LbEndpoints = append(more.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
			Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.200.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080},
			}},
		}}},
	})
	updates := []*discoveryv3.DeltaDiscoveryResponse{
		deltaResponse(b, resource.EndpointType, "add", []types.Resource{more}),
		deltaResponse(b, resource.EndpointType, "remove", []types.Resource{cla}),
	}
	n := 0
	for b.Loop() {
		if err := s.handle(updates[n%2]); err != nil {
			b.Fatal(err)
		}
		n++
	}
	if s.c.View() == v {
		b.Fatal("the updates did not give a new view")
	}
}
