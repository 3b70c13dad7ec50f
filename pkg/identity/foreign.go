package identity

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Profiles of a bundle endpoint (SPIFFE Federation standard, section 5).
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// Refresh bounds of foreign bundles: a served refresh hint is clamped to
// [DefaultFederationMinRefresh, DefaultFederationMaxRefresh]; a bundle
// without one is refreshed every DefaultFederationRefresh.
const (
	DefaultFederationMinRefresh = 10 * time.Second
	DefaultFederationMaxRefresh = 10 * time.Minute
	DefaultFederationRefresh    = 5 * time.Minute
)

// ErrForeignBundle wraps every refusal of a foreign bundle or federation.
var ErrForeignBundle = errors.New("foreign trust bundle refused")

// FederatedDomain is a foreign trust domain this CA trusts by its bundle.
type FederatedDomain struct {
	TrustDomain spiffeid.TrustDomain
	// URL is the foreign bundle endpoint (https only).
	URL string
	// Profile is ProfileHTTPSSPIFFE or ProfileHTTPSWeb.
	Profile string
	// EndpointID is the SPIFFE ID the endpoint must present (https_spiffe).
	EndpointID spiffeid.ID
	// Initial is the bundle trusted before the first fetch. https_spiffe
	// needs it when EndpointID is in TrustDomain: the endpoint's SVID is
	// verified against it.
	Initial *spiffebundle.Bundle
	// WebRoots verify an https_web endpoint; nil means the system roots.
	WebRoots *x509.CertPool
}

// Validate checks the declaration and says what to fix.
func (d FederatedDomain) Validate(local spiffeid.TrustDomain) error {
	if d.TrustDomain.IsZero() {
		return fmt.Errorf("%w: no trust domain", ErrConfig)
	}
	if d.TrustDomain == local {
		return fmt.Errorf("%w: %s is this CA's own trust domain; federate with other domains only", ErrConfig, d.TrustDomain)
	}
	u, err := url.Parse(d.URL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%w: federation with %s: bundle endpoint URL %q is not an absolute URL", ErrConfig, d.TrustDomain, d.URL)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("%w: federation with %s: bundle endpoint URL %q must use https (a bundle fetched in plaintext could be anyone's)", ErrConfig, d.TrustDomain, d.URL)
	}
	switch d.Profile {
	case ProfileHTTPSSPIFFE:
		if d.EndpointID.IsZero() {
			return fmt.Errorf("%w: federation with %s: profile https_spiffe needs the endpoint's SPIFFE ID", ErrConfig, d.TrustDomain)
		}
		if d.EndpointID.MemberOf(d.TrustDomain) && d.Initial == nil {
			return fmt.Errorf("%w: federation with %s: profile https_spiffe with endpoint %s in that domain needs an initial bundle to verify the endpoint's first SVID (get it from the other side, e.g. `curl` its bundle endpoint once over a channel you trust, or `tether ca bundle`)", ErrConfig, d.TrustDomain, d.EndpointID)
		}
		if d.WebRoots != nil {
			return fmt.Errorf("%w: federation with %s: web roots are for profile https_web (https_spiffe verifies the endpoint's SVID with the domain's bundle)", ErrConfig, d.TrustDomain)
		}
	case ProfileHTTPSWeb:
		if !d.EndpointID.IsZero() {
			return fmt.Errorf("%w: federation with %s: profile https_web takes no endpoint SPIFFE ID (the web certificate authenticates it)", ErrConfig, d.TrustDomain)
		}
	default:
		return fmt.Errorf("%w: federation with %s: profile %q: want https_spiffe or https_web", ErrConfig, d.TrustDomain, d.Profile)
	}
	if d.Initial != nil {
		if err := CheckForeignBundle(d.TrustDomain, d.Initial); err != nil {
			return fmt.Errorf("%w: federation with %s: initial bundle: %v", ErrConfig, d.TrustDomain, err)
		}
	}
	return nil
}

// CheckForeignBundle refuses a bundle that cannot be td's: one without
// X.509 authorities, or with an authority that names another trust domain
// (a CA certificate of the X509-SVID standard carries its trust domain's
// SPIFFE ID).
func CheckForeignBundle(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	if b == nil || len(b.X509Authorities()) == 0 {
		return fmt.Errorf("%w: the bundle for %s has no X.509 authorities", ErrForeignBundle, td)
	}
	for _, cert := range b.X509Authorities() {
		for _, u := range cert.URIs {
			id, err := spiffeid.FromURI(u)
			if err != nil {
				continue
			}
			if id.TrustDomain() != td {
				return fmt.Errorf("%w: the bundle fetched for %s holds a CA certificate of trust domain %s (subject %q): the endpoint serves another domain's bundle", ErrForeignBundle, td, id.TrustDomain(), cert.Subject)
			}
		}
	}
	return nil
}

// ParseInitialBundle reads a bootstrap bundle for td: PEM certificates or a
// SPIFFE bundle (JWKS) document.
func ParseInitialBundle(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("%w: the initial bundle for %s is empty", ErrForeignBundle, td)
	}
	if trimmed[0] == '{' {
		b, err := spiffebundle.Parse(td, trimmed)
		if err != nil {
			return nil, fmt.Errorf("%w: the initial bundle for %s is not a SPIFFE bundle: %v", ErrForeignBundle, td, err)
		}
		return b, nil
	}
	var certs []*x509.Certificate
	rest := trimmed
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: the initial bundle for %s holds a PEM %q block; want CERTIFICATE blocks only", ErrForeignBundle, td, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: the initial bundle for %s: %v", ErrForeignBundle, td, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) > 0 || len(certs) == 0 {
		return nil, fmt.Errorf("%w: the initial bundle for %s is neither PEM certificates nor a SPIFFE bundle", ErrForeignBundle, td)
	}
	return spiffebundle.FromX509Authorities(td, certs), nil
}

// ForeignStatus is where the refresh of one foreign bundle stands.
type ForeignStatus struct {
	TrustDomain string
	// Sequence is the sequence number of the bundle held (0: none served).
	Sequence uint64
	// LastRefresh is when a fetch last succeeded; zero before the first.
	LastRefresh time.Time
	// LastError is the last failed fetch's error, cleared by a success.
	LastError string
	// NextRefresh is when the next fetch is due.
	NextRefresh time.Time
	// Held reports whether a bundle (initial or fetched) is trusted.
	Held bool
}

// FederatedBundles is the set of foreign bundles trusted now. It is an
// x509bundle.Source and a spiffebundle.Source; Changed tells of a change.
type FederatedBundles struct {
	mu      sync.Mutex
	bundles map[spiffeid.TrustDomain]*spiffebundle.Bundle
	changed chan struct{}
}

// NewFederatedBundles returns an empty set.
func NewFederatedBundles() *FederatedBundles {
	return &FederatedBundles{bundles: map[spiffeid.TrustDomain]*spiffebundle.Bundle{}, changed: make(chan struct{})}
}

// GetBundleForTrustDomain returns td's foreign bundle.
func (s *FederatedBundles) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bundles[td]
	if !ok {
		return nil, fmt.Errorf("no federated bundle for trust domain %q", td)
	}
	return b, nil
}

// GetX509BundleForTrustDomain returns the X.509 part of td's foreign bundle.
func (s *FederatedBundles) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, err := s.GetBundleForTrustDomain(td)
	if err != nil {
		return nil, err
	}
	return b.X509Bundle(), nil
}

// Snapshot returns the bundles held, sorted by trust domain, and a channel
// closed at the next change.
func (s *FederatedBundles) Snapshot() ([]*spiffebundle.Bundle, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*spiffebundle.Bundle, 0, len(s.bundles))
	for _, b := range s.bundles {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TrustDomain().Name() < out[j].TrustDomain().Name() })
	return out, s.changed
}

// set stores or (b nil) removes td's bundle and notifies when it changed.
func (s *FederatedBundles) set(td spiffeid.TrustDomain, b *spiffebundle.Bundle) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.bundles[td]
	switch {
	case b == nil && !ok:
		return false
	case b == nil:
		delete(s.bundles, td)
	case ok && cur.Equal(b):
		return false
	default:
		s.bundles[td] = b
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return true
}
