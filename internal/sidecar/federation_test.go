package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// foreignAgent runs an agent of ca's trust domain td for id: a workload of
// the other mesh, with an SVID of its own CA.
func foreignAgent(t *testing.T, ca *testCA, td string, id spiffeid.ID) *agent.Agent {
	t.Helper()
	bundle, err := identity.LoadBundlePEM(ca.bundle, td)
	if err != nil {
		t.Fatal(err)
	}
	tok := ca.token(t, id)
	ag, err := agent.New(agent.Config{CAAddr: ca.addr, Bundle: bundle, Logger: testLogger(),
		Credential: func() (*cav1.Credential, error) {
			return &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ag.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "the foreign workload's SVID", func() bool { return ag.Ready() == nil })
	return ag
}

// tetherServer is a tether/1 TLS server presenting src's SVID that accepts
// any client certificate: a sidecar of the other mesh that would let
// anyone in. It records each handshake's error.
func tetherServer(t *testing.T, src *agent.Agent) (addr string, handshakes func() []string) {
	t.Helper()
	cfg := tlsconfig.TLSServerConfig(src)
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.NextProtos = []string{proxy.ALPN}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	testutil.Serve(t, l, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		err := c.(*tls.Conn).Handshake()
		if err == nil {
			_, err = c.Read(make([]byte, 1)) // a TLS 1.3 client refuses after its side finishes
		}
		mu.Lock()
		seen = append(seen, fmt.Sprint(err))
		mu.Unlock()
	})
	return l.Addr().String(), func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), seen...) }
}

// writeFile writes a test file.
func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// dialInbound opens tether/1 mTLS to a sidecar's inbound listener with
// src's SVID, trusting the sidecar's trust domain's bundle file, sends a
// byte and returns the error the first read gets.
func dialInbound(t *testing.T, addr string, src *agent.Agent, bundleFile string) error {
	t.Helper()
	bundle, err := identity.LoadBundlePEM(bundleFile, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	cfg := tlsconfig.MTLSClientConfig(src, bundle, tlsconfig.AuthorizeMemberOf(bundle.TrustDomain()))
	cfg.NextProtos = []string{proxy.ALPN}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	c.Write([]byte{0})
	_, err = c.Read(make([]byte, 1))
	return err
}

// TestFederatedPeerStillRefused: cluster.local's tether-ca federates with
// b.example (another tether-ca, followed at its bundle endpoint), and its
// sidecars receive b.example's bundle, hand it to their applications
// (Workload API) and verify b.example's peers with it. Outbound, a sidecar
// calling a fixed peer expected to be spiffe://b.example/... accepts that
// peer's certificate. Inbound, no rule admits a b.example caller yet
// (discovery sends no foreign principal): under allow-mesh, and where an
// AccessPolicy's spiffeID source names the foreign ID, a b.example client
// with a valid SVID gets a bad-certificate alert, counted as not_admitted.
func TestFederatedPeerStillRefused(t *testing.T) {
	caB := startCA(t, func(c *caserver.Config) {
		c.TrustDomain = "b.example"
		c.BundleEndpoint = caserver.BundleEndpointConfig{Listen: "127.0.0.1:0", Profile: identity.ProfileHTTPSSPIFFE, RefreshHint: time.Second}
	})
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

	// cluster.local: web calls api and db. api has no policy: the mesh
	// default (allow-mesh) lets any cluster.local identity in. db's
	// AccessPolicy names web and the foreign ID.
	web, api, db := webAPIDB(t)
	foreignAPI := spiffeid.RequireFromString("spiffe://b.example/ns/default/sa/api")
	mesh := func() string {
		return meshYAML(web, api, db, "web") + "        - spiffeID: " + foreignAPI.String() + "\n"
	}
	disc := startDiscovery(t, ca, mesh())
	bAPI := foreignAgent(t, caB, "b.example", foreignAPI)
	bPeer, bHandshakes := tetherServer(t, bAPI)

	start := func(a *meshApp, outbound ...OutboundListener) {
		cfg := Config{CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, testutil.ID("/ns/default/sa/"+a.name)),
			Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: a.app}}, Outbound: outbound, DiscoveryAddr: disc.addr,
			WorkloadSocket: filepath.Join(t.TempDir(), a.name+".sock")}
		a.sidecar, a.done = startSidecar(t, cfg)
	}
	out := func(spec string) OutboundListener {
		o, err := ParseOutbound(spec)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	start(api)
	start(db)
	start(web, out("127.0.0.1:0=default/api:8080"), out("127.0.0.1:0="+bPeer+"@"+foreignAPI.String()), out("127.0.0.1:0=default/db:5432"))
	disc.write(t, mesh())
	for _, k := range []string{"api", "db"} {
		waitView(t, "web to learn "+k+"'s endpoint", web.sidecar, func(v *xdsclient.View) bool {
			s, ok := v.Service(key(k))
			return ok && len(s.Endpoints) > 0
		})
	}
	webToAPI, webToB, webToDB := web.sidecar.Addr("outbound/0").String(), web.sidecar.Addr("outbound/1").String(), web.sidecar.Addr("outbound/2").String()
	if err := call(webToAPI, "web to api"); err != nil {
		t.Fatalf("web → api (cluster.local, allow-mesh): %v", err)
	}
	if err := call(webToDB, "web to db"); err != nil {
		t.Fatalf("web → db (cluster.local, named by db's policy): %v", err)
	}
	waitView(t, "db's policy (api is not named)", db.sidecar, func(v *xdsclient.View) bool {
		return !v.Authorize(testutil.ID("/ns/default/sa/api"), mustPort(db.port())).Allowed
	})
	// Authorization refuses the foreign ID too, under allow-mesh and where
	// the policy names it.
	for _, a := range []*meshApp{api, db} {
		if d := a.sidecar.view.Load().Authorize(foreignAPI, mustPort(a.port())); d.Allowed {
			t.Fatalf("%s's view admits %s (rule %q)", a.name, foreignAPI, d.Rule)
		}
	}

	// The federation reached the sidecars and their applications.
	bTD := foreignAPI.TrustDomain()
	for _, a := range []*meshApp{web, api} {
		waitFor(t, a.name+"'s agent to hold b.example's bundle", func() bool {
			fb := a.sidecar.agent.FederatedBundles()
			return len(fb) == 1 && fb[0].TrustDomain() == bTD
		})
		if _, err := a.sidecar.agent.GetX509BundleForTrustDomain(bTD); err == nil {
			t.Fatalf("%s's agent (its own trust domain's source) answers for b.example", a.name)
		}
		if _, err := a.sidecar.agent.FederatedX509Source().GetX509BundleForTrustDomain(bTD); err != nil {
			t.Fatalf("%s's agent has no federated bundle source for b.example: %v", a.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	set, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr("unix://"+api.sidecar.cfg.WorkloadSocket))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := set.GetX509BundleForTrustDomain(bTD); err != nil {
		t.Fatalf("api's Workload API lacks b.example's bundle: %v", err)
	}

	// Inbound: a b.example workload with a valid SVID is refused by api's
	// sidecar (allow-mesh) and db's (its policy names the ID), while a
	// cluster.local one gets past TLS.
	probe := foreignAgent(t, ca, "cluster.local", testutil.ID("/ns/default/sa/probe"))
	for _, a := range []*meshApp{api, db} {
		in := a.sidecar.Addr("inbound/0").String()
		if err := dialInbound(t, in, bAPI, ca.bundle); err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Fatalf("a b.example client at %s's inbound: %v; want a bad-certificate alert", a.name, err)
		}
		// Verified with b.example's bundle, then not admitted.
		waitFor(t, a.name+"'s refusal of the b.example caller counted", func() bool {
			return gatherCounter(t, a.sidecar.registry, "tether_sidecar_foreign_peer_refusals_total",
				map[string]string{"direction": "inbound", "reason": proxy.ForeignNotAdmitted}) == 1
		})
		if err := dialInbound(t, in, probe, ca.bundle); err != nil && strings.Contains(err.Error(), "certificate") {
			t.Fatalf("a cluster.local client at %s's inbound: %v; want its certificate accepted", a.name, err)
		}
	}

	// Outbound: web's sidecar, told to call a fixed peer that must be
	// spiffe://b.example/ns/default/sa/api, verifies that peer's SVID with
	// b.example's federated bundle (the peer then closes: it is no proxy).
	call(webToB, "web to b.example")
	waitFor(t, "the b.example peer to see web's handshake", func() bool { return len(bHandshakes()) > 0 })
	if hs := bHandshakes(); strings.Contains(hs[len(hs)-1], "certificate") {
		t.Fatalf("web's sidecar refused the b.example peer's SVID: %s", hs[len(hs)-1])
	}
}
