// Package caserver runs tether-ca: it wires the CA of pkg/identity to its
// store, attestors and listeners from one validated Config.
package caserver

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/kube"
)

// Config is tether-ca's configuration, filled from flags.
type Config struct {
	TrustDomain string
	// ListenAddr serves the CA gRPC API over TLS.
	ListenAddr string
	// AdminAddr serves /healthz, /readyz and /metrics.
	AdminAddr string
	// AdminSocket serves the operator API (tokens, rotation). Default:
	// <StoreDir>/admin.sock for a directory store.
	AdminSocket string
	// Store is "dir" or "kubernetes".
	Store    string
	StoreDir string
	// BundleFile receives the trust bundle as PEM on every change. Default:
	// <StoreDir>/bundle.pem for a directory store.
	BundleFile string

	SVIDTTL          time.Duration
	IntermediateTTL  time.Duration
	RootTTL          time.Duration
	Backdate         time.Duration
	PropagationDelay time.Duration
	TickInterval     time.Duration
	AutoRotate       bool
	// ReportInterval is the sidecars' report heartbeat; MaxReports bounds
	// the reports one replica keeps (0: identity.DefaultMaxReports, or
	// kube.MaxReportsKubernetes with the kubernetes store).
	ReportInterval time.Duration
	MaxReports     int
	// OfflineIntermediate is a directory with intermediate.pem,
	// intermediate.key and root.pem from `tether ca offline-root
	// sign-intermediate`: the CA signs with it and never holds the root key.
	OfflineIntermediate string

	// SVIDTTLFor shortens the SVID lifetime of IDs under path prefixes
	// (--svid-ttl-for PREFIX=TTL).
	SVIDTTLFor []identity.PrefixTTL
	// MaxRenewalAge bounds a renewal chain over mTLS since its last
	// attestation (--max-renewal-age; zero means the default, 7 days).
	MaxRenewalAge time.Duration

	Kube KubeConfig

	// OIDC is the OIDC discovery listener for JWT-SVIDs (off by default).
	OIDC OIDCConfig
	// BundleEndpoint serves the trust domain's SPIFFE bundle to federated
	// domains; Federation fetches theirs.
	BundleEndpoint BundleEndpointConfig
	Federation     FederationConfig

	// ConnLimits bound the connections on ListenAddr (zero fields: the
	// defaults of identity.ConnLimits).
	ConnLimits identity.ConnLimits

	Logger *slog.Logger
}

// KubeConfig is the Kubernetes side of tether-ca.
type KubeConfig struct {
	Kubeconfig string
	Namespace  string
	SecretName string
	LeaseName  string
	// Identity names this replica in the Lease (pod name).
	Identity string
	// TokenReview accepts projected ServiceAccount tokens.
	TokenReview bool
	Audience    string
	// ExtraIssuers are token issuers accepted besides the one the API
	// server publishes (while the cluster migrates its issuer).
	ExtraIssuers []string
	// PublishBundle writes the tether-trust-bundle ConfigMaps.
	PublishBundle bool
	// UpstreamIssuer is "Issuer/NAME" or "ClusterIssuer/NAME" of cert-manager.
	UpstreamIssuer    string
	UpstreamNamespace string
}

// BundleEndpointConfig is tether-ca's SPIFFE bundle endpoint.
type BundleEndpointConfig struct {
	// Listen is its address; empty turns it off.
	Listen string
	// Profile is https_spiffe (an SVID of the CA's own, for
	// identity.BundleEndpointID) or https_web (WebCertFile and WebKeyFile).
	Profile                 string
	WebCertFile, WebKeyFile string
	// RefreshHint is the refresh hint served (default
	// identity.DefaultBundleRefreshHint).
	RefreshHint time.Duration
}

// FederationConfig is how tether-ca follows foreign trust domains.
type FederationConfig struct {
	// File declares the foreign domains (identity.FederationFile); it is
	// reread when it changes.
	File string
	// WatchCRD applies the cluster's TrustDomainFederation objects instead
	// (the default with the kubernetes store).
	WatchCRD bool
	// MinRefresh and MaxRefresh clamp the refresh hints foreign endpoints
	// serve.
	MinRefresh, MaxRefresh time.Duration
}

func (b *BundleEndpointConfig) validate() error {
	if b.Listen == "" {
		return nil
	}
	switch b.Profile {
	case identity.ProfileHTTPSSPIFFE:
		if b.WebCertFile != "" || b.WebKeyFile != "" {
			return errors.New("--bundle-endpoint-web-cert and --bundle-endpoint-web-key are for --bundle-endpoint-profile=https_web")
		}
	case identity.ProfileHTTPSWeb:
		if b.WebCertFile == "" || b.WebKeyFile == "" {
			return errors.New("--bundle-endpoint-profile=https_web needs --bundle-endpoint-web-cert and --bundle-endpoint-web-key (the web certificate of the endpoint's public name)")
		}
	default:
		return fmt.Errorf("--bundle-endpoint-profile %q: want https_spiffe or https_web", b.Profile)
	}
	if b.RefreshHint < 0 || (b.RefreshHint > 0 && b.RefreshHint < time.Second) {
		return fmt.Errorf("--bundle-endpoint-refresh-hint %s must be at least a second", b.RefreshHint)
	}
	return nil
}

func (f *FederationConfig) validate() error {
	if f.File != "" && f.WatchCRD {
		return errors.New("--federation-file and --federation-crd exclude each other: declare the foreign trust domains in one place")
	}
	if f.MinRefresh < 0 || (f.MinRefresh > 0 && f.MinRefresh < time.Second) {
		return fmt.Errorf("--federation-min-refresh %s must be at least a second", f.MinRefresh)
	}
	minR := cmp.Or(f.MinRefresh, identity.DefaultFederationMinRefresh)
	if maxR := cmp.Or(f.MaxRefresh, identity.DefaultFederationMaxRefresh); maxR < minR {
		return fmt.Errorf("--federation-max-refresh %s is shorter than --federation-min-refresh %s", maxR, minR)
	}
	return nil
}

// Validate checks the config and fills derived defaults.
func (c *Config) Validate() error {
	if td, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("--trust-domain %q: %v", c.TrustDomain, err)
	} else if td.Name() != c.TrustDomain {
		return fmt.Errorf("--trust-domain %q: give the bare trust domain name, e.g. %q", c.TrustDomain, td.Name())
	}
	switch c.Store {
	case "dir":
		if c.StoreDir == "" {
			return errors.New("--store=dir needs --store-dir")
		}
		if c.AdminSocket == "" {
			c.AdminSocket = filepath.Join(c.StoreDir, "admin.sock")
		}
		if c.BundleFile == "" {
			c.BundleFile = filepath.Join(c.StoreDir, "bundle.pem")
		}
	case "kubernetes":
		if c.Kube.Namespace == "" || c.Kube.SecretName == "" {
			return errors.New("--store=kubernetes needs --namespace and --secret-name")
		}
		if c.AdminSocket == "" {
			c.AdminSocket = "/run/tether-ca/admin.sock"
		}
	default:
		return fmt.Errorf("--store %q: want dir or kubernetes", c.Store)
	}
	if c.Kube.UpstreamIssuer != "" {
		kind, name, ok := strings.Cut(c.Kube.UpstreamIssuer, "/")
		if !ok || name == "" || (kind != "Issuer" && kind != "ClusterIssuer") {
			return fmt.Errorf("--upstream-issuer %q: want Issuer/NAME or ClusterIssuer/NAME", c.Kube.UpstreamIssuer)
		}
	}
	for name, d := range map[string]time.Duration{"--svid-ttl": c.SVIDTTL, "--intermediate-ttl": c.IntermediateTTL, "--root-ttl": c.RootTTL} {
		if d <= 0 {
			return fmt.Errorf("%s must be positive, got %s", name, d)
		}
	}
	if c.SVIDTTL*2 > c.IntermediateTTL {
		return fmt.Errorf("--svid-ttl %s must be at most half of --intermediate-ttl %s", c.SVIDTTL, c.IntermediateTTL)
	}
	if c.OfflineIntermediate != "" && c.Kube.UpstreamIssuer != "" {
		return errors.New("--offline-intermediate and --upstream-issuer exclude each other: the intermediate comes from one or the other")
	}
	if c.Kube.UpstreamIssuer == "" && c.IntermediateTTL > c.RootTTL {
		return fmt.Errorf("--intermediate-ttl %s is longer than --root-ttl %s", c.IntermediateTTL, c.RootTTL)
	}
	if delay := cmp.Or(c.PropagationDelay, identity.DefaultPropagationDelay); c.Kube.UpstreamIssuer != "" && delay*3 >= c.IntermediateTTL {
		return fmt.Errorf("--propagation-delay %s must be less than a third of --intermediate-ttl %s in upstream mode: each new intermediate is a trust anchor, published that long before it signs, and renewed with a third of its life left", delay, c.IntermediateTTL)
	}
	if c.ReportInterval < 0 || (c.ReportInterval > 0 && c.ReportInterval < time.Second) {
		return fmt.Errorf("--report-interval %s must be at least a second", c.ReportInterval)
	}
	if c.MaxReports < 0 {
		return fmt.Errorf("--max-reports %d must not be negative", c.MaxReports)
	}
	if c.Store == "kubernetes" && c.MaxReports > kube.MaxReportsKubernetes {
		return fmt.Errorf("--max-reports %d: with --store=kubernetes the replicas share their reports in one ConfigMap, which holds at most %d per replica", c.MaxReports, kube.MaxReportsKubernetes)
	}
	if c.MaxRenewalAge < 0 || (c.MaxRenewalAge > 0 && c.MaxRenewalAge < time.Minute) {
		return fmt.Errorf("--max-renewal-age %s must be at least a minute", c.MaxRenewalAge)
	}
	rules, err := identity.CheckPrefixTTLs(c.SVIDTTLFor, c.SVIDTTL)
	if err != nil {
		return fmt.Errorf("--svid-ttl-for: %w", err)
	}
	c.SVIDTTLFor = rules
	if err := c.ConnLimits.Validate(); err != nil {
		return err
	}
	if err := c.OIDC.validate(); err != nil {
		return err
	}
	if err := c.BundleEndpoint.validate(); err != nil {
		return err
	}
	if err := c.Federation.validate(); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Service is a running tether-ca.
type Service struct {
	cfg       Config
	log       *slog.Logger
	ca        *identity.CA
	attestors map[string]identity.Attestor
	registry  *prometheus.Registry
	// background runs with the service (leader election, bundle publishing).
	background []func(ctx context.Context) error
	isLeader   func() bool
	kubeRest   *rest.Config
	kubeClient kubernetes.Interface
	// reports shares the sidecar reports with the other replicas (the
	// kubernetes store).
	reports *kube.ReportExchange
	// oidc serves the OIDC discovery document; nil when off.
	oidc *oidcServer
	// federator follows the foreign trust domains.
	federator *identity.Federator
	// endpoint serves the bundle endpoint (nil when off).
	endpoint    *http.Server
	endpointTLS *tls.Config

	mu        sync.Mutex
	listeners map[string]net.Addr
}

// New builds the CA from cfg: it opens the store (creating the first CA
// generation if it is empty) and sets up attestation.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: cfg.Logger, registry: prometheus.NewRegistry(), listeners: map[string]net.Addr{}}
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	caCfg := identity.Config{
		TrustDomain: td, SVIDTTL: cfg.SVIDTTL, TTLByPrefix: cfg.SVIDTTLFor, MaxRenewalAge: cfg.MaxRenewalAge,
		IntermediateTTL: cfg.IntermediateTTL, RootTTL: cfg.RootTTL,
		Backdate: cfg.Backdate, PropagationDelay: cfg.PropagationDelay, TickInterval: cfg.TickInterval,
		AutoRotate: cfg.AutoRotate, Logger: cfg.Logger, Registerer: s.registry,
		ReportInterval: cfg.ReportInterval, MaxReports: cfg.MaxReports, Replica: cfg.Kube.Identity,
		JWTIssuer: cfg.OIDC.Issuer,
	}
	if cfg.BundleEndpoint.Listen != "" {
		// Activate then waits for the endpoint to have served a prepared
		// root for a refresh hint (identity.BundleEndpointGate).
		caCfg.BundleEndpointRefreshHint = cmp.Or(cfg.BundleEndpoint.RefreshHint, identity.DefaultBundleRefreshHint)
	}
	if cfg.OfflineIntermediate != "" {
		o, err := identity.LoadOfflineIntermediate(cfg.OfflineIntermediate)
		if err != nil {
			return nil, fmt.Errorf("--offline-intermediate: %w", err)
		}
		caCfg.OfflineIntermediate = o
	}
	s.attestors = map[string]identity.Attestor{}
	switch cfg.Store {
	case "dir":
		store, err := identity.NewDiskStore(cfg.StoreDir)
		if err != nil {
			return nil, err
		}
		caCfg.Store = store
	case "kubernetes":
		if err := s.setupKube(ctx, &caCfg); err != nil {
			return nil, err
		}
	}
	if err := s.setupAttestors(caCfg); err != nil {
		return nil, err
	}
	ca, err := identity.NewCA(ctx, caCfg)
	if err != nil {
		return nil, err
	}
	s.ca = ca
	s.attestors[identity.KindJoinToken] = ca.JoinTokens()
	if err := s.setupOIDC(); err != nil {
		return nil, err
	}
	if err := s.setupFederation(); err != nil {
		return nil, err
	}
	if cfg.Kube.PublishBundle {
		if err := s.setupBundlePublisher(ctx, &caCfg); err != nil {
			return nil, err
		}
	}
	if cfg.Store == "kubernetes" {
		if err := s.setupReportExchange(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// CA is the service's certificate authority.
func (s *Service) CA() *identity.CA { return s.ca }

// Addr returns the address a named listener ("grpc", "admin", "oidc") is bound to,
// once Run has started it.
func (s *Service) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listeners[name]
}

// Run serves the CA until ctx ends, then stops everything and returns.
func (s *Service) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The bundle file exists before anything listens, so whoever sees the
	// CA up can read it.
	if s.cfg.BundleFile != "" {
		identity.RemoveAtomicLeftovers(s.cfg.BundleFile) // from a crash mid-write
		if err := identity.WriteBundlePEM(s.cfg.BundleFile, s.ca.Bundle().Bundle); err != nil {
			return fmt.Errorf("write bundle file: %w", err)
		}
	}
	grpcL, err := net.Listen("tcp", s.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("CA listener: %w", err)
	}
	adminL, err := net.Listen("tcp", s.cfg.AdminAddr)
	if err != nil {
		grpcL.Close()
		return fmt.Errorf("admin listener: %w", err)
	}
	sockL, err := identity.ListenUnix(s.cfg.AdminSocket)
	if err != nil {
		grpcL.Close()
		adminL.Close()
		return err
	}
	var endpointL net.Listener
	if s.endpoint != nil {
		if endpointL, err = net.Listen("tcp", s.cfg.BundleEndpoint.Listen); err != nil {
			grpcL.Close()
			adminL.Close()
			sockL.Close()
			return fmt.Errorf("bundle endpoint listener: %w", err)
		}
	}
	s.mu.Lock()
	s.listeners["grpc"], s.listeners["admin"] = grpcL.Addr(), adminL.Addr()
	if endpointL != nil {
		s.listeners["bundle-endpoint"] = endpointL.Addr()
	}
	s.mu.Unlock()

	server := identity.NewServer(s.ca, s.attestors, s.log)
	server.SetFederatedBundles(s.federator.Bundles())
	gate := identity.NewConnGate(s.cfg.ConnLimits, s.registry, s.log)
	g := server.GRPCServer(gate.ServerOptions(credentials.NewTLS(server.TLSConfig()))...)
	adminGRPC := identity.NewAdminServer(s.ca, s.log).GRPCServer()
	httpAdmin := admin.New(s.cfg.AdminAddr, s.ca.Ready, s.registry, s.log, admin.WithMetrics("ca", s.registry))

	var wg sync.WaitGroup
	errc := make(chan error, 8)
	run := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	run("grpc", func() error { return g.Serve(gate.Listener(grpcL)) })
	run("admin socket", func() error { return adminGRPC.Serve(sockL) })
	run("admin http", func() error { return httpAdmin.Serve(ctx, adminL) })
	run("ca", func() error { return s.ca.Run(ctx) })
	if s.cfg.BundleFile != "" {
		run("bundle file", func() error { return s.writeBundleFile(ctx) })
	}
	if s.oidc != nil {
		run("oidc", func() error { return s.serveOIDC(ctx) })
	}
	run("federation", func() error { return s.federator.Run(ctx) })
	if s.cfg.Federation.File != "" {
		run("federation file", func() error { return s.watchFederationFile(ctx) })
	}
	if endpointL != nil {
		run("bundle endpoint", func() error { return serveBundleEndpoint(ctx, s.endpoint, endpointL, s.endpointTLS) })
		s.log.Info("bundle endpoint serving", slog.String("address", endpointL.Addr().String()),
			slog.String("profile", s.cfg.BundleEndpoint.Profile), slog.String("endpoint_id", identity.BundleEndpointID(s.ca.TrustDomain()).String()))
	}
	for _, bg := range s.background {
		run("background", func() error { return bg(ctx) })
	}
	s.log.Info("tether-ca serving", slog.String("trust_domain", s.cfg.TrustDomain),
		slog.String("grpc", grpcL.Addr().String()), slog.String("admin", adminL.Addr().String()),
		slog.String("admin_socket", s.cfg.AdminSocket), slog.String("store", s.cfg.Store))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		s.log.Error("tether-ca stopping after an error", slog.Any("error", runErr))
	}
	cancel()
	server.Shutdown() // WatchBundle streams end now rather than at the 5s fallback below
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); adminGRPC.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		g.Stop()
		adminGRPC.Stop()
	}
	wg.Wait()
	return runErr
}

// writeBundleFile keeps BundleFile equal to the current bundle.
func (s *Service) writeBundleFile(ctx context.Context) error {
	for {
		v := s.ca.Bundle()
		if err := identity.WriteBundlePEM(s.cfg.BundleFile, v.Bundle); err != nil {
			s.log.Error("write bundle file", slog.String("path", s.cfg.BundleFile), slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-v.Changed:
		}
	}
}
