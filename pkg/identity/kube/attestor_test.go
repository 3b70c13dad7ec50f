package kube

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

func isTokenReview(r *http.Request) bool {
	return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/tokenreviews")
}

func newAttestor(t *testing.T, cfg *rest.Config, clock identity.Clock) (*TokenReviewAttestor, *requestCounter) {
	t.Helper()
	calls := &requestCounter{match: isTokenReview}
	client, err := kubernetes.NewForConfig(calls.wrap(cfg))
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewTokenReviewAttestor(TokenReviewConfig{
		Client:      client.AuthenticationV1(),
		TrustDomain: testutil.TrustDomain,
		Clock:       clock,
		Logger:      testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, calls
}

// TestTokenReviewAttestor checks the attestor against a real API server:
// only Pod-bound tokens for our audience pass, and give the right ID.
func TestTokenReviewAttestor(t *testing.T) {
	env := kubetest.Start(t)
	ctx := testContext(t, time.Minute)
	clock := testutil.NewFakeClock()
	clock.Set(time.Now())
	a, calls := newAttestor(t, env.Config, clock)

	deletedPodToken := env.PodToken(t, "team-b", "batch", "job-0", DefaultAudience, 0)
	if err := env.Client.CoreV1().Pods("team-b").Delete(ctx, "job-0", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		token   string
		want    string // SPIFFE ID, or
		wantErr string // a part of the error
		noCall  bool   // refused before asking the API server
	}{
		{name: "pod-bound token", token: env.PodToken(t, "team-a", "web", "web-0", DefaultAudience, 0),
			want: "spiffe://cluster.local/ns/team-a/sa/web"},
		{name: "dotted service account", token: env.PodToken(t, "team-a", "api.v2", "api-0", DefaultAudience, 10*time.Minute),
			want: "spiffe://cluster.local/ns/team-a/sa/api.v2"},
		{name: "wrong audience", token: env.PodToken(t, "team-a", "web", "web-0", "vault", 0),
			wantErr: "refused the token"},
		{name: "API server audience", token: env.ServiceAccountToken(t, "team-a", "web", 0),
			wantErr: "refused the token"},
		{name: "token not bound to a pod", token: env.ServiceAccountToken(t, "team-a", "web", 0, DefaultAudience),
			wantErr: "not bound to a Pod"},
		{name: "token of a deleted pod", token: deletedPodToken, wantErr: "refused the token"},
		{name: "forged token", token: jwt(`{"alg":"RS256","kid":"x"}`, `{"iss":"`+kubetest.Issuer+`","sub":"system:serviceaccount:kube-system:admin","aud":["tether-ca"],"exp":9999999999}`),
			wantErr: "refused the token"},
		{name: "not a JWT", token: "hello", wantErr: "not a Kubernetes ServiceAccount token", noCall: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := calls.count()
			id, err := a.Attest(ctx, tt.token)
			if made := calls.count() - before; made != map[bool]int64{true: 0, false: 1}[tt.noCall] {
				t.Errorf("%d TokenReviews made", made)
			}
			if tt.wantErr != "" {
				if !errors.Is(err, identity.ErrUnauthenticated) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Attest = %v, %v; want ErrUnauthenticated containing %q", id, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.String() != tt.want {
				t.Fatalf("id = %s, want %s", id, tt.want)
			}
		})
	}

	t.Run("SVID for the attested ID verifies", func(t *testing.T) {
		id, err := a.Attest(ctx, env.PodToken(t, "team-c", "db", "db-0", DefaultAudience, 0))
		if err != nil {
			t.Fatal(err)
		}
		ca := testutil.NewCA(t, identity.RealClock, nil)
		csr, _ := testutil.NewCSR(t, nil, nil)
		iss, err := ca.Sign(id, csr)
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := x509svid.ParseAndVerify(iss.Chain, ca)
		if err != nil {
			t.Fatalf("SVID does not verify against the CA's bundle: %v", err)
		}
		if got != spiffeid.RequireFromString("spiffe://cluster.local/ns/team-c/sa/db") {
			t.Fatalf("SVID names %s", got)
		}
	})

	t.Run("positive reviews are cached until the TTL", func(t *testing.T) {
		a, calls := newAttestor(t, env.Config, clock)
		token := env.PodToken(t, "team-a", "web", "web-0", DefaultAudience, 0)
		for i := range 3 {
			if _, err := a.Attest(ctx, token); err != nil {
				t.Fatal(err)
			}
			if calls.count() != 1 {
				t.Fatalf("attempt %d: %d TokenReviews, want 1 (cache hit)", i, calls.count())
			}
		}
		clock.Add(DefaultReviewCacheTTL)
		if _, err := a.Attest(ctx, token); err != nil {
			t.Fatal(err)
		}
		if calls.count() != 2 {
			t.Fatalf("%d TokenReviews after the cache TTL, want 2", calls.count())
		}
	})

	t.Run("cache never outlives the token", func(t *testing.T) {
		a, calls := newAttestor(t, env.Config, clock)
		token := env.PodToken(t, "team-a", "web", "web-0", DefaultAudience, 10*time.Minute)
		claims, err := parseToken(token)
		if err != nil || claims.Expiry.IsZero() {
			t.Fatalf("token has no exp: %v", err)
		}
		// 10s before the token expires, by the CA's clock: the API server,
		// on the wall clock, still accepts it, but it may be cached 10s only.
		clock.Set(claims.Expiry.Add(-10 * time.Second))
		if _, err := a.Attest(ctx, token); err != nil {
			t.Fatal(err)
		}
		clock.Add(9 * time.Second)
		if _, err := a.Attest(ctx, token); err != nil || calls.count() != 1 {
			t.Fatalf("before exp: err %v, %d TokenReviews, want a cache hit", err, calls.count())
		}
		clock.Add(time.Second)
		_, _ = a.Attest(ctx, token)
		if calls.count() != 2 {
			t.Fatalf("at exp: %d TokenReviews, want 2 (cache entry expired with the token)", calls.count())
		}
		clock.Set(time.Now())
	})

	t.Run("refusals are not cached", func(t *testing.T) {
		a, calls := newAttestor(t, env.Config, clock)
		token := env.ServiceAccountToken(t, "team-a", "web", 0, DefaultAudience)
		for range 2 {
			if _, err := a.Attest(ctx, token); !errors.Is(err, identity.ErrUnauthenticated) {
				t.Fatalf("err = %v", err)
			}
		}
		if calls.count() != 2 {
			t.Fatalf("%d TokenReviews, want 2", calls.count())
		}
	})
}

// TestTokenReviewAttestorUnavailable checks that the attestor fails closed,
// with a retryable error, when the API server cannot answer.
func TestTokenReviewAttestorUnavailable(t *testing.T) {
	token := jwt(`{"alg":"RS256"}`, `{"exp":9999999999}`)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"ServiceUnavailable","code":503,"message":"etcd is down"}`)
	}))
	defer failing.Close()
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"cannot create tokenreviews"}`)
	}))
	defer forbidden.Close()
	stop := make(chan struct{})
	hanging := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	defer hanging.Close()
	defer close(stop)

	tests := []struct {
		name    string
		host    string
		timeout time.Duration
		wantErr string
	}{
		{name: "connection refused", host: "https://" + closedAddr, wantErr: "connection refused"},
		{name: "503", host: failing.URL, wantErr: "etcd is down"},
		{name: "forbidden", host: forbidden.URL, wantErr: "system:auth-delegator"},
		{name: "timeout", host: hanging.URL, timeout: 300 * time.Millisecond, wantErr: "deadline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &rest.Config{Host: tt.host}
			a, calls := newAttestor(t, cfg, nil)
			ctx := testContext(t, 10*time.Second)
			if tt.timeout > 0 {
				ctx = testContext(t, tt.timeout)
			}
			id, err := a.Attest(ctx, token)
			if !errors.Is(err, identity.ErrUnavailable) || errors.Is(err, identity.ErrUnauthenticated) {
				t.Fatalf("Attest = %v, %v; want ErrUnavailable", id, err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
			}
			if calls.count() == 0 {
				t.Fatal("no TokenReview was attempted")
			}
		})
	}
}

func TestReviewCacheBounded(t *testing.T) {
	c := &reviewCache{max: 3, entries: map[[32]byte]cacheEntry{}}
	now := time.Unix(1000, 0)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")
	for i := range 10 {
		c.put([32]byte{byte(i)}, id, now.Add(time.Minute), now)
		if c.len() > 3 {
			t.Fatalf("after %d puts the cache holds %d entries", i+1, c.len())
		}
	}
	if _, ok := c.get([32]byte{9}, now); !ok {
		t.Fatal("the newest entry was evicted")
	}
	if _, ok := c.get([32]byte{9}, now.Add(time.Minute)); ok {
		t.Fatal("an expired entry was returned")
	}
	// Expired entries go first.
	c = &reviewCache{max: 2, entries: map[[32]byte]cacheEntry{}}
	c.put([32]byte{1}, id, now.Add(time.Second), now)
	c.put([32]byte{2}, id, now.Add(time.Hour), now)
	c.put([32]byte{3}, id, now.Add(time.Hour), now.Add(time.Minute))
	if _, ok := c.get([32]byte{2}, now.Add(time.Minute)); !ok {
		t.Fatal("a live entry was evicted while an expired one was there")
	}
}
