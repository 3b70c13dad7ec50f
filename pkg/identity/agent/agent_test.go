package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

type testCA struct {
	ca   *identity.CA
	addr string
	stop func()
}

// startCA serves a real-clock test CA on addr ("127.0.0.1:0" for any port).
func startCA(t *testing.T, ca *identity.CA, addr string) *testCA {
	t.Helper()
	if ca == nil {
		ca = testutil.NewCA(t, identity.RealClock, nil)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	g := identity.NewServer(ca, map[string]identity.Attestor{identity.KindJoinToken: ca.JoinTokens()}, nil).GRPCServer()
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return &testCA{ca: ca, addr: l.Addr().String(), stop: g.Stop}
}

func tokenCred(t *testing.T, ca *identity.CA, path string, uses *atomic.Int32) func() (*cav1.Credential, error) {
	tok, _, err := ca.CreateJoinToken(context.Background(), testutil.ID(path), time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	return func() (*cav1.Credential, error) {
		if uses != nil {
			uses.Add(1)
		}
		return &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}, nil
	}
}

func newAgent(t *testing.T, c *testCA, cred func() (*cav1.Credential, error)) (*Agent, context.CancelFunc) {
	t.Helper()
	a, err := New(Config{CAAddr: c.addr, Bundle: c.ca.Bundle().Bundle, Credential: cred, MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a, cancel
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, what, 10*time.Second, cond)
}

func TestBootstrapRenewAndBundle(t *testing.T) {
	c := startCA(t, nil, "127.0.0.1:0")
	var uses atomic.Int32
	a, _ := newAgent(t, c, tokenCred(t, c.ca, "/ns/default/sa/web", &uses))
	waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
	first, _ := a.GetX509SVID()
	if first.ID != testutil.ID("/ns/default/sa/web") {
		t.Fatalf("SVID for %s", first.ID)
	}
	if _, _, err := x509svid.Verify(first.Certificates, a); err != nil {
		t.Fatalf("SVID does not verify against the agent's bundle: %v", err)
	}

	changed := a.Changed()
	a.RenewNow()
	waitFor(t, "renewal", func() bool {
		s, _ := a.GetX509SVID()
		return s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	<-changed
	if n := uses.Load(); n != 1 {
		t.Fatalf("bootstrap credential used %d times; renewal must go over mTLS", n)
	}

	// Bundle changes arrive over WatchBundle.
	if err := c.ca.Rotate(context.Background(), identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "bundle with two roots", func() bool { return len(a.Bundle().X509Authorities()) == 2 })
	if len(a.Bundle().JWTAuthorities()) != 2 {
		t.Fatalf("bundle has %d JWT keys after prepare, want 2", len(a.Bundle().JWTAuthorities()))
	}
}

func TestCADownAtStartThenUp(t *testing.T) {
	ca := testutil.NewCA(t, identity.RealClock, nil)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close() // nothing listens yet
	a, _ := newAgent(t, &testCA{ca: ca, addr: addr}, tokenCred(t, ca, "/x", nil))
	time.Sleep(150 * time.Millisecond)
	if err := a.Ready(); !errors.Is(err, ErrNoSVID) {
		t.Fatalf("Ready with the CA down = %v, want ErrNoSVID", err)
	}
	startCA(t, ca, addr)
	waitFor(t, "SVID once the CA is up", func() bool { return a.Ready() == nil })
}

func TestKeepsServingWhileCAIsDown(t *testing.T) {
	c := startCA(t, nil, "127.0.0.1:0")
	a, _ := newAgent(t, c, tokenCred(t, c.ca, "/x", nil))
	waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
	before, _ := a.GetX509SVID()
	c.stop()
	a.RenewNow()
	time.Sleep(200 * time.Millisecond)
	after, err := a.GetX509SVID()
	if err != nil || a.Ready() != nil || after != before {
		t.Fatalf("lost the cached SVID while the CA is down: %v", err)
	}
}

func TestBadBootstrapCredentialIsRetried(t *testing.T) {
	c := startCA(t, nil, "127.0.0.1:0")
	var calls atomic.Int32
	a, _ := newAgent(t, c, func() (*cav1.Credential, error) {
		calls.Add(1)
		return &cav1.Credential{Kind: identity.KindJoinToken, Token: "tjt_bogus"}, nil
	})
	waitFor(t, "several attempts", func() bool { return calls.Load() >= 3 })
	if a.Ready() == nil {
		t.Fatal("ready with a bogus credential")
	}
}

func TestNextRenewalIsHalfLifeWithJitter(t *testing.T) {
	c := startCA(t, nil, "127.0.0.1:0")
	a, err := New(Config{CAAddr: c.addr, Bundle: c.ca.Bundle().Bundle, Credential: func() (*cav1.Credential, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, _ := c.ca.Sign(testutil.ID("/x"), csr)
	leaf, err := iss.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: iss.ID, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	lo, hi := leaf.NotBefore.Add(life*4/10), leaf.NotBefore.Add(life*6/10)
	seen := map[time.Time]bool{}
	for range 200 {
		at := a.nextRenewal(svid)
		if at.Before(lo) || at.After(hi) {
			t.Fatalf("renewal at %s, want within [%s, %s]", at, lo, hi)
		}
		seen[at] = true
	}
	if len(seen) < 10 {
		t.Fatalf("only %d distinct renewal times in 200 draws: no jitter", len(seen))
	}
}

func TestFetchJWTSVID(t *testing.T) {
	c := startCA(t, nil, "127.0.0.1:0")
	a, _ := newAgent(t, c, tokenCred(t, c.ca, "/ns/default/sa/web", nil))
	waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
	j, err := a.FetchJWTSVID(context.Background(), []string{"db"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(j.Marshal(), c.ca.Bundle().SPIFFE, []string{"db"}); err != nil {
		t.Fatal(err)
	}
	again, _ := a.FetchJWTSVID(context.Background(), []string{"db"})
	if again != j {
		t.Error("second fetch for the same audience did not reuse the cached JWT-SVID")
	}
	if _, err := a.FetchJWTSVID(context.Background(), nil); err == nil {
		t.Error("JWT-SVID without audience")
	}
}

// TestJWTCacheKeepsAudiencesApart: audiences ["a b"] and ["a", "b"] are
// different requests; the cache must not answer one with the other's
// token (whose aud claim a verifier for "a" would accept or refuse wrongly).
func TestJWTCacheKeepsAudiencesApart(t *testing.T) {
	c := startCA(t, nil, "127.0.0.1:0")
	a, _ := newAgent(t, c, tokenCred(t, c.ca, "/ns/default/sa/web", nil))
	waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
	for _, pair := range [][2][]string{
		{{"a b"}, {"a", "b"}},
		{{"a", "b"}, {"a b"}},
		{{"a,b"}, {"a", "b"}},
		{{"b", "a"}, {"a,b"}},
	} {
		first, err := a.FetchJWTSVID(context.Background(), pair[0])
		if err != nil {
			t.Fatal(err)
		}
		second, err := a.FetchJWTSVID(context.Background(), pair[1])
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(first.Audience, pair[0]) {
			t.Errorf("audience %q: token for %q", pair[0], first.Audience)
		}
		if second == first || !slices.Equal(second.Audience, pair[1]) {
			t.Errorf("audience %q answered from the cache entry of %q: token for %q", pair[1], pair[0], second.Audience)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	c := startCA(t, nil, "127.0.0.1:0")
	cred := func() (*cav1.Credential, error) { return nil, nil }
	for name, cfg := range map[string]Config{
		"no CA":         {Bundle: c.ca.Bundle().Bundle, Credential: cred},
		"no bundle":     {CAAddr: "x:1", Credential: cred},
		"no credential": {CAAddr: "x:1", Bundle: c.ca.Bundle().Bundle},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}
