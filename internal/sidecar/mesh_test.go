package sidecar

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
	"github.com/tether-mesh/tether/pkg/proxy"
)

var discoveryID = testutil.ID("/ns/tether-system/sa/tether-discovery")

// testDiscovery is tether-discovery in-process: a registry fed by a
// mesh.yaml, served over ADS on gRPC with mTLS, with an SVID from the
// test CA, as cmd/discovery runs it.
type testDiscovery struct {
	addr string
	file string
	stop func()
}

func startDiscovery(t *testing.T, ca *testCA, meshYAML string) *testDiscovery {
	t.Helper()
	d := &testDiscovery{file: filepath.Join(t.TempDir(), "mesh.yaml")}
	d.write(t, meshYAML)
	bundle, err := identity.LoadBundlePEM(ca.bundle, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	tok := ca.token(t, discoveryID)
	ag, err := agent.New(agent.Config{CAAddr: ca.addr, Bundle: bundle, Logger: testLogger(),
		Credential: func() (*cav1.Credential, error) {
			return &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := discovery.NewRegistry(testutil.TrustDomain, wire.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { ag.Run(ctx) })
	waitFor(t, "discovery's SVID", func() bool { return ag.Ready() == nil })
	src := &discovery.FileSource{Path: d.file, Interval: 20 * time.Millisecond, Logger: testLogger()}
	loaded := make(chan error, 1)
	wg.Go(func() {
		if err := src.Run(ctx, reg); err != nil {
			loaded <- err
		}
	})
	waitFor(t, "the mesh file to load", func() bool {
		select {
		case err := <-loaded:
			t.Fatalf("mesh file: %v", err)
		default:
		}
		return reg.Snapshot().Version() > 0
	})
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsconfig.MTLSServerConfig(ag, ag, tlsconfig.AuthorizeMemberOf(testutil.TrustDomain)))))
	srv := &xds.Server{Registry: reg, Logger: testLogger()}
	srv.Register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.addr = l.Addr().String()
	wg.Go(func() { g.Serve(l) })
	wg.Go(func() { srv.Run(ctx) })
	var once sync.Once
	d.stop = func() {
		once.Do(func() {
			cancel()
			g.Stop()
			wg.Wait()
		})
	}
	t.Cleanup(d.stop)
	return d
}

// write replaces the mesh file atomically, as an editor's rename does.
func (d *testDiscovery) write(t *testing.T, content string) {
	t.Helper()
	tmp := d.file + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, d.file); err != nil {
		t.Fatal(err)
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("TETHER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// meshApp is one workload of the loopback mesh: an echo app, its sidecar,
// and the sidecar's access log.
type meshApp struct {
	name    string
	app     string // echo app address
	sidecar *Sidecar
	done    chan error
	log     string // access log path
}

// webAPIDB is the loopback mesh's three workloads, web, api and db, each
// with its echo app running and no sidecar yet.
func webAPIDB(t *testing.T) (web, api, db *meshApp) {
	t.Helper()
	return &meshApp{name: "web", app: echoApp(t)}, &meshApp{name: "api", app: echoApp(t)}, &meshApp{name: "db", app: echoApp(t)}
}

func (a *meshApp) port() string {
	_, p, _ := net.SplitHostPort(a.app)
	return p
}

func (a *meshApp) inboundPort() string {
	_, p, _ := net.SplitHostPort(a.sidecar.Addr("inbound/0").String())
	return p
}

func (a *meshApp) accessLog(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(a.log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// denials sums tether_sidecar_authz_denials_total over the series whose
// labels include want.
func (a *meshApp) denials(t *testing.T, want map[string]string) float64 {
	t.Helper()
	return gatherCounter(t, a.sidecar.registry, "tether_sidecar_authz_denials_total", want)
}

func gatherCounter(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == k && lp.GetValue() == v
				}
				if !found {
					continue series
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

// meshYAML describes the three services. Endpoints are the sidecars'
// inbound listeners (unknown until they run: nil leaves them out);
// dbSources are the service accounts db's AccessPolicy lets in.
func meshYAML(web, api, db *meshApp, dbSources ...string) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for _, s := range []struct {
		a    *meshApp
		ip   string
		port int
	}{{web, "10.96.0.10", 80}, {api, "10.96.0.11", 8080}, {db, "10.96.0.12", 5432}} {
		fmt.Fprintf(&b, "  - name: %s\n    clusterIPs: [%s]\n    ports: [{name: tcp, port: %d, targetPort: %s}]\n", s.a.name, s.ip, s.port, s.a.port())
		if s.a.sidecar != nil {
			fmt.Fprintf(&b, "    endpoints: [{address: 127.0.0.1, port: %s, serviceAccount: %s}]\n", s.a.inboundPort(), s.a.name)
		}
	}
	b.WriteString(`policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: db-clients, namespace: default}
    spec:
      destination: {service: db}
      sources:
`)
	for _, sa := range dbSources {
		fmt.Fprintf(&b, "        - serviceAccount: {name: %s}\n", sa)
	}
	return b.String()
}

// waitView waits until s's view satisfies cond.
func waitView(t *testing.T, what string, s *Sidecar, cond func(v *xdsclient.View) bool) {
	t.Helper()
	waitFor(t, what, func() bool {
		v := s.view.Load()
		return v != nil && cond(v)
	})
}

// refused dials addr and expects the connection to be reset, quickly and
// before any byte of the app comes back.
func refused(t *testing.T, addr string) {
	t.Helper()
	began := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil { // the reset may come before the dial has looked
		defer c.Close()
		err = echoOnce(c, "let me in")
	}
	if err == nil {
		t.Fatalf("a call to %s that policy denies went through", addr)
	}
	if !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "EOF") {
		t.Errorf("denied call to %s: %v, want a reset", addr, err)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("the denied call to %s took %s to be refused", addr, d)
	}
}

// TestLoopbackMeshEnforcesDiscoveryPolicy runs the standalone mesh on
// loopback: a real CA, discovery serving a mesh.yaml, and web, api and db
// behind explicit-mode sidecars. db's AccessPolicy lets api in, not web.
func TestLoopbackMeshEnforcesDiscoveryPolicy(t *testing.T) {
	ca := startCA(t)
	web, api, db := webAPIDB(t)
	disc := startDiscovery(t, ca, meshYAML(web, api, db, "api"))

	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The upstream knows db, as kube-dns knows every Service: web's
	// sidecar refuses the answer (db's address is hidden from web).
	upstream := fakeResolver(t, map[string]string{"example.com.": "203.0.113.7", "db.default.svc.cluster.local.": "10.96.0.12"})
	start := func(a *meshApp, outbound ...OutboundListener) {
		a.log = filepath.Join(dir, a.name+".access.log")
		cfg := Config{
			CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, testutil.ID("/ns/default/sa/"+a.name)),
			Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: a.app}}, Outbound: outbound,
			DiscoveryAddr: disc.addr, AccessLog: a.log,
		}
		if a == web {
			cfg.DNS = &DNS{Listen: "127.0.0.1:0", ResolvConf: resolv, Upstreams: []string{upstream}}
		}
		a.sidecar, a.done = startSidecar(t, cfg)
	}
	out := func(spec string) OutboundListener {
		o, err := ParseOutbound(spec)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	start(db)
	start(api, out("127.0.0.1:0=default/db:5432"))
	// web reaches db twice: by service (its own view decides) and by a
	// fixed peer (it bypasses its view; only db's inbound can refuse).
	start(web, out("127.0.0.1:0=default/api:8080"), out("127.0.0.1:0=default/db:5432"),
		out("127.0.0.1:0="+db.sidecar.Addr("inbound/0").String()+"@"+dbID.String()))
	webToAPI, webToDB, webToDBDirect := web.sidecar.Addr("outbound/0").String(), web.sidecar.Addr("outbound/1").String(), web.sidecar.Addr("outbound/2").String()
	apiToDB := api.sidecar.Addr("outbound/0").String()

	// The sidecars became ready with the first view, before their
	// endpoints were known; now discovery learns them.
	disc.write(t, meshYAML(web, api, db, "api"))
	hasEndpoints := func(k string) func(v *xdsclient.View) bool {
		return func(v *xdsclient.View) bool { s, ok := v.Service(key(k)); return ok && len(s.Endpoints) > 0 }
	}
	waitView(t, "web to learn api's endpoint", web.sidecar, hasEndpoints("api"))
	waitView(t, "api to learn db's endpoint", api.sidecar, hasEndpoints("db"))
	waitView(t, "db to learn its inbound policy", db.sidecar, func(v *xdsclient.View) bool { return !v.Authorize(webID, mustPort(db.port())).Allowed })
	waitView(t, "web to learn db is out of reach", web.sidecar, func(v *xdsclient.View) bool { _, ok := v.Service(key("db")); return v != nil && !ok })

	// Allowed pairs work.
	if err := call(webToAPI, "web to api"); err != nil {
		t.Fatalf("web → api: %v", err)
	}
	if err := call(apiToDB, "api to db"); err != nil {
		t.Fatalf("api → db: %v", err)
	}

	// web → db by service: refused at web's outbound, naming the rule;
	// db never sees it.
	refused(t, webToDB)
	denyByView := map[string]string{"direction": "outbound", "source_id": webID.String(), "destination": "default/db:5432", "reason": ruleUnknownService}
	waitFor(t, "web's outbound denial metric", func() bool { return web.denials(t, denyByView) == 1 })
	waitFor(t, "web's access log to name the denial", func() bool {
		l := web.accessLog(t)
		return strings.Contains(l, `"destination":"default/db:5432"`) && strings.Contains(l, `"rule":"`+ruleUnknownService+`"`) &&
			strings.Contains(l, `"decision":"deny"`)
	})
	if n := db.denials(t, nil); n != 0 {
		t.Errorf("db counted %v denials for a call web's sidecar refused", n)
	}

	// web → db past web's view: db's inbound refuses, authoritatively.
	refused(t, webToDBDirect)
	inboundDeny := map[string]string{"direction": "inbound", "source_id": webID.String(), "destination": db.app}
	waitFor(t, "db's inbound denial metric", func() bool { return db.denials(t, inboundDeny) == 1 })
	waitFor(t, "db's access log to name the rule", func() bool {
		return strings.Contains(db.accessLog(t), "admits "+webID.String())
	})
	waitFor(t, "web's access log to say db refused", func() bool {
		return strings.Contains(web.accessLog(t), "refused by "+dbID.String())
	})

	// DNS from web's sidecar: reachable names answer, db's is NXDOMAIN.
	dnsAddr := web.sidecar.Addr("dns").String()
	if r := query(t, dnsAddr, "api.default.svc.cluster.local", mdns.TypeA); r.Rcode != mdns.RcodeSuccess || strings.Join(aRecords(r), ",") != "10.96.0.11" {
		t.Errorf("api.default.svc.cluster.local: %s %v", mdns.RcodeToString[r.Rcode], aRecords(r))
	}
	if r := query(t, dnsAddr, "api", mdns.TypeA); strings.Join(aRecords(r), ",") != "10.96.0.11" {
		t.Errorf("short name api through the search path: %v", r.Answer)
	}
	if r := query(t, dnsAddr, "db.default.svc.cluster.local", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
		t.Errorf("db.default.svc.cluster.local: %s, want NXDOMAIN", mdns.RcodeToString[r.Rcode])
	}
	if r := query(t, dnsAddr, "example.com", mdns.TypeA); strings.Join(aRecords(r), ",") != "203.0.113.7" {
		t.Errorf("example.com, forwarded: %v", r.Answer)
	}
	resp, err := http.Get("http://" + web.sidecar.Addr("admin").String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`tether_sidecar_dns_queries_total{result="unreachable",type="A"} 1`, "tether_sidecar_xds_connected 1",
		`tether_sidecar_authz_denials_total{destination="default/db:5432",direction="outbound",reason="` + ruleUnknownService + `",source_id="` + webID.String() + `"} 1`} {
		if !strings.Contains(string(metrics), m) {
			t.Errorf("web's /metrics lacks %s", m)
		}
	}
	resp, err = http.Get("http://" + web.sidecar.Addr("admin").String() + "/debug/discovery")
	if err != nil {
		t.Fatal(err)
	}
	debug, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(debug), `"service": "default/api"`) || strings.Contains(string(debug), "default/db") {
		t.Errorf("web's /debug/discovery should list api and not db:\n%s", debug)
	}

	// The policy lets web in: new connections succeed, nothing restarts.
	disc.write(t, meshYAML(web, api, db, "api", "web"))
	waitView(t, "web to learn db is reachable", web.sidecar, hasEndpoints("db"))
	waitView(t, "db to admit web", db.sidecar, func(v *xdsclient.View) bool { return v.Authorize(webID, mustPort(db.port())).Allowed })
	for _, addr := range []string{webToDB, webToDBDirect, apiToDB, webToAPI} {
		if err := call(addr, "allowed now"); err != nil {
			t.Fatalf("call through %s after the policy allows web → db: %v", addr, err)
		}
	}
	if r := query(t, dnsAddr, "db.default.svc.cluster.local", mdns.TypeA); strings.Join(aRecords(r), ",") != "10.96.0.12" {
		t.Errorf("db.default.svc.cluster.local once reachable: %s %v", mdns.RcodeToString[r.Rcode], aRecords(r))
	}

	// And back: denied again at both sides.
	disc.write(t, meshYAML(web, api, db, "api"))
	waitView(t, "web to lose db", web.sidecar, func(v *xdsclient.View) bool { _, ok := v.Service(key("db")); return v != nil && !ok })
	waitView(t, "db to refuse web", db.sidecar, func(v *xdsclient.View) bool { return !v.Authorize(webID, mustPort(db.port())).Allowed })
	refused(t, webToDB)
	refused(t, webToDBDirect)
	waitFor(t, "both denials counted again", func() bool {
		return web.denials(t, denyByView) == 2 && db.denials(t, inboundDeny) == 2
	})

	// Discovery stops: every sidecar keeps enforcing its last view.
	disc.stop()
	time.Sleep(300 * time.Millisecond) // the clients notice and start to retry
	if err := call(webToAPI, "still"); err != nil {
		t.Errorf("web → api with discovery down: %v", err)
	}
	if err := call(apiToDB, "still"); err != nil {
		t.Errorf("api → db with discovery down: %v", err)
	}
	refused(t, webToDB)
	refused(t, webToDBDirect)
	waitFor(t, "denials counted with discovery down", func() bool {
		return web.denials(t, denyByView) == 3 && db.denials(t, inboundDeny) == 3
	})
	if r := query(t, dnsAddr, "db.default.svc.cluster.local", mdns.TypeA); r.Rcode != mdns.RcodeNameError {
		t.Errorf("db.default.svc.cluster.local with discovery down: %s, want NXDOMAIN", mdns.RcodeToString[r.Rcode])
	}
	resp, err = http.Get("http://" + web.sidecar.Addr("admin").String() + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz/ready with discovery down after the first view = %d, want 200", resp.StatusCode)
	}
	for _, a := range []*meshApp{web, api, db} {
		select {
		case err := <-a.done:
			t.Errorf("%s's sidecar stopped during the test: %v", a.name, err)
		default:
		}
	}
}

func mustPort(s string) uint16 {
	var p uint16
	fmt.Sscan(s, &p)
	return p
}

// TestNotReadyWithoutDiscovery: with --discovery, /healthz/ready waits for
// the first view, and the inbound side refuses everyone until then.
func TestNotReadyWithoutDiscovery(t *testing.T) {
	ca := startCA(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	app := echoApp(t)
	s, err := New(Config{TrustDomain: "cluster.local", CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, serverID),
		AdminAddr: "127.0.0.1:0", InboundMode: proxy.Strict, AccessLog: "off", WorkloadSocket: filepath.Join(t.TempDir(), "w.sock"),
		Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: app}}, DiscoveryAddr: dead, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	waitFor(t, "an SVID", func() bool { return s.Addr("admin") != nil && s.Agent().Ready() == nil })
	resp, err := http.Get("http://" + s.Addr("admin").String() + "/healthz/ready")
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 200)
	n, _ := resp.Body.Read(body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body[:n]), "no configuration from discovery") {
		t.Fatalf("/healthz/ready without a view = %d %q, want 503 naming discovery", resp.StatusCode, body[:n])
	}
	// A mesh caller is refused: no view, no policy.
	client, _ := startSidecar(t, Config{CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, clientID),
		Outbound: []OutboundListener{{Listen: "127.0.0.1:0", Dest: proxy.Destination{Name: "server", Addr: s.Addr("inbound/0").String(), IDs: []spiffeid.ID{serverID}}}}})
	if err := call(client.Addr("outbound/0").String(), "hello"); err == nil {
		t.Fatal("a call went through a sidecar that has no policy yet")
	}
	if n := gatherCounter(t, s.registry, "tether_sidecar_authz_denials_total", map[string]string{"direction": "inbound", "reason": ruleNoView}); n != 1 {
		t.Errorf("inbound denials for want of a view = %v, want 1", n)
	}
}
