package kube

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/pkg/identity"
)

// Paths of the API server's service-account issuer discovery.
const (
	oidcConfigPath = "/.well-known/openid-configuration"
	jwksPath       = "/openid/v1/jwks"
)

// Defaults of TokenPrecheckConfig.
const (
	DefaultNegativeCacheTTL  = 5 * time.Minute
	DefaultNegativeCacheSize = 16384
	// DefaultKeyRefreshInterval is the least time between two fetches of
	// the API server's keys; a token naming a key not seen yet triggers a
	// fetch at most this often, so forged key IDs cost the API server
	// little.
	DefaultKeyRefreshInterval = 30 * time.Second
	// DefaultKeyMaxAge re-fetches the keys on use after this long, so
	// a key the cluster retired stops being accepted locally.
	DefaultKeyMaxAge = 10 * time.Minute
	// clockLeeway is the API server's own leeway on exp and nbf (go-jose's
	// default, which Kubernetes uses): a token it may still accept is
	// never refused locally for its times.
	clockLeeway = josejwt.DefaultLeeway
)

// tokenAlgorithms are the signature algorithms of ServiceAccount tokens.
var tokenAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512}

// TokenPrecheckConfig configures a TokenPrecheck.
type TokenPrecheckConfig struct {
	// Next decides tokens that pass (the TokenReviewAttestor).
	Next identity.Attestor
	// Client reads the API server's service-account issuer discovery
	// (kubernetes.Interface.Discovery().RESTClient() fits). Every
	// ServiceAccount may read it by default (ClusterRole
	// system:service-account-issuer-discovery).
	Client rest.Interface
	// Audiences the token must be for: those of Next.
	Audiences []string
	// ExtraIssuers are accepted besides the one the API server
	// publishes (a cluster migrating --service-account-issuer).
	ExtraIssuers []string
	// NegativeCacheTTL is how long a token Next refused is refused
	// locally (default 5m); NegativeCacheSize bounds their number
	// (default 16384). Negative TTL disables the cache.
	NegativeCacheTTL  time.Duration
	NegativeCacheSize int
	// KeyRefreshInterval and KeyMaxAge: see the defaults.
	KeyRefreshInterval time.Duration
	KeyMaxAge          time.Duration
	Registerer         prometheus.Registerer
	Clock              identity.Clock
	Logger             *slog.Logger
}

// TokenPrecheck refuses, without asking the API server, the Kubernetes
// tokens it would refuse anyway, so that an attacker sending invalid tokens
// cannot turn each into a TokenReview (docs/ca.md, "Unauthenticated
// load"). A token reaches Next only if it is a JWT signed by one of the
// cluster's service-account keys (fetched from the API server's issuer
// discovery, cached), from the cluster's issuer, for one of our audiences,
// and within its validity (with the API server's leeway of a minute); and
// if Next has not refused the same token within NegativeCacheTTL. While
// the keys cannot be fetched, the signature is not checked locally (the
// claims still are) and Next decides: the API server stays the authority,
// the precheck only saves it work.
type TokenPrecheck struct {
	cfg     TokenPrecheckConfig
	results *prometheus.CounterVec

	keysMu      sync.Mutex
	keys        *jose.JSONWebKeySet
	issuer      string
	fetchedAt   time.Time // last successful fetch
	attemptedAt time.Time // last attempt
	lastWarned  time.Time

	neg *negativeCache
	// inflight joins concurrent checks of the same token, so a burst of
	// one token costs one TokenReview.
	inflightMu sync.Mutex
	inflight   map[[32]byte]*inflightCall
}

type inflightCall struct {
	done chan struct{}
	id   spiffeid.ID
	err  error
}

var _ identity.Attestor = (*TokenPrecheck)(nil)

// Results of tether_ca_token_precheck_total.
const (
	PrecheckPassed           = "passed"
	PrecheckPassedUnverified = "passed_unverified"
	PrecheckMalformed        = "malformed"
	PrecheckSignature        = "signature"
	PrecheckExpired          = "expired"
	PrecheckAudience         = "audience"
	PrecheckIssuer           = "issuer"
	PrecheckCachedRefusal    = "cached_refusal"
)

// NewTokenPrecheck checks cfg and returns the precheck.
func NewTokenPrecheck(cfg TokenPrecheckConfig) (*TokenPrecheck, error) {
	if cfg.Next == nil {
		return nil, errors.New("token precheck: no attestor to pass tokens to")
	}
	if cfg.Client == nil {
		return nil, errors.New("token precheck: no Kubernetes client")
	}
	if len(cfg.Audiences) == 0 {
		cfg.Audiences = []string{DefaultAudience}
	}
	if cfg.NegativeCacheTTL == 0 {
		cfg.NegativeCacheTTL = DefaultNegativeCacheTTL
	}
	if cfg.NegativeCacheSize <= 0 {
		cfg.NegativeCacheSize = DefaultNegativeCacheSize
	}
	if cfg.KeyRefreshInterval <= 0 {
		cfg.KeyRefreshInterval = DefaultKeyRefreshInterval
	}
	if cfg.KeyMaxAge <= 0 {
		cfg.KeyMaxAge = DefaultKeyMaxAge
	}
	cfg.Clock, cfg.Logger = clockAndLogger(cfg.Clock, cfg.Logger)
	p := &TokenPrecheck{
		cfg: cfg,
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_ca_token_precheck_total",
			Help: "Kubernetes tokens checked locally before a TokenReview, by result (passed, passed_unverified, or the reason they were refused without one).",
		}, []string{"result"}),
		inflight: map[[32]byte]*inflightCall{},
	}
	for _, r := range []string{PrecheckPassed, PrecheckPassedUnverified, PrecheckMalformed, PrecheckSignature, PrecheckExpired, PrecheckAudience, PrecheckIssuer, PrecheckCachedRefusal} {
		p.results.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(p.results); err != nil {
			return nil, fmt.Errorf("token precheck metrics: %w", err)
		}
	}
	if cfg.NegativeCacheTTL > 0 {
		p.neg = &negativeCache{max: cfg.NegativeCacheSize, entries: map[[32]byte]time.Time{}}
	}
	return p, nil
}

// Attest checks token locally and, if it passes, asks Next.
func (p *TokenPrecheck) Attest(ctx context.Context, token string) (spiffeid.ID, error) {
	now := p.cfg.Clock.Now()
	key := sha256.Sum256([]byte(token))
	if p.neg != nil && p.neg.has(key, now) {
		p.results.WithLabelValues(PrecheckCachedRefusal).Inc()
		return spiffeid.ID{}, fmt.Errorf("%w: this token was refused by the Kubernetes API server less than %s ago; get a fresh projected token",
			identity.ErrUnauthenticated, p.cfg.NegativeCacheTTL)
	}
	result, err := p.check(ctx, token, now)
	p.results.WithLabelValues(result).Inc()
	if err != nil {
		return spiffeid.ID{}, err
	}

	p.inflightMu.Lock()
	if c, ok := p.inflight[key]; ok {
		p.inflightMu.Unlock()
		select {
		case <-c.done:
			return c.id, c.err
		case <-ctx.Done():
			return spiffeid.ID{}, fmt.Errorf("%w: %v", identity.ErrUnavailable, ctx.Err())
		}
	}
	c := &inflightCall{done: make(chan struct{})}
	p.inflight[key] = c
	p.inflightMu.Unlock()

	c.id, c.err = p.cfg.Next.Attest(ctx, token)
	if c.err != nil && errors.Is(c.err, identity.ErrUnauthenticated) && p.neg != nil {
		p.neg.put(key, now.Add(p.cfg.NegativeCacheTTL), now)
	}
	p.inflightMu.Lock()
	delete(p.inflight, key)
	p.inflightMu.Unlock()
	close(c.done)
	return c.id, c.err
}

// check returns the precheck's result and, for a refusal, the error.
func (p *TokenPrecheck) check(ctx context.Context, token string, now time.Time) (string, error) {
	if _, err := parseToken(token); err != nil {
		return PrecheckMalformed, err
	}
	tok, err := josejwt.ParseSigned(token, tokenAlgorithms)
	if err != nil {
		return PrecheckMalformed, fmt.Errorf("%w: %v", errBadToken, err)
	}
	if len(tok.Headers) != 1 {
		return PrecheckMalformed, fmt.Errorf("%w: %d signatures, want 1", errBadToken, len(tok.Headers))
	}
	kid := tok.Headers[0].KeyID
	keys, issuer := p.keySet(ctx, kid, now)

	var claims josejwt.Claims
	result := PrecheckPassedUnverified
	if keys == nil {
		if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
			return PrecheckMalformed, fmt.Errorf("%w: claims: %v", errBadToken, err)
		}
	} else {
		candidates := keys.Keys
		if kid != "" {
			candidates = keys.Key(kid)
		}
		if len(candidates) == 0 {
			return PrecheckSignature, fmt.Errorf("%w: token signed with key %q, which is not one of the cluster's service-account keys", identity.ErrUnauthenticated, kid)
		}
		verified := false
		for _, k := range candidates {
			if err := tok.Claims(k.Key, &claims); err == nil {
				verified = true
				break
			}
		}
		if !verified {
			return PrecheckSignature, fmt.Errorf("%w: token signature does not verify against the cluster's service-account key %q", identity.ErrUnauthenticated, kid)
		}
		result = PrecheckPassed
	}
	if issuer != "" && claims.Issuer != issuer && !slices.Contains(p.cfg.ExtraIssuers, claims.Issuer) {
		return PrecheckIssuer, fmt.Errorf("%w: token issuer %q is not the cluster's (%q)", identity.ErrUnauthenticated, claims.Issuer, issuer)
	}
	if !slices.ContainsFunc([]string(claims.Audience), func(a string) bool { return slices.Contains(p.cfg.Audiences, a) }) {
		return PrecheckAudience, fmt.Errorf("%w: token is for audience %q, not %s (project the token with audience %q)",
			identity.ErrUnauthenticated, strings.Join(claims.Audience, ","), strings.Join(p.cfg.Audiences, " or "), p.cfg.Audiences[0])
	}
	if claims.Expiry == nil {
		return PrecheckExpired, fmt.Errorf("%w: token has no expiry (use a projected ServiceAccount token)", identity.ErrUnauthenticated)
	}
	if err := claims.ValidateWithLeeway(josejwt.Expected{Time: now}, clockLeeway); err != nil {
		switch {
		case errors.Is(err, josejwt.ErrExpired):
			return PrecheckExpired, fmt.Errorf("%w: token expired at %s", identity.ErrUnauthenticated, claims.Expiry.Time().UTC().Format(time.RFC3339))
		case errors.Is(err, josejwt.ErrNotValidYet):
			return PrecheckExpired, fmt.Errorf("%w: token not valid before %s", identity.ErrUnauthenticated, claims.NotBefore.Time().UTC().Format(time.RFC3339))
		default:
			return PrecheckExpired, fmt.Errorf("%w: token times: %v", identity.ErrUnauthenticated, err)
		}
	}
	return result, nil
}

// keySet returns the cluster's keys and issuer, fetching them when there
// are none yet, when they are older than KeyMaxAge, or when kid is not
// among them; never more often than KeyRefreshInterval. It returns nil
// keys while none could be fetched.
func (p *TokenPrecheck) keySet(ctx context.Context, kid string, now time.Time) (*jose.JSONWebKeySet, string) {
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	stale := p.keys == nil || now.Sub(p.fetchedAt) >= p.cfg.KeyMaxAge || (kid != "" && len(p.keys.Key(kid)) == 0)
	if stale && (p.attemptedAt.IsZero() || now.Sub(p.attemptedAt) >= p.cfg.KeyRefreshInterval) {
		p.attemptedAt = now
		keys, issuer, err := p.fetch(ctx)
		if err != nil {
			if now.Sub(p.lastWarned) >= time.Minute {
				p.lastWarned = now
				p.cfg.Logger.Warn("cannot read the cluster's service-account keys; token signatures are checked only by TokenReview until it works",
					slog.Any("error", err), slog.Duration("retry_in", p.cfg.KeyRefreshInterval))
			}
		} else {
			p.keys, p.issuer, p.fetchedAt = keys, issuer, now
			p.cfg.Logger.Debug("service-account keys fetched", slog.Int("keys", len(keys.Keys)), slog.String("issuer", issuer))
		}
	}
	return p.keys, p.issuer
}

// fetch reads the issuer and the keys from the API server.
func (p *TokenPrecheck) fetch(ctx context.Context) (*jose.JSONWebKeySet, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := p.cfg.Client.Get().AbsPath(oidcConfigPath).DoRaw(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("GET %s: %w (the CA's ServiceAccount needs the ClusterRole system:service-account-issuer-discovery)", oidcConfigPath, err)
	}
	var disc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(raw, &disc); err != nil || disc.Issuer == "" {
		return nil, "", fmt.Errorf("GET %s: no issuer in %.200q", oidcConfigPath, raw)
	}
	raw, err = p.cfg.Client.Get().AbsPath(jwksPath).DoRaw(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("GET %s: %w", jwksPath, err)
	}
	var keys jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &keys); err != nil {
		return nil, "", fmt.Errorf("GET %s: %w", jwksPath, err)
	}
	if len(keys.Keys) == 0 {
		return nil, "", fmt.Errorf("GET %s: no keys", jwksPath)
	}
	return &keys, disc.Issuer, nil
}

// negativeCache remembers tokens the API server refused, by SHA-256. It
// holds at most max entries.
type negativeCache struct {
	mu      sync.Mutex
	max     int
	entries map[[32]byte]time.Time
}

func (c *negativeCache) has(key [32]byte, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	until, ok := c.entries[key]
	if ok && !now.Before(until) {
		delete(c.entries, key)
		return false
	}
	return ok
}

func (c *negativeCache) put(key [32]byte, until, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		for k, u := range c.entries {
			if !now.Before(u) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries { // still full: drop arbitrary ones
			if len(c.entries) < c.max {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[key] = until
}
