package kube

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
)

// serveCA serves a test CA on loopback, with att for Kubernetes tokens,
// until the test ends.
func serveCA(t *testing.T, att identity.Attestor) (*identity.CA, net.Listener) {
	t.Helper()
	ca := testutil.NewCA(t, identity.RealClock, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := identity.NewServer(ca, map[string]identity.Attestor{identity.KindK8sSAT: att}, testLogger(t)).GRPCServer()
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return ca, l
}

// TestDeletedPodIdentityEnds: against a real API server, a Pod's SVID
// obtained with its pod-bound token stops renewing once the Pod is deleted:
// over mTLS alone it never renews, and with the token it is refused within
// the API server's token cache (10 s) plus the attestor's review cache.
func TestDeletedPodIdentityEnds(t *testing.T) {
	env := kubetest.Start(t)
	ctx := testContext(t, 2*time.Minute)
	att, _ := newAttestor(t, env.Config, identity.RealClock)
	ca, l := serveCA(t, att)
	fetch := func(svid *x509svid.SVID, cred *cav1.Credential) (*x509svid.SVID, error) {
		var src x509svid.Source
		if svid != nil {
			src = svid
		}
		c, err := identity.Dial(l.Addr().String(), ca.TrustDomain(), ca, src)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, _, err := c.FetchSVID(ctx, cred)
		return s, err
	}
	refused := func(err error, why string) {
		t.Helper()
		if status.Code(errors.Unwrap(err)) != codes.Unauthenticated && status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%s: err = %v, want Unauthenticated", why, err)
		}
	}

	token := env.PodToken(t, "shop", "web", "web-0", DefaultAudience, 0)
	cred := &cav1.Credential{Kind: identity.KindK8sSAT, Token: token}
	svid, err := fetch(nil, cred)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("SVID for %s", svid.ID)
	}
	// While the Pod lives: renewal with the SVID and the token works; the
	// SVID alone (a copied key) is not enough.
	svid, err = fetch(svid, cred)
	if err != nil {
		t.Fatalf("renewal with the token while the Pod exists: %v", err)
	}
	_, err = fetch(svid, nil)
	refused(err, "mTLS-only renewal of a Kubernetes identity")
	if !strings.Contains(err.Error(), "fresh") {
		t.Fatalf("refusal does not say a fresh token is needed: %v", err)
	}

	if err := env.Client.CoreV1().Pods("shop").Delete(ctx, "web-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	_, err = fetch(svid, nil)
	refused(err, "mTLS-only renewal after the Pod was deleted")
	// The bound: the API server's own cache of successful token
	// authentications (10 s) plus the attestor's review cache (10 s), and
	// 5 s of slack for a slow machine.
	bound := 25 * time.Second
	for {
		_, err = fetch(svid, cred)
		if err != nil {
			break
		}
		if time.Since(deleted) > bound {
			t.Fatalf("the deleted Pod's token still renews its SVID %s after the deletion", time.Since(deleted).Round(time.Second))
		}
		time.Sleep(200 * time.Millisecond)
	}
	refused(err, "renewal with the deleted Pod's token")
	t.Logf("the deleted Pod's identity stopped renewing %s after the deletion", time.Since(deleted).Round(100*time.Millisecond))
	// Nor does the token bootstrap a new SVID.
	_, err = fetch(nil, cred)
	refused(err, "bootstrap with the deleted Pod's token")
	// A new Pod of the same name (a StatefulSet's) has a new UID: the old
	// Pod's token stays refused.
	env.EnsurePod(t, "shop", "web", "web-0")
	_, err = fetch(svid, cred)
	refused(err, "the deleted Pod's token once a Pod of the same name exists again")
}

// TestReviewCacheTTLCapped: a review cache long enough to keep a deleted
// Pod's token attesting for minutes is refused.
func TestReviewCacheTTLCapped(t *testing.T) {
	client, err := kubernetes.NewForConfig(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewTokenReviewAttestor(TokenReviewConfig{Client: client.AuthenticationV1(), TrustDomain: testutil.TrustDomain, CacheTTL: 2 * time.Minute})
	if err == nil || !strings.Contains(err.Error(), "deleted Pod") {
		t.Fatalf("cache TTL of 2m: err %v, want a refusal", err)
	}
	a, err := NewTokenReviewAttestor(TokenReviewConfig{Client: client.AuthenticationV1(), TrustDomain: testutil.TrustDomain})
	if err != nil || a.ttl != 10*time.Second {
		t.Fatalf("default cache TTL %v (err %v), want 10s", a.ttl, err)
	}
}

// TestAgentRenewsWithRotatedToken: the agent, as the sidecar runs it, reads
// its projected token file on every renewal. Against a real API server: a
// rotated token renews the Pod's identity; once the Pod is deleted the agent
// cannot renew any more (it keeps the SVID it holds until that expires).
func TestAgentRenewsWithRotatedToken(t *testing.T) {
	env := kubetest.Start(t)
	att, calls := newAttestor(t, env.Config, identity.RealClock)
	ca, l := serveCA(t, att)

	tokenFile := filepath.Join(t.TempDir(), "token")
	writeToken := func() {
		tok := env.PodToken(t, "shop", "api", "api-0", DefaultAudience, 0)
		if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeToken()
	a, err := agent.New(agent.Config{CAAddr: l.Addr().String(), Bundle: ca.Bundle().Bundle,
		Credential: func() (*cav1.Credential, error) {
			b, err := os.ReadFile(tokenFile)
			if err != nil {
				return nil, err
			}
			return &cav1.Credential{Kind: identity.KindK8sSAT, Token: strings.TrimSpace(string(b))}, nil
		},
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Go(t, a.Run)
	serial := func() string {
		s, err := a.GetX509SVID()
		if err != nil {
			return ""
		}
		return s.Certificates[0].SerialNumber.String()
	}
	eventually(t, 10*time.Second, "first SVID", func() error { return a.Ready() })
	first, reviews := serial(), calls.count()

	writeToken() // the kubelet rotated the token
	a.RenewNow()
	eventually(t, 10*time.Second, "renewal with the rotated token", func() error {
		if serial() == first {
			return errors.New("same SVID")
		}
		return nil
	})
	if calls.count() != reviews+1 {
		t.Fatalf("%d TokenReviews for the renewal, want 1 (the rotated token, reviewed)", calls.count()-reviews)
	}

	if err := env.Client.CoreV1().Pods("shop").Delete(testContext(t, time.Minute), "api-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	// Renew until refused (within the API server's and the attestor's
	// caches, 10 s each, plus slack).
	eventually(t, 25*time.Second, "renewal refused after the Pod was deleted", func() error {
		held := serial()
		a.RenewNow()
		time.Sleep(300 * time.Millisecond)
		if a.Degraded() == nil || serial() != held {
			return errors.New("the agent still renews")
		}
		return nil
	})
	t.Logf("the agent's renewals were refused %s after the Pod was deleted: %v", time.Since(deleted).Round(100*time.Millisecond), a.Degraded())
	if !strings.Contains(a.Degraded().Error(), "refused the token") {
		t.Fatalf("agent degraded for another reason: %v", a.Degraded())
	}
}
