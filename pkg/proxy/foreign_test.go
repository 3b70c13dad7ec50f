package proxy_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/proxy"
)

var (
	bTD       = spiffeid.RequireTrustDomainFromString("b.example")
	cTD       = spiffeid.RequireTrustDomainFromString("c.example")
	bClientID = spiffeid.RequireFromPath(bTD, "/ns/default/sa/client")
	bOtherID  = spiffeid.RequireFromPath(bTD, "/ns/default/sa/other")
	bServerID = spiffeid.RequireFromPath(bTD, "/ns/default/sa/server")
	cClientID = spiffeid.RequireFromPath(cTD, "/ns/default/sa/client")
)

// rawCA is a root of a trust domain whose key the test holds, to issue
// SVIDs of any trust domain (forgeries included).
type rawCA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

func newRawCA(t *testing.T, td spiffeid.TrustDomain) *rawCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: td.Name() + " root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs: []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &rawCA{td: td, cert: cert, key: key}
}

// bundle is the CA's bundle, for its trust domain.
func (c *rawCA) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.td, []*x509.Certificate{c.cert})
}

// issue signs an SVID for id (of any trust domain) and pairs it with the
// CA's own bundle.
func (c *rawCA) issue(t *testing.T, id spiffeid.ID) static {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return static{svid: &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}, bundle: c.bundle()}
}

// swapSource is a foreign bundle source the test replaces (nil: none).
type swapSource struct {
	p atomic.Pointer[x509bundle.Source]
}

func (s *swapSource) set(src x509bundle.Source) { s.p.Store(&src) }

func (s *swapSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	p := s.p.Load()
	if p == nil || *p == nil {
		return x509bundle.NewSet().GetX509BundleForTrustDomain(td)
	}
	return (*p).GetX509BundleForTrustDomain(td)
}

// anyDomain answers every trust domain with one bundle: a foreign source
// that lies.
type anyDomain struct{ b *x509bundle.Bundle }

func (a anyDomain) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return a.b, nil
}

func acceptOnly(ids ...spiffeid.ID) func(spiffeid.ID) bool {
	return func(id spiffeid.ID) bool {
		for _, x := range ids {
			if x == id {
				return true
			}
		}
		return false
	}
}

// foreignCaller is an outbound sidecar of trust domain ca.td calling addr,
// expecting serverID, trusting own (cluster.local) as a foreign domain.
func foreignCaller(t *testing.T, id static, td spiffeid.TrustDomain, addr string, own *x509bundle.Bundle) *side {
	return outbound(t, id, proxy.Destination{Name: "server", Addr: addr, IDs: []spiffeid.ID{serverID}},
		proxy.Config{TrustDomain: td, ForeignBundles: x509bundle.NewSet(own)})
}

// TestForeignCallerInbound: a cluster.local sidecar lets a caller of the
// federated b.example in only when AcceptForeign names it, with its SVID
// verified against b.example's bundle; every other foreign caller is
// refused at the handshake, counted and logged; removing the federation
// closes the open stream.
func TestForeignCallerInbound(t *testing.T) {
	own, b, c := newRawCA(t, tu.TrustDomain), newRawCA(t, bTD), newRawCA(t, cTD)
	app := echo(t, "")
	_, port, _ := net.SplitHostPort(app)
	fed := &swapSource{}
	fed.set(x509bundle.NewSet(b.bundle()))
	in := inbound(t, own.issue(t, serverID), app, proxy.Config{
		Authorize: allowPort(bClientID, port), ForeignBundles: fed, AcceptForeign: acceptOnly(bClientID, cClientID)})

	// Named: the call goes through, logged with the caller's real ID.
	allowed := foreignCaller(t, b.issue(t, bClientID), bTD, in.addr, own.bundle())
	conn := openStream(t, allowed.addr, "from b.example")
	if err := dialRoundTrip(allowed.addr, "and again"); err != nil {
		t.Fatalf("a second call of the named b.example caller: %v", err)
	}
	eventually(t, "the inbound access log to name the foreign caller", func() bool {
		return strings.Contains(in.accessLog(), `"source_id":"`+bClientID.String()+`"`)
	})

	refused := func(name string, caller *side, reason string) {
		t.Helper()
		before := counter(t, in.reg, "tether_sidecar_foreign_peer_refusals_total", "direction", "inbound", "reason", reason)
		if err := dialRoundTrip(caller.addr, "let me in"); err == nil {
			t.Fatalf("%s: the call went through", name)
		}
		eventually(t, name+": the refusal counted as "+reason, func() bool {
			return counter(t, in.reg, "tether_sidecar_foreign_peer_refusals_total", "direction", "inbound", "reason", reason) == before+1
		})
	}
	// Another b.example ID: verified, not named.
	refused("another b.example ID", foreignCaller(t, b.issue(t, bOtherID), bTD, in.addr, own.bundle()), proxy.ForeignNotAdmitted)
	if got := counter(t, in.reg, "tether_sidecar_authz_denials_total", "direction", "inbound", "source_id", bOtherID.String(), "reason", proxy.RuleForeignNotAdmitted); got != 1 {
		t.Errorf("authz denials of %s = %v, want 1", bOtherID, got)
	}
	if log := in.accessLog(); !strings.Contains(log, `"source_id":"`+bOtherID.String()+`"`) || !strings.Contains(log, "no inbound rule") {
		t.Errorf("the access log does not name the refused foreign caller and why:\n%s", log)
	}
	// c.example is named by AcceptForeign but not federated: no bundle.
	refused("unfederated c.example", foreignCaller(t, c.issue(t, cClientID), cTD, in.addr, own.bundle()), proxy.ForeignUntrusted)
	// A b.example ID signed by cluster.local's own root, or by c.example's:
	// b.example's bundle holds neither, so the handshake fails like any
	// certificate that does not verify.
	for name, forger := range map[string]*rawCA{"cluster.local's": own, "c.example's": c} {
		before := counter(t, in.reg, "tether_sidecar_connections_total", "direction", "inbound", "result", "handshake_error")
		forged := foreignCaller(t, forger.issue(t, bClientID), bTD, in.addr, own.bundle())
		if err := dialRoundTrip(forged.addr, "let me in"); err == nil {
			t.Fatalf("a b.example SVID under %s root got through", name)
		}
		eventually(t, "the forged b.example SVID's handshake to fail", func() bool {
			return counter(t, in.reg, "tether_sidecar_connections_total", "direction", "inbound", "result", "handshake_error") == before+1
		})
	}
	if log := in.accessLog(); !strings.Contains(log, "could not verify leaf certificate") {
		t.Errorf("the access log does not say the forged SVIDs did not verify:\n%s", log)
	}

	// The open stream survives a revalidation while b.example is trusted,
	// and is closed by the one after the federation is removed.
	if n := in.p.Revalidate(); n != 0 {
		t.Fatalf("Revalidate closed %d streams while b.example is federated", n)
	}
	fed.set(nil)
	if n := in.p.Revalidate(); n != 1 {
		t.Errorf("Revalidate after the federation was removed closed %d streams, want 1", n)
	}
	if !tu.ClosedWithin(conn, 3*time.Second) {
		t.Fatal("the foreign caller's stream is still open after its federation was removed")
	}
	if got := counter(t, in.reg, "tether_sidecar_connections_revoked_total", "direction", "inbound", "reason", "untrusted"); got != 1 {
		t.Errorf("revoked inbound streams (untrusted) = %v, want 1", got)
	}
	refused("the named caller, federation removed", allowed, proxy.ForeignUntrusted)
}

// TestForeignCallerRefusedWithoutConfig: without ForeignBundles no foreign
// peer verifies, and without AcceptForeign none is admitted, whatever
// Authorize says.
func TestForeignCallerRefusedWithoutConfig(t *testing.T) {
	own, b := newRawCA(t, tu.TrustDomain), newRawCA(t, bTD)
	app := echo(t, "")
	for _, tc := range []struct {
		name   string
		cfg    proxy.Config
		reason string
	}{
		{"no foreign bundles", proxy.Config{AcceptForeign: acceptOnly(bClientID)}, proxy.ForeignUntrusted},
		{"no AcceptForeign", proxy.Config{ForeignBundles: x509bundle.NewSet(b.bundle())}, proxy.ForeignNotAdmitted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := inbound(t, own.issue(t, serverID), app, tc.cfg) // Authorize nil: AllowAll
			caller := foreignCaller(t, b.issue(t, bClientID), bTD, in.addr, own.bundle())
			if err := dialRoundTrip(caller.addr, "x"); err == nil {
				t.Fatal("the foreign call went through")
			}
			eventually(t, "the refusal to be counted", func() bool {
				return counter(t, in.reg, "tether_sidecar_foreign_peer_refusals_total", "reason", tc.reason) == 1
			})
		})
	}
}

// TestForeignSourceCannotVouchForOwnDomain: a foreign bundle source that
// answers for the own trust domain (or with another domain's bundle) is
// never used for it: an SVID of cluster.local under an attacker's root is
// refused, and so is a b.example one when the source hands c.example's
// bundle for b.example.
func TestForeignSourceCannotVouchForOwnDomain(t *testing.T) {
	own, evil := newRawCA(t, tu.TrustDomain), newRawCA(t, tu.TrustDomain)
	app := echo(t, "")
	lying := anyDomain{evil.bundle()} // evil's root, labeled cluster.local
	in := inbound(t, own.issue(t, serverID), app, proxy.Config{ForeignBundles: lying, AcceptForeign: func(spiffeid.ID) bool { return true }})
	forged := outbound(t, evil.issue(t, clientID), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}},
		proxy.Config{ForeignBundles: anyDomain{own.bundle()}})
	if err := dialRoundTrip(forged.addr, "x"); err == nil {
		t.Fatal("a cluster.local SVID under a root only the foreign source holds got through")
	}
	eventually(t, "the forged caller's handshake to fail", func() bool {
		return counter(t, in.reg, "tether_sidecar_connections_total", "direction", "inbound", "result", "handshake_error") == 1
	})

	// For b.example the lying source returns a bundle of cluster.local.
	evilB := newRawCA(t, bTD)
	evilB.td = tu.TrustDomain // its bundle claims cluster.local
	in2 := inbound(t, own.issue(t, serverID), app, proxy.Config{ForeignBundles: anyDomain{evilB.bundle()}, AcceptForeign: func(spiffeid.ID) bool { return true }})
	caller := foreignCaller(t, evilB.issue(t, bClientID), bTD, in2.addr, own.bundle())
	if err := dialRoundTrip(caller.addr, "x"); err == nil {
		t.Fatal("a b.example SVID verified with a bundle labeled for another domain")
	}
	eventually(t, "the refusal to be counted as untrusted", func() bool {
		return counter(t, in2.reg, "tether_sidecar_foreign_peer_refusals_total", "reason", proxy.ForeignUntrusted) == 1
	})
}

// TestOutboundToForeignServer: a cluster.local sidecar originates mTLS to
// a b.example server with ForeignBundles, and refuses it without.
func TestOutboundToForeignServer(t *testing.T) {
	own, b := newRawCA(t, tu.TrustDomain), newRawCA(t, bTD)
	app := echo(t, "")
	in := inbound(t, b.issue(t, bServerID), app, proxy.Config{TrustDomain: bTD,
		ForeignBundles: x509bundle.NewSet(own.bundle()), AcceptForeign: acceptOnly(clientID)})
	dest := proxy.Destination{Name: "b-server", Addr: in.addr, IDs: []spiffeid.ID{bServerID}}
	out := outbound(t, own.issue(t, clientID), dest, proxy.Config{ForeignBundles: x509bundle.NewSet(b.bundle())})
	if err := dialRoundTrip(out.addr, "to b.example"); err != nil {
		t.Fatalf("call to a b.example server: %v", err)
	}
	eventually(t, "b.example's access log to name the caller", func() bool {
		return strings.Contains(in.accessLog(), `"source_id":"`+clientID.String()+`"`)
	})
	bare := outbound(t, own.issue(t, clientID), dest, proxy.Config{})
	if err := dialRoundTrip(bare.addr, "x"); err == nil {
		t.Fatal("a sidecar without foreign bundles verified a b.example server")
	}
	eventually(t, "the outbound refusal counted", func() bool {
		return counter(t, bare.reg, "tether_sidecar_foreign_peer_refusals_total", "direction", "outbound", "reason", proxy.ForeignUntrusted) == 1
	})
	if log := bare.accessLog(); !strings.Contains(log, `not federated with this mesh`) {
		t.Errorf("the caller's access log does not say why:\n%s", log)
	}
}
