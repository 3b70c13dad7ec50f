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

	"github.com/prometheus/client_golang/prometheus"
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
	return a, testutil.Go(t, a.Run)
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
	seen := map[time.Time]bool{}
	for range 200 {
		before := time.Now()
		at := a.nextRenewal(svid, 0)
		after := time.Now()
		// 0.5 ± 0.1 of the life left when received (not of NotAfter-NotBefore).
		lo := before.Add(leaf.NotAfter.Sub(before) * 4 / 10)
		hi := after.Add(leaf.NotAfter.Sub(after) * 6 / 10)
		if at.Before(lo) || at.After(hi) {
			t.Fatalf("renewal at %s, want within [%s, %s]", at, lo, hi)
		}
		seen[at] = true
	}
	if len(seen) < 10 {
		t.Fatalf("only %d distinct renewal times in 200 draws: no jitter", len(seen))
	}
}

// TestNextRenewalFloorAndBackoff: an SVID cut short by the CA is renewed no
// sooner than MinRenewInterval, and renewals that did not extend the SVID
// back off exponentially (with jitter) but still try once before it expires.
func TestNextRenewalFloorAndBackoff(t *testing.T) {
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, func(c *identity.Config) { c.IntermediateTTL, c.SVIDTTL = 2*time.Hour, time.Hour })
	sign := func(left time.Duration) *x509svid.SVID {
		t.Helper()
		inter := ca.Status().Generations[0].IntermediateNotAfter
		clock.Set(inter.Add(-left))
		csr, key := testutil.NewCSR(t, nil, nil)
		iss, err := ca.Sign(testutil.ID("/x"), csr)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := iss.Leaf()
		if got := leaf.NotAfter.Sub(clock.Now()); got != left {
			t.Fatalf("SVID has %s left, want %s (clamped to the intermediate)", got, left)
		}
		return &x509svid.SVID{ID: iss.ID, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}
	}
	newAgent := func(floor time.Duration) *Agent {
		a, err := New(Config{CAAddr: "127.0.0.1:1", Bundle: ca.Bundle().Bundle, Credential: func() (*cav1.Credential, error) { return nil, nil },
			MinRenewInterval: floor, MaxRenewBackoff: time.Hour, Clock: clock})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	check := func(what string, a *Agent, svid *x509svid.SVID, stalls int, lo, hi time.Duration) {
		t.Helper()
		seen := map[time.Duration]bool{}
		for range 200 {
			wait := a.nextRenewal(svid, stalls).Sub(clock.Now())
			if wait < lo || wait > hi {
				t.Fatalf("%s: renewal in %s, want within [%s, %s]", what, wait, lo, hi)
			}
			seen[wait] = true
		}
		if hi > lo && len(seen) < 10 {
			t.Fatalf("%s: only %d distinct waits in 200 draws: no jitter", what, len(seen))
		}
	}
	// Default floor: an SVID with 5s left (before: renewed at once, since
	// half of its backdated life was already past) waits 30s.
	check("5s left, default floor", newAgent(0), sign(5*time.Second), 0, DefaultMinRenewInterval, DefaultMinRenewInterval)
	a := newAgent(time.Second)
	// 6 renewals without progress: 1s<<6 = 64s, jittered to [32s, 64s];
	// the SVID has 40s left, so a draw past it becomes 36s (0.9 of it).
	// Without the backoff it would be 0.5±0.1 of 40s, 16s to 24s.
	check("40s left, 6 stalls", a, sign(40*time.Second), 6, 32*time.Second, 40*time.Second)
	// A long SVID is still renewed at half its life, stalls or not.
	check("50m left, 3 stalls", a, sign(50*time.Minute), 3, 20*time.Minute, 30*time.Minute)
	// Whatever the backoff, one try before the SVID ends: at 0.9 of 3s.
	check("3s left, 20 stalls", a, sign(3*time.Second), 20, 2700*time.Millisecond, 2700*time.Millisecond)
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

// shortIntermediateCA returns a CA whose signing intermediate expires left
// from now (wall time), together with its root, so nothing the CA does
// can extend it: every SVID it issues is clamped to that end.
func shortIntermediateCA(t *testing.T, left time.Duration) *identity.CA {
	t.Helper()
	const ttl = 2 * time.Minute
	clock := testutil.NewOffsetClock(left - ttl)
	ca := testutil.NewCA(t, clock, func(c *identity.Config) {
		c.RootTTL, c.IntermediateTTL, c.SVIDTTL = ttl, ttl, time.Minute
	})
	clock.Set(0)
	// The CA's own serving SVID was issued "in the past": renew it now.
	if err := ca.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	return ca
}

// renewals is how many SVIDs the agent's renewals obtained.
func renewals(reg *prometheus.Registry) int {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "tether_sidecar_svid_fetches_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["kind"] == "renew" && labels["result"] == "ok" {
				return int(m.GetCounter().GetValue())
			}
		}
	}
	return 0
}

// TestNoRenewalStormNearIntermediateExpiry: the CA's intermediate (and
// root: the root was not rotated in time) expires in 4s, so every SVID is clamped to it. Before the fix
// each agent renewed as fast as the CA answered (hundreds of SVIDs a second,
// as the issue saw: 1,725 renewals by one sidecar); now an agent never
// renews sooner than MinRenewInterval after the last SVID, so two agents get
// at most a handful over the window.
func TestNoRenewalStormNearIntermediateExpiry(t *testing.T) {
	const left = 4 * time.Second
	ca := shortIntermediateCA(t, left)
	c := startCA(t, ca, "127.0.0.1:0")
	var regs []*prometheus.Registry
	for _, path := range []string{"/ns/default/sa/web", "/ns/default/sa/db"} {
		reg := prometheus.NewRegistry()
		a, err := New(Config{CAAddr: c.addr, Bundle: ca.Bundle().Bundle, Credential: tokenCred(t, ca, path, nil),
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		testutil.Go(t, a.Run)
		waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
		regs = append(regs, reg)
	}
	time.Sleep(left + time.Second) // the whole window, and past the intermediate's end
	for i, reg := range regs {
		n := renewals(reg)
		t.Logf("agent %d: %d renewals in the last %s of the intermediate", i, n, left)
		// MinRenewInterval (default 30s) is longer than the window: the
		// SVID from the bootstrap is never renewed before it ends.
		if n > 0 {
			t.Errorf("agent %d renewed %d times in %s: a renewal storm", i, n, left+time.Second)
		}
	}
}

// TestRenewalFloorPacesRenewalsOfShortSVIDs: with a short floor the agent
// does keep renewing an SVID clamped to an intermediate that ends in 4s (in
// case the CA renews it), but at most once per MinRenewInterval.
func TestRenewalFloorPacesRenewalsOfShortSVIDs(t *testing.T) {
	const left, floor = 4 * time.Second, 500 * time.Millisecond
	ca := shortIntermediateCA(t, left)
	c := startCA(t, ca, "127.0.0.1:0")
	reg := prometheus.NewRegistry()
	a, err := New(Config{CAAddr: c.addr, Bundle: ca.Bundle().Bundle, Credential: tokenCred(t, ca, "/ns/default/sa/web", nil),
		MinRenewInterval: floor, MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Go(t, a.Run)
	waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
	time.Sleep(left + time.Second)
	n := renewals(reg)
	t.Logf("%d renewals in the last %s of the intermediate, floor %s", n, left, floor)
	if n < 1 || n > int(left/floor) {
		t.Errorf("%d renewals in %s with a %s floor, want 1 to %d", n, left, floor, left/floor)
	}
}
