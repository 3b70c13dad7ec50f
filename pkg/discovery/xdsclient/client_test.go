package xdsclient_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/proxy"
)

var discoveryID = testutil.ID("/tether-system/discovery")

// pki is a test CA issuing real SVIDs.
type pki struct {
	t  *testing.T
	ca *identity.CA
}

func newPKI(t *testing.T) *pki {
	return &pki{t: t, ca: testutil.NewCA(t, identity.RealClock, nil)}
}

func (p *pki) svid(id spiffeid.ID) *x509svid.SVID {
	p.t.Helper()
	csr, key := testutil.NewCSR(p.t, nil, nil)
	iss, err := p.ca.Sign(id, csr)
	if err != nil {
		p.t.Fatal(err)
	}
	var certs []*x509.Certificate
	for _, der := range iss.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			p.t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
}

func (p *pki) serverCreds() grpc.ServerOption {
	return grpc.Creds(credentials.NewTLS(tlsconfig.MTLSServerConfig(
		p.svid(discoveryID), p.ca.Bundle().Bundle, tlsconfig.AuthorizeMemberOf(testutil.TrustDomain))))
}

// listen listens on addr ("" for a new loopback port), retrying briefly
// while a just-closed listener's port is still taken.
func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var err error
	for range 50 {
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil {
			return l
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("listen %s: %v", addr, err)
	return nil
}

// discoveryServer is tether-discovery's xDS server over mTLS on loopback.
type discoveryServer struct {
	addr string
	stop func()
}

func startDiscovery(t *testing.T, p *pki, reg *discovery.Registry, addr string) *discoveryServer {
	t.Helper()
	g := grpc.NewServer(p.serverCreds())
	srv := &xds.Server{Registry: reg, Logger: slog.New(slog.DiscardHandler)}
	srv.Register(g)
	l := listen(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); g.Serve(l) }()
	go func() { defer wg.Done(); srv.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			g.Stop()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return &discoveryServer{addr: l.Addr().String(), stop: stop}
}

// logs records log lines for assertions.
type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logs) WithGroup(string) slog.Handler            { return l }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}

func (l *logs) matching(level slog.Level, has string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.HasPrefix(s, level.String()+" ") && strings.Contains(s, has) {
			out = append(out, s)
		}
	}
	return out
}

// running is a Client under Run.
type running struct {
	*xdsclient.Client
	reg  *prometheus.Registry
	logs *logs
	done chan error
	stop context.CancelFunc
}

func runClient(t *testing.T, p *pki, addr string, id spiffeid.ID, mod func(*xdsclient.Config)) *running {
	t.Helper()
	r := &running{reg: prometheus.NewRegistry(), logs: &logs{}, done: make(chan error, 1)}
	cfg := xdsclient.Config{
		Addr: addr, ID: id,
		SVIDs: p.svid(id), Bundles: p.ca.Bundle().Bundle,
		Logger: slog.New(r.logs), Metrics: r.reg,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := xdsclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Client = c
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() { r.done <- c.Run(ctx) }()
	t.Cleanup(func() {
		r.shutdown(t)
		if t.Failed() {
			r.logs.mu.Lock()
			for _, l := range r.logs.lines {
				t.Log(l)
			}
			r.logs.mu.Unlock()
		}
	})
	return r
}

// shutdown cancels Run and checks it returns nil promptly.
func (r *running) shutdown(t *testing.T) {
	t.Helper()
	r.stop()
	select {
	case err, ok := <-r.done:
		if ok && err != nil {
			t.Errorf("Run = %v after cancel, want nil", err)
		}
		if ok {
			close(r.done)
		}
	case <-time.After(5 * time.Second):
		t.Error("Run did not return within 5s of cancel")
	}
}

func (r *running) ready(t *testing.T, within time.Duration) *xdsclient.View {
	t.Helper()
	select {
	case <-r.Ready():
	case err := <-r.done:
		t.Fatalf("Run returned %v before a view", err)
	case <-time.After(within):
		t.Fatalf("no view within %s", within)
	}
	v := r.View()
	if v == nil {
		t.Fatal("Ready is closed but View is nil")
	}
	return v
}

// waitView waits up to limit for a view satisfying ok, following Changed,
// and returns it and how long it took.
func (r *running) waitView(t *testing.T, limit time.Duration, what string, ok func(*xdsclient.View) bool) (*xdsclient.View, time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := time.After(limit)
	for {
		ch := r.Changed()
		if v := r.View(); v != nil && ok(v) {
			return v, time.Since(start)
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no view with %s within %s", what, limit)
		}
	}
}

// metric returns the value of a gauge or counter with the given labels (0
// if absent).
func (r *running) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func TestClientFollowsDiscovery(t *testing.T) {
	p := newPKI(t)
	reg := shopRegistry(t)
	d := startDiscovery(t, p, reg, "")
	c := runClient(t, p, d.addr, webID, nil)

	v := c.ready(t, 5*time.Second)
	want, err := xdsclient.NewViewFor(webID, resources(t, reg.Snapshot(), webID))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := keys(v.Services()), keys(want.Services()); !slices.Equal(got, want) {
		t.Fatalf("client's services = %v, want %v", got, want)
	}
	for _, s := range want.Services() {
		got, _ := v.Service(s.Key)
		if !slices.Equal(got.Ports, s.Ports) || !slices.Equal(got.IDs, s.IDs) || !slices.Equal(got.Addrs, s.Addrs) ||
			!slices.Equal(got.Endpoints, s.Endpoints) {
			t.Errorf("client's %s = %+v, want %+v", s.Key, got, s)
		}
	}
	if v.ID() != webID {
		t.Errorf("View().ID() = %s", v.ID())
	}
	if dst, err := v.Outbound(apiKey, 80); err != nil || !slices.Equal(dst.IDs, []spiffeid.ID{apiID}) {
		t.Errorf("Outbound(api:80) = %+v, %v", dst, err)
	}
	if d := v.Authorize(testutil.ID("/anyone"), 8080); !d.Allowed {
		t.Errorf("web's inbound (allow-mesh) refused: %+v", d)
	}
	if got := c.metric(t, "tether_sidecar_xds_connected"); got != 1 {
		t.Errorf("connected = %v, want 1", got)
	}
	if got := c.metric(t, "tether_sidecar_xds_view_services"); got != 4 {
		t.Errorf("view_services = %v, want 4", got)
	}
	for _, typ := range []string{"cds", "eds", "lds", "ecds"} {
		if got := c.metric(t, "tether_sidecar_xds_updates_total", "type", typ, "result", "ack"); got < 1 {
			t.Errorf("updates_total{type=%s,result=ack} = %v, want ≥ 1", typ, got)
		}
	}
	if got := c.metric(t, "tether_sidecar_xds_last_update_timestamp_seconds"); time.Since(time.Unix(int64(got), 0)) > time.Minute {
		t.Errorf("last_update_timestamp_seconds = %v", got)
	}
	if len(c.logs.matching(slog.LevelInfo, "connected to discovery")) != 1 {
		t.Errorf("want one Info line for the connection")
	}

	// Registry changes reach the view in under a second each.
	changes := []struct {
		name string
		edit func(*discovery.State)
		ok   func(*xdsclient.View) bool
	}{
		{"a policy lets web reach db (new cluster)", func(st *discovery.State) {
			st.Policies[1].Spec.Sources = append(st.Policies[1].Spec.Sources, saSource("web"))
		}, func(v *xdsclient.View) bool {
			d, err := v.Outbound(dbKey, 5432)
			return err == nil && d.Port == 5432
		}},
		{"api's endpoints move (EDS only)", func(st *discovery.State) {
			st.Services[1].Endpoints = []discovery.Endpoint{{Addr: ip("10.1.9.9"), ServiceAccount: "api"}}
		}, func(v *xdsclient.View) bool {
			d, err := v.Outbound(apiKey, 80)
			return err == nil && d.Addr == "10.1.9.9:8080"
		}},
		{"api's port 80 is denied (name table only)", func(st *discovery.State) {
			st.Policies[0].Spec.Destination.Ports = []int32{9090}
		}, func(v *xdsclient.View) bool {
			_, err := v.Outbound(apiKey, 80)
			_, err2 := v.Outbound(apiKey, 9090)
			return errors.Is(err, proxy.ErrDenied) && err2 == nil
		}},
		{"cache becomes unreachable (cluster removed)", func(st *discovery.State) {
			st.Policies = append(st.Policies, allow("shop", "cache-admin", "cache", nil, saSource("admin")))
		}, func(v *xdsclient.View) bool {
			_, err := v.Outbound(cacheKey, 6379)
			_, ok := v.Lookup("cache.shop.svc.cluster.local.")
			return errors.Is(err, xdsclient.ErrUnknownService) && !ok && v.HiddenAddr(ip("10.96.0.12")) && len(v.Services()) == 4
		}},
		{"nobody may reach web any more (LDS)", func(st *discovery.State) {
			st.Policies = append(st.Policies, allow("shop", "web-admin", "web", nil, saSource("admin")))
		}, func(v *xdsclient.View) bool {
			return !v.Authorize(testutil.ID("/anyone"), 8080).Allowed && v.Authorize(testutil.ID("/ns/shop/sa/admin"), 8080).Allowed
		}},
	}
	st := shopState()
	for _, ch := range changes {
		ch.edit(&st)
		if err := reg.Update(st); err != nil {
			t.Fatalf("%s: %v", ch.name, err)
		}
		_, took := c.waitView(t, time.Second, ch.name, ch.ok)
		t.Logf("%s: in the view after %s", ch.name, took.Round(time.Millisecond))
	}
	if got, want := c.metric(t, "tether_sidecar_xds_view_services"), float64(len(c.View().Services())); got != want {
		t.Errorf("view_services = %v, want %v", got, want)
	}
	if n := c.metric(t, "tether_sidecar_xds_updates_total", "type", "cds", "result", "nack"); n != 0 {
		t.Errorf("NACKed %v CDS updates from a good server", n)
	}
}

func TestClientKeepsViewAndReconnects(t *testing.T) {
	p := newPKI(t)
	reg := shopRegistry(t)
	d := startDiscovery(t, p, reg, "")
	c := runClient(t, p, d.addr, webID, nil)
	v := c.ready(t, 5*time.Second)
	changed := c.Changed()

	d.stop()
	testutil.Eventually(t, "connected gauge to drop", 2*time.Second, func() bool {
		return c.metric(t, "tether_sidecar_xds_connected") == 0
	})
	// Discovery is down for a while: the view stays, Run keeps trying.
	time.Sleep(500 * time.Millisecond)
	if c.View() != v {
		t.Fatal("the view changed while discovery was down")
	}
	select {
	case <-changed:
		t.Fatal("Changed closed while discovery was down")
	case err := <-c.done:
		t.Fatalf("Run returned %v while discovery was down", err)
	default:
	}
	if _, err := c.View().Outbound(apiKey, 80); err != nil {
		t.Errorf("the kept view no longer routes: %v", err)
	}
	if got := c.logs.matching(slog.LevelWarn, "disconnected from discovery"); len(got) != 1 {
		t.Errorf("want one Warn line for the disconnect, got %q", got)
	}
	retries := c.logs.matching(slog.LevelDebug, "cannot reach discovery")
	if len(retries) < 2 {
		t.Errorf("want repeated retries logged at Debug while down, got %d", len(retries))
	}
	if warns := c.logs.matching(slog.LevelWarn, "cannot reach discovery"); len(warns) > 1 {
		t.Errorf("the same connection error was logged at Warn %d times (rate limit): %q", len(warns), warns)
	}

	// The registry moves on while the client is away; on restart the
	// client reconnects and gets the change.
	st := shopState()
	st.Services[1].Endpoints = []discovery.Endpoint{{Addr: ip("10.1.7.7"), ServiceAccount: "api"}}
	if err := reg.Update(st); err != nil {
		t.Fatal(err)
	}
	startDiscovery(t, p, reg, d.addr)
	c.waitView(t, 5*time.Second, "api at 10.1.7.7", func(v *xdsclient.View) bool {
		dst, err := v.Outbound(apiKey, 80)
		return err == nil && dst.Addr == "10.1.7.7:8080"
	})
	testutil.Eventually(t, "connected gauge", time.Second, func() bool { return c.metric(t, "tether_sidecar_xds_connected") == 1 })
	if got := c.logs.matching(slog.LevelInfo, "connected to discovery"); len(got) != 2 {
		t.Errorf("want two Info lines for the two connections, got %q", got)
	}

	// And a reconnect to an unchanged registry publishes nothing new.
	v2 := c.View()
	ch2 := c.Changed()
	c.shutdown(t)
	select {
	case <-ch2:
		t.Error("Changed closed on shutdown")
	default:
	}
	if c.View() != v2 {
		t.Error("the view changed on shutdown")
	}
}

// A reconnect that brings the same configuration publishes no new view.
func TestClientReconnectSameConfig(t *testing.T) {
	p := newPKI(t)
	reg := shopRegistry(t)
	d := startDiscovery(t, p, reg, "")
	c := runClient(t, p, d.addr, webID, nil)
	v := c.ready(t, 5*time.Second)
	ch := c.Changed()
	d.stop()
	testutil.Eventually(t, "disconnect", 2*time.Second, func() bool { return c.metric(t, "tether_sidecar_xds_connected") == 0 })
	startDiscovery(t, p, reg, d.addr)
	testutil.Eventually(t, "reconnect", 5*time.Second, func() bool { return c.metric(t, "tether_sidecar_xds_connected") == 1 })
	// Give the updates time to arrive.
	testutil.Eventually(t, "all four types again", 2*time.Second, func() bool {
		for _, typ := range []string{"cds", "eds", "lds", "ecds"} {
			if c.metric(t, "tether_sidecar_xds_updates_total", "type", typ, "result", "ack") < 2 {
				return false
			}
		}
		return true
	})
	select {
	case <-ch:
		t.Error("a reconnect with the same configuration published a new view")
	default:
	}
	if c.View() != v {
		t.Error("the view was replaced")
	}
}

// cacheServer is a plain go-control-plane ADS server over mTLS whose
// snapshots the test sets, so it can send what tether-discovery never
// would. It records the requests carrying an error (NACKs).
type cacheServer struct {
	addr  string
	cache cachev3.SnapshotCache
	mu    sync.Mutex
	nacks []*discoveryv3.DeltaDiscoveryRequest
}

func startCacheServer(t *testing.T, p *pki) *cacheServer {
	t.Helper()
	cs := &cacheServer{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	ctx, cancel := context.WithCancel(context.Background())
	srv := serverv3.NewServer(ctx, cs.cache, serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			if req.GetErrorDetail() != nil {
				cs.mu.Lock()
				cs.nacks = append(cs.nacks, req)
				cs.mu.Unlock()
			}
			return nil
		},
	})
	g := grpc.NewServer(p.serverCreds())
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	l := listen(t, "")
	cs.addr = l.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(l) }()
	t.Cleanup(func() { cancel(); g.Stop(); <-done })
	return cs
}

func (cs *cacheServer) set(t *testing.T, node spiffeid.ID, version string, res map[resource.Type][]types.Resource) {
	t.Helper()
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.cache.SetSnapshot(context.Background(), node.String(), snap); err != nil {
		t.Fatal(err)
	}
}

func (cs *cacheServer) nacked() []*discoveryv3.DeltaDiscoveryRequest {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return slices.Clone(cs.nacks)
}

func TestClientNACKsMalformedUpdates(t *testing.T) {
	p := newPKI(t)
	cs := startCacheServer(t, p)
	reg := shopRegistry(t)
	good := resources(t, reg.Snapshot(), webID)
	cs.set(t, webID, "1", good)
	c := runClient(t, p, cs.addr, webID, nil)
	v := c.ready(t, 5*time.Second)

	// Version 2: api's Cluster names its server by a DNS SAN.
	bad := mutate(good, func(r map[resource.Type][]types.Resource) {
		c := find(r, resource.ClusterType, (*clusterv3.Cluster).GetName, "shop/api")
		setSAN(t, c, func(m *tlsv3.SubjectAltNameMatcher) {
			m.SanType = tlsv3.SubjectAltNameMatcher_DNS
			m.Matcher = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "api.shop"}}
		})
	})
	cs.set(t, webID, "2", bad)
	testutil.Eventually(t, "a NACK", 2*time.Second, func() bool { return len(cs.nacked()) > 0 })
	n := cs.nacked()[0]
	if n.GetTypeUrl() != resource.ClusterType || n.GetResponseNonce() == "" ||
		!strings.Contains(n.GetErrorDetail().GetMessage(), "want URI") {
		t.Errorf("NACK = type %s nonce %q error %q; want CDS, the response's nonce, and the reason",
			n.GetTypeUrl(), n.GetResponseNonce(), n.GetErrorDetail().GetMessage())
	}
	// Were the server to answer a NACK with the same update, the client
	// would pace its repeated NACKs instead of trading them in a loop.
	time.Sleep(500 * time.Millisecond)
	if got := len(cs.nacked()); got > 2 {
		t.Errorf("%d NACKs in half a second: no pacing", got)
	}
	if got := c.metric(t, "tether_sidecar_xds_updates_total", "type", "cds", "result", "nack"); got < 1 || got > 2 {
		t.Errorf("updates_total{cds,nack} = %v, want 1 or 2", got)
	}
	if c.View() != v {
		t.Error("a NACKed update replaced the view")
	}
	if got := c.logs.matching(slog.LevelWarn, "rejected an update"); len(got) != 1 {
		t.Errorf("want one Warn line for the NACK, got %q", got)
	}
	if c.metric(t, "tether_sidecar_xds_connected") != 1 {
		t.Error("a NACK should not drop the stream")
	}

	// Version 3: a name table with an unknown inbound default is NACKed on ECDS.
	badNames := mutate(good, func(r map[resource.Type][]types.Resource) {
		editNameTable(t, r, func(nt *discoveryv1.NameTable) { nt.InboundDefault = "allow-everyone" })
	})
	cs.set(t, webID, "3", badNames)
	testutil.Eventually(t, "an ECDS NACK", 2*time.Second, func() bool {
		return c.metric(t, "tether_sidecar_xds_updates_total", "type", "ecds", "result", "nack") >= 1
	})
	if c.View() != v {
		t.Error("a NACKed name table replaced the view")
	}
	// The client counts its NACK before the server reads it: wait for the
	// server to have it.
	var ecdsNACK string
	testutil.Eventually(t, "the server to receive the ECDS NACK", 2*time.Second, func() bool {
		for _, n := range cs.nacked() {
			if n.GetTypeUrl() == resource.ExtensionConfigType {
				ecdsNACK = n.GetErrorDetail().GetMessage()
				return true
			}
		}
		return false
	})
	if !strings.Contains(ecdsNACK, "inbound_default") {
		t.Errorf("ECDS NACK says %q", ecdsNACK)
	}

	// Version 4: a good update (api moved) is taken.
	moved := shopState()
	moved.Services[1].Endpoints = []discovery.Endpoint{{Addr: ip("10.1.4.4"), ServiceAccount: "api"}}
	if err := reg.Update(moved); err != nil {
		t.Fatal(err)
	}
	cs.set(t, webID, "4", resources(t, reg.Snapshot(), webID))
	c.waitView(t, 2*time.Second, "api at 10.1.4.4", func(v *xdsclient.View) bool {
		d, err := v.Outbound(apiKey, 80)
		return err == nil && d.Addr == "10.1.4.4:8080"
	})
}

// Resources that are fine one by one but arrive out of step (a new Cluster
// before its name table entry) wait for the rest instead of being
// published half done.
func TestClientWaitsForConsistency(t *testing.T) {
	p := newPKI(t)
	cs := startCacheServer(t, p)
	reg := shopRegistry(t)
	cs.set(t, webID, "1", resources(t, reg.Snapshot(), webID))
	c := runClient(t, p, cs.addr, webID, nil)
	v := c.ready(t, 5*time.Second)
	ch := c.Changed()

	// Web may now reach db, but the server sends the new Cluster and CLA
	// with the old name table.
	st := shopState()
	st.Policies[1].Spec.Sources = append(st.Policies[1].Spec.Sources, saSource("web"))
	if err := reg.Update(st); err != nil {
		t.Fatal(err)
	}
	next := resources(t, reg.Snapshot(), webID)
	half := mutate(next, func(r map[resource.Type][]types.Resource) {
		r[resource.ExtensionConfigType] = resources(t, shopRegistry(t).Snapshot(), webID)[resource.ExtensionConfigType]
	})
	cs.set(t, webID, "2", half)
	testutil.Eventually(t, "the CDS update", 2*time.Second, func() bool {
		return c.metric(t, "tether_sidecar_xds_updates_total", "type", "cds", "result", "ack") >= 2
	})
	time.Sleep(200 * time.Millisecond)
	select {
	case <-ch:
		t.Fatal("published a view whose clusters and name table disagree")
	default:
	}
	if c.View() != v || len(cs.nacked()) != 0 {
		t.Fatalf("view replaced or NACKs sent (%d) for an update that is merely incomplete", len(cs.nacked()))
	}
	cs.set(t, webID, "3", next)
	c.waitView(t, 2*time.Second, "db reachable", func(v *xdsclient.View) bool {
		_, err := v.Outbound(dbKey, 5432)
		return err == nil
	})
}

func TestClientRefusesWrongServerIdentity(t *testing.T) {
	p := newPKI(t)
	d := startDiscovery(t, p, shopRegistry(t), "")
	c := runClient(t, p, d.addr, webID, func(cfg *xdsclient.Config) {
		cfg.ServerID = testutil.ID("/tether-system/not-discovery")
		cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	})
	select {
	case <-c.Ready():
		t.Fatal("got a view from a server with the wrong identity")
	case err := <-c.done:
		t.Fatalf("Run returned %v; it should keep retrying", err)
	case <-time.After(time.Second):
	}
	if c.View() != nil || c.metric(t, "tether_sidecar_xds_connected") != 0 {
		t.Error("connected to a server with the wrong identity")
	}
	warns := c.logs.matching(slog.LevelWarn, "cannot reach discovery")
	if len(warns) != 1 || !strings.Contains(warns[0], "unexpected ID") {
		t.Errorf("want one Warn line naming the identity mismatch (the rest rate-limited), got %q", warns)
	}
	if retries := c.logs.matching(slog.LevelDebug, "cannot reach discovery"); len(retries) < 3 {
		t.Errorf("Run retried only %d times in a second", len(retries))
	}
	if err := c.Authorizer()(webID, 8080); !errors.Is(err, proxy.ErrDenied) {
		t.Errorf("Authorizer without a view = %v, want ErrDenied", err)
	}
}

// The server's identity may be pinned exactly.
func TestClientPinnedServerIdentity(t *testing.T) {
	p := newPKI(t)
	d := startDiscovery(t, p, shopRegistry(t), "")
	c := runClient(t, p, d.addr, apiID, func(cfg *xdsclient.Config) { cfg.ServerID = discoveryID })
	v := c.ready(t, 5*time.Second)
	if d := v.Authorize(webID, 8080); !d.Allowed {
		t.Errorf("api's inbound refuses web: %+v", d)
	}
	if err := c.Authorizer()(dbID, 8080); !errors.Is(err, proxy.ErrDenied) {
		t.Errorf("Authorizer(db) = %v, want ErrDenied", err)
	}
}

func TestNewChecksConfig(t *testing.T) {
	p := newPKI(t)
	good := xdsclient.Config{Addr: "127.0.0.1:1", ID: webID, SVIDs: p.svid(webID), Bundles: p.ca.Bundle().Bundle}
	tests := []struct {
		name string
		mod  func(*xdsclient.Config)
	}{
		{"no address", func(c *xdsclient.Config) { c.Addr = "" }},
		{"no ID", func(c *xdsclient.Config) { c.ID = spiffeid.ID{} }},
		{"no SVIDs", func(c *xdsclient.Config) { c.SVIDs = nil }},
		{"no bundles", func(c *xdsclient.Config) { c.Bundles = nil }},
		{"inverted backoff", func(c *xdsclient.Config) { c.MinBackoff, c.MaxBackoff = time.Second, time.Millisecond }},
		{"negative keepalive", func(c *xdsclient.Config) { c.KeepaliveTime = -time.Second }},
		{"negative keepalive timeout", func(c *xdsclient.Config) { c.KeepaliveTimeout = -time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mod(&cfg)
			if _, err := xdsclient.New(cfg); !errors.Is(err, xdsclient.ErrBadConfig) {
				t.Errorf("New = %v, want ErrBadConfig", err)
			}
		})
	}
	c, err := xdsclient.New(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.View() != nil {
		t.Error("a new client has a view")
	}
	select {
	case <-c.Ready():
		t.Error("a new client is ready")
	default:
	}
	// Metrics register once per registry.
	reg := prometheus.NewRegistry()
	good.Metrics = reg
	if _, err := xdsclient.New(good); err != nil {
		t.Fatal(err)
	}
	if _, err := xdsclient.New(good); err == nil {
		t.Error("registering the metrics twice succeeded")
	}
}

// swapSource is an SVID source whose SVID the test replaces.
type swapSource struct {
	mu   sync.Mutex
	svid *x509svid.SVID
}

func (s *swapSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svid, nil
}

func (s *swapSource) set(v *x509svid.SVID) { s.mu.Lock(); s.svid = v; s.mu.Unlock() }

// The sources are read at every handshake: an SVID the server does not
// trust gets no view, and once the source holds a good one the running
// client connects without a restart.
func TestClientUsesRotatedSVID(t *testing.T) {
	p := newPKI(t)
	other := newPKI(t) // a CA discovery does not trust
	d := startDiscovery(t, p, shopRegistry(t), "")
	src := &swapSource{svid: other.svid(webID)}
	c := runClient(t, p, d.addr, webID, func(cfg *xdsclient.Config) { cfg.SVIDs = src })
	select {
	case <-c.Ready():
		t.Fatal("connected with an SVID from an untrusted CA")
	case <-time.After(500 * time.Millisecond):
	}
	src.set(p.svid(webID))
	c.ready(t, 5*time.Second)
}
