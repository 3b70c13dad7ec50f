package identity_test

import (
	"context"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// rootsOf is the DER of ca's current roots.
func rootsOf(ca *identity.CA) [][]byte {
	var out [][]byte
	for _, c := range ca.Bundle().Bundle.X509Authorities() {
		out = append(out, c.Raw)
	}
	return out
}

// TestFederatedBundlesFromMessage: what a sidecar takes from WatchBundle's
// federated_bundles. Every entry that cannot be a foreign domain's bundle is
// left out with the reason (never trusted), and the good ones are kept.
func TestFederatedBundlesFromMessage(t *testing.T) {
	caB := tdCA(t, "b.example")
	keyDER, err := x509.MarshalPKIXPublicKey(caB.Bundle().Bundle.X509Authorities()[0].PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	good := &cav1.FederatedBundle{TrustDomain: "b.example", Sequence: 7, X509Authorities: rootsOf(caB),
		JwtAuthorities: []*cav1.JWTAuthority{{KeyId: "k1", PublicKey: keyDER}}}
	bad := map[string]*cav1.FederatedBundle{
		"bad trust domain":          {TrustDomain: "B EXAMPLE", X509Authorities: rootsOf(caB)},
		"local trust domain":        {TrustDomain: "cluster.local", X509Authorities: rootsOf(caB)},
		"sent twice":                {TrustDomain: "b.example", X509Authorities: rootsOf(caB)},
		"no X.509 authorities":      {TrustDomain: "c.example"},
		"bad certificate":           {TrustDomain: "d.example", X509Authorities: [][]byte{[]byte("not DER")}},
		"of trust domain b.example": {TrustDomain: "e.example", X509Authorities: rootsOf(caB)},
		`bad JWT key "k2"`:          {TrustDomain: "f.example", X509Authorities: rootsOf(tdCA(t, "f.example")), JwtAuthorities: []*cav1.JWTAuthority{{KeyId: "k2", PublicKey: []byte("junk")}}},
	}
	for want, m := range bad {
		in := []*cav1.FederatedBundle{good, m}
		got, refused := identity.FederatedBundlesFromMessage(testutil.TrustDomain, in)
		if len(got) != 1 || got[0].TrustDomain().Name() != "b.example" {
			t.Errorf("%s: kept %d bundles, want b.example's only", want, len(got))
		}
		if len(refused) != 1 || !strings.Contains(refused[0].Error(), want) {
			t.Errorf("%s: refused %v", want, refused)
		}
	}
	got, refused := identity.FederatedBundlesFromMessage(testutil.TrustDomain, []*cav1.FederatedBundle{good})
	if len(refused) != 0 || len(got) != 1 {
		t.Fatalf("good entry: kept %d, refused %v", len(got), refused)
	}
	if seq, _ := got[0].SequenceNumber(); seq != 7 || !got[0].X509Bundle().Equal(caB.Bundle().Bundle) || len(got[0].JWTAuthorities()) != 1 {
		t.Fatalf("good entry parsed as sequence %d, %d roots, %d JWT keys", seq, len(got[0].X509Authorities()), len(got[0].JWTAuthorities()))
	}
}

// TestWatchBundleSendsFederatedSet: WatchBundle carries the federated set
// held (sorted), sends a new message when only the set changes (the local
// sequence unchanged), and one without a domain once it is removed. The
// callback of the older WatchBundle API keeps getting the local bundle.
func TestWatchBundleSendsFederatedSet(t *testing.T) {
	caA := realCA(t)
	fed := identity.NewFederator(identity.FederatorConfig{TrustDomain: caA.TrustDomain(), Local: caA})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := identity.NewServer(caA, nil, nil)
	srv.SetFederatedBundles(fed.Bundles())
	g := srv.GRPCServer()
	go g.Serve(l)
	t.Cleanup(g.Stop)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sets := make(chan identity.BundleSet, 16)
	go dial(t, l.Addr().String(), caA, nil).WatchBundleSet(ctx, func(s identity.BundleSet) { sets <- s })
	locals := make(chan *spiffebundle.Bundle, 16)
	go dial(t, l.Addr().String(), caA, nil).WatchBundle(ctx, func(b *spiffebundle.Bundle) { locals <- b })
	next := func() identity.BundleSet {
		t.Helper()
		select {
		case s := <-sets:
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("no WatchBundle message")
		}
		return identity.BundleSet{}
	}
	domains := func(s identity.BundleSet) string {
		var names []string
		for _, b := range s.Federated {
			names = append(names, b.TrustDomain().Name())
		}
		return strings.Join(names, ",")
	}
	if s := next(); domains(s) != "" || len(s.Refused) != 0 {
		t.Fatalf("first message federates %q (refused %v), want none", domains(s), s.Refused)
	}
	seq := caA.Bundle().Sequence

	// Initial bundles are trusted at once; the federator is not running,
	// so no fetch replaces them.
	var decl []identity.FederatedDomain
	for _, td := range []string{"c.example", "b.example"} {
		ca := tdCA(t, td)
		d := spiffeid.RequireTrustDomainFromString(td)
		decl = append(decl, identity.FederatedDomain{TrustDomain: d, URL: "https://127.0.0.1:1", Profile: identity.ProfileHTTPSSPIFFE,
			EndpointID: identity.BundleEndpointID(d), Initial: ca.Bundle().SPIFFE})
	}
	if err := fed.SetDomains(decl); err != nil {
		t.Fatal(err)
	}
	var s identity.BundleSet
	for s = next(); domains(s) != "b.example,c.example"; s = next() {
	}
	if got, _ := s.Local.SequenceNumber(); got != seq {
		t.Fatalf("the local sequence moved from %d to %d with a federation change", seq, got)
	}
	if !s.Federated[0].X509Bundle().Equal(decl[1].Initial.X509Bundle()) {
		t.Fatal("b.example's roots differ from the ones declared")
	}
	if err := fed.SetDomains(decl[:1]); err != nil {
		t.Fatal(err)
	}
	for s = next(); domains(s) != "c.example"; s = next() {
	}
	select {
	case b := <-locals:
		if b.TrustDomain() != caA.TrustDomain() {
			t.Fatalf("WatchBundle gave %s's bundle", b.TrustDomain())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the WatchBundle callback got nothing")
	}
}
