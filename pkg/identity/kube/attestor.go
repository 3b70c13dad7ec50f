package kube

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"

	"github.com/tether-mesh/tether/pkg/identity"
)

// Extra fields of a TokenReview's user naming the Pod a token is bound to.
const (
	ExtraPodName = "authentication.kubernetes.io/pod-name"
	ExtraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// serviceAccountPrefix starts the username of every ServiceAccount.
const serviceAccountPrefix = "system:serviceaccount:"

// Cache defaults and limits of TokenReviewConfig. A cached review is what
// lets a deleted Pod's token keep attesting after the deletion, so its
// lifetime is kept short: DefaultReviewCacheTTL matches the API server's
// own cache of successful token authentications (10 s), and no setting may
// exceed MaxReviewCacheTTL.
const (
	DefaultReviewCacheTTL  = 10 * time.Second
	MaxReviewCacheTTL      = time.Minute
	DefaultReviewCacheSize = 4096
)

// TokenReviewConfig configures a TokenReviewAttestor. Zero values take the
// defaults.
type TokenReviewConfig struct {
	// Client reviews tokens: kubernetes.Interface.AuthenticationV1() fits.
	// The CA's ServiceAccount needs "create" on tokenreviews, which the
	// ClusterRole system:auth-delegator grants.
	Client authenticationv1client.TokenReviewsGetter
	// TrustDomain is the trust domain of the SPIFFE IDs returned.
	TrustDomain spiffeid.TrustDomain
	// Audiences the token must be for (default ["tether-ca"]).
	Audiences []string
	// CacheTTL caps how long a positive review is reused (default 10s, at
	// most MaxReviewCacheTTL; it is never reused past the token's expiry).
	// Negative disables the cache.
	CacheTTL time.Duration
	// CacheSize bounds the number of cached reviews (default 4096).
	CacheSize int
	Clock     identity.Clock
	Logger    *slog.Logger
}

// TokenReviewAttestor attests a sidecar by the projected ServiceAccount
// token it presents (identity.KindK8sSAT). The token must be accepted by the
// Kubernetes TokenReview API for one of the configured audiences and be
// bound to a Pod; the identity is spiffe://<td>/ns/<namespace>/sa/<name>.
//
// Positive reviews are cached, keyed by the token's SHA-256, for at most
// CacheTTL and never past the token's expiry; so a token whose Pod was
// deleted may be accepted for up to CacheTTL more (10 s by default, never
// more than MaxReviewCacheTTL), on top of the API server's own 10 s cache.
// Refusals are not cached.
// It is safe for concurrent use.
type TokenReviewAttestor struct {
	client    authenticationv1client.TokenReviewsGetter
	td        spiffeid.TrustDomain
	audiences []string
	ttl       time.Duration
	clock     identity.Clock
	log       *slog.Logger
	cache     *reviewCache
}

var _ identity.Attestor = (*TokenReviewAttestor)(nil)

// NewTokenReviewAttestor checks cfg and returns the attestor.
func NewTokenReviewAttestor(cfg TokenReviewConfig) (*TokenReviewAttestor, error) {
	if cfg.Client == nil {
		return nil, errors.New("token review attestor: no Kubernetes client")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("token review attestor: no trust domain")
	}
	if len(cfg.Audiences) == 0 {
		cfg.Audiences = []string{DefaultAudience}
	}
	if slices.Contains(cfg.Audiences, "") {
		return nil, errors.New("token review attestor: empty audience")
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = DefaultReviewCacheTTL
	}
	if cfg.CacheTTL > MaxReviewCacheTTL {
		return nil, fmt.Errorf("token review attestor: cache TTL %s is longer than %s (a deleted Pod's token would keep attesting that long)", cfg.CacheTTL, MaxReviewCacheTTL)
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultReviewCacheSize
	}
	cfg.Clock, cfg.Logger = clockAndLogger(cfg.Clock, cfg.Logger)
	a := &TokenReviewAttestor{
		client:    cfg.Client,
		td:        cfg.TrustDomain,
		audiences: slices.Clone(cfg.Audiences),
		ttl:       cfg.CacheTTL,
		clock:     cfg.Clock,
		log:       cfg.Logger,
	}
	if cfg.CacheTTL > 0 {
		a.cache = &reviewCache{max: cfg.CacheSize, entries: map[[32]byte]cacheEntry{}}
	}
	return a, nil
}

// Attest reviews token and returns the SPIFFE ID of its ServiceAccount.
// Errors wrap identity.ErrUnauthenticated for a token the API server does
// not accept as a Pod-bound ServiceAccount token for our audience, and
// identity.ErrUnavailable when the API server cannot be asked (fail closed;
// the caller may retry).
func (a *TokenReviewAttestor) Attest(ctx context.Context, token string) (spiffeid.ID, error) {
	claims, err := parseToken(token)
	if err != nil {
		return spiffeid.ID{}, err
	}
	key := sha256.Sum256([]byte(token))
	now := a.clock.Now()
	if a.cache != nil {
		if id, ok := a.cache.get(key, now); ok {
			return id, nil
		}
	}
	tr, err := a.client.TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: a.audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return spiffeid.ID{}, reviewError(err)
	}
	id, pod, err := a.check(&tr.Status)
	if err != nil {
		a.log.Debug("token refused", slog.Any("error", err))
		return spiffeid.ID{}, err
	}
	// Only now, after the API server accepted the token, is its unverified
	// exp claim worth reading. A token without one is not cached.
	if a.cache != nil && !claims.Expiry.IsZero() {
		if until := earliest(now.Add(a.ttl), claims.Expiry); until.After(now) {
			a.cache.put(key, id, until, now)
		}
	}
	a.log.Debug("token accepted", slog.String("spiffe_id", id.String()), slog.String("pod", pod))
	return id, nil
}

// check turns a TokenReview status into a SPIFFE ID.
func (a *TokenReviewAttestor) check(st *authenticationv1.TokenReviewStatus) (spiffeid.ID, string, error) {
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return spiffeid.ID{}, "", fmt.Errorf("%w: the Kubernetes API server refused the token: %s", identity.ErrUnauthenticated, why)
	}
	if !slices.ContainsFunc(st.Audiences, func(aud string) bool { return slices.Contains(a.audiences, aud) }) {
		return spiffeid.ID{}, "", fmt.Errorf("%w: token is not for audience %s (project the token with audience %q)",
			identity.ErrUnauthenticated, strings.Join(a.audiences, " or "), a.audiences[0])
	}
	ns, sa, err := parseServiceAccount(st.User.Username)
	if err != nil {
		return spiffeid.ID{}, "", err
	}
	podName, podUID := first(st.User.Extra[ExtraPodName]), first(st.User.Extra[ExtraPodUID])
	if podName == "" || podUID == "" {
		return spiffeid.ID{}, "", fmt.Errorf("%w: token of %s/%s is not bound to a Pod (use a projected ServiceAccount token, not a Secret-based or TokenRequest token without a Pod)",
			identity.ErrUnauthenticated, ns, sa)
	}
	id, err := spiffeid.FromSegments(a.td, "ns", ns, "sa", sa)
	if err != nil {
		return spiffeid.ID{}, "", fmt.Errorf("%w: service account %s/%s: %v", identity.ErrUnauthenticated, ns, sa, err)
	}
	return id, ns + "/" + podName, nil
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func first(v authenticationv1.ExtraValue) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// parseServiceAccount splits system:serviceaccount:<ns>:<sa>.
func parseServiceAccount(username string) (ns, sa string, err error) {
	rest, ok := strings.CutPrefix(username, serviceAccountPrefix)
	if !ok {
		return "", "", fmt.Errorf("%w: user %q is not a ServiceAccount", identity.ErrUnauthenticated, username)
	}
	ns, sa, ok = strings.Cut(rest, ":")
	if !ok || strings.Contains(sa, ":") ||
		len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1123Subdomain(sa)) > 0 {
		return "", "", fmt.Errorf("%w: malformed ServiceAccount user %q", identity.ErrUnauthenticated, username)
	}
	return ns, sa, nil
}

// reviewError classifies an error from the TokenReview API. The token was
// not judged, so every case fails closed as retryable.
func reviewError(err error) error {
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%w: the CA may not create TokenReviews (bind its ServiceAccount to the ClusterRole system:auth-delegator): %v", identity.ErrUnavailable, err)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%w: the Kubernetes API server does not accept the CA's own credentials: %v", identity.ErrUnavailable, err)
	default:
		return fmt.Errorf("%w: TokenReview: %v", identity.ErrUnavailable, err)
	}
}

// reviewCache remembers positive reviews. It holds at most max entries.
type reviewCache struct {
	mu      sync.Mutex
	max     int
	entries map[[32]byte]cacheEntry
}

type cacheEntry struct {
	id    spiffeid.ID
	until time.Time
}

func (c *reviewCache) get(key [32]byte, now time.Time) (spiffeid.ID, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok {
		return spiffeid.ID{}, false
	}
	if !now.Before(e.until) {
		delete(c.entries, key)
		return spiffeid.ID{}, false
	}
	return e.id, true
}

func (c *reviewCache) put(key [32]byte, id spiffeid.ID, until, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		for k, e := range c.entries {
			if !now.Before(e.until) {
				delete(c.entries, k)
			}
		}
		// Still full: drop arbitrary entries (map order is random).
		for k := range c.entries {
			if len(c.entries) < c.max {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[key] = cacheEntry{id: id, until: until}
}

func (c *reviewCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// clockAndLogger returns clock and log, with the real clock in place of a
// nil clock and a logger that discards in place of a nil one.
func clockAndLogger(clock identity.Clock, log *slog.Logger) (identity.Clock, *slog.Logger) {
	if clock == nil {
		clock = identity.RealClock
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return clock, log
}
