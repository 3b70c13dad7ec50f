// Package sidecar runs tether-sidecar: the pod's identity agent, its
// Workload API, and the inbound and outbound proxies, from one Config.
package sidecar

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
	"github.com/tether-mesh/tether/pkg/identity/workload"
	"github.com/tether-mesh/tether/pkg/proxy"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
	"github.com/tether-mesh/tether/pkg/proxy/dns"
)

// Listener pairs, for explicit mode.
type (
	// InboundListener terminates mesh mTLS on Listen and forwards to App.
	InboundListener struct{ Listen, App string }
	// OutboundListener accepts plaintext on Listen and originates mTLS to
	// a mesh service (Service and Port, resolved from discovery's current
	// view for every connection) or, when Service is zero, to the fixed
	// peer Dest.
	OutboundListener struct {
		Listen  string
		Dest    proxy.Destination
		Service wire.ServiceKey
		Port    uint16
	}
)

// DefaultDNSListen is the DNS server's address when it is on by default
// (--transparent with --discovery): where `tether-sidecar init
// --capture-dns` redirects the pod's port 53.
const DefaultDNSListen = "127.0.0.1:15053"

// DefaultDiscoveryNamespace and DefaultDiscoveryServiceAccount give the
// identity tether-discovery is expected to present by default:
// spiffe://<trust-domain>/ns/tether-system/sa/tether-discovery.
const (
	DefaultDiscoveryNamespace      = "tether-system"
	DefaultDiscoveryServiceAccount = "tether-discovery"
)

// DNS configures the sidecar's DNS server (pkg/proxy/dns).
type DNS struct {
	// Listen is the UDP and TCP address.
	Listen string
	// ResolvConf is the pod's resolv.conf: upstream nameservers, search
	// path and ndots.
	ResolvConf string
	// Upstreams, if set, replace ResolvConf's nameservers ("ip" or
	// "ip:port").
	Upstreams []string
	// AnswerUnreachable answers mesh names this pod may not reach instead
	// of NXDOMAIN.
	AnswerUnreachable bool
	// EgressAllow are DNS names or *.suffix patterns whose answered
	// addresses registry-only mode lets through.
	EgressAllow []string
}

// Config is tether-sidecar's configuration.
type Config struct {
	TrustDomain string
	CAAddr      string
	// BundleFile verifies the CA at bootstrap (PEM roots).
	BundleFile string
	// JoinToken (standalone) or TokenFile (Kubernetes projected token)
	// proves the pod's identity at bootstrap.
	JoinToken string
	TokenFile string

	// AdminAddr serves the kubelet and Prometheus (/healthz/ready,
	// /healthz/live, /app-health/..., /metrics) to every caller, and
	// /debug/... and POST /quitquitquit only to callers on loopback.
	AdminAddr string
	// AdminLimits bound the admin port's connections (zero:
	// admin.DefaultLimits).
	AdminLimits    admin.Limits
	WorkloadSocket string
	// WorkloadSocketAccess says who may connect to WorkloadSocket (default:
	// the sidecar's user only).
	WorkloadSocketAccess workload.Access

	// Explicit mode listeners.
	Inbound  []InboundListener
	Outbound []OutboundListener
	// Capture, if set, also serves the transparent-capture listeners.
	Capture *Transparent

	InboundMode proxy.Mode
	// Allow is the static inbound allow-list; empty allows every peer of
	// the trust domain (the mesh-wide default allow-mesh). Not used with
	// discovery, whose policy decides.
	Allow proxy.AllowList

	// DiscoveryAddr is tether-discovery (host:port); empty: no discovery,
	// the static configuration decides. With it, inbound authorization,
	// --outbound NAMESPACE/SERVICE:PORT listeners and transparent outbound
	// routing come from discovery's current view of this identity.
	DiscoveryAddr string
	// DiscoveryID is the SPIFFE ID discovery must present (default
	// spiffe://<trust-domain>/ns/tether-system/sa/tether-discovery).
	DiscoveryID spiffeid.ID
	// FlowReportInterval is how often the flows this sidecar saw are
	// reported to discovery (0: not summarised nor reported; only with
	// DiscoveryAddr). See docs/policy.md, "Observed traffic".
	FlowReportInterval time.Duration
	// ClusterDomain is the cluster DNS domain (default cluster.local).
	ClusterDomain string
	// DNS, if set, runs the DNS server.
	DNS *DNS

	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	MaxConnections   int
	DrainTimeout     time.Duration
	// EndStreamsAtSVIDExpiry: see proxy.Config.EndStreamsAtSVIDExpiry.
	EndStreamsAtSVIDExpiry bool

	// AccessLog is a file path, or "-" for standard output.
	AccessLog       string
	AccessLogSample float64

	Logger *slog.Logger
}

// Validate checks cfg.
func (c *Config) Validate() error {
	if td, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil || td.Name() != c.TrustDomain {
		return fmt.Errorf("--trust-domain %q: want a bare trust domain name such as cluster.local", c.TrustDomain)
	}
	switch {
	case c.CAAddr == "":
		return errors.New("--ca is required (tether-ca address, host:port)")
	case c.BundleFile == "":
		return errors.New("--bundle is required (PEM trust bundle that verifies the CA)")
	case (c.JoinToken == "") == (c.TokenFile == ""):
		return errors.New("give exactly one of --join-token and --token-file")
	case len(c.Inbound) == 0 && len(c.Outbound) == 0 && c.Capture == nil:
		return errors.New("nothing to proxy: give --transparent, or --inbound and/or --outbound listeners")
	case c.AccessLogSample < 0 || c.AccessLogSample > 1:
		return fmt.Errorf("--access-log-sample %v: want a fraction from 0 to 1", c.AccessLogSample)
	}
	switch c.InboundMode {
	case proxy.Strict, proxy.Permissive:
	default:
		return fmt.Errorf("--inbound-mode %q: want strict or permissive", c.InboundMode)
	}
	if t := c.Capture; t != nil {
		switch t.OutboundMode {
		case Passthrough, RegistryOnly:
		default:
			return fmt.Errorf("--outbound-mode %q: want %s or %s", t.OutboundMode, Passthrough, RegistryOnly)
		}
	}
	for _, in := range c.Inbound {
		if _, err := proxy.FixedTarget(in.App); err != nil {
			return fmt.Errorf("--inbound %s=%s: %v", in.Listen, in.App, err)
		}
	}
	if err := c.validateDiscovery(); err != nil {
		return err
	}
	if err := checkFlowReportInterval(c.FlowReportInterval); err != nil {
		return err
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 20 * time.Second
	}
	if c.AdminAddr == "" {
		c.AdminAddr = ":15020"
	}
	if c.Capture != nil {
		if err := c.Capture.checkLoopbackPorts(c); err != nil {
			return err
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// validateDiscovery checks the discovery and DNS settings and fills their
// defaults.
func (c *Config) validateDiscovery() error {
	if c.ClusterDomain == "" {
		c.ClusterDomain = dns.DefaultClusterDomain
	}
	if _, ok := mdns.IsDomainName(c.ClusterDomain); !ok || strings.Trim(c.ClusterDomain, ".") == "" || strings.Contains(c.ClusterDomain, "..") {
		return fmt.Errorf("--cluster-domain %q: want a DNS domain such as cluster.local", c.ClusterDomain)
	}
	c.ClusterDomain = strings.ToLower(strings.Trim(c.ClusterDomain, "."))
	if c.DiscoveryAddr == "" {
		for _, o := range c.Outbound {
			if o.Service != (wire.ServiceKey{}) {
				return fmt.Errorf("--outbound %s=%s:%d names a mesh service, which needs --discovery (or give a fixed peer, LISTEN=PEER@SPIFFE_ID)", o.Listen, o.Service, o.Port)
			}
		}
		if !c.DiscoveryID.IsZero() {
			return errors.New("--discovery-id needs --discovery")
		}
	} else {
		if _, port, err := net.SplitHostPort(c.DiscoveryAddr); err != nil || port == "" {
			return fmt.Errorf("--discovery %q: want host:port, e.g. tether-discovery.tether-system.svc:15010", c.DiscoveryAddr)
		}
		if len(c.Allow) > 0 {
			return errors.New("--allow and --discovery do not go together: with discovery, inbound policy comes from discovery (AccessPolicy objects and defaults); drop --allow, or drop --discovery to use the static allow-list")
		}
		if c.Capture != nil && len(c.Capture.Endpoints) > 0 {
			return errors.New("--mesh-endpoint and --discovery do not go together: with discovery, the mesh endpoints come from discovery; drop --mesh-endpoint, or drop --discovery")
		}
		td, _ := spiffeid.TrustDomainFromString(c.TrustDomain)
		if c.DiscoveryID.IsZero() {
			id, err := wire.WorkloadID(td, DefaultDiscoveryNamespace, DefaultDiscoveryServiceAccount)
			if err != nil {
				return err
			}
			c.DiscoveryID = id
		}
		if c.DiscoveryID.TrustDomain() != td {
			return fmt.Errorf("--discovery-id %s is outside trust domain %s", c.DiscoveryID, td.Name())
		}
	}
	if d := c.DNS; d != nil {
		if _, _, err := net.SplitHostPort(d.Listen); err != nil {
			return fmt.Errorf("--dns-listen %q: want host:port, e.g. %s", d.Listen, DefaultDNSListen)
		}
		if d.ResolvConf == "" && len(d.Upstreams) == 0 {
			return errors.New("the DNS server needs upstream resolvers: give --resolv-conf or --dns-upstream")
		}
		for _, p := range d.EgressAllow {
			if err := dns.CheckEgressPattern(p); err != nil {
				return fmt.Errorf("--egress-allow: %w", err)
			}
		}
	}
	return nil
}

// Sidecar is a running tether-sidecar.
type Sidecar struct {
	cfg      Config
	log      *slog.Logger
	registry *prometheus.Registry
	// adminMetrics count what the admin port refuses.
	adminMetrics *admin.Metrics
	agent        *agent.Agent
	proxy        *proxy.Proxy
	closers      []io.Closer
	// view is discovery's current view of this identity (nil before the
	// first, or without discovery); dns is the DNS server, if on.
	view atomic.Pointer[xdsclient.View]
	dns  *dns.Server
	// denials keeps the recent denials for GET /debug/denials.
	denials *proxy.RecentDenials
	// flows is the flow summary reported to discovery (nil: off).
	flows *flowRecorder

	mu    sync.Mutex
	addrs map[string]net.Addr
	quit  chan struct{}
	once  sync.Once
}

// New builds the sidecar; nothing listens until Run.
func New(cfg Config) (*Sidecar, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Sidecar{cfg: cfg, log: cfg.Logger, registry: prometheus.NewRegistry(), addrs: map[string]net.Addr{}, quit: make(chan struct{})}
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.adminMetrics = admin.NewMetrics("sidecar", s.registry)
	bundle, err := identity.LoadBundlePEM(cfg.BundleFile, cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	s.agent, err = agent.New(agent.Config{
		CAAddr: cfg.CAAddr, Bundle: bundle, Credential: s.credential,
		Version: buildVersion(), Logger: cfg.Logger, Registerer: s.registry,
	})
	if err != nil {
		return nil, err
	}
	if cfg.DNS != nil {
		if s.dns, err = newDNS(cfg, s.registry); err != nil {
			return nil, err
		}
	}
	var accessLog *proxy.AccessLog
	switch cfg.AccessLog {
	case "", "-":
		accessLog = proxy.NewAccessLog(os.Stdout, cfg.AccessLogSample)
	case "off":
	default:
		f, err := os.OpenFile(cfg.AccessLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, fmt.Errorf("--access-log: %w", err)
		}
		s.closers = append(s.closers, f)
		accessLog = proxy.NewAccessLog(f, cfg.AccessLogSample)
	}
	s.denials = proxy.NewRecentDenials(proxy.DefaultRecentDenials, nil)
	// Callers without identity (permissive mode) reach only ports no
	// policy restricts: with the static allow-list, none.
	authorize, unauthenticated := proxy.AllowAll, proxy.AllowUnauthenticated
	var authorizeAudit proxy.AuditAuthorizer // with discovery: audit mode
	// Callers of a federated trust domain: only with discovery, where an
	// AccessPolicy names them (never with the static allow-list).
	var acceptForeign func(spiffeid.ID) bool
	switch {
	case cfg.DiscoveryAddr != "":
		authorize, unauthenticated, authorizeAudit = s.authorize, s.authorizeUnauthenticated, s.authorizeAudit
		acceptForeign = s.acceptForeign
	case len(cfg.Allow) > 0:
		authorize, unauthenticated = cfg.Allow.Authorizer(), proxy.DenyUnauthenticated
	}
	var observe func(*proxy.Entry)
	if cfg.DiscoveryAddr != "" && cfg.FlowReportInterval > 0 {
		s.flows = newFlowRecorder(&s.view, s.registry)
		observe = s.flows.observe
	}
	var reserved []uint16
	if cfg.Capture != nil {
		// The capture contract's ports, whatever this sidecar binds.
		reserved = []uint16{capture.DefaultOutboundPort, capture.DefaultInboundPort, capture.DefaultAdminPort, capture.DefaultDNSPort}
	}
	s.proxy, err = proxy.New(proxy.Config{
		Identity: s.agent, TrustDomain: bundle.TrustDomain(), ForeignBundles: s.agent.FederatedX509Source(), AcceptForeign: acceptForeign,
		Authorize: authorize, AuthorizeAudit: authorizeAudit, InboundMode: cfg.InboundMode,
		AuthorizeUnauthenticated: unauthenticated, ReservedPorts: reserved, EndStreamsAtSVIDExpiry: cfg.EndStreamsAtSVIDExpiry,
		HandshakeTimeout: cfg.HandshakeTimeout, IdleTimeout: cfg.IdleTimeout, MaxConnections: cfg.MaxConnections,
		AccessLog: accessLog, Observe: observe, Metrics: proxy.NewMetrics(s.registry), Logger: cfg.Logger,
		Denials: s.denials,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// credential reads the bootstrap credential fresh each time (a projected
// token is rotated by the kubelet).
func (s *Sidecar) credential() (*cav1.Credential, error) {
	if s.cfg.JoinToken != "" {
		return &cav1.Credential{Kind: identity.KindJoinToken, Token: s.cfg.JoinToken}, nil
	}
	b, err := os.ReadFile(s.cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	return &cav1.Credential{Kind: identity.KindK8sSAT, Token: strings.TrimSpace(string(b))}, nil
}

// Agent is the sidecar's identity.
func (s *Sidecar) Agent() *agent.Agent { return s.agent }

// Addr returns the bound address of a listener by name ("admin",
// "inbound/0", "outbound/1", ...), once Run has bound it.
func (s *Sidecar) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[name]
}

// Quit asks Run to drain and return, as POST /quitquitquit does.
func (s *Sidecar) Quit() { s.once.Do(func() { close(s.quit) }) }
