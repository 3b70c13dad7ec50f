package identity_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// fakeUpstream is an organisation's CA: it signs intermediates with its
// own root, which the test may replace, and may be made to wait.
type fakeUpstream struct {
	mu    sync.Mutex
	clock *testutil.FakeClock
	root  *x509.Certificate
	key   crypto.Signer
	gate  chan struct{} // if not nil, SignIntermediate waits for it
	calls int
	wrong bool // sign with a key that is not the root's
	// shorten, if set, caps the lifetime of what it signs, as an issuer
	// may regardless of what was asked for.
	shorten time.Duration
}

func newFakeUpstream(t *testing.T, clock *testutil.FakeClock) *fakeUpstream {
	u := &fakeUpstream{clock: clock}
	u.newRoot(t)
	return u
}

func (u *fakeUpstream) newRoot(t *testing.T) {
	key, _ := identity.NewKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "Corp Root"},
		NotBefore: u.clock.Now().Add(-time.Hour), NotAfter: u.clock.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	u.mu.Lock()
	u.root, u.key = root, key
	u.mu.Unlock()
}

func (u *fakeUpstream) Name() string { return "fake Issuer/corp" }

func (u *fakeUpstream) SignIntermediate(ctx context.Context, csrDER []byte, ttl time.Duration) (*identity.UpstreamResult, error) {
	u.mu.Lock()
	gate := u.gate
	u.calls++
	u.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, err
	}
	if u.shorten > 0 {
		ttl = min(ttl, u.shorten)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: csr.Subject, URIs: csr.URIs,
		NotBefore: u.clock.Now().Add(-time.Minute), NotAfter: u.clock.Now().Add(ttl),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	parent, signer := u.root, u.key
	if u.wrong { // same issuer name, other key: looks right, does not verify
		parent = &x509.Certificate{Subject: u.root.Subject, SubjectKeyId: u.root.SubjectKeyId}
		signer, _ = identity.NewKey()
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, csr.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	return &identity.UpstreamResult{Chain: [][]byte{der}, Roots: [][]byte{u.root.Raw}}, nil
}

func upstreamCA(t *testing.T, clock *testutil.FakeClock, u *fakeUpstream) *identity.CA {
	return testutil.NewCA(t, clock, func(c *identity.Config) {
		c.Upstream, c.AutoRotate = u, true
		c.IntermediateTTL = 30 * time.Hour
	})
}

func TestUpstreamIssuesUnderTheOrganisationsRoot(t *testing.T) {
	clock := testutil.NewFakeClock()
	u := newFakeUpstream(t, clock)
	ca := upstreamCA(t, clock, u)
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, err := ca.Sign(testutil.ID("/x"), csr)
	if err != nil {
		t.Fatal(err)
	}
	// The bundle trusts the CA's own intermediate, which the organisation's
	// root signed; not the root, which signs for others too.
	anchors := ca.Bundle().Bundle.X509Authorities()
	if len(anchors) != 1 || string(anchors[0].Raw) != string(iss.Chain[1]) {
		t.Fatalf("bundle holds %d anchors, want just the CA's upstream-signed intermediate", len(anchors))
	}
	if _, err := anchors[0].Verify(x509.VerifyOptions{Roots: certPool(u.root), CurrentTime: clock.Now()}); err != nil {
		t.Fatalf("the intermediate does not chain to the organisation's root: %v", err)
	}
	checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, testutil.ID("/x"), clock.Now())
	if ca.Status().Generations[0].Upstream != "fake Issuer/corp" {
		t.Error("status does not name the upstream")
	}
}

// TestUpstreamWaitBlocksNoOne: while the upstream takes its time to sign
// a renewal, join tokens and status still work.
func TestUpstreamWaitBlocksNoOne(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	u := newFakeUpstream(t, clock)
	ca := upstreamCA(t, clock, u)
	clock.Add(21 * time.Hour) // renewal due at 1/3 of 30h left
	gate := make(chan struct{})
	u.mu.Lock()
	u.gate = gate
	u.mu.Unlock()
	tickDone := make(chan error, 1)
	go func() { tickDone <- ca.Tick(ctx) }()
	for {
		u.mu.Lock()
		n := u.calls
		u.mu.Unlock()
		if n >= 2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := ca.CreateJoinToken(ctx, testutil.ID("/x"), time.Hour, false)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("CreateJoinToken blocked behind an upstream signing")
	}
	before := ca.Status().Generations[0].IntermediateNotAfter
	close(gate)
	if err := <-tickDone; err != nil {
		t.Fatal(err)
	}
	gens := ca.Status().Generations
	if after := gens[len(gens)-1]; after.State != identity.Prepared || !after.IntermediateNotAfter.After(before) {
		t.Fatalf("intermediate not renewed: %+v", after)
	}
}

// TestUpstreamRootChange: when the organisation changes its root, the new
// root is trusted before anything is signed under it, and the old one stays
// until what it signed has expired.
func TestUpstreamRootChange(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	u := newFakeUpstream(t, clock)
	ca := upstreamCA(t, clock, u)
	old := u.root
	csr, key := testutil.NewCSR(t, nil, nil)
	oldSVID, _ := ca.Sign(testutil.ID("/x"), csr)

	u.newRoot(t)
	clock.Add(21 * time.Hour)
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := states(ca); !equalStates(got, []identity.GenerationState{identity.Active, identity.Prepared}) {
		t.Fatalf("after a root change: %v, want the new chain prepared", got)
	}
	if n := len(ca.Bundle().Bundle.X509Authorities()); n != 2 {
		t.Fatalf("bundle has %d anchors, want the intermediates under the old and the new root", n)
	}
	// Still signing under the old root until activation.
	if iss, _ := ca.Sign(testutil.ID("/x"), csr); !strings.Contains(string(iss.Chain[1]), string(oldSVID.Chain[1])) {
		t.Fatal("signing moved to the new root before it had spread")
	}
	clock.Add(identity.DefaultPropagationDelay)
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := states(ca); !equalStates(got, []identity.GenerationState{identity.Superseded, identity.Active}) {
		t.Fatalf("after the propagation delay: %v", got)
	}
	iss, err := ca.Sign(testutil.ID("/x"), csr)
	if err != nil {
		t.Fatal(err)
	}
	checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, testutil.ID("/x"), clock.Now())
	checkSVID(t, oldSVID.Chain, key, ca.Bundle().Bundle, testutil.ID("/x"), oldSVID.NotAfter.Add(-time.Second))
	clock.Add(identity.DefaultSVIDTTL + identity.DefaultBackdate)
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	anchors := ca.Bundle().Bundle.X509Authorities()
	if len(anchors) != 1 || string(anchors[0].Raw) != string(iss.Chain[1]) {
		t.Fatal("the intermediate under the old upstream root was not retired")
	}
	if _, err := anchors[0].Verify(x509.VerifyOptions{Roots: certPool(u.root), CurrentTime: clock.Now()}); err != nil || u.root.Equal(old) {
		t.Fatalf("the remaining anchor is not under the new upstream root: %v", err)
	}
}

func TestUpstreamBadSignature(t *testing.T) {
	clock := testutil.NewFakeClock()
	u := newFakeUpstream(t, clock)
	u.wrong = true
	store, _ := identity.NewDiskStore(t.TempDir())
	_, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock, Upstream: u, IntermediateTTL: 30 * time.Hour})
	if err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Fatalf("err = %v, want a refusal of an intermediate that does not chain to the upstream root", err)
	}
}
