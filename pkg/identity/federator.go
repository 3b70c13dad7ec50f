package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// FederatorConfig configures a Federator.
type FederatorConfig struct {
	// TrustDomain is the local trust domain; Local its bundles, which
	// verify an https_spiffe endpoint whose ID is in the local domain.
	TrustDomain spiffeid.TrustDomain
	Local       x509bundle.Source
	// MinRefresh and MaxRefresh clamp a served refresh hint; Refresh is
	// used when none is served. Zero: the Default… constants.
	MinRefresh, MaxRefresh, Refresh time.Duration
	// FetchTimeout bounds one fetch (default 30s).
	FetchTimeout time.Duration
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
}

// Federator fetches and refreshes the bundles of foreign trust domains
// into a FederatedBundles set: it honours each bundle's refresh hint within
// bounds, keeps the last good bundle through outages and refuses bundles
// that cannot be the domain's (CheckForeignBundle).
type Federator struct {
	cfg     FederatorConfig
	set     *FederatedBundles
	metrics *federationMetrics

	mu      sync.Mutex
	ctx     context.Context
	running map[spiffeid.TrustDomain]*foreignRefresher
	status  map[spiffeid.TrustDomain]*ForeignStatus
}

type foreignRefresher struct {
	domain FederatedDomain
	cancel context.CancelFunc
	done   chan struct{}
}

// NewFederator returns a Federator with no domains; Run starts it and
// SetDomains declares the domains.
func NewFederator(cfg FederatorConfig) *Federator {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.MinRefresh, DefaultFederationMinRefresh)
	def(&cfg.MaxRefresh, DefaultFederationMaxRefresh)
	def(&cfg.Refresh, DefaultFederationRefresh)
	def(&cfg.FetchTimeout, 30*time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Federator{cfg: cfg, set: NewFederatedBundles(), metrics: newFederationMetrics(cfg.Registerer),
		running: map[spiffeid.TrustDomain]*foreignRefresher{}, status: map[spiffeid.TrustDomain]*ForeignStatus{}}
}

// Bundles is the set of foreign bundles trusted now.
func (f *Federator) Bundles() *FederatedBundles { return f.set }

// Status returns the refresh status of every declared domain.
func (f *Federator) Status() []ForeignStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]ForeignStatus, 0, len(f.status))
	for _, s := range f.status {
		out = append(out, *s)
	}
	return out
}

// Run refreshes the declared domains until ctx ends.
func (f *Federator) Run(ctx context.Context) error {
	f.mu.Lock()
	f.ctx = ctx
	for _, r := range f.running {
		f.startLocked(r)
	}
	f.mu.Unlock()
	<-ctx.Done()
	f.mu.Lock()
	rs := make([]*foreignRefresher, 0, len(f.running))
	for _, r := range f.running {
		rs = append(rs, r)
	}
	f.mu.Unlock()
	for _, r := range rs {
		if r.done != nil {
			<-r.done
		}
	}
	return nil
}

// SetDomains replaces the declared domains: new ones start refreshing
// (trusting their initial bundle at once), changed ones restart, removed
// ones stop and their bundles stop being trusted. Every domain is
// validated first; on an error nothing changes.
func (f *Federator) SetDomains(domains []FederatedDomain) error {
	want := map[spiffeid.TrustDomain]FederatedDomain{}
	for _, d := range domains {
		if err := d.Validate(f.cfg.TrustDomain); err != nil {
			return err
		}
		if _, dup := want[d.TrustDomain]; dup {
			return fmt.Errorf("%w: trust domain %s is declared twice", ErrConfig, d.TrustDomain)
		}
		want[d.TrustDomain] = d
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for td, r := range f.running {
		if d, ok := want[td]; ok && sameDomain(d, r.domain) {
			delete(want, td)
			continue
		}
		f.stopLocked(td, r)
	}
	for td, d := range want {
		r := &foreignRefresher{domain: d}
		f.running[td] = r
		f.status[td] = &ForeignStatus{TrustDomain: td.Name()}
		if d.Initial != nil && f.set.set(td, d.Initial) {
			f.status[td].Held = true
			f.metrics.sequence.WithLabelValues(td.Name()).Set(float64(seqOf(d.Initial)))
		}
		if f.ctx != nil {
			f.startLocked(r)
		}
		f.cfg.Logger.Info("federating with trust domain", slog.String("trust_domain", td.Name()),
			slog.String("url", d.URL), slog.String("profile", d.Profile), slog.Bool("initial_bundle", d.Initial != nil))
	}
	return nil
}

// sameDomain reports whether two declarations fetch the same way.
func sameDomain(a, b FederatedDomain) bool {
	sameInitial := (a.Initial == nil) == (b.Initial == nil) && (a.Initial == nil || a.Initial.Equal(b.Initial))
	return a.URL == b.URL && a.Profile == b.Profile && a.EndpointID == b.EndpointID && sameInitial && a.WebRoots.Equal(b.WebRoots)
}

func (f *Federator) stopLocked(td spiffeid.TrustDomain, r *foreignRefresher) {
	if r.cancel != nil {
		r.cancel() // its last writes check that it is still running
	}
	delete(f.running, td)
	delete(f.status, td)
	f.set.set(td, nil)
	f.metrics.sequence.DeleteLabelValues(td.Name())
	f.cfg.Logger.Info("stopped federating with trust domain", slog.String("trust_domain", td.Name()))
}

func (f *Federator) startLocked(r *foreignRefresher) {
	ctx, cancel := context.WithCancel(f.ctx)
	r.cancel, r.done = cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		f.refreshLoop(ctx, r)
	}()
}

// refreshLoop fetches d's bundle now and then at the interval it asks for;
// after a failure it retries from MinRefresh, doubling up to MaxRefresh.
func (f *Federator) refreshLoop(ctx context.Context, r *foreignRefresher) {
	retry := f.cfg.MinRefresh
	for {
		wait := f.cfg.Refresh
		b, err := f.refreshOnce(ctx, r)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			wait, retry = retry, min(retry*2, f.cfg.MaxRefresh)
		} else {
			retry = f.cfg.MinRefresh
			if hint, ok := b.RefreshHint(); ok && hint > 0 {
				wait = hint
			}
			wait = min(max(wait, f.cfg.MinRefresh), f.cfg.MaxRefresh)
		}
		f.update(r, func(s *ForeignStatus) { s.NextRefresh = time.Now().Add(wait) })
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// refreshOnce fetches d's bundle, checks it and, when it is good, makes it
// the trusted one. A failure keeps the bundle held.
func (f *Federator) refreshOnce(ctx context.Context, r *foreignRefresher) (*spiffebundle.Bundle, error) {
	d := r.domain
	td := d.TrustDomain.Name()
	b, err := f.fetch(ctx, d)
	if err == nil {
		err = CheckForeignBundle(d.TrustDomain, b)
	}
	if err == nil {
		err = f.checkSequence(d.TrustDomain, b)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		result := "error"
		if isRefusal(err) {
			result = "refused"
		}
		f.metrics.refreshes.WithLabelValues(td, result).Inc()
		f.update(r, func(s *ForeignStatus) { s.LastError = err.Error() })
		f.cfg.Logger.Error("refreshing a federated trust bundle failed; keeping the last good one",
			slog.String("trust_domain", td), slog.String("url", d.URL), slog.String("result", result), slog.Any("error", err))
		return nil, err
	}
	changed, current := f.commit(r, b)
	if !current {
		return nil, ctx.Err()
	}
	result := "unchanged"
	if changed {
		result = "updated"
		f.cfg.Logger.Info("federated trust bundle updated", slog.String("trust_domain", td),
			slog.Uint64("sequence", seqOf(b)), slog.Int("x509_authorities", len(b.X509Authorities())))
	}
	now := time.Now()
	f.metrics.refreshes.WithLabelValues(td, result).Inc()
	f.metrics.sequence.WithLabelValues(td).Set(float64(seqOf(b)))
	f.metrics.lastRefresh.WithLabelValues(td).Set(float64(now.Unix()))
	f.update(r, func(s *ForeignStatus) {
		s.LastRefresh, s.LastError, s.Sequence, s.Held = now, "", seqOf(b), true
	})
	return b, nil
}

// MaxBundleBytes bounds the answer of a bundle endpoint: a fetch that
// would read more is refused. A SPIFFE bundle holds a few certificates and
// keys (a few KiB); 1 MiB leaves room for a thousand.
const MaxBundleBytes = 1 << 20

// fetch gets d's bundle within FetchTimeout (see fetchBundle).
func (f *Federator) fetch(ctx context.Context, d FederatedDomain) (*spiffebundle.Bundle, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.FetchTimeout)
	defer cancel()
	b, err := fetchBundle(ctx, d, endpointTrust{f: f})
	if err == nil {
		return b, nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("no complete answer within %s: %w", f.cfg.FetchTimeout, err)
	}
	if d.Profile == ProfileHTTPSSPIFFE {
		return nil, fmt.Errorf("fetch from %s (https_spiffe, the endpoint must present %s and verify against the bundle held for %s): %w", d.URL, d.EndpointID, d.EndpointID.TrustDomain(), err)
	}
	return nil, fmt.Errorf("fetch from %s (https_web): %w", d.URL, err)
}

// fetchBundle GETs d's bundle as go-spiffe's federation.FetchBundle does,
// with go-spiffe's TLS configurations (tlsconfig.TLSClientConfig with
// AuthorizeID for https_spiffe, the web roots for https_web) and its
// bundle parser, and refuses what FetchBundle takes: an answer other than
// 200 OK, a body of more than MaxBundleBytes, and a redirect to anything
// but https. FetchBundle cannot be given these bounds: it builds its own
// http.Client, and its options set only the TLS authentication.
func fetchBundle(ctx context.Context, d FederatedDomain, trust x509bundle.Source) (*spiffebundle.Bundle, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	switch d.Profile {
	case ProfileHTTPSSPIFFE:
		tr.TLSClientConfig = tlsconfig.TLSClientConfig(trust, tlsconfig.AuthorizeID(d.EndpointID))
	case ProfileHTTPSWeb:
		tr.TLSClientConfig = &tls.Config{RootCAs: d.WebRoots, MinVersion: tls.VersionTLS12}
	default:
		return nil, fmt.Errorf("unknown bundle endpoint profile %q", d.Profile)
	}
	client := &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "https" {
			return fmt.Errorf("redirected to %s: a bundle fetched in plaintext could be anyone's", req.URL.Redacted())
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.URL, http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the endpoint answered %s, not 200 OK", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	if len(body) > MaxBundleBytes {
		return nil, fmt.Errorf("the endpoint sent more than %d bytes; a bundle is refused above that (identity.MaxBundleBytes)", MaxBundleBytes)
	}
	return spiffebundle.Parse(d.TrustDomain, body)
}

// checkSequence refuses a bundle older than the one held: a replay of an
// old bundle would bring back retired roots.
func (f *Federator) checkSequence(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	cur, err := f.set.GetBundleForTrustDomain(td)
	if err != nil {
		return nil
	}
	curSeq, ok1 := cur.SequenceNumber()
	newSeq, ok2 := b.SequenceNumber()
	if ok1 && ok2 && newSeq < curSeq {
		return fmt.Errorf("%w: the bundle for %s has sequence number %d, older than the %d held (a replay, or the other domain reset its CA: then delete and re-create the federation with a fresh initial bundle)", ErrForeignBundle, td, newSeq, curSeq)
	}
	return nil
}

// endpointTrust verifies an https_spiffe endpoint's SVID: with the held
// foreign bundle for an ID of that domain, the local bundle for a local ID.
type endpointTrust struct{ f *Federator }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (e endpointTrust) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td == e.f.cfg.TrustDomain && e.f.cfg.Local != nil {
		return e.f.cfg.Local.GetX509BundleForTrustDomain(td)
	}
	return e.f.set.GetX509BundleForTrustDomain(td)
}

// update changes r's status while r is the domain's running refresher.
func (f *Federator) update(r *foreignRefresher, fn func(*ForeignStatus)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if td := r.domain.TrustDomain; f.running[td] == r {
		fn(f.status[td])
	}
}

// commit makes b the trusted bundle of r's domain while r is its running
// refresher (not stopped or replaced meanwhile).
func (f *Federator) commit(r *foreignRefresher, b *spiffebundle.Bundle) (changed, current bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if td := r.domain.TrustDomain; f.running[td] == r {
		return f.set.set(td, b), true
	}
	return false, false
}

func seqOf(b *spiffebundle.Bundle) uint64 {
	n, _ := b.SequenceNumber()
	return n
}

func isRefusal(err error) bool { return errors.Is(err, ErrForeignBundle) }

type federationMetrics struct {
	refreshes   *prometheus.CounterVec
	sequence    *prometheus.GaugeVec
	lastRefresh *prometheus.GaugeVec
}

func newFederationMetrics(reg prometheus.Registerer) *federationMetrics {
	m := &federationMetrics{
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_ca_federated_bundle_refreshes_total",
			Help: "Fetches of foreign trust bundles by trust domain and result: updated, unchanged, error (unreachable, TLS or format) or refused (another domain's, empty, or older than the one held).",
		}, []string{"trust_domain", "result"}),
		sequence: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_ca_federated_bundle_sequence",
			Help: "Sequence number of the foreign trust bundle held, by trust domain.",
		}, []string{"trust_domain"}),
		lastRefresh: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_ca_federated_bundle_last_refresh_timestamp_seconds",
			Help: "When a foreign trust bundle was last fetched successfully, by trust domain.",
		}, []string{"trust_domain"}),
	}
	if reg != nil {
		reg.MustRegister(m.refreshes, m.sequence, m.lastRefresh)
	}
	return m
}
