package sidecar

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// syncBuffer is a bytes.Buffer safe for the access log's writes and the
// test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// foreignInbound is the data plane of a sidecar of another mesh: a
// pkg/proxy inbound listener with an SVID of its own CA (agent ag), in
// front of an echo app, that verifies callers of cluster.local with the
// bundle file localBundle (its ForeignBundles) and lets in exactly the
// foreign caller allowed (what that mesh's discovery would decide from an
// AccessPolicy naming it). It returns the listener's address and its
// access log.
func foreignInbound(t *testing.T, ag *agent.Agent, td spiffeid.TrustDomain, localBundle string, allowed spiffeid.ID) (string, *syncBuffer) {
	t.Helper()
	local, err := x509bundle.Load(testutil.TrustDomain, localBundle)
	if err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	p, err := proxy.New(proxy.Config{
		Identity: ag, TrustDomain: td, ForeignBundles: local,
		AcceptForeign: func(id spiffeid.ID) bool { return id == allowed },
		Authorize: func(src spiffeid.ID, _ uint16) error {
			if src != allowed {
				return &proxy.DeniedError{Rule: "no AccessPolicy names " + src.String()}
			}
			return nil
		},
		AccessLog: proxy.NewAccessLog(log, 1),
		Logger:    testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	target, err := proxy.FixedTarget(echoApp(t))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.ServeInbound(ctx, l, target) }()
	t.Cleanup(func() { cancel(); l.Close(); <-done })
	return l.Addr().String(), log
}

// TestRemoteServiceCallKeepsCallerIdentity: cluster.local's tether-ca
// federates with b.example (followed at its bundle endpoint), not with
// c.example. cluster.local's discovery declares three remote services:
// pay, served by a b.example sidecar presenting the declared identity;
// fake, whose endpoint is a b.example sidecar presenting another
// identity than the one declared; and cdomain, of the undeclared c.example.
// web (named by pay's AccessPolicy) calls pay through its sidecar like a
// local service: the b.example side sees web's own SPIFFE ID (no gateway
// re-originating the call) and echoes. The calls to fake and cdomain are
// refused by web's sidecar, and none reaches their app; report, which no
// policy names, is refused by its own sidecar. web's view resolves pay's
// name to its virtual address, and that address routes to b.example's
// sidecar with the declared identity.
func TestRemoteServiceCallKeepsCallerIdentity(t *testing.T) {
	caB := startCA(t, func(c *caserver.Config) {
		c.TrustDomain = "b.example"
		c.BundleEndpoint = caserver.BundleEndpointConfig{Listen: "127.0.0.1:0", Profile: identity.ProfileHTTPSSPIFFE, RefreshHint: time.Second}
	})
	caC := startCA(t, func(c *caserver.Config) { c.TrustDomain = "c.example" })
	waitFor(t, "b.example's bundle endpoint", func() bool { return caB.svc.Addr("bundle-endpoint") != nil })
	fedFile := filepath.Join(t.TempDir(), "federation.yaml")
	writeFile(t, fedFile, fmt.Sprintf(`federation:
- trustDomain: b.example
  bundleEndpointURL: https://%s
  endpointSPIFFEID: spiffe://b.example/tether/bundle-endpoint
  initialBundleFile: %s
`, caB.svc.Addr("bundle-endpoint"), caB.bundle))
	ca := startCA(t, func(c *caserver.Config) {
		c.Federation = caserver.FederationConfig{File: fedFile, MinRefresh: time.Second, MaxRefresh: 2 * time.Second}
	})

	webID, reportID := testutil.ID("/ns/default/sa/web"), testutil.ID("/ns/default/sa/report")
	bTD, cTD := spiffeid.RequireTrustDomainFromString("b.example"), spiffeid.RequireTrustDomainFromString("c.example")
	payID := spiffeid.RequireFromPath(bTD, "/ns/pay/sa/api")
	otherID := spiffeid.RequireFromPath(bTD, "/ns/pay/sa/other")
	cID := spiffeid.RequireFromPath(cTD, "/ns/pay/sa/api")
	payAddr, payLog := foreignInbound(t, foreignAgent(t, caB, "b.example", payID), bTD, ca.bundle, webID)
	fakeAddr, fakeLog := foreignInbound(t, foreignAgent(t, caB, "b.example", otherID), bTD, ca.bundle, webID)
	cAddr, cLog := foreignInbound(t, foreignAgent(t, caC, "c.example", cID), cTD, ca.bundle, webID)

	endpoint := func(addr string, id spiffeid.ID) string {
		ap := netip.MustParseAddrPort(addr)
		return fmt.Sprintf("[{address: %s, port: %d, identity: %s}]", ap.Addr(), ap.Port(), id)
	}
	disc := startDiscovery(t, ca, `defaultPolicy: allow-mesh
remoteServices:
  - name: pay
    trustDomain: b.example
    ports: [{port: 443}]
    endpoints: `+endpoint(payAddr, payID)+`
  - name: fake
    trustDomain: b.example
    ports: [{port: 443}]
    endpoints: `+endpoint(fakeAddr, payID)+`
  - name: cdomain
    trustDomain: c.example
    ports: [{port: 443}]
    endpoints: `+endpoint(cAddr, cID)+`
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: pay-from-web, namespace: default}
    spec:
      destination: {service: pay}
      sources: [{serviceAccount: {name: web}}]
`)
	start := func(id spiffeid.ID, outbound ...string) *Sidecar {
		var outs []OutboundListener
		for _, spec := range outbound {
			o, err := ParseOutbound("127.0.0.1:0=" + spec)
			if err != nil {
				t.Fatal(err)
			}
			outs = append(outs, o)
		}
		cfg := Config{CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, id), Outbound: outs,
			DiscoveryAddr: disc.addr, WorkloadSocket: filepath.Join(t.TempDir(), "w.sock")}
		s, _ := startSidecar(t, cfg)
		return s
	}
	web := start(webID, "default/pay:443", "default/fake:443", "default/cdomain:443")
	report := start(reportID, "default/pay:443")
	waitView(t, "web to learn pay", web, func(v *xdsclient.View) bool { _, ok := v.Service(key("pay")); return ok })
	waitFor(t, "web's agent to hold b.example's bundle", func() bool { return len(web.agent.FederatedBundles()) == 1 })

	// The name and the virtual address, as the transparent path uses them.
	v := web.view.Load()
	rec, ok := v.Lookup("pay.default.svc.cluster.local.")
	if !ok || len(rec.Addrs) != 1 || !rec.Reachable {
		t.Fatalf("web's lookup of pay = %+v, %v", rec, ok)
	}
	vip := rec.Addrs[0]
	route, ok := web.viewLookup(netip.AddrPortFrom(vip, 443))
	if !ok || route.Mesh == nil || route.Mesh.Addr != payAddr || len(route.Mesh.IDs) != 1 || route.Mesh.IDs[0] != payID {
		t.Fatalf("web's route for %s:443 = %+v (ok %v), want the mesh hop to %s expecting %s", vip, route, ok, payAddr, payID)
	}
	if route, ok := report.viewLookup(netip.AddrPortFrom(vip, 443)); !ok || route.Deny == "" {
		t.Errorf("report's route for pay's virtual address = %+v (ok %v), want a denial", route, ok)
	}

	// web → pay: b.example's sidecar sees web's own identity.
	if err := call(web.Addr("outbound/0").String(), "hello b.example"); err != nil {
		t.Fatalf("web → pay (b.example): %v", err)
	}
	// The entry is written when the stream ends.
	waitFor(t, "b.example's access log to name the caller "+webID.String(), func() bool {
		return strings.Contains(payLog.String(), `"source_id":"`+webID.String()+`"`)
	})
	t.Logf("b.example's access log: %s", payLog.String())
	// A b.example sidecar presenting another identity than declared, and
	// one of a trust domain cluster.local does not federate with: refused
	// by web's sidecar before anything reaches their apps.
	refused(t, web.Addr("outbound/1").String())
	refused(t, web.Addr("outbound/2").String())
	// report: no policy names it.
	refused(t, report.Addr("outbound/0").String())
	time.Sleep(100 * time.Millisecond) // let the access logs flush
	for name, log := range map[string]*syncBuffer{"fake": fakeLog, "cdomain": cLog} {
		if strings.Contains(log.String(), `"decision":"allow"`) {
			t.Errorf("%s's app was reached:\n%s", name, log.String())
		}
	}
	if strings.Contains(payLog.String(), reportID.String()) {
		t.Errorf("report's call reached b.example:\n%s", payLog.String())
	}
}
