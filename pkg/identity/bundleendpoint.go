package identity

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DefaultBundleRefreshHint is the refresh hint the bundle endpoint serves:
// well under DefaultPropagationDelay, so a federated domain that honours it
// holds a prepared root before this CA may activate it.
const DefaultBundleRefreshHint = 20 * time.Second

// BundleEndpointID is the SPIFFE ID tether-ca's bundle endpoint presents in
// the https_spiffe profile of the SPIFFE Federation standard.
func BundleEndpointID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/tether/bundle-endpoint")
}

// BundleEndpointHandler serves the CA's SPIFFE bundle (X.509 roots and JWT
// keys, with its sequence number and refreshHint) with go-spiffe's
// federation.Handler. It reads the current bundle version on every request,
// so a root is served as soon as the journal trusts it.
func (c *CA) BundleEndpointHandler(refreshHint time.Duration) (http.Handler, error) {
	if refreshHint <= 0 {
		refreshHint = DefaultBundleRefreshHint
	}
	return federation.NewHandler(c.cfg.TrustDomain, endpointBundle{ca: c, hint: refreshHint})
}

// endpointBundle is the spiffebundle.Source behind the bundle endpoint.
type endpointBundle struct {
	ca   *CA
	hint time.Duration
}

// GetBundleForTrustDomain returns a copy of the current bundle with the
// endpoint's refresh hint.
func (e endpointBundle) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != e.ca.cfg.TrustDomain {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	b := e.ca.Bundle().SPIFFE.Clone()
	b.SetRefreshHint(e.hint)
	return b, nil
}

// BundleEndpointSPIFFETLS is the server TLS configuration of the bundle
// endpoint's https_spiffe profile: it presents an SVID for BundleEndpointID,
// minted by this CA and renewed at half its life or when another generation
// signs. No client certificate is asked for: the bundle is public.
func (c *CA) BundleEndpointSPIFFETLS() (*tls.Config, error) {
	src := &endpointSVID{ca: c, id: BundleEndpointID(c.cfg.TrustDomain)}
	if _, err := src.GetX509SVID(); err != nil {
		return nil, fmt.Errorf("issue the bundle endpoint's SVID: %w", err)
	}
	return tlsconfig.TLSServerConfig(src), nil
}

// endpointSVID is an x509svid.Source of one of the CA's own IDs.
type endpointSVID struct {
	ca *CA
	id spiffeid.ID

	mu   sync.Mutex
	svid *x509svid.SVID
	gen  uint64
}

// GetX509SVID returns the SVID, issuing a new one when due.
func (e *endpointSVID) GetX509SVID() (*x509svid.SVID, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.ca.cfg.Clock.Now()
	if a := e.ca.auth.Load(); e.svid != nil && a != nil && e.gen == a.gen {
		leaf := e.svid.Certificates[0]
		if now.Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)) {
			return e.svid, nil
		}
	}
	svid, gen, err := e.ca.mintOwn(e.id)
	if err != nil {
		if e.svid != nil && now.Before(e.svid.Certificates[0].NotAfter) {
			e.ca.log.Warn("renewing the bundle endpoint's SVID failed; serving the current one", slog.Any("error", err))
			return e.svid, nil
		}
		return nil, err
	}
	e.svid, e.gen = svid, gen
	return svid, nil
}

// WebCertificate serves the bundle endpoint's https_web profile with the
// operator's certificate and key files (PEM), reloaded when either file
// changes, so a renewed web certificate needs no restart.
type WebCertificate struct {
	certFile, keyFile string

	mu          sync.Mutex
	cert        *tls.Certificate
	certPEM     []byte
	keyPEM      []byte
	lastChecked time.Time
}

// NewWebCertificate loads the certificate chain and key.
func NewWebCertificate(certFile, keyFile string) (*WebCertificate, error) {
	w := &WebCertificate{certFile: certFile, keyFile: keyFile}
	if err := w.reload(); err != nil {
		return nil, err
	}
	return w, nil
}

// reload reads both files and replaces the certificate when they changed.
func (w *WebCertificate) reload() error {
	certPEM, err := os.ReadFile(w.certFile)
	if err != nil {
		return fmt.Errorf("bundle endpoint web certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(w.keyFile)
	if err != nil {
		return fmt.Errorf("bundle endpoint web key: %w", err)
	}
	if w.cert != nil && bytes.Equal(certPEM, w.certPEM) && bytes.Equal(keyPEM, w.keyPEM) {
		return nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("bundle endpoint web certificate %s with key %s: %w", w.certFile, w.keyFile, err)
	}
	w.cert, w.certPEM, w.keyPEM = &cert, certPEM, keyPEM
	return nil
}

// GetCertificate is tls.Config.GetCertificate. It rereads the files at
// most every 10 seconds; while they do not load (mid-replacement), it keeps
// serving the last good certificate.
func (w *WebCertificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.lastChecked) > 10*time.Second {
		w.lastChecked = time.Now()
		_ = w.reload() // the last good one stays
	}
	return w.cert, nil
}

// TLSConfig is the server TLS configuration of the https_web profile.
func (w *WebCertificate) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: w.GetCertificate}
}
