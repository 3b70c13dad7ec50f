// Command tether-injector is Tether's mutating admission webhook: it adds
// the init step and the sidecar to the pods of namespaces labelled
// tether.dev/inject=enabled.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/tether-mesh/tether/internal/cliflag"
	"github.com/tether-mesh/tether/internal/injector"
	"github.com/tether-mesh/tether/internal/logging"
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
		fmt.Fprintf(os.Stderr, "tether-injector: %v\nRun 'tether-injector --help' for usage.\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	inj, err := injector.New(cfg)
	if err != nil {
		cfg.Logger.Error("tether-injector cannot start", "error", err)
		os.Exit(1)
	}
	if err := inj.Run(ctx); err != nil {
		cfg.Logger.Error("tether-injector stopped", "error", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (injector.Config, error) {
	var c injector.Config
	fs := flag.NewFlagSet("tether-injector", flag.ContinueOnError)
	// Flag errors are printed once by main, with a hint; -h prints the
	// flags on stdout.
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.WebhookAddr, "listen", ":9443", "address of the webhook (HTTPS, POST /mutate)")
	fs.StringVar(&c.AdminAddr, "admin-listen", ":15014", "address of /healthz, /readyz, /metrics and /version")
	fs.Int64Var(&c.MaxRequestBytes, "max-request-bytes", 3<<20, "largest AdmissionReview accepted")
	fs.StringVar(&c.Inject.Image, "image", os.Getenv("TETHER_IMAGE"), "image of the injected containers, holding tether-sidecar (env TETHER_IMAGE)")
	pull := fs.String("image-pull-policy", "IfNotPresent", "pull policy of the injected containers")
	fs.StringVar(&c.Inject.DiscoveryAddr, "discovery", env("TETHER_DISCOVERY_ADDR", "tether-discovery.tether-system.svc:15010"), "tether-discovery address the sidecars dial, or \"off\" (env TETHER_DISCOVERY_ADDR)")
	fs.StringVar(&c.Inject.CAAddr, "ca", env("TETHER_CA_ADDR", "tether-ca.tether-system.svc:8443"), "tether-ca address the sidecars dial (env TETHER_CA_ADDR)")
	fs.StringVar(&c.Inject.TrustDomain, "trust-domain", env("TETHER_TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain (env TETHER_TRUST_DOMAIN)")
	cpu := fs.String("proxy-cpu", "50m", "default CPU request of the sidecar (annotation tether.dev/proxy-cpu overrides)")
	mem := fs.String("proxy-memory", "128Mi", "default memory request and limit of the sidecar (annotation tether.dev/proxy-memory overrides)")
	fs.StringVar(&c.Inject.LogLevel, "sidecar-log-level", "info", "log level of the injected sidecars")
	fs.StringVar(&c.Inject.RedirectMode, "redirect-mode", "init", "who redirects the pods' traffic to the sidecar: init (the tether-init container, root with NET_ADMIN) or cni (the Tether CNI plugin of the tether-cni-node DaemonSet; pods then pass Pod Security restricted)")
	fs.StringVar(&c.CertFile, "tls-cert-file", "", "serving certificate (PEM), e.g. from cert-manager; empty: self-managed")
	fs.StringVar(&c.KeyFile, "tls-key-file", "", "serving key (PEM)")
	fs.StringVar(&c.Certs.Kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty means in-cluster (env KUBECONFIG)")
	fs.StringVar(&c.Certs.Namespace, "namespace", env("POD_NAMESPACE", "tether-system"), "namespace of the injector's Service and Secret (env POD_NAMESPACE)")
	fs.StringVar(&c.Certs.SecretName, "secret-name", "tether-injector-tls", "Secret holding the self-managed serving certificate")
	fs.StringVar(&c.Certs.WebhookName, "webhook-name", "tether-injector", "MutatingWebhookConfiguration whose caBundle the injector keeps current")
	fs.StringVar(&c.Certs.ServiceName, "service-name", "tether-injector", "Service of the webhook (the certificate's DNS names)")
	extra := fs.String("extra-names", "", "comma-separated extra DNS names or IPs for the self-managed certificate")
	fs.DurationVar(&c.Certs.TTL, "cert-ttl", 0, "lifetime of the self-managed certificate (default 8760h)")
	fs.DurationVar(&c.Certs.PropagationDelay, "cert-propagation-delay", 0, "how long a new certificate is in the caBundle before it is served (default 2m)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stdout, "Usage of tether-injector:\n")
			cliflag.PrintFlags(os.Stdout, fs)
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.Inject.ImagePullPolicy = corev1.PullPolicy(*pull)
	var err error
	if c.Inject.ProxyCPU, err = resource.ParseQuantity(*cpu); err != nil {
		return c, fmt.Errorf("--proxy-cpu %q: %v", *cpu, err)
	}
	if c.Inject.ProxyMemory, err = resource.ParseQuantity(*mem); err != nil {
		return c, fmt.Errorf("--proxy-memory %q: %v", *mem, err)
	}
	if c.Inject.ProxyCPU.Sign() <= 0 || c.Inject.ProxyMemory.Sign() <= 0 {
		return c, fmt.Errorf("--proxy-cpu %q and --proxy-memory %q must be more than zero", *cpu, *mem)
	}
	for _, n := range strings.Split(*extra, ",") {
		if n = strings.TrimSpace(n); n != "" {
			c.Certs.ExtraNames = append(c.Certs.ExtraNames, n)
		}
	}
	if c.Logger, err = logging.New(os.Stderr, *logLevel, *logFormat); err != nil {
		return c, err
	}
	return c, c.Validate()
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
