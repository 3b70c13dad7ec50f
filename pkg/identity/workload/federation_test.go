package workload_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
	"github.com/tether-mesh/tether/pkg/identity/workload"
)

// The sidecar's agent hands the federated bundles to the Workload API.
var _ workload.FederatedSource = (*agent.Agent)(nil)

var bTD = spiffeid.RequireTrustDomainFromString("b.example")

// mint issues an SVID for id from ca, the way any of its workloads gets one.
func mint(t *testing.T, ca *identity.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, err := ca.Sign(id, csr)
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: id, PrivateKey: key}
	for _, der := range iss.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		svid.Certificates = append(svid.Certificates, c)
	}
	return svid
}

// serveBundleEndpoint serves ca's bundle endpoint (https_spiffe, refresh
// hint 1s) on loopback, as tether-ca --bundle-endpoint-listen does.
func serveBundleEndpoint(t *testing.T, ca *identity.CA) string {
	t.Helper()
	h, err := ca.BundleEndpointHandler(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.BundleEndpointSPIFFETLS()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(tls.NewListener(l, cfg)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + l.Addr().String()
}

// serveSVID serves TLS with svid on loopback: a peer of svid's domain.
func serveSVID(t *testing.T, svid *x509svid.SVID) string {
	t.Helper()
	cfg := tlsconfig.TLSServerConfig(svid)
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, l, func(c net.Conn) {
		defer c.Close()
		_ = c.(*tls.Conn).Handshake()
	})
	return l.Addr().String()
}

// TestStockX509SourceVerifiesFederatedPeer: tether-ca of cluster.local
// federates with b.example (a second CA serving its bundle endpoint); a
// workload of cluster.local, with go-spiffe's X509Source on its sidecar's
// Workload API, verifies a b.example peer only while the federation is
// declared, follows b.example's root rotation, and stops when the
// federation is removed. The sidecar's own bundle source never answers
// for b.example.
func TestStockX509SourceVerifiesFederatedPeer(t *testing.T) {
	caA := testutil.NewCA(t, identity.RealClock, nil)
	caB := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) { c.TrustDomain = bTD })
	endpoint := serveBundleEndpoint(t, caB)

	fed := identity.NewFederator(identity.FederatorConfig{TrustDomain: testutil.TrustDomain, Local: caA,
		MinRefresh: time.Second, MaxRefresh: time.Second})
	fedCtx, stopFed := context.WithCancel(context.Background())
	fedDone := make(chan struct{})
	go func() { fed.Run(fedCtx); close(fedDone) }()
	t.Cleanup(func() { stopFed(); <-fedDone })

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := identity.NewServer(caA, map[string]identity.Attestor{identity.KindJoinToken: caA.JoinTokens()}, nil)
	srv.SetFederatedBundles(fed.Bundles())
	g := srv.GRPCServer()
	go g.Serve(l)
	t.Cleanup(g.Stop)
	a, run := newAgent(t, caA, l.Addr().String(), "/ns/default/sa/web")
	run()
	path := testutil.ServeWorkloadAPI(t, a)
	ctx := testContext(t)
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr(path)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	apiB := spiffeid.RequireFromSegments(bTD, "ns", "default", "sa", "api")
	peer := serveSVID(t, mint(t, caB, apiB))
	dialB := func() error {
		c, err := tls.Dial("tcp", peer, tlsconfig.TLSClientConfig(src, tlsconfig.AuthorizeID(apiB)))
		if err == nil {
			c.Close()
		}
		return err
	}
	domains := func() string {
		set, err := workloadapi.FetchX509Bundles(ctx, addr(path))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, b := range set.Bundles() {
			names = append(names, b.TrustDomain().Name())
		}
		return strings.Join(names, ",")
	}

	if err := dialB(); err == nil || !strings.Contains(err.Error(), `no X.509 bundle for trust domain "b.example"`) {
		t.Fatalf("before federation, a b.example peer: %v; want refused for lack of its bundle", err)
	}
	if got := domains(); got != "cluster.local" {
		t.Fatalf("FetchX509Bundles before federation: %s", got)
	}

	err = fed.SetDomains([]identity.FederatedDomain{{TrustDomain: bTD, URL: endpoint, Profile: identity.ProfileHTTPSSPIFFE,
		EndpointID: identity.BundleEndpointID(bTD), Initial: caB.Bundle().SPIFFE}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the workload to verify the b.example peer", func() bool { return dialB() == nil })
	if got := domains(); got != "b.example,cluster.local" {
		t.Fatalf("FetchX509Bundles with b.example federated: %s", got)
	}
	jwt, err := workloadapi.FetchJWTBundles(ctx, addr(path))
	if err != nil {
		t.Fatal(err)
	}
	if jb, err := jwt.GetJWTBundleForTrustDomain(bTD); err != nil || len(jb.JWTAuthorities()) != len(caB.Bundle().SPIFFE.JWTAuthorities()) {
		t.Fatalf("FetchJWTBundles lacks b.example's JWT keys: %v", err)
	}
	if _, err := a.GetX509BundleForTrustDomain(bTD); err == nil {
		t.Fatal("the sidecar's own bundle source answers for b.example: its mTLS would verify foreign peers")
	}

	// b.example prepares a new root: the federator refetches it, the CA
	// streams it, the workload sees it.
	if err := caB.Rotate(ctx, identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b.example's prepared root at the workload", func() bool {
		b, err := src.GetX509BundleForTrustDomain(bTD)
		return err == nil && len(b.X509Authorities()) == 2
	})

	if err := fed.SetDomains(nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the workload to stop trusting b.example", func() bool { return dialB() != nil })
	if got := domains(); got != "cluster.local" {
		t.Fatalf("FetchX509Bundles after the federation was removed: %s", got)
	}
	if len(a.FederatedBundles()) != 0 {
		t.Fatalf("the agent still holds %d federated bundles", len(a.FederatedBundles()))
	}
}
