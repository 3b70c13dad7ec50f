// Package discoveryserver runs tether-discovery: it feeds the registry of
// pkg/discovery from a mesh.yaml file or the Kubernetes API, and serves it
// over ADS (pkg/discovery/xds) on a gRPC port with mutual TLS, using an SVID
// that its own identity agent gets and renews from tether-ca.
package discoveryserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/internal/version"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
	"github.com/tether-mesh/tether/pkg/discovery/kubesource"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
)

// Registry sources.
const (
	RegistryFile = "file"
	RegistryKube = "kube"
)

// Defaults filled in by Validate.
const (
	DefaultClusterDomain    = "cluster.local"
	DefaultMeshFileInterval = 500 * time.Millisecond
)

// Config is tether-discovery's configuration, filled from flags.
type Config struct {
	TrustDomain string
	// Registry is RegistryFile (MeshFile) or RegistryKube (Kubeconfig, or
	// the in-cluster configuration when empty). Empty means RegistryFile.
	Registry string
	MeshFile string
	// MeshFileInterval is how often the mesh file is checked for changes
	// (default DefaultMeshFileInterval).
	MeshFileInterval time.Duration
	Kubeconfig       string
	// DefaultPolicy is the mesh-wide default: allow-mesh, same-namespace or
	// deny. Empty means the mesh file's defaultPolicy, else allow-mesh.
	DefaultPolicy string
	// DefaultPolicyMode is the mode of the mesh default: enforce or audit.
	// Empty means the mesh file's defaultPolicyMode, else enforce.
	DefaultPolicyMode string
	// ClusterDomain is the DNS domain of service names in the sidecars'
	// name tables (default DefaultClusterDomain).
	ClusterDomain string

	// ListenAddr serves ADS over gRPC with mTLS.
	ListenAddr string
	// MaxConcurrentSyncs bounds the sidecars being sent their whole
	// configuration at once (xds.Server.MaxConcurrentSyncs; default
	// xds.DefaultMaxConcurrentSyncs).
	MaxConcurrentSyncs int
	// MaxSyncsPerIdentity bounds the slots of one SPIFFE ID
	// (xds.Server.MaxSyncsPerIdentity; 0: a quarter of MaxConcurrentSyncs).
	MaxSyncsPerIdentity int
	// MaxStreamsPerIdentity bounds the open ADS streams of one SPIFFE ID
	// (xds.Server.MaxStreamsPerIdentity; default
	// xds.DefaultMaxStreamsPerIdentity).
	MaxStreamsPerIdentity int
	// AdminAddr serves /healthz, /readyz and /metrics to every caller, and
	// /debug/sidecars and /debug/flows only to callers on loopback.
	AdminAddr string

	// FlowMaxEdges, FlowMaxEdgesPerReporter and FlowRetention bound the
	// observed-traffic table (flows.StoreConfig; 0: its defaults).
	FlowMaxEdges            int
	FlowMaxEdgesPerReporter int
	FlowRetention           time.Duration

	// CAAddr is tether-ca; BundleFile verifies it at bootstrap. JoinToken
	// (standalone) or TokenFile (a projected ServiceAccount token) proves
	// discovery's own identity to it.
	CAAddr     string
	BundleFile string
	JoinToken  string
	TokenFile  string

	Logger *slog.Logger
}

var dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// Validate checks the config and fills in defaults.
func (c *Config) Validate() error {
	if td, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("--trust-domain %q: %v", c.TrustDomain, err)
	} else if td.Name() != c.TrustDomain {
		return fmt.Errorf("--trust-domain %q: give the bare trust domain name, e.g. %q", c.TrustDomain, td.Name())
	}
	if c.Registry == "" {
		c.Registry = RegistryFile
	}
	switch c.Registry {
	case RegistryFile:
		if c.MeshFile == "" {
			return errors.New("--registry=file needs --mesh-file (the mesh.yaml to serve; see docs/discovery.md)")
		}
	case RegistryKube:
		if c.MeshFile != "" {
			return errors.New("--mesh-file is only read with --registry=file; drop it, or drop --registry=kube")
		}
	default:
		return fmt.Errorf("--registry %q: want file or kube", c.Registry)
	}
	if c.MeshFileInterval < 0 {
		return fmt.Errorf("--mesh-file-interval %s must be positive", c.MeshFileInterval)
	}
	if c.MeshFileInterval == 0 {
		c.MeshFileInterval = DefaultMeshFileInterval
	}
	if c.MaxConcurrentSyncs < 0 {
		return fmt.Errorf("--max-concurrent-syncs %d: want at least 1 (0: the default, %d)", c.MaxConcurrentSyncs, xds.DefaultMaxConcurrentSyncs)
	}
	if c.MaxSyncsPerIdentity < 0 {
		return fmt.Errorf("--max-syncs-per-identity %d: want at least 1 (0: a quarter of --max-concurrent-syncs)", c.MaxSyncsPerIdentity)
	}
	if c.MaxStreamsPerIdentity < 0 {
		return fmt.Errorf("--max-streams-per-identity %d: want at least 1 (0: the default, %d)", c.MaxStreamsPerIdentity, xds.DefaultMaxStreamsPerIdentity)
	}
	if c.FlowMaxEdges < 0 || c.FlowMaxEdgesPerReporter < 0 || c.FlowRetention < 0 {
		return fmt.Errorf("--flow-max-edges %d, --flow-max-edges-per-reporter %d, --flow-retention %s: none may be negative (0: the default)",
			c.FlowMaxEdges, c.FlowMaxEdgesPerReporter, c.FlowRetention)
	}
	if c.DefaultPolicy != "" {
		if _, err := wire.ParseDefault(c.DefaultPolicy); err != nil {
			return fmt.Errorf("--default-policy: %v", err)
		}
	}
	if c.DefaultPolicyMode != "" {
		if _, err := policy.ParseDefaultMode(c.DefaultPolicyMode); err != nil {
			return fmt.Errorf("--default-policy-mode: %v", err)
		}
	}
	domain, err := normalizeDomain(c.ClusterDomain)
	if err != nil {
		return fmt.Errorf("--cluster-domain %q: %v", c.ClusterDomain, err)
	}
	c.ClusterDomain = domain
	switch {
	case c.ListenAddr == "":
		return errors.New("--listen is required (address of the xDS gRPC port, e.g. :15010)")
	case c.AdminAddr == "":
		return errors.New("--admin-listen is required (address of /healthz, /readyz and /metrics, e.g. :15014)")
	case c.CAAddr == "":
		return errors.New("--ca is required (tether-ca address, host:port)")
	case c.BundleFile == "":
		return errors.New("--bundle is required (PEM trust bundle that verifies the CA)")
	case (c.JoinToken == "") == (c.TokenFile == ""):
		return errors.New("give exactly one of --join-token (standalone) and --token-file (projected ServiceAccount token)")
	}
	if c.JoinToken != "" {
		if identity.ParseJoinToken(c.JoinToken) != nil {
			return errors.New("--join-token: not a join token; create one with `tether ca token create` (it starts with tjt_)")
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// normalizeDomain returns d without a trailing dot, in lower case, or an
// error if it is not a DNS name; empty means DefaultClusterDomain.
func normalizeDomain(d string) (string, error) {
	if d == "" {
		return DefaultClusterDomain, nil
	}
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	if d == "" || len(d) > 253 {
		return "", errors.New("want a DNS name such as cluster.local")
	}
	for _, l := range strings.Split(d, ".") {
		if len(l) > 63 || !dnsLabelRE.MatchString(l) {
			return "", fmt.Errorf("label %q is not a DNS label; want a DNS name such as cluster.local", l)
		}
	}
	return d, nil
}

// ErrNotSynced is what Ready reports until the registry source has
// delivered its first state.
var ErrNotSynced = errors.New("registry has not synced yet")

// source feeds reg with whole states until ctx ends: a FileSource or a
// KubeSource. Run returns an error if it cannot start (an unreadable mesh
// file; caches that never synced, once ctx ends), and nil when ctx ends
// after a good start.
type source interface {
	Run(ctx context.Context, reg *discovery.Registry) error
}

var (
	_ source = (*discovery.FileSource)(nil)
	_ source = (*kubesource.KubeSource)(nil)
)

// Server is a running tether-discovery.
type Server struct {
	cfg      Config
	log      *slog.Logger
	td       spiffeid.TrustDomain
	reg      *discovery.Registry
	source   source
	agent    *agent.Agent
	xds      *xds.Server
	metrics  *metrics
	registry *prometheus.Registry
	// flows is the observed-traffic table sidecars report into.
	flows     *flows.Store
	flowsGRPC *flowServer

	mu        sync.Mutex
	listeners map[string]net.Addr
}

// New builds tether-discovery from cfg. It checks what can be checked
// before serving: the trust bundle, the bootstrap credential, the mesh
// file (it must exist and be valid) or the Kubernetes client
// configuration. Nothing listens or connects until Run.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	s := &Server{cfg: cfg, log: cfg.Logger, td: td, registry: prometheus.NewRegistry(), listeners: map[string]net.Addr{}}
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	bundle, err := loadBundle(cfg.BundleFile, td)
	if err != nil {
		return nil, err
	}
	if cfg.TokenFile != "" {
		if _, err := os.Stat(cfg.TokenFile); err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
	}

	def := policy.AllowMesh
	if cfg.DefaultPolicy != "" {
		def, _ = wire.ParseDefault(cfg.DefaultPolicy) // checked by Validate
	}
	mode := policy.Enforce
	if cfg.DefaultPolicyMode != "" {
		mode, _ = policy.ParseDefaultMode(cfg.DefaultPolicyMode) // checked by Validate
	}
	s.metrics = newMetrics(s.registry)
	rejected := func(error) { s.metrics.reloadErrors.Inc() }
	switch cfg.Registry {
	case RegistryFile:
		if def, mode, err = checkMeshFile(cfg, td, def, mode); err != nil {
			return nil, err
		}
		s.source = &discovery.FileSource{Path: cfg.MeshFile, Interval: cfg.MeshFileInterval, Logger: cfg.Logger, Rejected: rejected}
	case RegistryKube:
		rc, err := restConfig(cfg.Kubeconfig)
		if err != nil {
			return nil, err
		}
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		dc, err := dynamic.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		klog.SetSlogLogger(cfg.Logger) // client-go's own logs in our format
		s.source = &kubesource.KubeSource{Client: cs, Dynamic: dc, Logger: cfg.Logger, Rejected: rejected}
	}
	if s.reg, err = discovery.NewRegistry(td, def, discovery.WithMeshDefaultMode(mode)); err != nil {
		return nil, err
	}

	s.agent, err = agent.New(agent.Config{CAAddr: cfg.CAAddr, Bundle: bundle, Credential: s.credential, Version: version.String(), Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	s.registry.MustRegister(&registryCollector{reg: s.reg}, svidExpiry(s.agent))
	s.xds = &xds.Server{Registry: s.reg, ClusterDomain: cfg.ClusterDomain, Logger: cfg.Logger, MaxConcurrentSyncs: cfg.MaxConcurrentSyncs,
		MaxSyncsPerIdentity: cfg.MaxSyncsPerIdentity, MaxStreamsPerIdentity: cfg.MaxStreamsPerIdentity}
	s.registry.MustRegister(syncGauges(s.xds)...)
	replica, _ := os.Hostname()
	s.flows = flows.NewStore(flows.StoreConfig{MaxEdges: cfg.FlowMaxEdges, MaxEdgesPerReporter: cfg.FlowMaxEdgesPerReporter,
		Retention: cfg.FlowRetention, Replica: replica})
	s.flowsGRPC = newFlowServer(s.flows, s.reg, cfg.Logger, s.registry)
	return s, nil
}

// loadBundle reads the bootstrap bundle and checks that its roots, when
// they carry a SPIFFE ID, belong to td.
func loadBundle(path string, td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, err := identity.LoadBundlePEM(path, "")
	if err == nil && b.TrustDomain() != td {
		return nil, fmt.Errorf("--bundle %s: its roots are of trust domain %s, but --trust-domain is %s", path, b.TrustDomain().Name(), td.Name())
	}
	if err != nil {
		// Roots without a SPIFFE ID (an organisation's own PKI) are taken
		// as td's.
		if b, err = identity.LoadBundlePEM(path, td.Name()); err != nil {
			return nil, fmt.Errorf("--bundle: %w", err)
		}
	}
	return b, nil
}

// checkMeshFile loads the mesh file once so that a missing or bad file
// stops the start with a clear message, and returns the mesh default: def
// if --default-policy was given, else the file's, else allow-mesh; and its
// mode likewise (--default-policy-mode, defaultPolicyMode, enforce).
func checkMeshFile(cfg Config, td spiffeid.TrustDomain, def policy.Default, mode policy.Mode) (policy.Default, policy.Mode, error) {
	mf, err := discovery.LoadMeshFile(cfg.MeshFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, "", fmt.Errorf("--mesh-file %s does not exist; write one first (format: docs/discovery.md)", cfg.MeshFile)
	}
	if err != nil {
		return 0, "", fmt.Errorf("--mesh-file: %w", err)
	}
	if !mf.TrustDomain.IsZero() && mf.TrustDomain != td {
		return 0, "", fmt.Errorf("--mesh-file %s: trustDomain %s differs from --trust-domain %s", cfg.MeshFile, mf.TrustDomain.Name(), td.Name())
	}
	if mf.DefaultPolicy != 0 {
		if cfg.DefaultPolicy != "" && mf.DefaultPolicy != def {
			return 0, "", fmt.Errorf("--mesh-file %s: defaultPolicy %s differs from --default-policy %s; drop one of them", cfg.MeshFile, mf.DefaultPolicy, def)
		}
		def = mf.DefaultPolicy
	}
	if mf.DefaultPolicyMode != "" {
		if cfg.DefaultPolicyMode != "" && mf.DefaultPolicyMode != mode {
			return 0, "", fmt.Errorf("--mesh-file %s: defaultPolicyMode %s differs from --default-policy-mode %s; drop one of them",
				cfg.MeshFile, policy.DefaultModeString(mf.DefaultPolicyMode), policy.DefaultModeString(mode))
		}
		mode = mf.DefaultPolicyMode
	}
	scratch, err := discovery.NewRegistry(td, def, discovery.WithMeshDefaultMode(mode))
	if err != nil {
		return 0, "", err
	}
	if err := scratch.Update(mf.State); err != nil {
		return 0, "", fmt.Errorf("--mesh-file %s: %w", cfg.MeshFile, err)
	}
	return def, mode, nil
}

// restConfig is the kubeconfig file if one is given, else in-cluster.
func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig: %w", err)
		}
		return rc, nil
	}
	rc, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w (outside a cluster, pass --kubeconfig)", err)
	}
	return rc, nil
}

// credential reads the bootstrap credential fresh each time (a projected
// token is rotated by the kubelet).
func (s *Server) credential() (*cav1.Credential, error) {
	if s.cfg.JoinToken != "" {
		return &cav1.Credential{Kind: identity.KindJoinToken, Token: s.cfg.JoinToken}, nil
	}
	b, err := os.ReadFile(s.cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	return &cav1.Credential{Kind: identity.KindK8sSAT, Token: strings.TrimSpace(string(b))}, nil
}

// Agent is discovery's identity: its SVID and trust bundle.
func (s *Server) Agent() *agent.Agent { return s.agent }

// Registry is the registry discovery serves.
func (s *Server) Registry() *discovery.Registry { return s.reg }

// Addr returns the address a named listener ("grpc", "admin") is bound to,
// once Run has bound it.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listeners[name]
}

// Ready returns nil once discovery holds a valid SVID and its registry
// source has delivered a first state; it serves xDS only then.
func (s *Server) Ready() error {
	if err := s.agent.Ready(); err != nil {
		return fmt.Errorf("identity from %s: %w", s.cfg.CAAddr, err)
	}
	if s.reg.Snapshot().Version() == 0 {
		return ErrNotSynced
	}
	return nil
}

// notReadyWarning is how long Run waits for readiness before it says why
// it is not serving yet, and then how often it repeats it.
const notReadyWarning = 30 * time.Second

// Run serves until ctx ends, then stops everything and returns. It binds
// both ports first (so a clash fails at once), answers the admin port at
// once, and accepts xDS connections once Ready. It returns an error if a
// listener cannot be bound or the mesh file cannot be loaded at start.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	grpcL, err := net.Listen("tcp", s.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("xDS listener (--listen): %w", err)
	}
	adminL, err := net.Listen("tcp", s.cfg.AdminAddr)
	if err != nil {
		grpcL.Close()
		return fmt.Errorf("admin listener (--admin-listen): %w", err)
	}
	s.mu.Lock()
	s.listeners["grpc"], s.listeners["admin"] = grpcL.Addr(), adminL.Addr()
	s.mu.Unlock()

	g := s.grpcServer()
	s.xds.Register(g)
	discoveryv1.RegisterFlowsServer(g, s.flowsGRPC)
	httpAdmin := admin.New(s.cfg.AdminAddr, s.Ready, s.registry, s.log, admin.WithMetrics("discovery", s.registry))
	httpAdmin.HandleLocal("GET /debug/sidecars", s.debugSidecars)
	httpAdmin.HandleLocal("GET /debug/flows", s.debugFlows)

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
	run("identity agent", func() error { return s.agent.Run(ctx) })
	run("registry", func() error { return s.source.Run(ctx, s.reg) })
	run("xds", func() error { return s.xds.Run(ctx) })
	run("flows", func() error { s.expireFlows(ctx); return nil })
	run("admin http", func() error { return httpAdmin.Serve(ctx, adminL) })
	run("grpc", func() error {
		if !s.waitReady(ctx) {
			grpcL.Close()
			return nil
		}
		id := "?"
		if svid, err := s.agent.GetX509SVID(); err == nil {
			id = svid.ID.String()
		}
		s.log.Info("serving xDS", slog.String("addr", grpcL.Addr().String()), slog.String("spiffe_id", id),
			slog.Uint64("registry_version", s.reg.Snapshot().Version()))
		return g.Serve(grpcL)
	})
	s.log.Info("tether-discovery started", slog.String("trust_domain", s.cfg.TrustDomain),
		slog.String("registry", s.cfg.Registry), slog.String("grpc", grpcL.Addr().String()),
		slog.String("admin", adminL.Addr().String()), slog.String("ca", s.cfg.CAAddr),
		slog.String("default_policy", s.reg.MeshDefault().String()),
		slog.String("default_policy_mode", policy.DefaultModeString(s.reg.MeshDefaultMode())), slog.String("cluster_domain", s.cfg.ClusterDomain))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		s.log.Error("tether-discovery stopping after an error", slog.Any("error", runErr))
	}
	cancel()
	// ADS streams last as long as the sidecar: end them now; sidecars keep
	// their last config and reconnect (to another replica).
	g.Stop()
	wg.Wait()
	grpcL.Close()
	return runErr
}

// grpcServer is the xDS (and Flows) gRPC server: mTLS with the agent's current SVID
// and bundle on every handshake (so renewals and bundle changes apply
// without a restart), accepting any SVID of the trust domain; xds.Server
// then checks node.id against it.
func (s *Server) grpcServer() *grpc.Server {
	tc := tlsconfig.MTLSServerConfig(s.agent, s.agent, tlsconfig.AuthorizeMemberOf(s.td))
	tc.MinVersion = tls.VersionTLS13
	return grpc.NewServer(append(xds.GRPCServerOptions(),
		grpc.Creds(credentials.NewTLS(tc)),
		grpc.ConnectionTimeout(10*time.Second),
		grpc.StreamInterceptor(s.metrics.streamInterceptor),
		grpc.InTapHandle(s.flowsGRPC.tap),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)...)
}

// waitReady waits until Ready, logging why not every notReadyWarning. It
// returns false if ctx ends first.
func (s *Server) waitReady(ctx context.Context) bool {
	warn := time.NewTicker(notReadyWarning)
	defer warn.Stop()
	for {
		agentChanged, regChanged := s.agent.Changed(), s.reg.Changed()
		err := s.Ready()
		if err == nil {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-agentChanged:
		case <-regChanged:
		case <-warn.C:
			hint := "is tether-ca reachable, and is the bootstrap credential valid?"
			if errors.Is(err, ErrNotSynced) {
				hint = "is the API server reachable, does the ServiceAccount have the RBAC of docs/discovery.md, and is the AccessPolicy CRD installed?"
			}
			s.log.Warn("not serving xDS yet", slog.Any("reason", err), slog.String("check", hint))
		}
	}
}
