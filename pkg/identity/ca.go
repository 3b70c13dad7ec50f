package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Config configures a CA. Zero durations take the defaults of
// docs/architecture.md ("Lifetimes and renewal").
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Store       Store
	// SVIDTTL is the lifetime of issued SVIDs (default 1h).
	SVIDTTL time.Duration
	// TTLByPrefix shortens the lifetime of the SVIDs of IDs under some
	// path prefixes (high-value identities); the longest prefix wins.
	TTLByPrefix []PrefixTTL
	// MaxRenewalAge is how long after its last attestation an SVID chain
	// may still be renewed over mTLS alone (default 7 days); then a new
	// credential is needed. Kubernetes identities present a fresh token on
	// every renewal instead (see ReattestsOnRenewal).
	MaxRenewalAge time.Duration
	// IntermediateTTL is the lifetime of the signing CA (default 30 days).
	IntermediateTTL time.Duration
	// RootTTL is the lifetime of a root (default 1 year).
	RootTTL time.Duration
	// Backdate is how far NotBefore is set in the past (default 30s).
	Backdate time.Duration
	// PropagationDelay is how long a prepared root must have been in the
	// bundle before it may be activated (default 1m).
	PropagationDelay time.Duration
	// BundleEndpointRefreshHint is set when this CA serves a SPIFFE bundle
	// endpoint (BundleEndpointHandler) with this refresh hint: activate
	// then waits until the endpoint has served the prepared root for that
	// long plus a margin (BundleEndpointGate). Zero: no endpoint, no gate.
	BundleEndpointRefreshHint time.Duration
	// TickInterval is how often Run reloads the store and takes due
	// rotation steps (default 10s).
	TickInterval time.Duration
	// AutoRotate lets Run take root-rotation steps (prepare, activate,
	// retire of self-managed roots) on schedule. Intermediates are renewed
	// on schedule regardless: that is routine, not rotation. In upstream
	// mode every step follows from an intermediate renewal, so all are
	// taken regardless.
	AutoRotate bool
	// JWTIssuer, if set, is the iss claim of every JWT-SVID: the https URL
	// of the OIDC discovery document (oidc.go) that clouds' workload
	// identity federation verifies them with (ValidateOIDCIssuer).
	JWTIssuer string
	// Upstream, if set, signs the intermediate instead of an own root.
	Upstream Upstream
	// OfflineIntermediate, if set, is the signing intermediate of a root
	// whose key the CA never holds (offline-root mode).
	OfflineIntermediate *OfflineIntermediate
	// IsLeader reports whether this replica takes scheduled rotation steps.
	// Nil means always (a single replica).
	IsLeader func() bool
	// Replica names this replica in sidecar reports (its pod name).
	Replica string
	// ReportInterval is the heartbeat asked of reporting sidecars (default
	// DefaultReportInterval); MaxReports bounds the reports this replica
	// keeps (default DefaultMaxReports).
	ReportInterval time.Duration
	MaxReports     int
	// PeerReports, with several replicas, returns the reports the others
	// published; the rotation gates and RotationStatus merge them with this
	// replica's. Nil with a single replica.
	PeerReports func(ctx context.Context) ([]ReportSnapshot, error)
	Clock       Clock
	Logger      *slog.Logger
	// Registerer receives the CA's metrics; nil means none are registered.
	Registerer prometheus.Registerer
}

// Default lifetimes, per docs/architecture.md ("Lifetimes and renewal").
const (
	DefaultSVIDTTL          = time.Hour
	DefaultIntermediateTTL  = 30 * 24 * time.Hour
	DefaultRootTTL          = 365 * 24 * time.Hour
	DefaultBackdate         = 30 * time.Second
	DefaultPropagationDelay = time.Minute
)

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid CA configuration")

func (c *Config) fill() error {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.SVIDTTL, DefaultSVIDTTL)
	def(&c.IntermediateTTL, DefaultIntermediateTTL)
	def(&c.RootTTL, DefaultRootTTL)
	def(&c.Backdate, DefaultBackdate)
	def(&c.PropagationDelay, DefaultPropagationDelay)
	def(&c.TickInterval, 10*time.Second)
	def(&c.MaxRenewalAge, DefaultMaxRenewalAge)
	if c.Clock == nil {
		c.Clock = RealClock
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.TrustDomain.IsZero():
		return fmt.Errorf("%w: no trust domain", ErrConfig)
	case c.Store == nil:
		return fmt.Errorf("%w: no store", ErrConfig)
	case c.SVIDTTL < 0 || c.IntermediateTTL < 0 || c.RootTTL < 0 || c.Backdate < 0 || c.PropagationDelay < 0:
		return fmt.Errorf("%w: lifetimes must be positive", ErrConfig)
	case c.SVIDTTL < time.Minute:
		return fmt.Errorf("%w: SVID lifetime %s is shorter than a minute", ErrConfig, c.SVIDTTL)
	case c.SVIDTTL*2 > c.IntermediateTTL:
		return fmt.Errorf("%w: SVID lifetime %s must be at most half the intermediate lifetime %s", ErrConfig, c.SVIDTTL, c.IntermediateTTL)
	case c.Upstream != nil && c.OfflineIntermediate != nil:
		return fmt.Errorf("%w: an upstream issuer and an offline root exclude each other", ErrConfig)
	case c.Upstream == nil && c.IntermediateTTL > c.RootTTL:
		return fmt.Errorf("%w: intermediate lifetime %s is longer than the root lifetime %s", ErrConfig, c.IntermediateTTL, c.RootTTL)
	case c.Upstream != nil && c.PropagationDelay*3 >= c.IntermediateTTL:
		return fmt.Errorf("%w: propagation delay %s must be less than a third of the intermediate lifetime %s: in upstream mode each new intermediate is a trust anchor, published that long before it signs, and it is renewed with a third of its life left",
			ErrConfig, c.PropagationDelay, c.IntermediateTTL)
	case c.BundleEndpointRefreshHint < 0:
		return fmt.Errorf("%w: bundle endpoint refresh hint %s must be positive", ErrConfig, c.BundleEndpointRefreshHint)
	case c.MaxRenewalAge < 0:
		return fmt.Errorf("%w: max renewal age %s must be positive", ErrConfig, c.MaxRenewalAge)
	case c.MaxRenewalAge < time.Minute:
		return fmt.Errorf("%w: max renewal age %s is shorter than a minute", ErrConfig, c.MaxRenewalAge)
	}
	if c.JWTIssuer != "" {
		if _, err := ValidateOIDCIssuer(c.JWTIssuer); err != nil {
			return fmt.Errorf("JWT issuer: %w", err)
		}
	}
	rules, err := CheckPrefixTTLs(c.TTLByPrefix, c.SVIDTTL)
	if err != nil {
		return err
	}
	c.TTLByPrefix = rules
	return nil
}

// CA is Tether's certificate authority. It is safe for concurrent use; Sign
// takes no lock.
type CA struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	selfID  spiffeid.ID

	mu    sync.Mutex // guards state and rev, and serializes writes
	state *State
	rev   string

	auth   atomic.Pointer[authority]
	bundle atomic.Pointer[BundleVersion]
	self   atomic.Pointer[selfSVID]
	// presigned is an upstream intermediate obtained ahead of a state change.
	presigned atomic.Pointer[upstreamSigned]
	// offlineWarned is when warnOffline last logged.
	offlineWarned atomic.Int64
	// reports are the sidecars' reports this replica received.
	reports *Reports
	// waitLogged is the last reason a scheduled step waited for, and when
	// it was logged (guarded by mu).
	waitLogged   string
	waitLoggedAt time.Time

	// jwtKeys are the JWT keys OIDCKeySet publishes (oidc.go).
	jwtKeys atomic.Pointer[[]publishedJWTKey]
}

// BundleVersion is one version of the trust bundle.
type BundleVersion struct {
	Sequence uint64
	// Bundle holds the X.509 roots.
	Bundle *x509bundle.Bundle
	// SPIFFE is the whole SPIFFE bundle: X.509 roots and JWT keys, with the
	// sequence number set. Its Marshal gives the SPIFFE bundle (JWKS) format.
	SPIFFE *spiffebundle.Bundle
	// Changed is closed once a newer version exists.
	Changed <-chan struct{}
	changed chan struct{}
}

type selfSVID struct {
	svid *x509svid.SVID
	gen  uint64
}

// Issued is an SVID the CA signed.
type Issued struct {
	ID       spiffeid.ID
	Chain    [][]byte // DER, leaf first
	Serial   *big.Int
	NotAfter time.Time
}

// Leaf parses the issued leaf certificate.
func (i *Issued) Leaf() (*x509.Certificate, error) { return x509.ParseCertificate(i.Chain[0]) }

// ErrNotReady means the CA holds no valid signing CA. It is retryable.
var ErrNotReady = errors.New("CA has no valid signing certificate")

// CAID is the SPIFFE ID the CA serves with.
func CAID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/tether-system/sa/tether-ca")
}

// NewCA loads the CA's state from the store, creating a first generation
// if the store is empty, and issues the CA's own serving SVID.
func NewCA(ctx context.Context, cfg Config) (*CA, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	c := &CA{cfg: cfg, log: cfg.Logger, selfID: CAID(cfg.TrustDomain)}
	c.reports = NewReports(ReportsConfig{Replica: cfg.Replica, Interval: cfg.ReportInterval, Max: cfg.MaxReports, Clock: cfg.Clock})
	c.metrics = newMetrics(cfg.Registerer, c)
	if err := c.load(ctx); err != nil {
		return nil, err
	}
	if cfg.OfflineIntermediate != nil {
		if err := c.installOffline(ctx); err != nil {
			return nil, err
		}
	}
	if err := c.republishUpstreamAnchors(ctx); err != nil {
		return nil, err
	}
	if err := c.Ready(); err != nil {
		// The intermediate ended while no CA ran, or while renewing it
		// failed: nothing can be signed, not even this CA's serving SVID,
		// and no operator command can reach a CA that does not start.
		c.log.Warn("the signing intermediate is not valid; renewing it before starting", slog.Any("reason", err))
		if err := c.Rotate(ctx, StepRenewIntermediate, false); err != nil {
			return nil, fmt.Errorf("the signing intermediate is not valid and could not be renewed: %w", err)
		}
	}
	if err := c.renewSelf(); err != nil {
		return nil, err
	}
	return c, nil
}

// load reads the store, or bootstraps it.
func (c *CA) load(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, rev, err := c.cfg.Store.Load(ctx)
	if errors.Is(err, ErrNotFound) {
		return c.bootstrapLocked(ctx)
	}
	if err != nil {
		return fmt.Errorf("load CA state: %w", err)
	}
	if st.TrustDomain != c.cfg.TrustDomain.Name() {
		return fmt.Errorf("%w: the store holds a CA for trust domain %q, not %q", ErrConfig, st.TrustDomain, c.cfg.TrustDomain.Name())
	}
	return c.applyLocked(st, rev)
}

func (c *CA) bootstrapLocked(ctx context.Context) error {
	now := c.cfg.Clock.Now()
	st := &State{Version: StateVersion, TrustDomain: c.cfg.TrustDomain.Name(), BundleSequence: 1, UpstreamAnchors: AnchorsIntermediates}
	var (
		g   Generation
		err error
	)
	if c.cfg.OfflineIntermediate != nil {
		g, err = c.offlineGeneration(st, now)
	} else {
		g, err = c.newGeneration(ctx, st, Active, now)
	}
	if err != nil {
		return fmt.Errorf("create first CA generation: %w", err)
	}
	g.ActivatedAt = now
	st.Generations = []Generation{g}
	rev, err := c.cfg.Store.Save(ctx, st, "")
	if errors.Is(err, ErrConflict) { // another replica was faster
		st, rev, err = c.cfg.Store.Load(ctx)
	}
	if err != nil {
		return fmt.Errorf("save new CA state: %w", err)
	}
	c.log.Info("created CA", slog.String("trust_domain", st.TrustDomain), slog.Uint64("generation", g.ID))
	return c.applyLocked(st, rev)
}

// applyLocked makes st the CA's state: it swaps in the signing authority and
// publishes a new bundle version if the roots changed.
func (c *CA) applyLocked(st *State, rev string) error {
	_, a, err := st.activeAuthority()
	if err != nil {
		return err
	}
	c.state, c.rev = st, rev
	c.auth.Store(a)
	keys := publishedJWTKeysOf(st)
	c.jwtKeys.Store(&keys)
	if cur := c.bundle.Load(); cur == nil || cur.Sequence != st.BundleSequence {
		roots := rootsOf(st)
		sb := spiffebundle.FromX509Authorities(c.cfg.TrustDomain, roots)
		sb.SetJWTAuthorities(jwtKeysOf(st))
		sb.SetSequenceNumber(st.BundleSequence)
		sb.SetRefreshHint(c.cfg.TickInterval)
		ch := make(chan struct{})
		c.bundle.Store(&BundleVersion{Sequence: st.BundleSequence, Bundle: x509bundle.FromX509Authorities(c.cfg.TrustDomain, roots),
			SPIFFE: sb, Changed: ch, changed: ch})
		if cur != nil {
			close(cur.changed)
		}
	}
	c.metrics.observeState(st)
	return nil
}

// rootsOf returns the distinct trust anchors of every generation still
// trusted: self-made roots, and in upstream mode Tether's own intermediates
// (Generation.anchors).
func rootsOf(st *State) []*x509.Certificate {
	var roots []*x509.Certificate
	var seen [][]byte
	for _, g := range st.Generations {
		if g.State == Retired {
			continue
		}
		ders := g.anchors()
		if g.Upstream != "" && !st.UpstreamRootsUntil.IsZero() {
			ders = append(slices.Clone(ders), g.Roots...)
		}
		for _, der := range ders {
			if slices.ContainsFunc(seen, func(s []byte) bool { return bytes.Equal(s, der) }) {
				continue
			}
			if cert, err := x509.ParseCertificate(der); err == nil {
				seen = append(seen, der)
				roots = append(roots, cert)
			}
		}
	}
	return roots
}

// jwtKeysOf returns the JWT public keys of every generation still trusted.
func jwtKeysOf(st *State) map[string]crypto.PublicKey {
	keys := map[string]crypto.PublicKey{}
	for _, g := range st.Generations {
		if g.State == Retired || len(g.JWTKey) == 0 {
			continue
		}
		if k, err := x509.ParsePKCS8PrivateKey(g.JWTKey); err == nil {
			if s, ok := k.(crypto.Signer); ok {
				keys[g.JWTKeyID] = s.Public()
			}
		}
	}
	return keys
}

// sameBundle reports whether two states trust the same roots and JWT keys.
func sameBundle(a, b *State) bool {
	ra, rb := rootsOf(a), rootsOf(b)
	if !slices.EqualFunc(ra, rb, func(x, y *x509.Certificate) bool { return x.Equal(y) }) {
		return false
	}
	ka, kb := jwtKeysOf(a), jwtKeysOf(b)
	if len(ka) != len(kb) {
		return false
	}
	for kid := range ka {
		if _, ok := kb[kid]; !ok {
			return false
		}
	}
	return true
}

// mutate applies fn to a copy of the state and saves it with a
// compare-and-swap, reloading and retrying when another replica wrote first.
// fn returns false when it changed nothing.
func (c *CA) mutate(ctx context.Context, fn func(st *State, now time.Time) (bool, error)) error {
	for attempt := 0; ; attempt++ {
		c.mu.Lock()
		st := c.state.clone()
		changed, err := fn(st, c.cfg.Clock.Now())
		if err != nil || !changed {
			c.mu.Unlock()
			return err
		}
		if !sameBundle(c.state, st) {
			st.BundleSequence = c.state.BundleSequence + 1
		}
		rev, err := c.cfg.Store.Save(ctx, st, c.rev)
		if errors.Is(err, ErrConflict) && attempt < 5 {
			err = c.reloadLocked(ctx)
			c.mu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		if err != nil {
			c.mu.Unlock()
			return fmt.Errorf("save CA state: %w", err)
		}
		err = c.applyLocked(st, rev)
		c.mu.Unlock()
		return err
	}
}

func (c *CA) reloadLocked(ctx context.Context) error {
	st, rev, err := c.cfg.Store.Load(ctx)
	if err != nil {
		return fmt.Errorf("reload CA state: %w", err)
	}
	if rev == c.rev {
		return nil
	}
	return c.applyLocked(st, rev)
}

// Sign issues an X.509-SVID for id, which the caller has authenticated, with
// the public key of csrDER. Every name in the CSR is ignored. The SVID
// records an attestation of kind KindLocal, now.
func (c *CA) Sign(id spiffeid.ID, csrDER []byte) (*Issued, error) {
	return c.sign(id, csrDER, &Attestation{Kind: KindLocal, At: c.cfg.Clock.Now()})
}

// SignAttested is Sign recording att, how and when id's chain was last
// attested, in the SVID (see OIDAttestation).
func (c *CA) SignAttested(id spiffeid.ID, csrDER []byte, att Attestation) (*Issued, error) {
	if att.Kind == "" || att.At.IsZero() {
		return nil, fmt.Errorf("%w: no attestation to record for %s", ErrPermissionDenied, id)
	}
	return c.sign(id, csrDER, &att)
}

// sign issues the SVID; a nil att records none (only tests do that, to
// make the SVIDs of earlier versions).
func (c *CA) sign(id spiffeid.ID, csrDER []byte, att *Attestation) (*Issued, error) {
	if id.TrustDomain() != c.cfg.TrustDomain {
		return nil, fmt.Errorf("%w: %s is not in trust domain %s", ErrPermissionDenied, id, c.cfg.TrustDomain)
	}
	if id.Path() == "" {
		return nil, errNoPath(id)
	}
	pub, err := ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	a := c.auth.Load()
	now := c.cfg.Clock.Now()
	signer := a.chain[0]
	notAfter := minTime(now.Add(c.svidTTL(id)), signer.NotAfter)
	if !notAfter.After(now) {
		return nil, fmt.Errorf("%w: signing CA expired at %s", ErrNotReady, signer.NotAfter.UTC().Format(time.RFC3339))
	}
	tmpl, err := leafTemplate(id, now.Add(-c.cfg.Backdate), notAfter)
	if err != nil {
		return nil, err
	}
	if att != nil {
		ext, err := att.extension()
		if err != nil {
			return nil, err
		}
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, ext)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("sign SVID: %w", err)
	}
	chain := make([][]byte, 0, 1+len(a.chainDER))
	chain = append(append(chain, der), a.chainDER...)
	return &Issued{ID: id, Chain: chain, Serial: tmpl.SerialNumber, NotAfter: notAfter}, nil
}

// TrustDomain is the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.cfg.TrustDomain }

// Bundle returns the current bundle version.
func (c *CA) Bundle() *BundleVersion { return c.bundle.Load() }

// GetX509BundleForTrustDomain makes the CA an x509bundle.Source.
func (c *CA) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != c.cfg.TrustDomain {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	return c.bundle.Load().Bundle, nil
}

// GetX509SVID returns the CA's own serving SVID (an x509svid.Source).
func (c *CA) GetX509SVID() (*x509svid.SVID, error) {
	return c.self.Load().svid, nil
}

// Ready returns nil while the CA holds a valid signing CA.
func (c *CA) Ready() error {
	a := c.auth.Load()
	if a == nil {
		return ErrNotReady
	}
	now := c.cfg.Clock.Now()
	if s := a.chain[0]; now.After(s.NotAfter) || now.Before(s.NotBefore) {
		return fmt.Errorf("%w: signing CA valid %s to %s", ErrNotReady, s.NotBefore.UTC().Format(time.RFC3339), s.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// renewSelf issues the CA's serving SVID when it is past half its life or
// was signed by a generation that no longer signs.
func (c *CA) renewSelf() error {
	a := c.auth.Load()
	now := c.cfg.Clock.Now()
	c.warnOffline(a, now)
	if cur := c.self.Load(); cur != nil && cur.gen == a.gen {
		leaf := cur.svid.Certificates[0]
		if now.Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)) {
			return nil
		}
	}
	svid, gen, err := c.mintOwn(c.selfID)
	if err != nil {
		return fmt.Errorf("issue the CA's own SVID: %w", err)
	}
	c.self.Store(&selfSVID{svid: svid, gen: gen})
	return nil
}

// mintOwn issues an SVID for one of the CA's own IDs (its serving SVID,
// the bundle endpoint's) with a fresh key, and returns it with the
// generation that signed it.
func (c *CA) mintOwn(id spiffeid.ID) (*x509svid.SVID, uint64, error) {
	a := c.auth.Load()
	key, err := NewKey()
	if err != nil {
		return nil, 0, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, 0, err
	}
	iss, err := c.Sign(id, csr)
	if err != nil {
		return nil, 0, err
	}
	leaf, err := iss.Leaf()
	if err != nil {
		return nil, 0, err
	}
	certs := []*x509.Certificate{leaf}
	certs = append(certs, a.chain...)
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, a.gen, nil
}

// Rotate takes one manual rotation step, or renews the intermediate now
// (StepRenewIntermediate). See RotateStep.
func (c *CA) Rotate(ctx context.Context, step Step, force bool) error {
	_, err := c.RotateStep(ctx, step, force)
	return err
}

// RotateStep takes one manual rotation step. Activate and retire wait for
// the sidecars' reports (RotationStatus) besides time; force overrides
// every gate, and the refusals it overrode come back as warnings (and are
// logged).
func (c *CA) RotateStep(ctx context.Context, step Step, force bool) ([]string, error) {
	if step == StepPrepare || step == StepRenewIntermediate {
		if err := c.presign(ctx); err != nil {
			c.metrics.rotation(step, err)
			return nil, err
		}
	}
	var gv *gateView
	if step == StepActivate || step == StepRetire {
		gv = c.readGateView(ctx)
	}
	err := c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		if gv != nil {
			gv.warnings = nil // a retry after a conflict starts over
		}
		switch step {
		case StepPrepare:
			return true, c.prepare(ctx, st, now)
		case StepActivate:
			return true, c.activate(st, now, force, gv)
		case StepRetire:
			return true, c.retire(st, now, force, gv)
		case StepRenewIntermediate:
			return true, c.renewIntermediateNow(ctx, st, now)
		default:
			return false, fmt.Errorf("%w: unknown step %q (want prepare, activate, retire or renew-intermediate)", ErrRotation, step)
		}
	})
	c.metrics.rotation(step, err)
	if err != nil {
		return nil, err
	}
	var warnings []string
	if gv != nil {
		warnings = gv.warnings
	}
	c.log.Info("rotation step taken", slog.String("step", string(step)), slog.Bool("force", force), slog.Uint64("bundle_sequence", c.Bundle().Sequence))
	return warnings, c.renewSelf()
}

// Tick reloads the state written by other replicas, takes due steps (on
// the leader: intermediate renewal always, root rotation with AutoRotate)
// and renews the CA's own SVID.
func (c *CA) Tick(ctx context.Context) error {
	c.mu.Lock()
	err := c.reloadLocked(ctx)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	err = c.maintainUpstreamAnchors(ctx)
	if perr := c.tickRevocations(ctx); perr != nil {
		err = errors.Join(err, fmt.Errorf("prune revocations: %w", perr))
	}
	if c.cfg.IsLeader == nil || c.cfg.IsLeader() {
		err = errors.Join(err, c.scheduledSteps(ctx))
	}
	rs := c.RotationStatus(ctx)
	c.metrics.observeRotation(rs)
	if rs.PeersError != nil {
		err = errors.Join(err, rs.PeersError)
	}
	// A failed step must not keep the CA's own SVID from being renewed.
	return errors.Join(err, c.renewSelf())
}

// automatic reports whether Tick takes step on schedule.
func (c *CA) automatic(step Step) bool {
	return c.cfg.AutoRotate || step == StepRenewIntermediate || c.cfg.Upstream != nil
}

// scheduledSteps takes every automatic step that is due.
func (c *CA) scheduledSteps(ctx context.Context) error {
	c.mu.Lock()
	step, at := c.due(c.state, c.automatic)
	pending := c.state.find(Prepared) != nil || c.state.find(Superseded) != nil
	c.mu.Unlock()
	var gv *gateView
	if pending { // an activate or retire may be due in this tick
		gv = c.readGateView(ctx)
	}
	if step == StepRenewIntermediate && !c.cfg.Clock.Now().Before(at) {
		if err := c.presign(ctx); err != nil {
			c.metrics.rotation(step, err)
			return fmt.Errorf("renew intermediate: %w", err)
		}
	}
	var taken []Step
	err := c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		var err error
		taken, err = c.autoStep(ctx, st, now, gv)
		return len(taken) > 0, err
	})
	for _, s := range taken {
		c.metrics.rotation(s, err)
		c.log.Info("scheduled rotation step taken", slog.String("step", string(s)))
	}
	if err != nil && len(taken) == 0 && step != "" {
		c.metrics.rotation(step, err) // the due step failed
	}
	return err
}

// Run ticks until ctx ends. Errors are logged and retried on the next tick.
func (c *CA) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := c.Tick(ctx); err != nil {
				c.log.Error("CA maintenance failed; will retry", slog.Any("error", err))
			}
		}
	}
}
