package discoveryserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	discoveryapi "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/identity"
)

// discoveryID is the identity tests give tether-discovery, as in Kubernetes.
var discoveryID = spiffeid.RequireFromString("spiffe://cluster.local/ns/tether-system/sa/tether-discovery")

// testLogger logs to the test with TETHER_TEST_LOG set, else nowhere.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("TETHER_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	w := &testLogWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testLogWriter sends log lines to t.Log until the test ends.
type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() { w.mu.Lock(); w.done = true; w.mu.Unlock() }

// testCA is a running tether-ca on a temporary disk store.
type testCA struct {
	svc        *caserver.Service
	addr       string
	bundleFile string
}

func startCA(t *testing.T) *testCA {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := caserver.New(ctx, caserver.Config{
		TrustDomain: "cluster.local", ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Store: "dir", StoreDir: dir, SVIDTTL: time.Hour, IntermediateTTL: 720 * time.Hour, RootTTL: 8760 * time.Hour,
		TickInterval: time.Second,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	bundle := filepath.Join(dir, "bundle.pem")
	testutil.Eventually(t, "CA up", 15*time.Second, func() bool {
		_, err := os.Stat(bundle)
		return svc.Addr("grpc") != nil && err == nil
	})
	return &testCA{svc: svc, addr: svc.Addr("grpc").String(), bundleFile: bundle}
}

func (c *testCA) token(t *testing.T, id spiffeid.ID) string {
	t.Helper()
	create := c.svc.CA().CreateJoinToken
	if identity.IsReserved(id) { // discovery's own ID
		create = c.svc.CA().CreateReservedJoinToken
	}
	tok, _, err := create(context.Background(), id, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (c *testCA) bundle() *x509bundle.Bundle { return c.svc.CA().Bundle().Bundle }

// svid signs an SVID for id, as a sidecar would get one.
func (c *testCA) svid(t *testing.T, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	return signSVID(t, c.svc.CA(), id)
}

func signSVID(t *testing.T, ca *identity.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, err := ca.Sign(id, csr)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for _, der := range iss.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
}

// baseConfig is a file-mode config for ca, listening on loopback.
func baseConfig(t *testing.T, ca *testCA, meshFile string) Config {
	return Config{
		TrustDomain: "cluster.local", Registry: RegistryFile, MeshFile: meshFile,
		ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		CAAddr: ca.addr, BundleFile: ca.bundleFile, JoinToken: ca.token(t, discoveryID),
		Logger: testLogger(t),
	}
}

// start runs a discovery server until the test ends (checking that Run
// returns nil) and waits until /readyz passes.
func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	s := startUnready(t, cfg)
	testutil.Eventually(t, "discovery ready", 15*time.Second, func() bool {
		code, _ := s.get(t, "/readyz")
		return code == http.StatusOK
	})
	return s
}

// startUnready runs a discovery server until the test ends and waits only
// for its listeners.
func startUnready(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return within 15s of cancel")
		}
	})
	testutil.Eventually(t, "listeners", 15*time.Second, func() bool { return s.Addr("admin") != nil })
	return s
}

// get fetches an admin path and returns the status code and body.
func (s *Server) get(t *testing.T, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + s.Addr("admin").String() + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample named series ("name" or
// `name{label="v"}`) in /metrics, or -1 if it is absent.
func (s *Server) metric(t *testing.T, series string) float64 {
	t.Helper()
	code, body := s.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return v
		}
	}
	return -1
}

// writeFile replaces path's content atomically, as editors and ConfigMap
// updates do.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// adsClient is an ADS stream to discovery, as a sidecar opens it.
type adsClient struct {
	t      *testing.T
	node   *corev3.Node
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	resps  chan *discoveryv3.DiscoveryResponse
	err    chan error
}

// dialADS opens an ADS stream to addr over tc, sending node.id node.
func dialADS(t *testing.T, addr string, tc *tls.Config, node string) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	c := &adsClient{t: t, node: &corev3.Node{Id: node},
		resps: make(chan *discoveryv3.DiscoveryResponse, 64), err: make(chan error, 1)}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		// The TLS handshake failed before the stream started.
		c.err <- err
		return c
	}
	c.stream = stream
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

// connect opens an ADS stream as id (an SVID from ca), verifying that the
// server is discovery.
func connect(t *testing.T, s *Server, ca *testCA, id spiffeid.ID) *adsClient {
	t.Helper()
	tc := tlsconfig.MTLSClientConfig(ca.svid(t, id), ca.bundle(), tlsconfig.AuthorizeID(discoveryID))
	return dialADS(t, s.Addr("grpc").String(), tc, id.String())
}

func (c *adsClient) send(typeURL string, names []string, ack *discoveryv3.DiscoveryResponse) {
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
func (c *adsClient) recv(timeout time.Duration) *discoveryv3.DiscoveryResponse {
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

// streamErr waits up to timeout for the stream to fail, failing the test
// if a response arrives instead.
func (c *adsClient) streamErr(timeout time.Duration) error {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("got a %s response; want the stream refused", r.TypeUrl)
	case err := <-c.err:
		return err
	case <-time.After(timeout):
		c.t.Fatalf("stream neither answered nor failed within %s", timeout)
	}
	return nil
}

// view is what a client has learned, by type URL.
type view map[string]*discoveryv3.DiscoveryResponse

// subscribeTypes are the wildcard types a sidecar subscribes to.
var subscribeTypes = []string{resource.ClusterType, resource.ListenerType, resource.ExtensionConfigType}

// subscribe subscribes to clusters, listeners and the name table, then to
// the endpoints of every cluster, ACKing each response, and returns the
// latest response of each type.
func (c *adsClient) subscribe() view {
	c.t.Helper()
	v := view{}
	for _, typ := range subscribeTypes {
		c.send(typ, nil, nil)
	}
	for len(v) < len(subscribeTypes)+1 {
		r := c.recv(5 * time.Second)
		if r == nil {
			c.t.Fatalf("timed out subscribing; have %d of %d types", len(v), len(subscribeTypes)+1)
		}
		c.apply(v, r)
	}
	return v
}

// apply records r in v and ACKs it; a cluster response (re)subscribes to
// the endpoints of its clusters.
func (c *adsClient) apply(v view, r *discoveryv3.DiscoveryResponse) {
	c.t.Helper()
	v[r.TypeUrl] = r
	var names []string
	if r.TypeUrl == resource.EndpointType {
		for _, cla := range decode[*endpointv3.ClusterLoadAssignment](c.t, r) {
			names = append(names, cla.ClusterName)
		}
	}
	c.send(r.TypeUrl, names, r) // ACK
	if r.TypeUrl == resource.ClusterType {
		names = nil
		for _, cl := range decode[*clusterv3.Cluster](c.t, r) {
			names = append(names, cl.Name)
		}
		c.send(resource.EndpointType, names, v[resource.EndpointType])
	}
}

// waitFor applies responses to v until cond holds, failing after timeout.
// It returns how long it took.
func (c *adsClient) waitFor(v view, what string, timeout time.Duration, cond func(view) bool) time.Duration {
	c.t.Helper()
	t0 := time.Now()
	for !cond(v) {
		left := timeout - time.Since(t0)
		if left <= 0 {
			c.t.Fatalf("%s: not seen within %s", what, timeout)
		}
		if r := c.recv(left); r != nil {
			c.apply(v, r)
		}
	}
	return time.Since(t0)
}

func decode[T proto.Message](t *testing.T, r *discoveryv3.DiscoveryResponse) []T {
	t.Helper()
	if r == nil {
		return nil
	}
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

func (v view) clusters(t *testing.T) []string {
	var out []string
	for _, c := range decode[*clusterv3.Cluster](t, v[resource.ClusterType]) {
		out = append(out, c.Name)
	}
	return out
}

func (v view) listeners(t *testing.T) []string {
	var out []string
	for _, l := range decode[*listenerv3.Listener](t, v[resource.ListenerType]) {
		out = append(out, l.Name)
	}
	return out
}

// endpoints returns the addresses of cluster name, sorted.
func (v view) endpoints(t *testing.T, name string) []string {
	var out []string
	for _, cla := range decode[*endpointv3.ClusterLoadAssignment](t, v[resource.EndpointType]) {
		if cla.ClusterName != name {
			continue
		}
		for _, l := range cla.Endpoints {
			for _, e := range l.LbEndpoints {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				out = append(out, netip.AddrPortFrom(netip.MustParseAddr(sa.Address), uint16(sa.GetPortValue())).String())
			}
		}
	}
	slices.Sort(out)
	return out
}

// sans returns the URI SANs cluster name accepts from its servers.
func (v view) sans(t *testing.T, name string) []string {
	var out []string
	for _, c := range decode[*clusterv3.Cluster](t, v[resource.ClusterType]) {
		if c.Name != name {
			continue
		}
		var tc tlsv3.UpstreamTlsContext
		if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&tc); err != nil {
			t.Fatalf("cluster %s transport socket: %v", c.Name, err)
		}
		for _, m := range tc.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
			out = append(out, m.GetMatcher().GetExact())
		}
	}
	return out
}

// principals returns the RBAC principals of listener name, as "exact:<id>",
// "prefix:<id>" or "regex:<re>", deduplicated and sorted.
func (v view) principals(t *testing.T, name string) []string {
	var out []string
	for _, l := range decode[*listenerv3.Listener](t, v[resource.ListenerType]) {
		if l.Name != name {
			continue
		}
		for _, fc := range l.FilterChains {
			var rb rbacfilterv3.RBAC
			if err := fc.Filters[0].GetTypedConfig().UnmarshalTo(&rb); err != nil {
				t.Fatal(err)
			}
			for _, p := range rb.Rules.GetPolicies() {
				for _, pr := range p.Principals {
					m := pr.GetAuthenticated().GetPrincipalName()
					switch {
					case m.GetExact() != "":
						out = append(out, "exact:"+m.GetExact())
					case m.GetSafeRegex() != nil:
						out = append(out, "regex:"+m.GetSafeRegex().GetRegex())
					default:
						out = append(out, "prefix:"+m.GetPrefix())
					}
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// names returns the name table.
func (v view) names(t *testing.T) *discoveryapi.NameTable {
	t.Helper()
	ecs := decode[*corev3.TypedExtensionConfig](t, v[resource.ExtensionConfigType])
	items := make([]types.Resource, len(ecs))
	for i, ec := range ecs {
		items[i] = ec
	}
	nt, err := wire.MergeNameTables(items)
	if err != nil {
		t.Fatalf("extension configs = %v: %v", ecs, err)
	}
	return nt
}
