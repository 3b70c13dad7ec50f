package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestRenewalSendsFreshKubernetesToken: an SVID attested with a Kubernetes
// token is renewed with the token read again from its file, so the kubelet's
// rotated token goes to the CA. The attestor is a stand-in that accepts only
// the file's current token (as TokenReview accepts only a live Pod's; that
// path, with a real API server, is tested in pkg/identity/kube).
func TestRenewalSendsFreshKubernetesToken(t *testing.T) {
	ca := testutil.NewCA(t, identity.RealClock, nil)
	tokenFile := filepath.Join(t.TempDir(), "token")
	write := func(s string) {
		if err := os.WriteFile(tokenFile, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("token-1")
	var mu sync.Mutex
	var seen []string
	current := func() string { b, _ := os.ReadFile(tokenFile); return strings.TrimSpace(string(b)) }
	web := testutil.ID("/ns/shop/sa/web")
	k8s := identity.AttestorFunc(func(_ context.Context, token string) (spiffeid.ID, error) {
		mu.Lock()
		seen = append(seen, token)
		mu.Unlock()
		if token != current() {
			return spiffeid.ID{}, identity.ErrUnauthenticated
		}
		return web, nil
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := identity.NewServer(ca, map[string]identity.Attestor{identity.KindK8sSAT: k8s}, nil).GRPCServer()
	go g.Serve(l)
	t.Cleanup(g.Stop)
	cred := func() (*cav1.Credential, error) {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, err
		}
		return &cav1.Credential{Kind: identity.KindK8sSAT, Token: strings.TrimSpace(string(b))}, nil
	}
	a, _ := newAgent(t, &testCA{ca: ca, addr: l.Addr().String()}, cred)
	waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
	first, _ := a.GetX509SVID()

	write("token-2") // the kubelet rotated the token
	a.RenewNow()
	waitFor(t, "renewal with the rotated token", func() bool {
		s, _ := a.GetX509SVID()
		return s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	mu.Lock()
	got := strings.Join(seen, ",")
	mu.Unlock()
	if got != "token-1,token-2" {
		t.Fatalf("the CA saw tokens %q, want token-1 at bootstrap then token-2 at renewal", got)
	}
}

// TestRenewalRefusedThenReattests: when the CA refuses to renew on the SVID
// alone (its renewal chain is too old), the agent tries again with its
// credential, here a reusable join token, which starts a new chain.
func TestRenewalRefusedThenReattests(t *testing.T) {
	clock := testutil.NewFakeClock()
	clock.Set(time.Now().Add(-20 * time.Hour))
	ca := testutil.NewCA(t, clock, func(c *identity.Config) { c.SVIDTTL = 24 * time.Hour; c.MaxRenewalAge = 2 * time.Hour })
	c := startCA(t, ca, "127.0.0.1:0")
	tok, _, err := ca.CreateJoinToken(context.Background(), testutil.ID("/ns/default/sa/web"), 48*time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	var uses atomic.Int32
	a, _ := newAgent(t, c, func() (*cav1.Credential, error) {
		uses.Add(1)
		return &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}, nil
	})
	waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
	first, _ := a.GetX509SVID()
	clock.Add(3 * time.Hour)
	a.RenewNow()
	waitFor(t, "re-attested SVID", func() bool {
		s, _ := a.GetX509SVID()
		return s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	s, _ := a.GetX509SVID()
	att, ok, err := identity.AttestationOf(s.Certificates[0])
	if !ok || err != nil || !att.At.Equal(clock.Now().Truncate(time.Second)) {
		t.Fatalf("new SVID records %+v (%v, %v), want a fresh attestation at %s", att, ok, err, clock.Now())
	}
	if n := uses.Load(); n != 2 {
		t.Fatalf("credential used %d times, want 2 (bootstrap, then re-attestation after the refusal)", n)
	}
}
