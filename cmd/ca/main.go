// Command tether-ca is Tether's certificate authority: it issues SPIFFE
// X.509-SVIDs to attested workloads and rotates its roots.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/internal/cliflag"
	"github.com/tether-mesh/tether/internal/logging"
	"github.com/tether-mesh/tether/pkg/identity"
)

func main() {
	if cliflag.PrintVersion(os.Args[1:], os.Stdout) {
		return
	}
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return // -h printed the flags
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tether-ca: %v\nRun 'tether-ca --help' for usage.\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	svc, err := caserver.New(ctx, cfg)
	if err != nil {
		cfg.Logger.Error("tether-ca cannot start", "error", err)
		os.Exit(1)
	}
	if err := svc.Run(ctx); err != nil {
		cfg.Logger.Error("tether-ca stopped", "error", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (caserver.Config, error) {
	var c caserver.Config
	fs := flag.NewFlagSet("tether-ca", flag.ContinueOnError)
	// Flag errors are printed once by main, with a hint; -h prints the
	// flags on stdout.
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.TrustDomain, "trust-domain", env("TETHER_TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain (env TETHER_TRUST_DOMAIN)")
	fs.StringVar(&c.ListenAddr, "listen", ":8443", "address of the CA gRPC API (TLS)")
	fs.StringVar(&c.AdminAddr, "admin-listen", ":15014", "address of /healthz, /readyz, /metrics and /version")
	fs.StringVar(&c.AdminSocket, "admin-socket", "", "unix socket of the operator API (default <store-dir>/admin.sock, or /run/tether-ca/admin.sock)")
	fs.StringVar(&c.Store, "store", "dir", "where the CA keeps its state: dir or kubernetes")
	fs.StringVar(&c.StoreDir, "store-dir", "", "directory of the dir store")
	fs.StringVar(&c.BundleFile, "bundle-file", "", "write the trust bundle (PEM) here on every change (default <store-dir>/bundle.pem)")
	fs.DurationVar(&c.SVIDTTL, "svid-ttl", identity.DefaultSVIDTTL, "lifetime of issued SVIDs")
	fs.Func("svid-ttl-for", "PATH-PREFIX=TTL: a shorter SVID lifetime for IDs under a SPIFFE ID path prefix, e.g. /ns/payments=10m (repeatable; the longest prefix wins)", func(s string) error {
		r, err := identity.ParsePrefixTTL(s)
		c.SVIDTTLFor = append(c.SVIDTTLFor, r)
		return err
	})
	fs.DurationVar(&c.MaxRenewalAge, "max-renewal-age", identity.DefaultMaxRenewalAge, "how long after its join token (or other non-Kubernetes credential) an SVID may still be renewed over mTLS alone; then a new join token is needed")
	fs.DurationVar(&c.IntermediateTTL, "intermediate-ttl", identity.DefaultIntermediateTTL, "lifetime of the signing intermediate")
	fs.DurationVar(&c.RootTTL, "root-ttl", identity.DefaultRootTTL, "lifetime of a root")
	fs.DurationVar(&c.Backdate, "backdate", identity.DefaultBackdate, "how far NotBefore is set in the past")
	fs.DurationVar(&c.PropagationDelay, "propagation-delay", identity.DefaultPropagationDelay, "how long a prepared root (in upstream mode, a new intermediate) must be in the bundle before it may sign")
	fs.DurationVar(&c.TickInterval, "tick", 10*time.Second, "how often the CA reloads its store and checks the rotation schedule")
	fs.DurationVar(&c.ReportInterval, "report-interval", identity.DefaultReportInterval, "how often sidecars report their roots when nothing changes; one silent for 3 intervals is counted with what it last reported until its SVID expires")
	fs.IntVar(&c.MaxReports, "max-reports", 0, "sidecar reports one replica keeps (default 10000, or 4000 with --store=kubernetes, where the replicas share them in a ConfigMap)")
	fs.BoolVar(&c.AutoRotate, "auto-rotate", true, "take root rotation steps (prepare, activate, retire) on schedule; intermediates are renewed on schedule regardless")
	fs.StringVar(&c.OfflineIntermediate, "offline-intermediate", "", "offline-root mode: directory with intermediate.pem, intermediate.key and root.pem from \"tether ca offline-root sign-intermediate\"; the CA never holds the root key")
	fs.StringVar(&c.Kube.Kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty means in-cluster (env KUBECONFIG)")
	fs.StringVar(&c.Kube.Namespace, "namespace", env("POD_NAMESPACE", "tether-system"), "namespace of the Secret and Lease (env POD_NAMESPACE)")
	fs.StringVar(&c.Kube.SecretName, "secret-name", "tether-ca", "Secret of the kubernetes store")
	fs.StringVar(&c.Kube.LeaseName, "lease-name", "tether-ca", "Lease that elects the replica taking rotation steps")
	fs.StringVar(&c.Kube.Identity, "replica-name", env("POD_NAME", hostname()), "this replica's name in the Lease (env POD_NAME)")
	fs.BoolVar(&c.Kube.TokenReview, "k8s-tokens", false, "accept projected ServiceAccount tokens (TokenReview); default on with --store=kubernetes")
	fs.StringVar(&c.Kube.Audience, "token-audience", "tether-ca", "audience projected tokens must carry")
	fs.Func("token-extra-issuer", "also accept projected tokens from this issuer (repeat; while the cluster migrates --service-account-issuer)", func(v string) error {
		if v == "" {
			return fmt.Errorf("empty issuer")
		}
		c.Kube.ExtraIssuers = append(c.Kube.ExtraIssuers, v)
		return nil
	})
	fs.BoolVar(&c.Kube.PublishBundle, "publish-bundle", false, "write ConfigMap tether-trust-bundle in every namespace with injection enabled; default on with --store=kubernetes")
	fs.StringVar(&c.Kube.UpstreamIssuer, "upstream-issuer", "", "take the signing intermediate from this cert-manager issuer (Issuer/NAME or ClusterIssuer/NAME)")
	fs.StringVar(&c.Kube.UpstreamNamespace, "upstream-namespace", "", "namespace of the CertificateRequests (default --namespace)")
	fs.IntVar(&c.ConnLimits.MaxConns, "max-conns", identity.DefaultMaxConns, "connections the CA port holds; when full, a new one evicts the oldest unauthenticated one")
	fs.IntVar(&c.ConnLimits.MaxConnsPerSource, "max-conns-per-source", identity.DefaultMaxConnsPerSource, "unauthenticated connections one source IP address may hold")
	fs.DurationVar(&c.ConnLimits.HandshakeTimeout, "handshake-timeout", identity.DefaultHandshakeTimeout, "time a new connection has to complete its TLS handshake")
	fs.DurationVar(&c.ConnLimits.PressureHandshakeTimeout, "pressure-handshake-timeout", identity.DefaultPressureHandshakeTimeout, "while more than half of --max-conns is in use, the time a new connection has to send its ClientHello (then it gets --handshake-timeout)")
	fs.DurationVar(&c.ConnLimits.IdleTimeout, "unauthenticated-idle-timeout", identity.DefaultUnauthIdleTimeout, "close a connection without an SVID after this long with no RPC in progress")
	fs.DurationVar(&c.ConnLimits.MaxConnectionIdle, "max-connection-idle", identity.DefaultMaxConnectionIdle, "close a connection with an SVID after this long with no RPC in progress")
	fs.StringVar(&c.OIDC.Listen, "oidc-listen", "", "serve the OIDC discovery document and JWKS of the JWT-SVID keys on this address (off by default; needs --oidc-issuer)")
	fs.StringVar(&c.OIDC.Issuer, "oidc-issuer", "", "public https:// URL of the OIDC discovery document, and the iss claim of every JWT-SVID (what clouds' workload identity federation is configured with)")
	fs.StringVar(&c.OIDC.JWKSURI, "oidc-jwks-uri", "", "jwks_uri of the discovery document (default <oidc-issuer>/keys)")
	fs.StringVar(&c.OIDC.TLSCert, "oidc-tls-cert", "", "PEM certificate (chain) the OIDC listener serves, for the issuer's host; re-read when it changes")
	fs.StringVar(&c.OIDC.TLSKey, "oidc-tls-key", "", "PEM key of --oidc-tls-cert")
	fs.BoolVar(&c.OIDC.PlainHTTP, "oidc-plain-http", false, "serve the OIDC listener without TLS, behind your own TLS-terminating proxy")
	fs.StringVar(&c.BundleEndpoint.Listen, "bundle-endpoint-listen", "", "address of the SPIFFE bundle endpoint that federated trust domains fetch this domain's bundle from (HTTPS); empty: off")
	fs.StringVar(&c.BundleEndpoint.Profile, "bundle-endpoint-profile", identity.ProfileHTTPSSPIFFE, "https_spiffe (the endpoint presents an SVID for spiffe://<trust-domain>/tether/bundle-endpoint) or https_web (the certificate of --bundle-endpoint-web-cert)")
	fs.StringVar(&c.BundleEndpoint.WebCertFile, "bundle-endpoint-web-cert", "", "https_web: PEM certificate chain of the endpoint's web name (reread when it changes)")
	fs.StringVar(&c.BundleEndpoint.WebKeyFile, "bundle-endpoint-web-key", "", "https_web: PEM private key of --bundle-endpoint-web-cert")
	fs.DurationVar(&c.BundleEndpoint.RefreshHint, "bundle-endpoint-refresh-hint", identity.DefaultBundleRefreshHint, "refresh hint served with the bundle; keep it well under --propagation-delay so federated domains hold a new root before it signs")
	fs.StringVar(&c.Federation.File, "federation-file", "", "YAML file declaring foreign trust domains to fetch bundles from (a list under \"federation:\"; see docs/federation.md); reread when it changes")
	fs.BoolVar(&c.Federation.WatchCRD, "federation-crd", false, "apply the cluster's TrustDomainFederation objects (foreign trust domains) and write their status; default on with --store=kubernetes unless --federation-file is given")
	fs.DurationVar(&c.Federation.MinRefresh, "federation-min-refresh", identity.DefaultFederationMinRefresh, "shortest interval between fetches of a foreign bundle, whatever refresh hint it serves (also the first retry after a failure)")
	fs.DurationVar(&c.Federation.MaxRefresh, "federation-max-refresh", identity.DefaultFederationMaxRefresh, "longest interval between fetches of a foreign bundle, whatever refresh hint it serves")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stdout, "Usage of tether-ca:\n")
			cliflag.PrintFlags(os.Stdout, fs)
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.Store == "kubernetes" {
		if !set["k8s-tokens"] {
			c.Kube.TokenReview = true
		}
		if !set["publish-bundle"] {
			c.Kube.PublishBundle = true
		}
		if !set["federation-crd"] && c.Federation.File == "" {
			c.Federation.WatchCRD = true
		}
	}
	if c.Kube.UpstreamNamespace == "" {
		c.Kube.UpstreamNamespace = c.Kube.Namespace
	}
	log, err := logging.New(os.Stderr, *logLevel, *logFormat)
	if err != nil {
		return c, err
	}
	c.Logger = log
	return c, c.Validate()
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
