// Package agent keeps a workload's identity current: it gets an X.509-SVID
// from tether-ca with a bootstrap credential, renews it over mTLS at half
// its life, follows the trust bundle over WatchBundle, and fetches
// JWT-SVIDs. The sidecar's proxy and Workload API read from it.
package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/pkg/identity"
)

// Config configures an Agent.
type Config struct {
	// CAAddr is tether-ca's address, host:port.
	CAAddr string
	// Bundle verifies the CA until the first WatchBundle update arrives
	// (the mounted tether-trust-bundle, or the standalone bundle.pem).
	Bundle *x509bundle.Bundle
	// Credential returns the bootstrap credential; it is called for every
	// bootstrap and every renewal that re-attests (a Kubernetes identity's,
	// each time), so a projected token file must be read fresh each time.
	Credential func() (*cav1.Credential, error)
	// RenewFraction of the SVID's remaining life, counted from when it was
	// received, after which it is renewed (default 0.5); Jitter spreads
	// renewals by up to that fraction of the life either way (default 0.1).
	RenewFraction, Jitter float64
	// MinRenewInterval is the least time between two successful SVID
	// fetches, whatever the SVID's life (default 30s): an SVID the CA had to
	// cut short (its intermediate or root ends soon) is not renewed in a
	// loop. An SVID with less than this left when it arrives may expire
	// before the next attempt.
	MinRenewInterval time.Duration
	// MaxRenewBackoff caps the wait after renewals that did not extend the
	// SVID (default 5m). Each such renewal doubles the wait from
	// MinRenewInterval, with jitter, but the agent still tries once before
	// its SVID expires.
	MaxRenewBackoff time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed attempts
	// (defaults 500ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// Instance names this instance of the identity in its reports to the
	// CA (the pod name; default host name and process ID); Version is the
	// build it reports.
	Instance, Version string
	Clock             identity.Clock
	Logger            *slog.Logger
	Registerer        prometheus.Registerer
}

// Agent holds the workload's current SVID and bundle. It is an
// x509svid.Source, x509bundle.Source and jwtbundle.Source, and is safe for
// concurrent use. Readers never block on the network.
//
// Its bundle sources answer for the local trust domain only. The bundles
// of federated trust domains that tether-ca sends are kept apart:
// FederatedBundles, for the Workload API to hand to the application, and
// FederatedX509Source, for the sidecar's proxy to verify peers of those
// domains with where policy names them. A verifier given the Agent itself
// never trusts a foreign domain.
type Agent struct {
	cfg Config
	td  spiffeid.TrustDomain
	log *slog.Logger

	svid   atomic.Pointer[x509svid.SVID]
	bundle atomic.Pointer[spiffebundle.Bundle]
	// federated holds the foreign bundles of the latest WatchBundle
	// message, sorted by trust domain (nil: none).
	federated atomic.Pointer[[]*spiffebundle.Bundle]
	// federatedX509 is the X.509 half of federated, by trust domain.
	federatedX509 atomic.Pointer[x509bundle.Set]

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every SVID, bundle or federated bundles change
	renew   chan struct{}
	jwts    map[string]*jwtsvid.SVID

	expiry prometheus.Gauge
	events *prometheus.CounterVec

	// caDown is set while the latest exchange with the CA (an SVID fetch,
	// or the trust bundle stream) failed; nil while it succeeded.
	caDown    atomic.Pointer[caFailure]
	reachable prometheus.Gauge
	// reattest is set when the CA refused to renew on the SVID alone; the
	// next fetch sends the credential too.
	reattest atomic.Bool
	// bundleMsgs counts the bundle messages received over WatchBundle.
	bundleMsgs atomic.Uint64
}

// caFailure is why, and since when, the CA cannot be reached.
type caFailure struct {
	err   error
	since time.Time
}

// Renewal pacing defaults (Config.MinRenewInterval, Config.MaxRenewBackoff).
const (
	DefaultMinRenewInterval = 30 * time.Second
	DefaultMaxRenewBackoff  = 5 * time.Minute
)

// ErrNoSVID means the agent holds no valid SVID yet (or any more).
var ErrNoSVID = errors.New("no SVID yet")

// New validates cfg. Nothing is fetched until Run.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.CAAddr == "":
		return nil, errors.New("agent: no CA address")
	case cfg.Bundle == nil || cfg.Bundle.Empty():
		return nil, errors.New("agent: no bootstrap trust bundle")
	case cfg.Credential == nil:
		return nil, errors.New("agent: no bootstrap credential")
	}
	if cfg.RenewFraction <= 0 || cfg.RenewFraction >= 1 {
		cfg.RenewFraction = 0.5
	}
	if cfg.Jitter <= 0 || cfg.Jitter >= cfg.RenewFraction {
		cfg.Jitter = 0.1
	}
	if cfg.MinRenewInterval <= 0 {
		cfg.MinRenewInterval = DefaultMinRenewInterval
	}
	if cfg.MaxRenewBackoff < cfg.MinRenewInterval {
		cfg.MaxRenewBackoff = max(DefaultMaxRenewBackoff, cfg.MinRenewInterval)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = identity.RealClock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Instance == "" {
		cfg.Instance = DefaultInstance()
	}
	a := &Agent{
		cfg: cfg, td: cfg.Bundle.TrustDomain(), log: cfg.Logger,
		changed: make(chan struct{}), renew: make(chan struct{}, 1), jwts: map[string]*jwtsvid.SVID{},
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_sidecar_svid_expiry_timestamp_seconds",
			Help: "NotAfter of the SVID the sidecar holds (0 before the first).",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_svid_fetches_total",
			Help: "SVID fetches by kind (bootstrap, renew) and result.",
		}, []string{"kind", "result"}),
		reachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_sidecar_ca_reachable",
			Help: "1 while the latest exchange with tether-ca (SVID fetch or trust bundle stream) succeeded, 0 after one failed (and before the first): the SVID cannot be renewed now, the one held is served until it expires.",
		}),
	}
	a.bundle.Store(spiffebundle.FromX509Bundle(cfg.Bundle))
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(a.expiry, a.events, a.reachable)
	}
	return a, nil
}

// TrustDomain is the agent's trust domain.
func (a *Agent) TrustDomain() spiffeid.TrustDomain { return a.td }

// GetX509SVID returns the current SVID, or ErrNoSVID.
func (a *Agent) GetX509SVID() (*x509svid.SVID, error) {
	s := a.svid.Load()
	if s == nil {
		return nil, ErrNoSVID
	}
	return s, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (a *Agent) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != a.td {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	return a.bundle.Load().X509Bundle(), nil
}

// GetJWTBundleForTrustDomain implements jwtbundle.Source.
func (a *Agent) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	if td != a.td {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	return a.bundle.Load().JWTBundle(), nil
}

// Bundle returns the current SPIFFE bundle.
func (a *Agent) Bundle() *spiffebundle.Bundle { return a.bundle.Load() }

// FederatedBundles returns the bundles of the foreign trust domains
// tether-ca federates with, as of its latest WatchBundle message, sorted by
// trust domain. The slice and bundles must not be modified. They are for
// the Workload API: nothing in the Agent's bundle sources trusts them.
func (a *Agent) FederatedBundles() []*spiffebundle.Bundle {
	if p := a.federated.Load(); p != nil {
		return *p
	}
	return nil
}

// FederatedX509Source returns an x509bundle.Source of the federated trust
// domains' X.509 bundles, as of the latest WatchBundle message: a domain
// no longer federated has no bundle from the next message on. It never
// answers for the agent's own trust domain.
func (a *Agent) FederatedX509Source() x509bundle.Source { return federatedSource{a} }

// federatedSource is the view FederatedX509Source returns.
type federatedSource struct{ a *Agent }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s federatedSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	set := s.a.federatedX509.Load()
	if td == s.a.td || set == nil {
		return nil, fmt.Errorf("no federated bundle for trust domain %q", td)
	}
	b, ok := set.Get(td)
	if !ok {
		return nil, fmt.Errorf("no federated bundle for trust domain %q (tether-ca does not federate with it)", td)
	}
	return b, nil
}

// Changed returns a channel that is closed at the next change of the SVID,
// the bundle or the federated bundles.
func (a *Agent) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

func (a *Agent) notify() {
	a.mu.Lock()
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

// Ready returns nil while the agent holds an unexpired SVID.
func (a *Agent) Ready() error {
	s := a.svid.Load()
	if s == nil {
		return ErrNoSVID
	}
	if leaf := s.Certificates[0]; !a.cfg.Clock.Now().Before(leaf.NotAfter) {
		return fmt.Errorf("%w: SVID expired at %s", ErrNoSVID, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// Degraded returns nil while the latest exchange with the CA succeeded.
// Otherwise it says since when the CA cannot be reached and until when
// the SVID held stays valid: the agent serves it but cannot renew it.
func (a *Agent) Degraded() error {
	f := a.caDown.Load()
	if f == nil {
		return nil
	}
	left := "no SVID held"
	if s := a.svid.Load(); s != nil {
		left = "serving the cached SVID, valid until " + s.Certificates[0].NotAfter.UTC().Format(time.RFC3339)
	}
	return fmt.Errorf("cannot reach tether-ca at %s since %s (%v); %s", a.cfg.CAAddr, f.since.UTC().Format(time.RFC3339), f.err, left)
}

// noteCA records the outcome of an exchange with the CA.
func (a *Agent) noteCA(err error) {
	if err == nil {
		if f := a.caDown.Swap(nil); f != nil {
			a.log.Info("tether-ca reachable again", slog.Duration("after", a.cfg.Clock.Now().Sub(f.since).Round(time.Second)))
		}
		a.reachable.Set(1)
		return
	}
	f := &caFailure{err: err, since: a.cfg.Clock.Now()}
	if cur := a.caDown.Load(); cur != nil {
		f.since = cur.since
	}
	a.caDown.Store(f)
	a.reachable.Set(0)
}

// RenewNow asks Run to renew the SVID at once, even sooner than
// MinRenewInterval.
func (a *Agent) RenewNow() {
	select {
	case a.renew <- struct{}{}:
	default:
	}
}

// dial connects to the CA, verifying it against the current bundle and
// presenting the current SVID when there is a valid one.
func (a *Agent) dial(withSVID bool) (*identity.Client, error) {
	var src x509svid.Source
	if withSVID && a.Ready() == nil {
		src = a
	}
	return identity.Dial(a.cfg.CAAddr, a.td, a, src)
}

// fetch gets a new SVID: over mTLS when the current one is valid,
// otherwise with the bootstrap credential. A renewal also sends the
// credential, read fresh, when the CA requires re-attestation: always for
// an SVID the CA recorded as attested with a Kubernetes token (see
// identity.ReattestsOnRenewal), and after the CA refused to renew on the
// SVID alone (its renewal chain is too old).
func (a *Agent) fetch(ctx context.Context) error {
	kind, renew := "bootstrap", a.Ready() == nil
	var cred *cav1.Credential
	if renew {
		kind = "renew"
	}
	if !renew || a.reattest.Load() || a.renewsWithCredential() {
		c, err := a.cfg.Credential()
		if err != nil {
			a.events.WithLabelValues(kind, "error").Inc()
			return fmt.Errorf("%s credential: %w", kind, err)
		}
		cred = c
	}
	client, err := a.dial(renew)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	svid, bundle, err := client.FetchSVID(ctx, cred)
	if err != nil {
		a.events.WithLabelValues(kind, "error").Inc()
		if renew && cred == nil && status.Code(err) == codes.Unauthenticated {
			// The CA wants a credential, not just the SVID: send it next time.
			a.reattest.Store(true)
		}
		return err
	}
	a.reattest.Store(false)
	a.events.WithLabelValues(kind, "ok").Inc()
	a.svid.Store(svid)
	a.mu.Lock()
	clear(a.jwts)
	a.mu.Unlock()
	a.mergeBundle(bundle)
	leaf := svid.Certificates[0]
	a.expiry.Set(float64(leaf.NotAfter.Unix()))
	past := map[string]string{"bootstrap": "bootstrapped", "renew": "renewed"}[kind]
	a.log.Info("SVID "+cmp.Or(past, kind), slog.String("spiffe_id", svid.ID.String()),
		slog.String("serial", leaf.SerialNumber.Text(16)), slog.Time("not_after", leaf.NotAfter),
		slog.Duration("valid_for", leaf.NotAfter.Sub(a.cfg.Clock.Now()).Round(time.Second)))
	a.notify()
	return nil
}

// renewsWithCredential reports whether the current SVID is renewed only
// with a fresh credential: the CA recorded it as attested with one whose
// kind re-attests on renewal (a Kubernetes token).
func (a *Agent) renewsWithCredential() bool {
	s := a.svid.Load()
	if s == nil {
		return false
	}
	att, ok, err := identity.AttestationOf(s.Certificates[0])
	return ok && err == nil && identity.ReattestsOnRenewal(att.Kind)
}

// mergeBundle takes the bundle that came with a Sign response unless
// WatchBundle already delivered one at least as new.
func (a *Agent) mergeBundle(b *spiffebundle.Bundle) {
	seq, _ := b.SequenceNumber()
	if cur, ok := a.bundle.Load().SequenceNumber(); ok && cur >= seq {
		return
	}
	a.bundle.Store(b)
}

// nextRenewal is when an SVID received now should be renewed:
// RenewFraction of the life it has left, moved by up to ±Jitter of that
// life, and never sooner than MinRenewInterval. The life counted is what is
// left now, not NotAfter-NotBefore: an SVID the CA clamped to the end of its
// intermediate is backdated, so half its nominal life may be already past.
// stalls is how many renewals in a row did not extend the SVID (the CA keeps
// returning the same end); each doubles the wait from MinRenewInterval (with
// jitter, up to MaxRenewBackoff), but the agent still tries once before the
// SVID expires, in case the CA has renewed its intermediate meanwhile.
func (a *Agent) nextRenewal(svid *x509svid.SVID, stalls int) time.Time {
	now := a.cfg.Clock.Now()
	left := svid.Certificates[0].NotAfter.Sub(now)
	f := a.cfg.RenewFraction + (rand.Float64()*2-1)*a.cfg.Jitter
	wait := time.Duration(float64(left) * f)
	if stalls > 0 {
		d := a.cfg.MinRenewInterval << min(stalls, 16)
		if d <= 0 || d > a.cfg.MaxRenewBackoff {
			d = a.cfg.MaxRenewBackoff
		}
		backoff := d/2 + rand.N(d/2+1)
		if backoff >= left {
			backoff = left * 9 / 10 // one last try before it expires
		}
		wait = max(wait, backoff)
	}
	return now.Add(max(wait, a.cfg.MinRenewInterval))
}

// backoff returns the wait before attempt n (from 0), with full jitter.
func (a *Agent) backoff(n int) time.Duration {
	d := a.cfg.MinBackoff << min(n, 16)
	if d <= 0 || d > a.cfg.MaxBackoff {
		d = a.cfg.MaxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

// Run gets the first SVID, then renews it and follows the bundle until ctx
// ends. While the CA is unreachable it retries with backoff and keeps
// serving the cached SVID until that expires.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	watching := false
	failures, stalls := 0, 0
	var lastEnd time.Time // NotAfter of the SVID before the latest fetch
	for {
		var wait time.Duration
		err := a.fetch(ctx)
		if err != nil && ctx.Err() != nil {
			return nil
		}
		a.noteCA(err)
		if err != nil {
			wait = a.backoff(failures)
			failures++
			left := "none"
			if s := a.svid.Load(); s != nil {
				left = s.Certificates[0].NotAfter.Sub(a.cfg.Clock.Now()).Round(time.Second).String()
			}
			a.log.Warn("cannot get an SVID from the CA; retrying", slog.String("ca", a.cfg.CAAddr),
				slog.Any("error", err), slog.Duration("retry_in", wait.Round(time.Millisecond)), slog.String("current_svid_left", left))
		} else {
			failures = 0
			svid := a.svid.Load()
			end := svid.Certificates[0].NotAfter
			if !lastEnd.IsZero() && !end.After(lastEnd) {
				stalls++
			} else {
				stalls = 0
			}
			lastEnd = end
			at := a.nextRenewal(svid, stalls)
			wait = at.Sub(a.cfg.Clock.Now())
			if stalls > 0 {
				a.log.Warn("the CA issued an SVID that ends no later than the previous one (its signing intermediate or root ends soon, and has not been renewed); renewing less often",
					slog.Time("not_after", end), slog.Int("renewals_without_progress", stalls), slog.Time("next_renewal", at))
			}
			if !watching {
				watching = true
				wg.Add(1)
				go func() { defer wg.Done(); a.watchBundle(ctx) }()
			}
		}
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-a.renew:
			t.Stop()
		case <-t.C:
		}
	}
}

// watchBundle follows WatchBundle, and reports to the CA over the same
// connection (report.go), reconnecting with backoff. The connection is
// made again, without waiting, when the SVID changes: the CA verifies the
// root a report names from the SVID the connection presents.
func (a *Agent) watchBundle(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		presented := a.svid.Load()
		before := a.bundleMsgs.Load()
		client, err := a.dial(true)
		if err == nil {
			err = a.session(ctx, client, presented)
			client.Close()
		}
		if a.bundleMsgs.Load() != before {
			failures = 0 // the stream worked for a while
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errSVIDChanged) {
			continue
		}
		a.noteCA(fmt.Errorf("trust bundle stream: %w", err))
		wait := a.backoff(failures)
		failures++
		a.log.Warn("trust bundle stream broken; reconnecting", slog.Any("error", err), slog.Duration("retry_in", wait.Round(time.Millisecond)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// applyBundle takes a bundle from WatchBundle.
func (a *Agent) applyBundle(b *spiffebundle.Bundle) {
	a.bundleMsgs.Add(1)
	a.noteCA(nil)
	cur := a.bundle.Load()
	if cur.Equal(b) {
		return
	}
	a.bundle.Store(b)
	seq, _ := b.SequenceNumber()
	a.log.Info("trust bundle updated", slog.Uint64("sequence", seq),
		slog.Int("x509_authorities", len(b.X509Authorities())), slog.Int("jwt_authorities", len(b.JWTAuthorities())))
	a.notify()
}

// applyBundleSet takes a WatchBundle message: the local bundle and the
// whole set of federated bundles (a domain left out is no longer trusted).
func (a *Agent) applyBundleSet(set identity.BundleSet) {
	a.applyBundle(set.Local)
	for _, err := range set.Refused {
		a.log.Error("federated trust bundle from tether-ca not applied; that domain is not trusted", slog.Any("error", err))
	}
	if sameBundles(a.FederatedBundles(), set.Federated) {
		return
	}
	fed := set.Federated
	x509s := x509bundle.NewSet()
	for _, b := range fed {
		if b.TrustDomain() != a.td {
			x509s.Add(b.X509Bundle())
		}
	}
	a.federatedX509.Store(x509s)
	a.federated.Store(&fed)
	domains := make([]string, 0, len(fed))
	for _, b := range fed {
		seq, _ := b.SequenceNumber()
		domains = append(domains, b.TrustDomain().Name()+"@"+strconv.FormatUint(seq, 10))
	}
	a.log.Info("federated trust bundles updated", slog.Any("trust_domains", domains))
	a.notify()
}

// sameBundles reports whether two sorted bundle lists are equal.
func sameBundles(x, y []*spiffebundle.Bundle) bool {
	return slices.EqualFunc(x, y, func(a, b *spiffebundle.Bundle) bool { return a.Equal(b) })
}

// FetchJWTSVID returns a JWT-SVID for the agent's identity and audience,
// reusing a cached one until half its life has passed.
func (a *Agent) FetchJWTSVID(ctx context.Context, audience []string) (*jwtsvid.SVID, error) {
	if len(audience) == 0 {
		return nil, errors.New("a JWT-SVID needs at least one audience")
	}
	key := jwtCacheKey(audience)
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	if j, ok := a.jwts[key]; ok && now.Before(j.Expiry.Add(-time.Duration(a.cfg.RenewFraction*float64(j.Expiry.Sub(issuedAt(j)))))) {
		a.mu.Unlock()
		return j, nil
	}
	a.mu.Unlock()
	if err := a.Ready(); err != nil {
		return nil, err
	}
	client, err := a.dial(true)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	tok, err := client.SignJWT(ctx, audience, 0)
	if err != nil {
		return nil, err
	}
	j, err := jwtsvid.ParseAndValidate(tok, a, audience[:1])
	if err != nil {
		return nil, fmt.Errorf("CA returned a JWT-SVID that does not validate: %w", err)
	}
	a.mu.Lock()
	a.jwts[key] = j
	a.mu.Unlock()
	return j, nil
}

// jwtCacheKey encodes an audience list unambiguously: each audience
// length-prefixed, so that ["a b"] and ["a", "b"] (which fmt.Sprint prints
// alike) have different keys.
func jwtCacheKey(audience []string) string {
	var b strings.Builder
	for _, a := range audience {
		b.WriteString(strconv.Itoa(len(a)))
		b.WriteByte(':')
		b.WriteString(a)
	}
	return b.String()
}

func issuedAt(j *jwtsvid.SVID) time.Time {
	if iat, ok := j.Claims["iat"].(float64); ok {
		return time.Unix(int64(iat), 0)
	}
	return j.Expiry
}

// TLSCertificate returns the current SVID as a tls.Certificate.
func (a *Agent) TLSCertificate() (*tls.Certificate, error) {
	s, err := a.GetX509SVID()
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, cert := range s.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c, nil
}
