package xds_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// withWebToDB is meshState plus a policy that lets web reach db.
func withWebToDB(dbAddr string) discovery.State {
	st := meshState(dbAddr)
	st.Policies = append(st.Policies, policy.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-to-db", Namespace: "default"},
		Spec: policy.AccessPolicySpec{
			Destination: policy.Destination{Service: "db"},
			Sources:     []policy.Source{{ServiceAccount: &policy.ServiceAccountSource{Name: "web"}}},
		},
	})
	return st
}

func clusterNames(t *testing.T, r *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, c := range decode[*clusterv3.Cluster](t, r) {
		out = append(out, c.Name)
	}
	slices.Sort(out)
	return out
}

// A node that asks for endpoints outside its view by name gets only those
// of its view.
func TestEndpointsByNameStayScoped(t *testing.T) {
	m := newMesh(t)
	web := m.connect(webID, webID.String())
	web.send(resource.EndpointType, []string{"default/db", "default/api", "default/web", "default/nope"}, nil)
	r := web.recv(2 * time.Second)
	if r == nil {
		t.Fatal("no EDS response")
	}
	var got []string
	for _, cla := range decode[*endpointv3.ClusterLoadAssignment](t, r) {
		got = append(got, cla.ClusterName)
	}
	if want := []string{"default/api"}; !slices.Equal(got, want) {
		t.Fatalf("web asked for every CLA by name and got %v, want %v", got, want)
	}
	// Asking again at the version it has, for the same names, is an ACK:
	// no response.
	web.send(resource.EndpointType, []string{"default/db", "default/api"}, r)
	if r := web.recv(200 * time.Millisecond); r != nil {
		t.Fatalf("an ACK got a response (%s, %d resources)", r.TypeUrl, len(r.Resources))
	}
}

// A NACKed version is not sent again; the next version is.
func TestNACKWaitsForTheNextVersion(t *testing.T) {
	m := newMesh(t)
	web := m.connect(webID, webID.String())
	web.send(resource.ClusterType, nil, nil)
	r := web.recv(2 * time.Second)
	if r == nil {
		t.Fatal("no CDS response")
	}
	// NACK: the version it had before (none), the nonce, an error.
	nack := &discoveryv3.DiscoveryRequest{Node: web.node, TypeUrl: resource.ClusterType, ResponseNonce: r.Nonce,
		ErrorDetail: &statuspb.Status{Code: 3, Message: "refused"}}
	if err := web.stream.Send(nack); err != nil {
		t.Fatal(err)
	}
	if r := web.recv(300 * time.Millisecond); r != nil {
		t.Fatalf("the NACKed version was sent again (%s %s)", r.TypeUrl, r.VersionInfo)
	}
	if err := m.reg.Update(withWebToDB("10.0.0.4")); err != nil {
		t.Fatal(err)
	}
	r2 := web.recv(2 * time.Second)
	if r2 == nil {
		t.Fatal("no CDS push after the NACK and a change")
	}
	if r2.VersionInfo == r.VersionInfo {
		t.Errorf("version %s again after a change", r2.VersionInfo)
	}
	if got, want := clusterNames(t, r2), []string{"default/api", "default/db"}; !slices.Equal(got, want) {
		t.Errorf("clusters after the change = %v, want %v", got, want)
	}
}

// A client that reconnects gets the current view: at once if its version
// is older, not again if it is current.
func TestReconnect(t *testing.T) {
	m := newMesh(t)
	first := m.connect(webID, webID.String())
	v := first.subscribe()
	old := v[resource.ClusterType]
	first.stream.CloseSend()

	if err := m.reg.Update(withWebToDB("10.0.0.4")); err != nil {
		t.Fatal(err)
	}
	again := m.connect(webID, webID.String())
	again.send(resource.ClusterType, nil, old) // the version it had
	r := again.recv(2 * time.Second)
	if r == nil {
		t.Fatal("no CDS response after reconnecting with an old version")
	}
	if got, want := clusterNames(t, r), []string{"default/api", "default/db"}; !slices.Equal(got, want) {
		t.Errorf("clusters after reconnecting = %v, want %v", got, want)
	}

	third := m.connect(webID, webID.String())
	third.send(resource.ClusterType, nil, r) // already current
	if r := third.recv(300 * time.Millisecond); r != nil {
		t.Errorf("a client with the current version got it again (%s)", r.VersionInfo)
	}
}

// deltaClient is an incremental ADS client.
type deltaClient struct {
	t      *testing.T
	node   *corev3.Node
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	resps  chan *discoveryv3.DeltaDiscoveryResponse
	close  func() // ends the stream and the connection
	// nodeOnce sends node on the stream's first request only, as Envoy
	// with set_node_on_first_message_only does.
	nodeOnce bool
	sent     bool
	end      error // why the stream ended; read it after resps is closed
}

func (m *mesh) connectDelta(id spiffeid.ID) *deltaClient {
	m.t.Helper()
	conn, ctx, closeConn := m.dial(id)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		m.t.Fatal(err)
	}
	c := &deltaClient{t: m.t, node: &corev3.Node{Id: id.String()}, stream: stream, resps: make(chan *discoveryv3.DeltaDiscoveryResponse, 16),
		close: closeConn}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				c.end = err
				close(c.resps)
				return
			}
			c.resps <- r
		}
	}()
	return c
}

func (c *deltaClient) send(req *discoveryv3.DeltaDiscoveryRequest) {
	c.t.Helper()
	if !c.nodeOnce || !c.sent {
		req.Node = c.node
	}
	c.sent = true
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

func (c *deltaClient) recv(timeout time.Duration) *discoveryv3.DeltaDiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case <-time.After(timeout):
		return nil
	}
}

// subscribe subscribes to every type (wildcard), ACKs, and returns the
// names it holds by type.
func (c *deltaClient) subscribe() map[string][]string {
	c.t.Helper()
	types := []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.ExtensionConfigType}
	for _, typ := range types {
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ})
	}
	held := map[string][]string{}
	for range types {
		r := c.recv(2 * time.Second)
		if r == nil {
			c.t.Fatalf("timed out subscribing; have %v", held)
		}
		for _, res := range r.Resources {
			held[r.TypeUrl] = append(held[r.TypeUrl], res.Name)
		}
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	}
	return held
}

func deltaNames(r *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.Resources {
		out = append(out, res.Name)
	}
	return out
}

// Delta xDS: a node gets only its view, a change to one service sends
// that one resource to the nodes whose view holds it and nothing to the
// others, and a revoked service is removed.
func TestDeltaSendsOnlyWhatChanged(t *testing.T) {
	m := newMesh(t)
	web := m.connectDelta(webID)
	api := m.connectDelta(apiID)
	held := web.subscribe()
	if got := held[resource.ClusterType]; !slices.Equal(got, []string{"default/api"}) {
		t.Fatalf("web's clusters = %v, want only default/api", got)
	}
	if got := held[resource.EndpointType]; !slices.Equal(got, []string{"default/api"}) {
		t.Fatalf("web's CLAs = %v, want only default/api", got)
	}
	if got := held[resource.ListenerType]; !slices.Equal(got, []string{"inbound|15006"}) {
		t.Fatalf("web's listeners = %v", got)
	}
	if got := api.subscribe()[resource.ClusterType]; !slices.Equal(got, []string{"default/db"}) {
		t.Fatalf("api's clusters = %v, want only default/db", got)
	}

	// db's endpoint moves: api gets that CLA alone, web nothing.
	if err := m.reg.Update(meshState("10.0.0.9")); err != nil {
		t.Fatal(err)
	}
	r := api.recv(2 * time.Second)
	if r == nil {
		t.Fatal("api got no push for db's endpoints")
	}
	if r.TypeUrl != resource.EndpointType || !slices.Equal(deltaNames(r), []string{"default/db"}) || len(r.RemovedResources) != 0 {
		t.Fatalf("api got %s %v removed %v; want EDS default/db only", r.TypeUrl, deltaNames(r), r.RemovedResources)
	}
	api.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	if r := api.recv(200 * time.Millisecond); r != nil {
		t.Errorf("api got a second push (%s %v) for one change", r.TypeUrl, deltaNames(r))
	}
	// db is headless and hidden from web: web gets the new address of its
	// hidden entry (so that its DNS server refuses it) and nothing else.
	if r := web.recv(2 * time.Second); r == nil || r.TypeUrl != resource.ExtensionConfigType || len(r.Resources) != 1 ||
		!strings.HasPrefix(r.Resources[0].Name, wire.NameHiddenPrefix) || len(r.RemovedResources) != 0 {
		t.Errorf("web got %v for db's move, want only db's hidden entry", r)
	} else {
		web.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	}
	if r := web.recv(300 * time.Millisecond); r != nil {
		t.Errorf("web got a push (%s %v) for a service it may not reach", r.TypeUrl, deltaNames(r))
	}

	// api loses db: the cluster and its CLA are removed.
	st := meshState("10.0.0.9")
	st.Policies = st.Policies[:1]
	if err := m.reg.Update(st); err != nil {
		t.Fatal(err)
	}
	removed := map[string][]string{}
	for len(removed) < 2 {
		r := api.recv(2 * time.Second)
		if r == nil {
			t.Fatalf("no removal within 2s; have %v", removed)
		}
		if len(r.RemovedResources) > 0 {
			removed[r.TypeUrl] = r.RemovedResources
		}
		api.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	}
	for _, typ := range []string{resource.ClusterType, resource.EndpointType} {
		if !slices.Equal(removed[typ], []string{"default/db"}) {
			t.Errorf("%s removed %v, want default/db", typ, removed[typ])
		}
	}
}

// Delta xDS by name stays in the view; a new stream that says what it has
// (initial_resource_versions) gets only what it lacks, and is told about
// the names that are gone.
func TestDeltaByNameAndResume(t *testing.T) {
	m := newMesh(t)
	web := m.connectDelta(webID)
	web.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{"default/api", "default/db"}})
	r := web.recv(2 * time.Second)
	if r == nil {
		t.Fatal("no EDS response")
	}
	if got := deltaNames(r); !slices.Equal(got, []string{"default/api"}) {
		t.Fatalf("web subscribed to api and db by name and got %v, want only default/api", got)
	}
	have := map[string]string{"default/api": r.Resources[0].Version, "default/gone": "x"}

	again := m.connectDelta(webID)
	again.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, InitialResourceVersions: have})
	r = again.recv(2 * time.Second)
	if r == nil {
		t.Fatal("no EDS response on the new stream")
	}
	if len(r.Resources) != 0 || !slices.Equal(r.RemovedResources, []string{"default/gone"}) {
		t.Fatalf("resumed stream got %v, removed %v; want nothing, removed default/gone", deltaNames(r), r.RemovedResources)
	}
	again.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	if r := again.recv(300 * time.Millisecond); r != nil {
		t.Errorf("an ACK got a response: %v removed %v", deltaNames(r), r.RemovedResources)
	}
	// NACK: nothing is sent again until the next change.
	nackOf := func(c *deltaClient, typ, nonce string) {
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: nonce, ErrorDetail: &statuspb.Status{Code: 3, Message: "refused"}})
	}
	if err := m.reg.Update(withWebToDB("10.0.0.4")); err != nil {
		t.Fatal(err)
	}
	r = again.recv(2 * time.Second)
	if r == nil || !slices.Equal(deltaNames(r), []string{"default/db"}) {
		t.Fatalf("after web may reach db, the wildcard stream got %v", r)
	}
	nackOf(again, r.TypeUrl, r.Nonce)
	if r := again.recv(300 * time.Millisecond); r != nil {
		t.Errorf("a NACK got the same resources again: %v", deltaNames(r))
	}
}

// Two streams of one identity (a reconnect that overlaps the old stream)
// each get the change, and each its own EDS by name.
func TestTwoStreamsOfOneNode(t *testing.T) {
	m := newMesh(t)
	a := m.connect(webID, webID.String())
	a.subscribe()
	b := m.connect(webID, webID.String())
	b.subscribe()
	if err := m.reg.Update(withWebToDB("10.0.0.4")); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*client{"first": a, "second": b} {
		var got []string
		for got == nil {
			r := c.recv(2 * time.Second)
			if r == nil {
				t.Fatalf("%s stream: no CDS push", name)
			}
			if r.TypeUrl == resource.ClusterType {
				got = clusterNames(t, r)
			}
		}
		if want := []string{"default/api", "default/db"}; !slices.Equal(got, want) {
			t.Errorf("%s stream: clusters %v, want %v", name, got, want)
		}
	}
}
