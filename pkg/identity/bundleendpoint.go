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
// keys, with its sequence number and refreshHint; zero: the configured
// BundleEndpointRefreshHint, or DefaultBundleRefreshHint) with go-spiffe's
// federation.Handler. It reads the current bundle version on every
// request, so a root is served as soon as the journal trusts it, and
// records in the journal the first answer holding a prepared root (the
// bundle endpoint gate of activate, BundleEndpointGate).
func (c *CA) BundleEndpointHandler(refreshHint time.Duration) (http.Handler, error) {
	if refreshHint <= 0 {
		refreshHint = c.cfg.BundleEndpointRefreshHint
	}
	if refreshHint <= 0 {
		refreshHint = DefaultBundleRefreshHint
	}
	return &bundleEndpoint{ca: c, hint: refreshHint}, nil
}

// bundleEndpoint is the bundle endpoint's handler.
type bundleEndpoint struct {
	ca   *CA
	hint time.Duration
}

// ServeHTTP answers with the current bundle version through
// federation.Handler; once the response is written and flushed to the
// connection, it records that version as served.
func (e *bundleEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	bv := e.ca.Bundle()
	b := bv.SPIFFE.Clone()
	b.SetRefreshHint(e.hint)
	h, err := federation.NewHandler(e.ca.cfg.TrustDomain, b)
	if err != nil {
		http.Error(w, "bundle unavailable", http.StatusInternalServerError)
		return
	}
	rec := &servedRecorder{ResponseWriter: w}
	h.ServeHTTP(rec, r)
	if rec.status != http.StatusOK || rec.failed || r.Method != http.MethodGet {
		return
	}
	if err := http.NewResponseController(w).Flush(); err != nil {
		return
	}
	e.ca.endpointServed(r.Context(), bv, e.hint)
}

// servedRecorder notes a response's status and whether writing its body
// failed.
type servedRecorder struct {
	http.ResponseWriter
	status int
	failed bool
}

func (s *servedRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *servedRecorder) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(p)
	if err != nil {
		s.failed = true
	}
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *servedRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

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
