package identity_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// signOther has the upstream's root sign a certificate for someone other
// than tether-ca, as the same corporate issuer would for another cluster or
// any namespace allowed to use the ClusterIssuer. parent and parentKey sign
// instead of the root when set.
func (u *fakeUpstream) signOther(t *testing.T, uri string, isCA bool, pub crypto.PublicKey, parent *x509.Certificate, parentKey crypto.Signer) *x509.Certificate {
	t.Helper()
	u.mu.Lock()
	if parent == nil {
		parent, parentKey = u.root, u.key
	}
	now := u.clock.Now()
	u.mu.Unlock()
	id, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{id},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature}
	if isCA {
		// Exactly what a Tether CA of another cluster asks for.
		tmpl.Subject = pkix.Name{Organization: []string{"Tether"}, CommonName: "Tether intermediate"}
		tmpl.IsCA, tmpl.KeyUsage = true, x509.KeyUsageCertSign|x509.KeyUsageCRLSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// foreignSVIDs are SPIFFE certificates in the mesh's trust domain that the
// upstream signed, but not through tether-ca: a leaf of another Tether CA
// (another cluster on the same corporate PKI, default trust domain) and a
// leaf the upstream signed directly.
func foreignSVIDs(t *testing.T, u *fakeUpstream) map[string]*x509svid.SVID {
	t.Helper()
	otherKey, _ := identity.NewKey()
	otherCA := u.signOther(t, testutil.TrustDomain.IDString(), true, otherKey.Public(), nil, nil)
	viaCAKey, _ := identity.NewKey()
	viaCA := u.signOther(t, testutil.ID("/ns/team-a/sa/web").String(), false, viaCAKey.Public(), otherCA, otherKey)
	directKey, _ := identity.NewKey()
	direct := u.signOther(t, testutil.ID("/ns/default/sa/admin").String(), false, directKey.Public(), nil, nil)
	return map[string]*x509svid.SVID{
		"leaf of another Tether CA under the same upstream": {ID: testutil.ID("/ns/team-a/sa/web"), Certificates: []*x509.Certificate{viaCA, otherCA}, PrivateKey: viaCAKey},
		"leaf the upstream signed directly":                 {ID: testutil.ID("/ns/default/sa/admin"), Certificates: []*x509.Certificate{direct}, PrivateKey: directKey},
	}
}

// realTimeUpstreamCA is an upstream-mode CA on the real clock, since TLS
// and openssl check validity against it.
func realTimeUpstreamCA(t *testing.T) (*identity.CA, *fakeUpstream) {
	clock := testutil.NewFakeClock()
	clock.Set(time.Now())
	u := newFakeUpstream(t, clock)
	ca := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) {
		c.Upstream = u
		c.IntermediateTTL = 30 * time.Hour
	})
	return ca, u
}

func tetherSVID(t *testing.T, ca *identity.CA, path string) *x509svid.SVID {
	t.Helper()
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, err := ca.Sign(testutil.ID(path), csr)
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: iss.ID, PrivateKey: key}
	for _, der := range iss.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		svid.Certificates = append(svid.Certificates, c)
	}
	return svid
}

// TestUpstreamBundleTrustsOnlyTether: in upstream mode the bundle's
// anchors are Tether's own intermediates, so a spiffe:// certificate the
// upstream signed for anyone else verifies with no stock verifier, cannot
// renew at the CA, and cannot connect to a sidecar.
func TestUpstreamBundleTrustsOnlyTether(t *testing.T) {
	ca, u := realTimeUpstreamCA(t)
	anchors := ca.Bundle().Bundle.X509Authorities()
	for _, a := range anchors {
		if a.Equal(u.root) {
			t.Error("the bundle holds the upstream's root: everything the upstream signs is a mesh identity")
		}
	}
	own := tetherSVID(t, ca, "/ns/team-a/sa/web")
	if len(anchors) != 1 || !anchors[0].Equal(own.Certificates[1]) {
		t.Errorf("the bundle holds %d anchors, want exactly the intermediate the upstream signed for tether-ca", len(anchors))
	}
	// Status names what the bundle trusts: the intermediate, not the root.
	if gs := ca.Status().Generations; len(gs) != 1 || gs[0].AnchorFingerprint != identity.Fingerprint(own.Certificates[1].Raw) ||
		!gs[0].AnchorIsIntermediate || gs[0].AnchorFingerprint == gs[0].RootFingerprint {
		t.Errorf("status generations %+v: want the anchor to be the intermediate %s", gs, identity.Fingerprint(own.Certificates[1].Raw))
	}
	foreign := foreignSVIDs(t, u)

	t.Run("go-spiffe verification", func(t *testing.T) {
		if _, _, err := x509svid.Verify(own.Certificates, ca.Bundle().Bundle); err != nil {
			t.Fatalf("Tether's own SVID does not verify: %v", err)
		}
		for name, s := range foreign {
			// The upstream did sign it: it verifies against the upstream's root.
			if _, err := s.Certificates[0].Verify(x509.VerifyOptions{Roots: certPool(u.root), Intermediates: certPool(s.Certificates[1:]...)}); err != nil {
				t.Fatalf("%s: not even the upstream's own: %v", name, err)
			}
			if id, _, err := x509svid.Verify(s.Certificates, ca.Bundle().Bundle); err == nil {
				t.Errorf("%s: accepted as %s by go-spiffe against the bundle", name, id)
			}
			if id, _, err := x509svid.Verify(s.Certificates, ca.Bundle().SPIFFE); err == nil {
				t.Errorf("%s: accepted as %s by go-spiffe against the SPIFFE bundle", name, id)
			}
		}
	})

	t.Run("openssl", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skip("openssl not installed")
		}
		dir := t.TempDir()
		bundle := writePEM(t, dir, "bundle.pem", anchors...)
		verify := func(s *x509svid.SVID, partial bool) error {
			args := []string{"verify", "-CAfile", bundle, "-purpose", "any"}
			if partial {
				args = append(args, "-partial_chain")
			}
			if len(s.Certificates) > 1 {
				args = append(args, "-untrusted", writePEM(t, dir, "chain.pem", s.Certificates[1:]...))
			}
			args = append(args, writePEM(t, dir, "leaf.pem", s.Certificates[0]))
			out, err := exec.Command("openssl", args...).CombinedOutput()
			if err != nil {
				return &opensslError{strings.TrimSpace(string(out))}
			}
			return nil
		}
		if err := verify(own, true); err != nil {
			t.Fatalf("openssl verify -partial_chain refuses Tether's own SVID: %v", err)
		}
		// The trade-off, pinned: a verifier that insists on a
		// self-signed anchor must be told to accept a partial chain.
		if err := verify(own, false); err == nil {
			t.Fatal("openssl verify without -partial_chain accepted an intermediate as anchor; update docs/ca.md")
		}
		for name, s := range foreign {
			if err := verify(s, true); err == nil {
				t.Errorf("%s: accepted by openssl verify -partial_chain against the bundle", name)
			}
		}
	})

	t.Run("CA renewal over mTLS", func(t *testing.T) {
		addr := serve(t, ca, nil)
		ctx := context.Background()
		// Control: Tether's own SVID renews on the same path.
		if _, _, err := dial(t, addr, ca, own).FetchSVID(ctx, nil); err != nil {
			t.Fatalf("Tether's own SVID cannot renew: %v", err)
		}
		for name, s := range foreign {
			svid, _, err := dial(t, addr, ca, s).FetchSVID(ctx, nil)
			if err == nil {
				t.Errorf("%s: renewed into a Tether SVID for %s", name, svid.ID)
				continue
			}
			// Refused at the handshake, before any request is read: the
			// client sees "bad certificate", or a broken connection when
			// the alert loses the race. Why is checked on the server side.
			wantCode(t, err, codes.Unavailable)
			if err := serverHandshake(t, identity.NewServer(ca, nil, nil).TLSConfig(), s, ca); err == nil || !strings.Contains(err.Error(), "signed by unknown authority") {
				t.Errorf("%s: the CA's handshake ended with %v, want a refusal of a certificate from an unknown authority", name, err)
			} else {
				t.Logf("%s: %v", name, err)
			}
		}
	})

	t.Run("sidecar mTLS", func(t *testing.T) {
		// The sidecar's inbound TLS (pkg/proxy) is go-spiffe's
		// MTLSServerConfig with the Workload API bundle as source; the CA
		// is that bundle's origin.
		server := tlsconfig.MTLSServerConfig(tetherSVID(t, ca, "/ns/team-b/sa/db"), ca, tlsconfig.AuthorizeMemberOf(testutil.TrustDomain))
		if err := serverHandshake(t, server, own, ca); err != nil {
			t.Fatalf("a Tether SVID cannot connect to the sidecar: %v", err)
		}
		for name, s := range foreign {
			if err := serverHandshake(t, server, s, ca); err == nil || !strings.Contains(err.Error(), "signed by unknown authority") {
				t.Errorf("%s: the sidecar's handshake ended with %v, want a refusal of a certificate from an unknown authority", name, err)
			} else {
				t.Logf("%s: %v", name, err)
			}
		}
	})
}

// serverHandshake runs one TLS handshake on loopback between server and a
// client presenting svid, and returns the server's result.
func serverHandshake(t *testing.T, server *tls.Config, svid *x509svid.SVID, bundle *identity.CA) error {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	result := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			result <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		result <- c.(*tls.Conn).Handshake()
	}()
	client := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeAny())
	if c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", l.Addr().String(), client); err == nil {
		// TLS 1.3: the server judges the client's certificate after the
		// client's side of the handshake is done.
		c.Close()
	}
	return <-result
}

type opensslError struct{ out string }

func (e *opensslError) Error() string { return e.out }

func certPool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func writePEM(t *testing.T, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUpstreamIntermediateRenewalRollsOver: a renewed upstream intermediate
// is a new trust anchor, so it is published (prepared) a propagation delay
// before it signs, and the old one stays until what it signed has expired.
// At every moment every valid SVID verifies against the bundle peers hold.
func TestUpstreamIntermediateRenewalRollsOver(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	u := newFakeUpstream(t, clock)
	ca := upstreamCA(t, clock, u)
	id := testutil.ID("/ns/default/sa/web")
	type issued struct {
		chain [][]byte
		key   crypto.Signer
		until time.Time
	}
	var all []issued
	sign := func() issued {
		t.Helper()
		csr, key := testutil.NewCSR(t, nil, nil)
		iss, err := ca.Sign(id, csr)
		if err != nil {
			t.Fatal(err)
		}
		s := issued{iss.Chain, key, iss.NotAfter}
		all = append(all, s)
		return s
	}
	// published records when each anchor first appeared in the bundle.
	published := map[string]time.Time{}
	observe := func(when string) {
		t.Helper()
		now := clock.Now()
		for _, a := range ca.Bundle().Bundle.X509Authorities() {
			if a.Equal(u.root) {
				t.Fatalf("%s: the upstream root is in the bundle", when)
			}
			if _, ok := published[string(a.Raw)]; !ok {
				published[string(a.Raw)] = now
			}
		}
		for _, s := range all {
			if now.Before(s.until) {
				checkSVID(t, s.chain, s.key, ca.Bundle().Bundle, id, now)
			}
		}
	}
	first := sign()
	observe("start")
	if n := len(ca.Bundle().Bundle.X509Authorities()); n != 1 {
		t.Fatalf("start: %d anchors", n)
	}

	clock.Add(21 * time.Hour) // renewal due with a third of 30h left
	beforeRenewal := sign()
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := states(ca); !equalStates(got, []identity.GenerationState{identity.Active, identity.Prepared}) {
		t.Fatalf("after the intermediate renewal: %v, want the new intermediate prepared", got)
	}
	if n := len(ca.Bundle().Bundle.X509Authorities()); n != 2 {
		t.Fatalf("after the renewal the bundle has %d anchors, want the old and the new intermediate", n)
	}
	if s := sign(); string(s.chain[1]) != string(first.chain[1]) {
		t.Fatal("the new intermediate signed before it had spread")
	}
	observe("prepared")

	clock.Add(identity.DefaultPropagationDelay)
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := states(ca); !equalStates(got, []identity.GenerationState{identity.Superseded, identity.Active}) {
		t.Fatalf("after the propagation delay: %v", got)
	}
	next := sign()
	if string(next.chain[1]) == string(first.chain[1]) {
		t.Fatal("still signing with the old intermediate after activation")
	}
	if at := published[string(next.chain[1])]; clock.Now().Sub(at) < identity.DefaultPropagationDelay {
		t.Fatalf("the new intermediate signs %v after it was published, want at least %v", clock.Now().Sub(at), identity.DefaultPropagationDelay)
	}
	observe("activated")
	clock.Set(beforeRenewal.until.Add(-time.Second))
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	observe("the last SVID of the old intermediate about to expire")

	retireAfter := ca.Status().Generations[0].RetireAfter
	if retireAfter.Before(beforeRenewal.until) {
		t.Fatalf("the old intermediate is to be retired at %v, before its last SVID expires at %v", retireAfter, beforeRenewal.until)
	}
	clock.Set(retireAfter)
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	observe("retired")
	anchors := ca.Bundle().Bundle.X509Authorities()
	if len(anchors) != 1 || string(anchors[0].Raw) != string(next.chain[1]) {
		t.Fatalf("after retirement the bundle has %d anchors, want only the new intermediate", len(anchors))
	}
	if _, _, err := x509svid.ParseAndVerify(first.chain, ca.Bundle().Bundle); err == nil {
		t.Fatal("an SVID of the retired intermediate still verifies")
	}
}

// TestUpstreamPropagationDelayMustFitTheIntermediate: a new intermediate
// is published a propagation delay before it signs and renewed with a
// third of its life left, so the delay must fit in that third.
func TestUpstreamPropagationDelayMustFitTheIntermediate(t *testing.T) {
	clock := testutil.NewFakeClock()
	u := newFakeUpstream(t, clock)
	store, _ := identity.NewDiskStore(t.TempDir())
	_, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock,
		Upstream: u, IntermediateTTL: 3 * time.Hour, PropagationDelay: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "propagation delay") {
		t.Fatalf("err = %v, want a refusal of a propagation delay that does not fit a third of the intermediate's life", err)
	}
	// The upstream may shorten what was asked for: checked on what it returns.
	u.shorten = 2 * time.Hour
	_, err = identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock,
		Upstream: u, IntermediateTTL: 30 * time.Hour, PropagationDelay: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "valid for only") {
		t.Fatalf("err = %v, want a refusal of an intermediate too short to be published before it signs", err)
	}
}

// TestUpstreamAnchorsRepublishedOnUpgrade: a state written while the bundle
// trusted the upstream's roots gets a new bundle sequence when a CA that
// trusts only Tether's intermediates loads it, so that no two bundles with
// one sequence differ (clients skip a sequence they already have).
func TestUpstreamAnchorsRepublishedOnUpgrade(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	u := newFakeUpstream(t, clock)
	dir := t.TempDir()
	store, err := identity.NewDiskStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock, Upstream: u, IntermediateTTL: 30 * time.Hour}
	if _, err := identity.NewCA(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// Make it look written by the previous version.
	st, rev, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.UpstreamAnchors != identity.AnchorsIntermediates {
		t.Fatalf("a new upstream state has UpstreamAnchors %q", st.UpstreamAnchors)
	}
	st.UpstreamAnchors = ""
	if _, err := store.Save(ctx, st, rev); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := ca.Bundle().Sequence; got != st.BundleSequence+1 {
		t.Fatalf("bundle sequence %d after the upgrade, want %d", got, st.BundleSequence+1)
	}
	for _, a := range ca.Bundle().Bundle.X509Authorities() {
		if a.Equal(u.root) {
			t.Fatal("the upstream root is still in the bundle after the upgrade")
		}
	}
	again, _, err := store.Load(ctx)
	if err != nil || again.UpstreamAnchors != identity.AnchorsIntermediates {
		t.Fatalf("stored state after the upgrade: %v, %v", again.UpstreamAnchors, err)
	}
	// Once only.
	ca, err = identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := ca.Bundle().Sequence; got != st.BundleSequence+1 {
		t.Fatalf("bundle sequence %d on the next start, want it unchanged at %d", got, st.BundleSequence+1)
	}
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ca.Bundle().Sequence; got != st.BundleSequence+1 {
		t.Fatalf("bundle sequence %d after a tick, want it unchanged at %d", got, st.BundleSequence+1)
	}
	// During a rolling upgrade a replica of the previous version writes the
	// state (with its root-based bundle at the next sequence) and drops the
	// field: the next tick publishes the intermediates under a new sequence.
	again.UpstreamAnchors = ""
	again.BundleSequence++
	_, rev, _ = store.Load(ctx)
	if _, err := store.Save(ctx, again, rev); err != nil {
		t.Fatal(err)
	}
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ca.Bundle().Sequence; got != again.BundleSequence+1 {
		t.Fatalf("bundle sequence %d after a previous-version replica wrote %d, want %d", got, again.BundleSequence, again.BundleSequence+1)
	}
}

// TestUpstreamLeakedIntermediateCanBeEvicted: since the anchor is the
// intermediate, a manual rotation removes a leaked one from the mesh; an
// SVID its key signs after retirement verifies nowhere.
func TestUpstreamLeakedIntermediateCanBeEvicted(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	u := newFakeUpstream(t, clock)
	ca := upstreamCA(t, clock, u)
	leaked := tetherSVID(t, ca, "/ns/default/sa/web")
	for _, step := range []identity.Step{identity.StepPrepare, identity.StepActivate, identity.StepRetire} {
		if err := ca.Rotate(ctx, step, false); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		switch step {
		case identity.StepPrepare:
			clock.Add(identity.DefaultPropagationDelay)
		case identity.StepActivate:
			clock.Add(identity.DefaultSVIDTTL + identity.DefaultBackdate)
		}
	}
	for _, a := range ca.Bundle().Bundle.X509Authorities() {
		if a.Equal(leaked.Certificates[1]) {
			t.Fatal("the leaked intermediate is still trusted after prepare, activate, retire")
		}
	}
	// An SVID signed with the leaked key is refused, even while valid.
	if _, _, err := x509svid.Verify(leaked.Certificates, ca.Bundle().Bundle, x509svid.WithTime(leaked.Certificates[0].NotBefore.Add(time.Second))); err == nil {
		t.Fatal("an SVID of the evicted intermediate still verifies")
	}
	if _, _, err := x509svid.Verify(tetherSVID(t, ca, "/ns/default/sa/web").Certificates, ca.Bundle().Bundle, x509svid.WithTime(clock.Now())); err != nil {
		t.Fatalf("the new intermediate's SVID: %v", err)
	}
}

// TestUpstreamUpgradeAfterInPlaceRenewal: the previous version renewed an
// upstream intermediate in place, dropping the old one. If it did so less
// than an SVID lifetime before the upgrade, the upstream's roots stay in
// the bundle until the old intermediate's SVIDs have expired, so that no
// workload loses its identity, and then leave it.
func TestUpstreamUpgradeAfterInPlaceRenewal(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	u := newFakeUpstream(t, clock)
	store, err := identity.NewDiskStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock, Upstream: u, IntermediateTTL: 30 * time.Hour}
	ca, err := identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	clock.Add(21 * time.Hour)
	id := testutil.ID("/ns/default/sa/web")
	csr, key := testutil.NewCSR(t, nil, nil)
	old, err := ca.Sign(id, csr)
	if err != nil {
		t.Fatal(err)
	}
	// What the previous version did at renewal: a new intermediate in the
	// same generation, the old one gone; and no UpstreamAnchors.
	clock.Add(10 * time.Minute)
	interKey, _ := identity.NewKey()
	interCSR, _ := testutil.NewCSR(t, interKey, &x509.CertificateRequest{URIs: []*url.URL{testutil.TrustDomain.ID().URL()}})
	res, err := u.SignIntermediate(ctx, interCSR, 30*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	st, rev, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := x509.MarshalPKCS8PrivateKey(interKey)
	st.Generations[0].Chain, st.Generations[0].ChainKey = res.Chain, pk
	st.UpstreamAnchors = ""
	if _, err := store.Save(ctx, st, rev); err != nil {
		t.Fatal(err)
	}

	ca, err = identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	seq := ca.Bundle().Sequence
	checkSVID(t, old.Chain, key, ca.Bundle().Bundle, id, clock.Now())
	clock.Set(old.NotAfter.Add(-time.Second))
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	checkSVID(t, old.Chain, key, ca.Bundle().Bundle, id, clock.Now())
	st, _, err = store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.UpstreamRootsUntil.Before(old.NotAfter) || st.UpstreamRootsUntil.After(old.NotAfter.Add(time.Hour)) {
		t.Fatalf("the upstream roots are kept until %v; the last SVID of the replaced intermediate expires at %v", st.UpstreamRootsUntil, old.NotAfter)
	}
	clock.Set(st.UpstreamRootsUntil)
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range ca.Bundle().Bundle.X509Authorities() {
		if a.Equal(u.root) {
			t.Fatal("the upstream root is still trusted after the last SVID of the replaced intermediate expired")
		}
	}
	if ca.Bundle().Sequence != seq+1 {
		t.Fatalf("bundle sequence %d after the roots left, want %d", ca.Bundle().Sequence, seq+1)
	}
	if n := len(ca.Bundle().Bundle.X509Authorities()); n != 1 {
		t.Fatalf("%d anchors, want the intermediate only", n)
	}
}
