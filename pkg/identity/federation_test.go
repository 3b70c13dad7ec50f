package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// tdCA is a test CA on the wall clock (TLS verifies with it) in td.
func tdCA(t *testing.T, td string) *identity.CA {
	t.Helper()
	return tu.NewCA(t, identity.RealClock, func(c *identity.Config) {
		c.TrustDomain = spiffeid.RequireTrustDomainFromString(td)
	})
}

// serveTLS serves h over TLS with cfg on loopback and returns its URL.
func serveTLS(t *testing.T, h http.Handler, cfg *tls.Config) string {
	t.Helper()
	// Not httptest's StartTLS: it adds its own certificate, which Go's TLS
	// server prefers to GetCertificate for clients sending no SNI.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(tls.NewListener(l, cfg)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + l.Addr().String()
}

// svidOf mints an SVID for id from ca, the way any workload gets one.
func svidOf(t *testing.T, ca *identity.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	csr, key := tu.NewCSR(t, nil, nil)
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

// TestBundleEndpointStockFetchHTTPSSPIFFE: go-spiffe's FetchBundle reads
// tether-ca's endpoint in the https_spiffe profile, authenticating it as
// …/tether/bundle-endpoint; a client expecting another ID refuses it; a
// root rotation shows up at once with a higher sequence number.
func TestBundleEndpointStockFetchHTTPSSPIFFE(t *testing.T) {
	ca := tdCA(t, "a.example")
	h, err := ca.BundleEndpointHandler(45 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := ca.BundleEndpointSPIFFETLS()
	if err != nil {
		t.Fatal(err)
	}
	url := serveTLS(t, h, tlsCfg)
	td := ca.TrustDomain()
	ctx := context.Background()

	b, err := federation.FetchBundle(ctx, td, url, federation.WithSPIFFEAuth(ca, identity.BundleEndpointID(td)))
	if err != nil {
		t.Fatalf("FetchBundle: %v", err)
	}
	if !b.X509Bundle().Equal(ca.Bundle().Bundle) {
		t.Fatal("the endpoint serves other roots than the CA's bundle")
	}
	seq1, ok := b.SequenceNumber()
	if !ok || seq1 != ca.Bundle().Sequence {
		t.Fatalf("sequence = %d (set %v), want %d", seq1, ok, ca.Bundle().Sequence)
	}
	if hint, ok := b.RefreshHint(); !ok || hint != 45*time.Second {
		t.Fatalf("refresh hint = %s (set %v), want 45s", hint, ok)
	}
	if len(b.JWTAuthorities()) == 0 {
		t.Fatal("the endpoint serves no JWT keys")
	}

	other := spiffeid.RequireFromPath(td, "/ns/tether-system/sa/tether-ca")
	if _, err := federation.FetchBundle(ctx, td, url, federation.WithSPIFFEAuth(ca, other)); err == nil {
		t.Fatalf("a client expecting %s accepted the endpoint", other)
	}
	stranger := tdCA(t, "c.example")
	if _, err := federation.FetchBundle(ctx, td, url, federation.WithSPIFFEAuth(stranger, identity.BundleEndpointID(td))); err == nil {
		t.Fatal("a client trusting another domain's roots accepted the endpoint")
	}

	if err := ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	b2, err := federation.FetchBundle(ctx, td, url, federation.WithSPIFFEAuth(ca, identity.BundleEndpointID(td)))
	if err != nil {
		t.Fatalf("FetchBundle after prepare: %v", err)
	}
	seq2, _ := b2.SequenceNumber()
	if seq2 <= seq1 {
		t.Fatalf("sequence after a prepared root = %d, want more than %d", seq2, seq1)
	}
	if got := len(b2.X509Authorities()); got != len(b.X509Authorities())+1 {
		t.Fatalf("after prepare the endpoint serves %d roots, want %d", got, len(b.X509Authorities())+1)
	}
	if !b2.X509Bundle().Equal(ca.Bundle().Bundle) {
		t.Fatal("after prepare the endpoint serves other roots than the CA's bundle")
	}
}

// webCert writes a self-signed certificate for 127.0.0.1 and its key and
// returns the files and a pool trusting it.
func webCert(t *testing.T, dir, cn string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestBundleEndpointStockFetchHTTPSWeb: go-spiffe's FetchBundle reads the
// endpoint in the https_web profile behind the operator's certificate; a
// client with other web roots refuses it; bad files are refused at start.
func TestBundleEndpointStockFetchHTTPSWeb(t *testing.T) {
	ca := tdCA(t, "a.example")
	dir := t.TempDir()
	certFile, keyFile, pool := webCert(t, dir, "web")
	w, err := identity.NewWebCertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ca.BundleEndpointHandler(0)
	if err != nil {
		t.Fatal(err)
	}
	url := serveTLS(t, h, w.TLSConfig())
	b, err := federation.FetchBundle(context.Background(), ca.TrustDomain(), url, federation.WithWebPKIRoots(pool))
	if err != nil {
		t.Fatalf("FetchBundle: %v", err)
	}
	if !b.X509Bundle().Equal(ca.Bundle().Bundle) {
		t.Fatal("the endpoint serves other roots than the CA's bundle")
	}
	if hint, _ := b.RefreshHint(); hint != identity.DefaultBundleRefreshHint {
		t.Fatalf("refresh hint = %s, want the default %s", hint, identity.DefaultBundleRefreshHint)
	}
	_, _, otherPool := webCert(t, dir, "other")
	if _, err := federation.FetchBundle(context.Background(), ca.TrustDomain(), url, federation.WithWebPKIRoots(otherPool)); err == nil {
		t.Fatal("a client with other web roots accepted the endpoint")
	}
	if _, err := identity.NewWebCertificate(certFile, filepath.Join(dir, "other.key")); err == nil {
		t.Fatal("a certificate with another certificate's key was accepted")
	}
	if _, err := identity.NewWebCertificate(filepath.Join(dir, "missing.crt"), keyFile); err == nil {
		t.Fatal("a missing certificate file was accepted")
	}
}

// standIn is a bundle endpoint served by go-spiffe's federation.Handler (as
// SPIRE serves one), whose bundle and availability the test changes.
type standIn struct {
	mu     sync.Mutex
	bundle *spiffebundle.Bundle
	down   bool
}

func (s *standIn) GetBundleForTrustDomain(spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bundle, nil
}

func (s *standIn) set(b *spiffebundle.Bundle, down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundle, s.down = b, down
}

// serve starts the stand-in for td: https_spiffe with svid, or https_web
// with the httptest certificate when svid is nil (its pool is returned).
func (s *standIn) serve(t *testing.T, td spiffeid.TrustDomain, svid *x509svid.SVID) (string, *x509.CertPool) {
	t.Helper()
	h, err := federation.NewHandler(td, s)
	if err != nil {
		t.Fatal(err)
	}
	gate := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		down := s.down
		s.mu.Unlock()
		if down {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
	if svid != nil {
		return serveTLS(t, gate, tlsconfig.TLSServerConfig(svid)), nil
	}
	return serveWebTLS(t, gate)
}

// serveWebTLS serves h over TLS with httptest's certificate on loopback
// and returns its URL and a pool trusting the certificate (https_web).
func serveWebTLS(t *testing.T, h http.Handler) (string, *x509.CertPool) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv.URL, pool
}

// bundleOf is ca's SPIFFE bundle with a refresh hint and a sequence number.
func bundleOf(ca *identity.CA, hint time.Duration, seq uint64) *spiffebundle.Bundle {
	b := ca.Bundle().SPIFFE.Clone()
	b.SetRefreshHint(hint)
	b.SetSequenceNumber(seq)
	return b
}

func newFederator(t *testing.T, reg prometheus.Registerer) *identity.Federator {
	t.Helper()
	f := identity.NewFederator(identity.FederatorConfig{
		TrustDomain: spiffeid.RequireTrustDomainFromString("a.example"),
		MinRefresh:  20 * time.Millisecond, MaxRefresh: time.Second, Refresh: 50 * time.Millisecond,
		FetchTimeout: 2 * time.Second, Registerer: reg,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// held returns the bundle f holds for td, or nil.
func held(f *identity.Federator, td spiffeid.TrustDomain) *spiffebundle.Bundle {
	b, err := f.Bundles().GetBundleForTrustDomain(td)
	if err != nil {
		return nil
	}
	return b
}

func refreshes(reg *prometheus.Registry, td, result string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "tether_ca_federated_bundle_refreshes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["trust_domain"] == td && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestFederatorConsumesStockHandlerHTTPSSPIFFE: tether-ca's federator reads
// a bundle endpoint served by go-spiffe's federation.Handler (standing in
// for SPIRE) in the https_spiffe profile, follows its updates at the
// refresh hint, keeps the last good bundle through an outage, and refuses
// an older sequence number.
func TestFederatorConsumesStockHandlerHTTPSSPIFFE(t *testing.T) {
	b := tdCA(t, "b.example")
	btd := b.TrustDomain()
	endpointID := spiffeid.RequireFromPath(btd, "/spire/server")
	s := &standIn{}
	s.set(bundleOf(b, 30*time.Millisecond, 7), false)
	url, _ := s.serve(t, btd, svidOf(t, b, endpointID))

	reg := prometheus.NewRegistry()
	f := newFederator(t, reg)
	initial := spiffebundle.FromX509Authorities(btd, b.Bundle().Bundle.X509Authorities())
	_, changed := f.Bundles().Snapshot()
	if err := f.SetDomains([]identity.FederatedDomain{{TrustDomain: btd, URL: url, Profile: identity.ProfileHTTPSSPIFFE, EndpointID: endpointID, Initial: initial}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(time.Second):
		t.Fatal("declaring a domain with an initial bundle sent no change")
	}
	tu.Eventually(t, "the served bundle (sequence 7) is held", 5*time.Second, func() bool {
		h := held(f, btd)
		n, _ := h.SequenceNumber()
		return h != nil && n == 7 && len(h.JWTAuthorities()) > 0
	})

	// The other side rotates: a new root, a higher sequence.
	if err := b.Rotate(context.Background(), identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	_, changed = f.Bundles().Snapshot()
	s.set(bundleOf(b, 30*time.Millisecond, 8), false)
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("the rotated bundle sent no change")
	}
	if h := held(f, btd); len(h.X509Authorities()) != 2 {
		t.Fatalf("after the other side's prepare %d roots are held, want 2", len(h.X509Authorities()))
	}

	// An outage keeps the last good bundle.
	s.set(bundleOf(b, 30*time.Millisecond, 8), true)
	tu.Eventually(t, "failed refreshes during the outage", 5*time.Second, func() bool {
		return refreshes(reg, "b.example", "error") >= 2
	})
	if h := held(f, btd); h == nil || len(h.X509Authorities()) != 2 {
		t.Fatal("the outage dropped the last good bundle")
	}
	st := f.Status()
	if len(st) != 1 || st[0].LastError == "" || st[0].Sequence != 8 || !st[0].Held {
		t.Fatalf("status during the outage = %+v, want the error, sequence 8, held", st)
	}

	// A replay of an older bundle (sequence 7) is refused.
	s.set(bundleOf(b, 30*time.Millisecond, 7), false)
	tu.Eventually(t, "the older bundle refused", 5*time.Second, func() bool {
		return refreshes(reg, "b.example", "refused") >= 1
	})
	if n, _ := held(f, btd).SequenceNumber(); n != 8 {
		t.Fatalf("held sequence = %d after a replay of 7, want 8", n)
	}
	if !strings.Contains(f.Status()[0].LastError, "older than the 8 held") {
		t.Fatalf("status error = %q, want the replay explained", f.Status()[0].LastError)
	}

	// Removing the domain stops trusting it.
	if err := f.SetDomains(nil); err != nil {
		t.Fatal(err)
	}
	if held(f, btd) != nil {
		t.Fatal("a removed domain's bundle is still trusted")
	}
	if got := testutil.CollectAndCount(reg, "tether_ca_federated_bundle_sequence"); got != 0 {
		t.Fatalf("%d sequence series left after the domain was removed", got)
	}
}

// TestFederatorRefusesWrongEndpointID: an https_spiffe endpoint presenting
// another SPIFFE ID than the declared one is never believed.
func TestFederatorRefusesWrongEndpointID(t *testing.T) {
	b := tdCA(t, "b.example")
	btd := b.TrustDomain()
	s := &standIn{}
	// The endpoint's bundle differs from the initial one, so taking it
	// would show.
	other := tdCA(t, "b.example")
	s.set(bundleOf(other, 30*time.Millisecond, 9), false)
	url, _ := s.serve(t, btd, svidOf(t, b, spiffeid.RequireFromPath(btd, "/ns/default/sa/web")))
	reg := prometheus.NewRegistry()
	f := newFederator(t, reg)
	initial := spiffebundle.FromX509Authorities(btd, b.Bundle().Bundle.X509Authorities())
	if err := f.SetDomains([]identity.FederatedDomain{{TrustDomain: btd, URL: url, Profile: identity.ProfileHTTPSSPIFFE,
		EndpointID: spiffeid.RequireFromPath(btd, "/spire/server"), Initial: initial}}); err != nil {
		t.Fatal(err)
	}
	tu.Eventually(t, "refreshes failing", 5*time.Second, func() bool { return refreshes(reg, "b.example", "error") >= 2 })
	if !held(f, btd).Equal(initial) {
		t.Fatal("a bundle from an endpoint with the wrong SPIFFE ID was taken")
	}
	if e := f.Status()[0].LastError; !strings.Contains(e, "spire/server") {
		t.Fatalf("status error = %q, want the expected ID named", e)
	}
}

// TestFederatorRefusesAnotherDomainsBundle: an https_web endpoint (whose
// TLS proves nothing about SPIFFE) serving c.example's bundle for b.example
// is refused, and so is an empty bundle; the initial bundle stays.
func TestFederatorRefusesAnotherDomainsBundle(t *testing.T) {
	b, c := tdCA(t, "b.example"), tdCA(t, "c.example")
	btd := b.TrustDomain()
	s := &standIn{}
	s.set(bundleOf(c, 30*time.Millisecond, 3), false)
	url, pool := s.serve(t, btd, nil)
	reg := prometheus.NewRegistry()
	f := newFederator(t, reg)
	initial := spiffebundle.FromX509Authorities(btd, b.Bundle().Bundle.X509Authorities())
	if err := f.SetDomains([]identity.FederatedDomain{{TrustDomain: btd, URL: url, Profile: identity.ProfileHTTPSWeb, WebRoots: pool, Initial: initial}}); err != nil {
		t.Fatal(err)
	}
	tu.Eventually(t, "the other domain's bundle refused", 5*time.Second, func() bool { return refreshes(reg, "b.example", "refused") >= 1 })
	if !held(f, btd).Equal(initial) {
		t.Fatal("another domain's bundle replaced the initial one")
	}
	if e := f.Status()[0].LastError; !strings.Contains(e, "trust domain c.example") {
		t.Fatalf("status error = %q, want c.example named", e)
	}

	// A bundle of JWT keys only has no X.509 authorities to trust.
	jwtOnly := spiffebundle.New(btd)
	jwtOnly.SetJWTAuthorities(b.Bundle().SPIFFE.JWTAuthorities())
	s.set(jwtOnly, false)
	before := refreshes(reg, "b.example", "refused")
	tu.Eventually(t, "the bundle without X.509 authorities refused", 5*time.Second, func() bool { return refreshes(reg, "b.example", "refused") > before })
	if !held(f, btd).Equal(initial) {
		t.Fatal("a bundle without X.509 authorities replaced the initial one")
	}
	if e := f.Status()[0].LastError; !strings.Contains(e, "no X.509 authorities") {
		t.Fatalf("status error = %q, want the missing authorities named", e)
	}

	// A document with no keys at all is malformed for go-spiffe's reader.
	s.set(spiffebundle.New(btd), false)
	before = refreshes(reg, "b.example", "error")
	tu.Eventually(t, "the empty document refused", 5*time.Second, func() bool { return refreshes(reg, "b.example", "error") > before })
	if !held(f, btd).Equal(initial) {
		t.Fatal("an empty document replaced the initial one")
	}

	// The good bundle is then taken: the refusals were not a broken client.
	s.set(bundleOf(b, 30*time.Millisecond, 4), false)
	tu.Eventually(t, "the good bundle taken", 5*time.Second, func() bool {
		n, _ := held(f, btd).SequenceNumber()
		return n == 4
	})
}

// TestFederatedDomainValidation: every kind of bad declaration is refused
// with a message naming what to fix.
func TestFederatedDomainValidation(t *testing.T) {
	b := tdCA(t, "b.example")
	btd := b.TrustDomain()
	local := spiffeid.RequireTrustDomainFromString("a.example")
	initial := spiffebundle.FromX509Authorities(btd, b.Bundle().Bundle.X509Authorities())
	cOnly := spiffebundle.FromX509Authorities(btd, tdCA(t, "c.example").Bundle().Bundle.X509Authorities())
	ep := spiffeid.RequireFromPath(btd, "/tether/bundle-endpoint")
	good := identity.FederatedDomain{TrustDomain: btd, URL: "https://b.example:8444/", Profile: identity.ProfileHTTPSSPIFFE, EndpointID: ep, Initial: initial}
	if err := good.Validate(local); err != nil {
		t.Fatalf("a good declaration was refused: %v", err)
	}
	web := identity.FederatedDomain{TrustDomain: btd, URL: "https://bundle.b.example/", Profile: identity.ProfileHTTPSWeb}
	if err := web.Validate(local); err != nil {
		t.Fatalf("an https_web declaration without an initial bundle was refused: %v", err)
	}
	mod := func(fn func(*identity.FederatedDomain)) identity.FederatedDomain { d := good; fn(&d); return d }
	for _, tc := range []struct {
		name string
		d    identity.FederatedDomain
		want string
	}{
		{"plaintext URL", mod(func(d *identity.FederatedDomain) { d.URL = "http://b.example/" }), "must use https"},
		{"relative URL", mod(func(d *identity.FederatedDomain) { d.URL = "/bundle" }), "not an absolute URL"},
		{"own domain", mod(func(d *identity.FederatedDomain) { d.TrustDomain = local }), "own trust domain"},
		{"no trust domain", mod(func(d *identity.FederatedDomain) { d.TrustDomain = spiffeid.TrustDomain{} }), "no trust domain"},
		{"unknown profile", mod(func(d *identity.FederatedDomain) { d.Profile = "http" }), "want https_spiffe or https_web"},
		{"https_spiffe without ID", mod(func(d *identity.FederatedDomain) { d.EndpointID = spiffeid.ID{} }), "needs the endpoint's SPIFFE ID"},
		{"https_spiffe without initial", mod(func(d *identity.FederatedDomain) { d.Initial = nil }), "needs an initial bundle"},
		{"https_web with ID", mod(func(d *identity.FederatedDomain) { d.Profile = identity.ProfileHTTPSWeb }), "takes no endpoint SPIFFE ID"},
		{"initial of another domain", mod(func(d *identity.FederatedDomain) { d.Initial = cOnly }), "trust domain c.example"},
		{"empty initial", mod(func(d *identity.FederatedDomain) { d.Initial = spiffebundle.New(btd) }), "no X.509 authorities"},
		{"https_spiffe with web roots", mod(func(d *identity.FederatedDomain) { d.WebRoots = x509.NewCertPool() }), "web roots are for profile https_web"},
	} {
		err := tc.d.Validate(local)
		if err == nil || !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want ErrConfig with %q", tc.name, err, tc.want)
		}
	}
	f := identity.NewFederator(identity.FederatorConfig{TrustDomain: local})
	if err := f.SetDomains([]identity.FederatedDomain{good, good}); err == nil || !strings.Contains(err.Error(), "declared twice") {
		t.Errorf("a domain declared twice: %v", err)
	}
	if err := f.SetDomains([]identity.FederatedDomain{good, mod(func(d *identity.FederatedDomain) { d.URL = "http://x/" })}); err == nil {
		t.Error("a bad declaration among good ones was accepted")
	}
	if held(f, btd) != nil {
		t.Error("a refused SetDomains still declared a domain")
	}
}

// TestParseInitialBundle: PEM certificates and SPIFFE bundle documents are
// read; anything else is refused.
func TestParseInitialBundle(t *testing.T) {
	b := tdCA(t, "b.example")
	btd := b.TrustDomain()
	var pemData []byte
	for _, c := range b.Bundle().Bundle.X509Authorities() {
		pemData = append(pemData, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	got, err := identity.ParseInitialBundle(btd, pemData)
	if err != nil || !got.X509Bundle().Equal(b.Bundle().Bundle) {
		t.Fatalf("PEM: %v", err)
	}
	doc, err := b.Bundle().SPIFFE.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err = identity.ParseInitialBundle(btd, doc)
	if err != nil || !got.X509Bundle().Equal(b.Bundle().Bundle) || len(got.JWTAuthorities()) == 0 {
		t.Fatalf("SPIFFE bundle: %v", err)
	}
	for name, data := range map[string]string{
		"empty":     "  \n",
		"garbage":   "not a bundle",
		"bad json":  `{"keys": [`,
		"key block": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
		"bad cert":  "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
		"trailing":  string(pemData) + "junk",
	} {
		if _, err := identity.ParseInitialBundle(btd, []byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestWebRoots: a federation's web roots, inline (webRoots, the
// TrustDomainFederation field) or in a file (webRootsFile), are PEM
// certificates only; anything else, or both at once, is refused.
func TestWebRoots(t *testing.T) {
	dir := t.TempDir()
	certFile, _, _ := webCert(t, dir, "corp")
	rootPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	spec := identity.FederationSpec{TrustDomain: "b.example", BundleEndpointURL: "https://bundle.b.example/", Profile: identity.ProfileHTTPSWeb}
	for _, tc := range []struct {
		name         string
		inline, file string
		want         string // "" for accepted
	}{
		{"inline", string(rootPEM), "", ""},
		{"file", "", "corp.crt", ""},
		{"both", string(rootPEM), "corp.crt", "give webRoots or webRootsFile, not both"},
		{"not PEM", "corp root", "", "no PEM certificate"},
		{"a key", "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n", "", `a PEM block of type "PRIVATE KEY", want CERTIFICATE`},
		{"bad certificate", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "", "certificate 1:"},
		{"trailing text", string(rootPEM) + "and more", "", "text that is not PEM"},
	} {
		s := spec
		s.WebRoots, s.WebRootsFile = tc.inline, tc.file
		d, err := s.Domain(dir)
		if tc.want == "" {
			if err != nil || d.WebRoots == nil {
				t.Errorf("%s: %v, want the roots read", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want ErrConfig with %q", tc.name, err, tc.want)
		}
	}
}
