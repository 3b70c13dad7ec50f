package identity

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Upstream signs the CA's intermediate with an organisation's own PKI
// (cert-manager, in package identity/kube), so that the root stays there.
//
// SignIntermediate blocks until the certificate is issued or ctx ends. It is
// called only by the replica that writes the state.
type Upstream interface {
	// Name identifies the upstream in logs and status, e.g. "cert-manager Issuer/corp-ca".
	Name() string
	SignIntermediate(ctx context.Context, csrDER []byte, ttl time.Duration) (*UpstreamResult, error)
}

// UpstreamResult is a signed intermediate.
type UpstreamResult struct {
	// Chain is the intermediate first, then any certificates above it
	// that are not roots, DER.
	Chain [][]byte
	// Roots are the upstream's trust anchors, DER.
	Roots [][]byte
}

// UpstreamTimeout bounds one upstream signing (cert-manager approval
// included).
const UpstreamTimeout = 5 * time.Minute

// upstreamSigned is an intermediate signed by the upstream, with its key.
type upstreamSigned struct {
	key []byte // PKCS#8
	res *UpstreamResult
}

// signUpstream makes a key and has the upstream sign an intermediate for
// it, checking that the result is a CA certificate for that key which
// chains to the returned roots. It takes no lock.
func (c *CA) signUpstream(ctx context.Context) (*upstreamSigned, error) {
	name := c.cfg.Upstream.Name()
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := intermediateCSR(c.cfg.TrustDomain, key)
	if err != nil {
		return nil, err
	}
	res, err := c.cfg.Upstream.SignIntermediate(ctx, csr, c.cfg.IntermediateTTL)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", name, err)
	}
	if len(res.Chain) == 0 || len(res.Roots) == 0 {
		return nil, fmt.Errorf("upstream %s returned no certificate or no CA", name)
	}
	cert, err := x509.ParseCertificate(res.Chain[0])
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", name, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 || !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("upstream %s signed something other than a CA certificate for our key", name)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, der := range res.Roots {
		r, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("upstream %s root: %w", name, err)
		}
		roots.AddCert(r)
	}
	for _, der := range res.Chain[1:] {
		i, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("upstream %s chain: %w", name, err)
		}
		inters.AddCert(i)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: c.cfg.Clock.Now()}); err != nil {
		return nil, fmt.Errorf("upstream %s: the signed intermediate does not chain to its CA: %w", name, err)
	}
	// The intermediate is a trust anchor (Generation.anchors): a new one
	// is published a propagation delay before it signs, and renewed with a
	// third of its life left, so it must live longer than three delays.
	if life, need := cert.NotAfter.Sub(c.cfg.Clock.Now()), 3*c.cfg.PropagationDelay; life <= need {
		return nil, fmt.Errorf("upstream %s signed an intermediate valid for only %s (until %s); it must be valid for more than %s, three times the propagation delay, "+
			"to be published before it signs: have the issuer sign for longer (cert-manager caps it at the issuer's own CA expiry) or lower the propagation delay",
			name, life.Round(time.Second), cert.NotAfter.UTC().Format(time.RFC3339), need)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &upstreamSigned{key: pk, res: res}, nil
}

// republishUpstreamAnchors gives a state written while the bundle still
// trusted the upstream's roots a new bundle sequence, now that it holds the
// upstream generations' own intermediates instead.
//
// That version renewed upstream intermediates in place, dropping the
// previous one: if it did so less than an SVID lifetime ago, the SVIDs the
// previous intermediate signed chain only to the upstream's roots, so those
// stay in the bundle until the last of them has expired
// (UpstreamRootsUntil).
func (c *CA) republishUpstreamAnchors(ctx context.Context) error {
	return c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		if st.UpstreamAnchors == AnchorsIntermediates || !slices.ContainsFunc(st.Generations, func(g Generation) bool {
			return g.Upstream != "" && g.State != Retired
		}) {
			return false, nil
		}
		st.UpstreamAnchors = AnchorsIntermediates
		st.BundleSequence++
		for _, g := range st.Generations {
			if g.Upstream == "" || g.State == Retired || len(g.Chain) == 0 {
				continue
			}
			inter, err := x509.ParseCertificate(g.Chain[0])
			// Signed after its generation was made: renewed in place,
			// at about its NotBefore.
			if err != nil || !inter.NotBefore.After(g.CreatedAt.Add(time.Minute)) {
				continue
			}
			if until := inter.NotBefore.Add(c.cfg.SVIDTTL + c.cfg.Backdate + time.Minute); until.After(now) && until.After(st.UpstreamRootsUntil) {
				st.UpstreamRootsUntil = until
			}
		}
		c.log.Warn("the trust bundle now holds the CA's own upstream-signed intermediates instead of the upstream's roots; certificates the upstream signed for anyone else no longer authenticate in the mesh",
			slog.Uint64("bundle_sequence", st.BundleSequence))
		if !st.UpstreamRootsUntil.IsZero() {
			c.log.Warn("the upstream's roots stay in the bundle until the SVIDs of an intermediate renewed in place by the previous version have expired",
				slog.Time("until", st.UpstreamRootsUntil))
		}
		return true, nil
	})
}

// maintainUpstreamAnchors runs on every tick: it republishes a state that a
// replica of the previous version wrote during a rolling upgrade (dropping
// UpstreamAnchors), and drops the upstream's roots from the bundle once
// UpstreamRootsUntil has passed.
func (c *CA) maintainUpstreamAnchors(ctx context.Context) error {
	if err := c.republishUpstreamAnchors(ctx); err != nil {
		return err
	}
	return c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		if st.UpstreamRootsUntil.IsZero() || now.Before(st.UpstreamRootsUntil) {
			return false, nil
		}
		st.UpstreamRootsUntil = time.Time{}
		c.log.Info("the upstream's roots left the trust bundle; it trusts only the CA's own intermediates")
		return true, nil
	})
}

// presign gets the next upstream intermediate before the state lock is
// taken, so a slow approval blocks no one.
func (c *CA) presign(ctx context.Context) error {
	if c.cfg.Upstream == nil || c.presigned.Load() != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, UpstreamTimeout)
	defer cancel()
	s, err := c.signUpstream(ctx)
	if err != nil {
		return err
	}
	c.presigned.Store(s)
	return nil
}

// intermediateCSR asks for a CA certificate with the trust domain's
// path-less SPIFFE ID.
func intermediateCSR(td spiffeid.TrustDomain, key crypto.Signer) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{Organization: []string{"Tether"}, CommonName: "Tether intermediate"},
		URIs:    []*url.URL{td.ID().URL()},
	}, key)
}
