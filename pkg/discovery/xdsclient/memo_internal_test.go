package xdsclient

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/internal/discoverytest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
)

// configurations returns n configurations for id from a random mesh that
// changes between them; one in five is in another cluster domain.
func configurations(t *testing.T, r *rand.Rand, id spiffeid.ID, n int) []map[resource.Type][]types.Resource {
	t.Helper()
	st := discoverytest.RandomState(r, testutil.TrustDomain)
	var out []map[resource.Type][]types.Resource
	for range n {
		reg, err := discovery.NewRegistry(testutil.TrustDomain, wire.AllowMesh)
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.Update(st); err != nil {
			t.Fatal(err)
		}
		domain := ""
		if r.IntN(5) == 0 {
			domain = "example.org"
		}
		res, err := xds.BuildResources(reg.Snapshot(), id, domain)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, res)
		for range 1 + r.IntN(3) {
			discoverytest.Mutate(r, testutil.TrustDomain, &st)
		}
	}
	return out
}

// breakOne returns a copy of res (one resource of typ) that the client
// must reject, or nil when there is no way to break it.
func breakOne(r *rand.Rand, res types.Resource) types.Resource {
	res = proto.Clone(res)
	switch m := res.(type) {
	case *clusterv3.Cluster:
		if r.IntN(2) == 0 {
			m.TransportSocket = nil
		} else {
			m.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
		}
	case *endpointv3.ClusterLoadAssignment:
		m.Endpoints = append(m.Endpoints, &endpointv3.LocalityLbEndpoints{LbEndpoints: []*endpointv3.LbEndpoint{{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: "10.9.9.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(r.IntN(2) * 70000)},
				}},
			}}},
		}}})
	case *listenerv3.Listener:
		if len(m.FilterChains) == 0 {
			return nil
		}
		m.FilterChains[0].FilterChainMatch.DestinationPort = nil
	case *corev3.TypedExtensionConfig:
		var nt discoveryv1.NameTable
		if err := m.GetTypedConfig().UnmarshalTo(&nt); err != nil {
			panic(err)
		}
		switch {
		case m.Name == wire.NameGlobalsName:
			nt.InboundDefault = "allow-all"
		case len(nt.Services) == 1 && r.IntN(2) == 0:
			nt.Services[0].Addresses = append(nt.Services[0].Addresses, "bogus")
		case len(nt.Services) == 1:
			nt.Services[0].Fqdn = "elsewhere."
		default:
			m.TypedConfig = nil
			return m
		}
		a, err := anypb.New(&nt)
		if err != nil {
			panic(err)
		}
		m.TypedConfig = a
	}
	return res
}

// heldLists returns what s holds, as build passes it to a View: the
// ClusterLoadAssignments of held Clusters only.
func heldLists(s *session) map[resource.Type][]types.Resource {
	res := map[resource.Type][]types.Resource{}
	for _, t := range subscribed {
		res[t] = sortedByName(s.types[t].resources)
	}
	clas := res[resource.EndpointType][:0:0]
	for _, r := range res[resource.EndpointType] {
		if _, ok := s.types[resource.ClusterType].resources[r.(*endpointv3.ClusterLoadAssignment).GetClusterName()]; ok {
			clas = append(clas, r)
		}
	}
	res[resource.EndpointType] = clas
	return res
}

// checkMemoHeld fails unless everything s's memo keeps is held, each
// under its own name and type.
func checkMemoHeld(t *testing.T, s *session) {
	t.Helper()
	held := func(typ resource.Type, r types.Resource) bool {
		got, ok := s.types[typ].resources[cachev3.GetResourceName(r)]
		return ok && got == r
	}
	m := s.memo
	for c := range m.clusters {
		if !held(resource.ClusterType, c) {
			t.Errorf("the memo keeps Cluster %q, which is not held", c.GetName())
		}
	}
	for cla := range m.clas {
		if !held(resource.EndpointType, cla) {
			t.Errorf("the memo keeps ClusterLoadAssignment %q, which is not held", cla.GetClusterName())
		}
	}
	for l := range m.listeners {
		if !held(resource.ListenerType, l) {
			t.Errorf("the memo keeps Listener %q, which is not held", l.GetName())
		}
	}
	inTables := map[*discoveryv1.ServiceName]bool{}
	for tec, e := range m.names {
		if !held(resource.ExtensionConfigType, tec) {
			t.Errorf("the memo keeps extension config %q, which is not held", tec.GetName())
		}
		for _, sn := range e.Table.GetServices() {
			inTables[sn] = true
		}
	}
	for sn := range m.services {
		if !inTables[sn] {
			t.Errorf("the memo keeps service %s/%s of no held name-table entry", sn.GetNamespace(), sn.GetName())
		}
	}
	for r := range m.digests {
		if !slices.ContainsFunc(subscribed, func(typ resource.Type) bool { return held(typ, r) }) {
			t.Errorf("the memo keeps the digest of %T %q, which is not held", r, cachev3.GetResourceName(r))
		}
	}
}

// Random updates (resources added, changed and removed, some malformed,
// some out of step with the other types) get the same answers from the
// session, which parses only what changed, as from parsing everything:
// the same NACK for a bad update, and after every update the View that
// NewViewFor builds from what is held, or the last good one if what is
// held does not make a View.
func TestSessionMemoMatchesFreshParsing(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 0))
			id := spiffeid.RequireFromPath(testutil.TrustDomain, "/ns/ns0/sa/s0")
			configs := configurations(t, r, id, 12)
			s, rs := testSession(t, id)
			for step := range 150 {
				typ := subscribed[r.IntN(len(subscribed))]
				target := configs[min(len(configs)-1, step/12+r.IntN(3))][typ]
				resp := randomUpdate(t, r, s.types[typ].resources, target, typ, fmt.Sprint(step))
				// The answer, from parsing the update from scratch.
				var wantNACK string
				next, err := apply(s.types[typ].resources, resp)
				if err == nil {
					err = check(typ, sortedByName(next), &memo{})
				}
				if err != nil {
					wantNACK = err.Error()
				}
				before := s.c.View()
				if err := s.handle(resp); err != nil {
					t.Fatal(err)
				}
				sent := rs.last()
				if sent.GetTypeUrl() != typ || sent.GetResponseNonce() != resp.GetNonce() || sent.GetErrorDetail().GetMessage() != wantNACK {
					t.Fatalf("step %d (%s): sent %s nonce %q error %q; want nonce %q error %q", step, typeLabel(typ),
						typeLabel(sent.GetTypeUrl()), sent.GetResponseNonce(), sent.GetErrorDetail().GetMessage(), resp.GetNonce(), wantNACK)
				}

				// The view, against one from scratch.
				want, err := NewViewFor(id, heldLists(s))
				complete := s.types[resource.ClusterType].received && s.types[resource.ListenerType].received &&
					s.types[resource.ExtensionConfigType].received
				switch got := s.c.View(); {
				case complete && err == nil:
					if !reflect.DeepEqual(got, want) {
						t.Fatalf("step %d (%s): the view differs from NewViewFor's", step, typeLabel(typ))
					}
				case got != before:
					t.Fatalf("step %d (%s): a new view, but NewViewFor says %v (all received: %v)", step, typeLabel(typ), err, complete)
				}
				checkMemoHeld(t, s)
			}
			if s.c.View() == nil {
				t.Error("no view after all the updates")
			}
		})
	}
}

// randomUpdate is a response of typ that moves held towards target: some
// of the resources that differ, some of the names target lacks removed;
// sometimes with a malformed resource, sometimes with one that does not
// even decode to the right message or name.
func randomUpdate(t *testing.T, r *rand.Rand, held map[string]types.Resource, target []types.Resource, typ resource.Type, nonce string) *discoveryv3.DeltaDiscoveryResponse {
	t.Helper()
	// Half the updates send all that differs.
	some := func() bool { return r.IntN(2) == 0 || r.IntN(3) > 0 }
	if r.IntN(2) == 0 {
		some = func() bool { return true }
	}
	var send []types.Resource
	inTarget := map[string]bool{}
	for _, res := range target {
		name := cachev3.GetResourceName(res)
		inTarget[name] = true
		if h, ok := held[name]; (!ok || !proto.Equal(h, res)) && some() {
			send = append(send, res)
		}
	}
	var removed []string
	for name := range held {
		if !inTarget[name] && some() {
			removed = append(removed, name)
		}
	}
	slices.Sort(removed)
	if len(target) > 0 && r.IntN(6) == 0 {
		if bad := breakOne(r, target[r.IntN(len(target))]); bad != nil {
			send = append(send, bad)
		}
	}
	resp := deltaResponse(t, typ, nonce, send, removed...)
	if len(resp.Resources) > 0 && r.IntN(20) == 0 {
		rsc := resp.Resources[r.IntN(len(resp.Resources))]
		if r.IntN(2) == 0 {
			rsc.Name += "x"
		} else {
			rsc.Resource.TypeUrl = resource.SecretType
		}
	}
	return resp
}

// The memo keeps only what the session holds: what an update replaces or
// removes, and what a rejected update brought, is forgotten.
func TestSessionMemoForgets(t *testing.T) {
	reg, err := discovery.NewRegistry(testutil.TrustDomain, wire.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	st := discoverytest.RandomState(r, testutil.TrustDomain)
	if err := reg.Update(st); err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(testutil.TrustDomain, "/ns/ns0/sa/s0")
	full, err := xds.BuildResources(reg.Snapshot(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	s, rs := testSession(t, id)
	for i, typ := range subscribed {
		if err := s.handle(deltaResponse(t, typ, fmt.Sprint(i), full[typ])); err != nil {
			t.Fatal(err)
		}
	}
	if s.c.View() == nil {
		t.Fatal("no view from the whole configuration")
	}
	sizes := func() []int {
		m := s.memo
		return []int{len(m.clusters), len(m.clas), len(m.listeners), len(m.names), len(m.digests)}
	}
	held := func() []int {
		n := func(typ resource.Type) int { return len(s.types[typ].resources) }
		return []int{n(resource.ClusterType), n(resource.EndpointType), n(resource.ListenerType), n(resource.ExtensionConfigType),
			n(resource.ClusterType) + n(resource.EndpointType) + n(resource.ListenerType) + n(resource.ExtensionConfigType)}
	}
	if got, want := sizes(), held(); !slices.Equal(got, want) || want[1] == 0 || want[3] == 0 {
		t.Fatalf("after the whole configuration the memo keeps %v (clusters, CLAs, listeners, names, digests), want %v", got, want)
	}
	checkMemoHeld(t, s)

	// Every CLA replaced (an endpoint added), then half of them removed.
	clas := full[resource.EndpointType]
	var moved []types.Resource
	for _, res := range clas {
		cla := proto.Clone(res).(*endpointv3.ClusterLoadAssignment)
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{LbEndpoints: []*endpointv3.LbEndpoint{{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: "10.9.9.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 9999},
				}},
			}}},
		}}})
		moved = append(moved, cla)
	}
	var removed []string
	for _, res := range clas[:len(clas)/2] {
		removed = append(removed, cachev3.GetResourceName(res))
	}
	for i, resp := range []*discoveryv3.DeltaDiscoveryResponse{
		deltaResponse(t, resource.EndpointType, "moved", moved),
		deltaResponse(t, resource.EndpointType, "removed", nil, removed...),
	} {
		if err := s.handle(resp); err != nil {
			t.Fatal(err)
		}
		if msg := rs.last().GetErrorDetail().GetMessage(); msg != "" {
			t.Fatalf("update %d NACKed: %s", i, msg)
		}
		checkMemoHeld(t, s)
		if got := len(s.memo.clas); got != len(s.types[resource.EndpointType].resources) {
			t.Errorf("update %d: the memo keeps %d CLAs, %d are held", i, got, len(s.types[resource.EndpointType].resources))
		}
	}

	// A rejected update: good name-table entries before a bad one are
	// parsed, and forgotten with the update.
	names := slices.Clone(full[resource.ExtensionConfigType])
	for i, res := range names {
		tec := proto.Clone(res).(*corev3.TypedExtensionConfig)
		if i == len(names)-1 {
			tec.TypedConfig = nil
		}
		names[i] = tec
	}
	before := sizes()
	if err := s.handle(deltaResponse(t, resource.ExtensionConfigType, "bad", names)); err != nil {
		t.Fatal(err)
	}
	if rs.last().GetErrorDetail() == nil {
		t.Fatal("a name table entry without typed_config was accepted")
	}
	checkMemoHeld(t, s)
	if got := sizes(); !slices.Equal(got, before) {
		t.Errorf("after a rejected update the memo keeps %v, before it %v", got, before)
	}
}
