package caserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/tether-mesh/tether/pkg/identity"
)

// OIDCConfig is tether-ca's OIDC discovery listener: the discovery
// document and JWKS of the trust domain's JWT keys, for clouds' workload
// identity federation (docs/federation.md, "JWT-SVIDs for clouds").
type OIDCConfig struct {
	// Listen is the listener's address; empty: off (the default).
	Listen string
	// Issuer is the public https URL relying parties know the trust domain
	// by (--oidc-issuer): the JWT-SVIDs' iss claim and the discovery
	// document's issuer. It may be set without Listen (JWT-SVIDs get iss;
	// the operator publishes the keys some other way).
	Issuer string
	// JWKSURI overrides the discovery document's jwks_uri (default
	// Issuer + "/keys").
	JWKSURI string
	// TLSCert and TLSKey are PEM files of the operator's web certificate
	// for the issuer's host; they are re-read when they change.
	TLSCert, TLSKey string
	// PlainHTTP serves without TLS, for a TLS-terminating proxy in front.
	PlainHTTP bool
}

// validate checks the flags' combinations.
func (o *OIDCConfig) validate() error {
	if o.Issuer != "" {
		if _, err := identity.ValidateOIDCIssuer(o.Issuer); err != nil {
			return fmt.Errorf("--oidc-issuer: %w", err)
		}
	}
	if o.Listen == "" {
		for flag, set := range map[string]bool{"--oidc-jwks-uri": o.JWKSURI != "", "--oidc-tls-cert": o.TLSCert != "", "--oidc-tls-key": o.TLSKey != "", "--oidc-plain-http": o.PlainHTTP} {
			if set {
				return fmt.Errorf("%s configures the OIDC discovery listener, which is off: set --oidc-listen too", flag)
			}
		}
		return nil
	}
	switch {
	case o.Issuer == "":
		return errors.New("--oidc-listen needs --oidc-issuer: the public https:// URL clouds fetch the discovery document from, which is also the JWT-SVIDs' iss claim (the serving address is not a safe default: it is rarely what the clouds reach)")
	case (o.TLSCert == "") != (o.TLSKey == ""):
		return errors.New("--oidc-tls-cert and --oidc-tls-key go together: give both files of the web certificate")
	case o.TLSCert != "" && o.PlainHTTP:
		return errors.New("--oidc-plain-http and --oidc-tls-cert exclude each other: serve TLS yourself, or plain HTTP behind a TLS-terminating proxy")
	case o.TLSCert == "" && !o.PlainHTTP:
		return errors.New("--oidc-listen needs --oidc-tls-cert and --oidc-tls-key (a web certificate for the issuer's host, which clouds trust), or --oidc-plain-http behind your own TLS-terminating proxy")
	}
	if o.JWKSURI != "" {
		if _, err := identity.ValidateOIDCIssuer(o.JWKSURI); err != nil {
			return fmt.Errorf("--oidc-jwks-uri: %w", err)
		}
	}
	return nil
}

// oidcServer is the OIDC discovery listener of a Service.
type oidcServer struct {
	cfg     OIDCConfig
	handler http.Handler
	certs   *fileCert // nil with PlainHTTP
}

// setupOIDC builds the discovery handler and loads the web certificate, so
// that a bad file stops tether-ca at start rather than at the first fetch.
func (s *Service) setupOIDC() error {
	o := s.cfg.OIDC
	if o.Listen == "" {
		return nil
	}
	h, err := identity.NewOIDCHandler(s.ca, identity.OIDCConfig{Issuer: o.Issuer, JWKSURI: o.JWKSURI})
	if err != nil {
		return fmt.Errorf("OIDC discovery: %w", err)
	}
	srv := &oidcServer{cfg: o, handler: h}
	if !o.PlainHTTP {
		if srv.certs, err = loadFileCert(o.TLSCert, o.TLSKey, s.log); err != nil {
			return err
		}
	}
	s.oidc = srv
	return nil
}

// serveOIDC listens on the OIDC address and serves until ctx ends.
func (s *Service) serveOIDC(ctx context.Context) error {
	l, err := net.Listen("tcp", s.oidc.cfg.Listen)
	if err != nil {
		return fmt.Errorf("OIDC discovery listener: %w", err)
	}
	s.mu.Lock()
	s.listeners["oidc"] = l.Addr()
	s.mu.Unlock()
	srv := &http.Server{
		Handler:           s.oidc.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if c := s.oidc.certs; c != nil {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.get}
		l = tls.NewListener(l, srv.TLSConfig)
	}
	s.log.Info("serving the OIDC discovery document", slog.String("addr", l.Addr().String()),
		slog.String("issuer", s.oidc.cfg.Issuer), slog.Bool("tls", s.oidc.certs != nil))
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// certCheckInterval is how often fileCert looks whether its files changed.
const certCheckInterval = 10 * time.Second

// fileCert serves a certificate and key from files that another party
// (cert-manager, an ACME client) renews: on a handshake at least
// certCheckInterval after the last look, it re-reads them if their
// modification times changed. A pair that does not load keeps the last
// good one, and is logged.
type fileCert struct {
	certFile, keyFile string
	log               *slog.Logger
	// every is how often it looks at the files (certCheckInterval).
	every time.Duration

	mu        sync.Mutex
	cur       *tls.Certificate
	certMod   time.Time
	keyMod    time.Time
	checkedAt time.Time
}

func loadFileCert(certFile, keyFile string, log *slog.Logger) (*fileCert, error) {
	f := &fileCert{certFile: certFile, keyFile: keyFile, log: log, every: certCheckInterval}
	if err := f.reload(); err != nil {
		return nil, fmt.Errorf("--oidc-tls-cert %s, --oidc-tls-key %s: %w", certFile, keyFile, err)
	}
	return f, nil
}

// reload reads the pair. Called at start and with mu held.
func (f *fileCert) reload() error {
	ci, err := os.Stat(f.certFile)
	if err != nil {
		return err
	}
	ki, err := os.Stat(f.keyFile)
	if err != nil {
		return err
	}
	c, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err != nil {
		return err
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return err
		}
	}
	f.cur, f.certMod, f.keyMod = &c, ci.ModTime(), ki.ModTime()
	return nil
}

// get implements tls.Config.GetCertificate.
func (f *fileCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if now.Sub(f.checkedAt) < f.every {
		return f.cur, nil
	}
	f.checkedAt = now
	ci, cerr := os.Stat(f.certFile)
	ki, kerr := os.Stat(f.keyFile)
	if cerr == nil && kerr == nil && ci.ModTime().Equal(f.certMod) && ki.ModTime().Equal(f.keyMod) {
		return f.cur, nil
	}
	if err := f.reload(); err != nil {
		f.log.Error("cannot reload the OIDC web certificate; serving the last good one",
			slog.String("cert", f.certFile), slog.String("key", f.keyFile), slog.Any("error", err))
	}
	return f.cur, nil
}
