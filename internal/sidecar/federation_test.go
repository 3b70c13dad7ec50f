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

// fedFile is a --federation-file following the tether-ca of trust domain
// td at its bundle endpoint.
func fedFile(td string, ca *testCA) string {
	return fmt.Sprintf(`federation:
- trustDomain: %s
  bundleEndpointURL: https://%s
  endpointSPIFFEID: spiffe://%s/tether/bundle-endpoint
  initialBundleFile: %s
`, td, ca.svc.Addr("bundle-endpoint"), td, ca.bundle)
}

// fedMesh is the cluster.local mesh of TestFederatedCallerOnlyWhereNamed:
// services api, db, pay, ledger and audited in front of apps, and the
// policies named in policies (by name).
func fedMesh(apps map[string]*meshApp, policies ...string) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for i, name := range []string{"api", "db", "pay", "ledger", "audited"} {
		a := apps[name]
		fmt.Fprintf(&b, "  - name: %s\n    clusterIPs: [10.96.1.%d]\n    ports: [{name: tcp, port: 80, targetPort: %s}]\n", name, i+1, a.port())
		if a.sidecar != nil {
			fmt.Fprintf(&b, "    endpoints: [{address: 127.0.0.1, port: %s, serviceAccount: %s}]\n", a.inboundPort(), name)
		}
	}
	sources := map[string]string{
		// db: the own trust domain's sources only.
		"db": "[{namespace: default}, {serviceAccount: {name: web}}]",
		// pay: one b.example ID.
		"pay": "[{spiffeID: spiffe://b.example/ns/default/sa/client}]",
		// ledger: every b.example ID, and c.example (not federated).
		"ledger": "[{trustDomain: b.example}, {trustDomain: c.example}]",
	}
	b.WriteString("policies:\n")
	for _, name := range policies {
		mode, src := "Enforce", sources[name]
		if name == "audited" { // b.example, in audit mode
			mode, src = "Audit", "[{trustDomain: b.example}]"
		}
		fmt.Fprintf(&b, "  - apiVersion: tether.dev/v1alpha1\n    kind: AccessPolicy\n    metadata: {name: %s-clients, namespace: default}\n    spec:\n      mode: %s\n      destination: {service: %s}\n      sources: %s\n",
			name, mode, name, src)
	}
	return b.String()
}

// TestFederatedCallerOnlyWhereNamed: cluster.local and b.example (two
// tether-ca's, each following the other at its bundle endpoint) federate.
// A b.example workload's sidecar calls cluster.local services through a
// fixed peer, with its own SVID: it is refused where no policy names it
// (api under allow-mesh; db whose policy has namespace and serviceAccount
// sources), allowed where a policy names its ID (pay) or its trust domain
// (ledger), with its real ID in the destination's access log; another
// b.example ID is refused by pay and let in by ledger; a c.example
// workload (its CA not federated) is refused by ledger although the
// policy names c.example; a policy in audit mode naming b.example opens
// nothing. An open connection is closed when the policy is deleted, and
// when the federation is removed.
func TestFederatedCallerOnlyWhereNamed(t *testing.T) {
	fedB := filepath.Join(t.TempDir(), "federation.yaml")
	writeFile(t, fedB, "federation: []\n")
	endpoint := caserver.BundleEndpointConfig{Listen: "127.0.0.1:0", Profile: identity.ProfileHTTPSSPIFFE, RefreshHint: time.Second}
	follow := func(file string) caserver.FederationConfig {
		return caserver.FederationConfig{File: file, MinRefresh: time.Second, MaxRefresh: 2 * time.Second}
	}
	caB := startCA(t, func(c *caserver.Config) {
		c.TrustDomain, c.BundleEndpoint, c.Federation = "b.example", endpoint, follow(fedB)
	})
	waitFor(t, "b.example's bundle endpoint", func() bool { return caB.svc.Addr("bundle-endpoint") != nil })
	fedA := filepath.Join(t.TempDir(), "federation.yaml")
	writeFile(t, fedA, fedFile("b.example", caB))
	ca := startCA(t, func(c *caserver.Config) { c.BundleEndpoint, c.Federation = endpoint, follow(fedA) })
	waitFor(t, "cluster.local's bundle endpoint", func() bool { return ca.svc.Addr("bundle-endpoint") != nil })
	writeFile(t, fedB, fedFile("cluster.local", ca))
	caC := startCA(t, func(c *caserver.Config) { c.TrustDomain = "c.example" })

	apps := map[string]*meshApp{}
	for _, name := range []string{"api", "db", "pay", "ledger", "audited"} {
		apps[name] = &meshApp{name: name, app: echoApp(t), log: filepath.Join(t.TempDir(), name+".log")}
	}
	all := []string{"db", "pay", "ledger", "audited"}
	disc := startDiscovery(t, ca, fedMesh(apps, all...))
	for _, name := range []string{"api", "db", "pay", "ledger", "audited"} {
		a := apps[name]
		a.sidecar, a.done = startSidecar(t, Config{CAAddr: ca.addr, BundleFile: ca.bundle, JoinToken: ca.token(t, testutil.ID("/ns/default/sa/"+name)),
			Inbound: []InboundListener{{Listen: "127.0.0.1:0", App: a.app}}, DiscoveryAddr: disc.addr, AccessLog: a.log, AccessLogSample: 1})
	}
	disc.write(t, fedMesh(apps, all...))

	bTD := spiffeid.RequireTrustDomainFromString("b.example")
	bClient := spiffeid.RequireFromString("spiffe://b.example/ns/default/sa/client")
	bOther := spiffeid.RequireFromString("spiffe://b.example/ns/default/sa/other")
	// A b.example sidecar (its own CA, no discovery) calling each
	// cluster.local sidecar's inbound as a fixed peer.
	foreignSidecar := func(id spiffeid.ID, dests ...string) *Sidecar {
		var outs []OutboundListener
		for _, d := range dests {
			o, err := ParseOutbound("127.0.0.1:0=" + apps[d].sidecar.Addr("inbound/0").String() + "@" + testutil.ID("/ns/default/sa/"+d).String())
			if err != nil {
				t.Fatal(err)
			}
			outs = append(outs, o)
		}
		s, _ := startSidecar(t, Config{TrustDomain: "b.example", CAAddr: caB.addr, BundleFile: caB.bundle, JoinToken: caB.token(t, id), Outbound: outs})
		return s
	}
	client := foreignSidecar(bClient, "api", "db", "pay", "ledger", "audited")
	other := foreignSidecar(bOther, "pay", "ledger")
	to := func(s *Sidecar, i int) string { return s.Addr(fmt.Sprintf("outbound/%d", i)).String() }

	// Both sides hold the other's bundle; the views name b.example where
	// the policies do.
	waitFor(t, "b.example's sidecars to trust cluster.local", func() bool {
		_, err1 := client.agent.FederatedX509Source().GetX509BundleForTrustDomain(testutil.TrustDomain)
		_, err2 := other.agent.FederatedX509Source().GetX509BundleForTrustDomain(testutil.TrustDomain)
		return err1 == nil && err2 == nil
	})
	for _, a := range apps {
		waitFor(t, a.name+" to trust b.example", func() bool {
			_, err := a.sidecar.agent.FederatedX509Source().GetX509BundleForTrustDomain(bTD)
			return err == nil
		})
	}
	waitView(t, "ledger's view to name b.example", apps["ledger"].sidecar, func(v *xdsclient.View) bool { return v.AdmitsForeign(bOther) })

	// Named: pay by the ID, ledger by the trust domain.
	for _, c := range []struct {
		s    *Sidecar
		i    int
		what string
	}{{client, 2, "b.example client → pay"}, {client, 3, "b.example client → ledger"}, {other, 1, "b.example other → ledger"}} {
		if err := call(to(c.s, c.i), c.what); err != nil {
			t.Fatalf("%s (named by the policy): %v", c.what, err)
		}
	}
	waitFor(t, "pay's access log to name the b.example caller", func() bool {
		return strings.Contains(apps["pay"].accessLog(t), `"source_id":"`+bClient.String()+`"`)
	})
	// Not named: refused at the destination's handshake, counted.
	for _, c := range []struct {
		s    *Sidecar
		i    int
		dest string
	}{{client, 0, "api"}, {client, 1, "db"}, {client, 4, "audited"}, {other, 0, "pay"}} {
		a := apps[c.dest]
		before := gatherCounter(t, a.sidecar.registry, "tether_sidecar_foreign_peer_refusals_total", map[string]string{"reason": proxy.ForeignNotAdmitted})
		if err := call(to(c.s, c.i), "let me in"); err == nil {
			t.Fatalf("a b.example caller reached %s, which no enforcing policy opens to it", c.dest)
		}
		waitFor(t, c.dest+"'s refusal of the b.example caller counted", func() bool {
			return gatherCounter(t, a.sidecar.registry, "tether_sidecar_foreign_peer_refusals_total", map[string]string{"reason": proxy.ForeignNotAdmitted}) == before+1
		})
	}
	// The audit-mode policy would let b.example in: not enforced.
	if d := apps["audited"].sidecar.view.Load().Authorize(bClient, mustPort(apps["audited"].port())); d.Allowed {
		t.Errorf("audited's view admits b.example under a policy in audit mode: %s", d.Rule)
	}

	// c.example is named by ledger's policy but not federated: refused at
	// the handshake, its domain untrusted.
	cClient := foreignAgent(t, caC, "c.example", spiffeid.RequireFromString("spiffe://c.example/ns/default/sa/client"))
	if err := dialInbound(t, apps["ledger"].sidecar.Addr("inbound/0").String(), cClient, ca.bundle); err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("a c.example client at ledger's inbound: %v; want a bad-certificate alert", err)
	}
	waitFor(t, "ledger's refusal of c.example counted as untrusted", func() bool {
		return gatherCounter(t, apps["ledger"].sidecar.registry, "tether_sidecar_foreign_peer_refusals_total",
			map[string]string{"direction": "inbound", "reason": proxy.ForeignUntrusted}) == 1
	})

	// Deleting ledger's policy closes the open b.example connection.
	open := func(addr string) net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := echoOnce(c, "open"); err != nil {
			t.Fatalf("open stream to %s: %v", addr, err)
		}
		return c
	}
	ledgerConn := open(to(other, 1))
	payConn := open(to(client, 2))
	disc.write(t, fedMesh(apps, "db", "pay", "audited"))
	if !testutil.ClosedWithin(ledgerConn, 10*time.Second) {
		t.Fatal("the b.example connection to ledger is still open after its policy was deleted")
	}
	if err := call(to(other, 1), "again"); err == nil {
		t.Fatal("b.example reached ledger after its policy was deleted")
	}
	if err := echoOnce(payConn, "still"); err != nil {
		t.Fatalf("the b.example connection to pay, still named, was closed: %v", err)
	}
	// Removing the federation closes the open connection to pay.
	writeFile(t, fedA, "federation: []\n")
	if !testutil.ClosedWithin(payConn, 15*time.Second) {
		t.Fatal("the b.example connection to pay is still open after the federation was removed")
	}
	if got := gatherCounter(t, apps["pay"].sidecar.registry, "tether_sidecar_connections_revoked_total", map[string]string{"reason": "untrusted"}); got != 1 {
		t.Errorf("pay's revoked connections (untrusted) = %v, want 1", got)
	}
	if err := call(to(client, 2), "after"); err == nil {
		t.Fatal("b.example reached pay after the federation was removed")
	}
}
