package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

func isKeyFetch(r *http.Request) bool {
	return r.Method == http.MethodGet && r.URL.Path == jwksPath
}

// newPrecheck wraps a counting TokenReviewAttestor in a TokenPrecheck that
// reads the keys as the CA's own ServiceAccount would (RBAC defaults).
func newPrecheck(t *testing.T, env *kubetest.Env, clock identity.Clock) (*TokenPrecheck, *requestCounter, *requestCounter) {
	t.Helper()
	att, reviews := newAttestor(t, env.Config, clock)
	keyFetches := &requestCounter{match: isKeyFetch}
	client, err := kubernetes.NewForConfig(keyFetches.wrap(env.ServiceAccountConfig(t, "tether-system", "tether-ca")))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewTokenPrecheck(TokenPrecheckConfig{
		Next: att, Client: client.Discovery().RESTClient(), Audiences: []string{DefaultAudience},
		Clock: clock, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return p, reviews, keyFetches
}

// clusterKID returns the key ID the API server signs tokens with.
func clusterKID(t *testing.T, env *kubetest.Env) string {
	t.Helper()
	raw, err := env.Client.Discovery().RESTClient().Get().AbsPath(jwksPath).DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ks jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &ks); err != nil || len(ks.Keys) == 0 {
		t.Fatalf("cluster JWKS %s: %v", raw, err)
	}
	return ks.Keys[0].KeyID
}

// forge signs claims with a key of our own under the given key ID.
func forge(t *testing.T, kid string, claims any) string {
	t.Helper()
	var key any
	alg := jose.RS256
	if strings.HasPrefix(kid, "ec-") {
		key, alg = mustECKey(t), jose.ES256
	} else {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := josejwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustECKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestTokenPrecheck: tokens the API server would refuse for their shape,
// signature, times, issuer or audience are refused without a TokenReview;
// tokens it refused once are refused from the negative cache; good tokens
// still pass.
func TestTokenPrecheck(t *testing.T) {
	env := kubetest.Start(t)
	ctx := testContext(t, 2*time.Minute)
	clock := testutil.NewFakeClock()
	clock.Set(time.Now())
	p, reviews, keyFetches := newPrecheck(t, env, clock)
	kid := clusterKID(t, env)
	now := time.Now()
	claims := func(mod func(*josejwt.Claims)) josejwt.Claims {
		c := josejwt.Claims{Issuer: kubetest.Issuer, Subject: "system:serviceaccount:kube-system:admin", Audience: josejwt.Audience{DefaultAudience},
			Expiry: josejwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: josejwt.NewNumericDate(now), NotBefore: josejwt.NewNumericDate(now)}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	deletedPodToken := env.PodToken(t, "team-b", "batch", "job-0", DefaultAudience, 0)
	if err := env.Client.CoreV1().Pods("team-b").Delete(ctx, "job-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	// The API server may accept a deleted Pod's token for up to 10s from
	// its cache of successful authentications; none was made.

	refused := []struct {
		name, token, wantErr string
		before               func() // optional: move the clock
	}{
		{name: "garbage", token: "hello", wantErr: "not a Kubernetes ServiceAccount token"},
		{name: "three garbage parts", token: "a.b.c", wantErr: "not a Kubernetes ServiceAccount token"},
		{name: "alg none", token: jwtNone(t, claims(nil)), wantErr: "not a Kubernetes ServiceAccount token"},
		{name: "forged signature, cluster key ID", token: forge(t, kid, claims(nil)), wantErr: "signature does not verify"},
		{name: "forged ES256, unknown key ID", token: forge(t, "ec-"+kid, claims(nil)), wantErr: "not one of the cluster's"},
		{name: "unknown key ID", token: forge(t, "attacker-key", claims(nil)), wantErr: "not one of the cluster's"},
		{name: "wrong audience", token: env.PodToken(t, "team-a", "web", "web-0", "vault", 0), wantErr: `audience "vault"`},
		{name: "API server audience", token: env.ServiceAccountToken(t, "team-a", "web", 0), wantErr: "not tether-ca"},
		{name: "expired", token: env.PodToken(t, "team-a", "web", "web-0", DefaultAudience, 10*time.Minute), wantErr: "expired at",
			before: func() { clock.Add(12 * time.Minute) }},
		{name: "not yet valid", token: env.PodToken(t, "team-a", "web", "web-0", DefaultAudience, 10*time.Minute), wantErr: "not valid before",
			before: func() { clock.Set(time.Now().Add(-5 * time.Minute)) }},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			defer clock.Set(time.Now())
			if tt.before != nil {
				tt.before()
			}
			before := reviews.count()
			id, err := p.Attest(ctx, tt.token)
			if !errors.Is(err, identity.ErrUnauthenticated) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Attest = %v, %v; want ErrUnauthenticated containing %q", id, err, tt.wantErr)
			}
			if made := reviews.count() - before; made != 0 {
				t.Fatalf("%d TokenReviews made for a token refused locally", made)
			}
		})
	}

	t.Run("good token passes", func(t *testing.T) {
		before := reviews.count()
		id, err := p.Attest(ctx, env.PodToken(t, "team-a", "web", "web-0", DefaultAudience, 0))
		if err != nil || id.String() != "spiffe://cluster.local/ns/team-a/sa/web" {
			t.Fatalf("Attest = %v, %v", id, err)
		}
		if made := reviews.count() - before; made != 1 {
			t.Fatalf("%d TokenReviews, want 1", made)
		}
	})

	for _, tt := range []struct{ name, token, wantErr string }{
		{"deleted pod", deletedPodToken, "refused the token"},
		{"not bound to a pod", env.ServiceAccountToken(t, "team-a", "web", 0, DefaultAudience), "not bound to a Pod"},
	} {
		t.Run("negative cache: "+tt.name, func(t *testing.T) {
			before := reviews.count()
			if _, err := p.Attest(ctx, tt.token); !errors.Is(err, identity.ErrUnauthenticated) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("first Attest: %v, want %q", err, tt.wantErr)
			}
			// 50 more at once: none reaches the API server.
			var wg sync.WaitGroup
			errs := make(chan error, 50)
			for range 50 {
				wg.Add(1)
				go func() { defer wg.Done(); _, err := p.Attest(ctx, tt.token); errs <- err }()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if !errors.Is(err, identity.ErrUnauthenticated) || !strings.Contains(err.Error(), "refused by the Kubernetes API server less than") {
					t.Fatalf("repeat Attest: %v", err)
				}
			}
			if made := reviews.count() - before; made != 1 {
				t.Fatalf("%d TokenReviews for 51 tries of one refused token, want 1", made)
			}
			// After the negative TTL, the API server is asked again.
			clock.Add(DefaultNegativeCacheTTL + time.Second)
			defer clock.Set(time.Now())
			p.Attest(ctx, tt.token)
			if made := reviews.count() - before; made != 2 {
				t.Fatalf("%d TokenReviews after the negative cache expired, want 2", made)
			}
		})
	}

	t.Run("keys unreadable: claims still checked, signatures left to the TokenReview", func(t *testing.T) {
		att, reviews := newAttestor(t, env.Config, clock)
		// A user no RBAC rule grants anything: issuer discovery is 403.
		client, err := kubernetes.NewForConfig(env.UserConfig(t, "nobody"))
		if err != nil {
			t.Fatal(err)
		}
		blind, err := NewTokenPrecheck(TokenPrecheckConfig{Next: att, Client: client.Discovery().RESTClient(), Clock: clock, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := blind.Attest(ctx, env.PodToken(t, "team-a", "web", "web-0", "vault", 0)); err == nil || !strings.Contains(err.Error(), `audience "vault"`) {
			t.Fatalf("wrong audience without keys: %v", err)
		}
		if reviews.count() != 0 {
			t.Fatalf("%d TokenReviews for a wrong-audience token", reviews.count())
		}
		if _, err := blind.Attest(ctx, forge(t, kid, claims(nil))); !errors.Is(err, identity.ErrUnauthenticated) || !strings.Contains(err.Error(), "refused the token") {
			t.Fatalf("forged token without keys: %v, want the API server's refusal", err)
		}
		if reviews.count() != 1 {
			t.Fatalf("%d TokenReviews for a forged token without keys, want 1", reviews.count())
		}
		if id, err := blind.Attest(ctx, env.PodToken(t, "team-a", "web", "web-0", DefaultAudience, 0)); err != nil || id.String() != "spiffe://cluster.local/ns/team-a/sa/web" {
			t.Fatalf("good token without keys: %v, %v", id, err)
		}
	})

	t.Run("unknown key IDs fetch keys at most once per interval", func(t *testing.T) {
		clock.Set(time.Now().Add(time.Hour)) // past the last fetch's interval
		defer clock.Set(time.Now())
		before, reviewsBefore := keyFetches.count(), reviews.count()
		for i := range 100 {
			if _, err := p.Attest(ctx, forge(t, fmt.Sprintf("ec-forged-%d", i), claims(func(c *josejwt.Claims) {
				c.Expiry = josejwt.NewNumericDate(clock.Now().Add(time.Hour))
			}))); err == nil {
				t.Fatal("forged token accepted")
			}
		}
		if n := keyFetches.count() - before; n != 1 {
			t.Fatalf("%d key fetches for 100 forged key IDs within the refresh interval, want 1", n)
		}
		if n := reviews.count() - reviewsBefore; n != 0 {
			t.Fatalf("%d TokenReviews for forged tokens", n)
		}
	})
}

// jwtNone is an unsigned token (alg "none").
func jwtNone(t *testing.T, claims any) string {
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return jwt(`{"alg":"none","typ":"JWT"}`, string(b))
}
