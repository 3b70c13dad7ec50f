// Package injector runs tether-injector: the mutating admission webhook of
// pkg/inject on HTTPS, its serving certificate, and the admin port.
package injector

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/pkg/inject"
)

// Config is tether-injector's configuration, filled from flags.
type Config struct {
	// WebhookAddr serves the webhook (HTTPS, POST /mutate).
	WebhookAddr string
	// AdminAddr serves /healthz, /readyz and /metrics.
	AdminAddr string
	// Inject is what goes into every pod.
	Inject inject.Config
	// MaxRequestBytes bounds an AdmissionReview (default 3 MiB).
	MaxRequestBytes int64

	// CertFile and KeyFile, if set, hold the serving certificate (for
	// example from cert-manager); they are re-read when they change.
	// Otherwise the injector manages its own (see Certs).
	CertFile, KeyFile string
	// Certs configures the self-managed serving certificate.
	Certs CertsConfig

	// Clock is time.Now unless a test drives it.
	Clock func() time.Time
	// Logger receives the injector's logs.
	Logger *slog.Logger
}

// Validate checks the config and fills in defaults.
func (c *Config) Validate() error {
	if c.WebhookAddr == "" {
		c.WebhookAddr = ":9443"
	}
	if c.AdminAddr == "" {
		c.AdminAddr = ":15014"
	}
	if err := c.Inject.Validate(); err != nil {
		return err
	}
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = inject.DefaultMaxRequestBytes
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("give both --tls-cert-file and --tls-key-file, or neither (self-managed certificate)")
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.CertFile == "" {
		return c.Certs.validate()
	}
	return nil
}

// certSource holds the current serving certificate.
type certSource interface {
	// Certificate returns the certificate to serve, or nil before the
	// first one is loaded. Safe for concurrent use.
	Certificate() *tls.Certificate
	// Ready is nil while the served certificate is valid (and, for the
	// self-managed one, trusted by the webhook configuration).
	Ready() error
	// Run keeps the certificate current until ctx ends.
	Run(ctx context.Context) error
}

// Injector is tether-injector.
type Injector struct {
	cfg      Config
	webhook  *inject.Webhook
	certs    certSource
	registry *prometheus.Registry
	log      *slog.Logger

	mu    sync.Mutex
	addrs map[string]net.Addr
}

// New builds the injector from cfg; it does not listen yet.
func New(cfg Config) (*Injector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	wh, err := inject.NewWebhook(cfg.Inject, cfg.MaxRequestBytes, reg, cfg.Logger)
	if err != nil {
		return nil, err
	}
	expiry := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tether_injector_serving_cert_expiry_timestamp_seconds",
		Help: "NotAfter of the webhook's serving certificate, as a Unix time.",
	})
	reg.MustRegister(expiry)
	var certs certSource
	if cfg.CertFile != "" {
		certs = newFileCerts(cfg.CertFile, cfg.KeyFile, cfg.Clock, expiry, cfg.Logger)
	} else {
		kc, err := newKubeCerts(cfg.Certs, cfg.Clock, expiry, cfg.Logger)
		if err != nil {
			return nil, err
		}
		certs = kc
	}
	return &Injector{cfg: cfg, webhook: wh, certs: certs, registry: reg, log: cfg.Logger, addrs: map[string]net.Addr{}}, nil
}

// Ready is nil while the injector can serve admissions.
func (i *Injector) Ready() error { return i.certs.Ready() }

// Addr returns the bound address of "webhook" or "admin" once Run
// listens, else nil.
func (i *Injector) Addr(name string) net.Addr {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.addrs[name]
}

// Run listens on the configured addresses and serves until ctx ends.
func (i *Injector) Run(ctx context.Context) error {
	wl, err := net.Listen("tcp", i.cfg.WebhookAddr)
	if err != nil {
		return fmt.Errorf("webhook listener: %w", err)
	}
	al, err := net.Listen("tcp", i.cfg.AdminAddr)
	if err != nil {
		wl.Close()
		return fmt.Errorf("admin listener: %w", err)
	}
	return i.Serve(ctx, wl, al)
}

// Serve is Run on listeners the caller made. It returns when ctx ends,
// after draining in-flight admissions for up to 5 seconds, or when a part
// fails.
func (i *Injector) Serve(ctx context.Context, webhookL, adminL net.Listener) error {
	i.mu.Lock()
	i.addrs["webhook"], i.addrs["admin"] = webhookL.Addr(), adminL.Addr()
	i.mu.Unlock()

	mux := http.NewServeMux()
	mux.Handle("/mutate", i.webhook)
	mux.Handle("/mutate-required", i.webhook.Required())
	srv := &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				if c := i.certs.Certificate(); c != nil {
					return c, nil
				}
				return nil, errors.New("no serving certificate yet")
			},
		},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(i.log.Handler(), slog.LevelDebug),
	}
	adm := admin.New(i.cfg.AdminAddr, i.certs.Ready, i.registry, i.log, admin.WithMetrics("injector", i.registry))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := i.certs.Run(ctx); err != nil && ctx.Err() == nil {
			errc <- fmt.Errorf("serving certificate: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := adm.Serve(ctx, adminL); err != nil && ctx.Err() == nil {
			errc <- err
		}
	}()
	go func() {
		defer wg.Done()
		if err := srv.ServeTLS(webhookL, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("webhook server: %w", err)
		}
	}()
	i.log.Info("tether-injector listening", slog.String("webhook", webhookL.Addr().String()), slog.String("admin", adminL.Addr().String()))
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	scancel()
	wg.Wait()
	return runErr
}
