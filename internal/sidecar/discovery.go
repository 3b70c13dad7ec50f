package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/proxy"
	"github.com/tether-mesh/tether/pkg/proxy/dns"
)

// Rules named in denials the sidecar decides without a policy rule from
// discovery (labels of tether_sidecar_authz_denials_total).
const (
	ruleNoView         = "no configuration from discovery yet"
	ruleRegistryOnly   = "registry-only"
	ruleUnknownService = "unknown service, or policy allows none of its ports"
	ruleUnknownPort    = "unknown service port"
	ruleNoEndpoints    = "no endpoints"
)

// authorize is the inbound Authorizer with discovery: the current view
// decides (authoritatively), and nothing is let in before the first view.
func (s *Sidecar) authorize(src spiffeid.ID, port uint16) error {
	v := s.view.Load()
	if v == nil {
		return &proxy.DeniedError{Rule: ruleNoView}
	}
	if d := v.Authorize(src, port); !d.Allowed {
		return &proxy.DeniedError{Rule: d.Rule}
	}
	return nil
}

// acceptForeign is the proxy's AcceptForeign with discovery: a caller of a
// federated trust domain may open a tunnel when some inbound rule of the
// current view names it (AccessPolicy sources by spiffeID or trustDomain);
// nothing before the first view.
func (s *Sidecar) acceptForeign(id spiffeid.ID) bool {
	return s.view.Load().AdmitsForeign(id)
}

// authorizeAudit is authorize for a new stream: it also returns the
// would-be rule when a policy or default in audit mode would deny it.
func (s *Sidecar) authorizeAudit(src spiffeid.ID, port uint16) (string, error) {
	v := s.view.Load()
	if v == nil {
		return "", &proxy.DeniedError{Rule: ruleNoView}
	}
	d := v.Authorize(src, port)
	if !d.Allowed {
		return "", &proxy.DeniedError{Rule: d.Rule}
	}
	return d.AuditRule, nil
}

// podAddrs returns the addresses of this sidecar's pod, whose inbound
// decisions discovery's chains are matched against (see
// xdsclient.NewViewForPod): podIP (the value of PodIPEnv) if it is an IP
// address, and the global unicast addresses of the interfaces of the
// network namespace the sidecar runs in (the pod's, one per IP family).
// Loopback and link-local addresses are left out: no Service selects a
// pod by them. With none, every chain of the identity applies (fail
// closed); that is logged.
func podAddrs(podIP string, interfaceAddrs func() ([]net.Addr, error), log *slog.Logger) []netip.Addr {
	var out []netip.Addr
	if a, err := netip.ParseAddr(podIP); err == nil && a.Zone() == "" {
		out = append(out, a.Unmap())
	} else if podIP != "" {
		log.Warn("ignoring "+PodIPEnv+": not an IP address", slog.String("value", podIP))
	}
	addrs, err := interfaceAddrs()
	if err != nil {
		log.Warn("cannot list the pod's addresses", slog.Any("error", err))
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().IsGlobalUnicast() {
				out = append(out, ip.Unmap())
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	if len(out) == 0 {
		log.Warn("the pod's address is unknown: inbound connections must pass the rules of every pod of this identity")
	} else {
		log.Info("inbound decisions are this pod's", slog.Any("pod_addrs", out))
	}
	return out
}

// authorizeUnauthenticated decides a caller without identity (permissive
// mode) with the current view: only ports no policy restricts, nothing
// before the first view.
func (s *Sidecar) authorizeUnauthenticated(port uint16) error {
	v := s.view.Load()
	if v == nil {
		return &proxy.DeniedError{Rule: ruleNoView}
	}
	if d := v.AuthorizeUnauthenticated(port); !d.Allowed {
		return &proxy.DeniedError{Rule: d.Rule}
	}
	return nil
}

// serviceRouter routes an explicit outbound listener to a mesh service
// port, deciding every connection with the view current at accept.
func (s *Sidecar) serviceRouter(key wire.ServiceKey, port uint16) proxy.Router {
	return func(net.Conn) proxy.Route {
		v := s.view.Load()
		if v == nil {
			return proxy.Route{Deny: ruleNoView, Target: serviceTarget(key, port), Rule: ruleNoView}
		}
		return s.outboundRoute(v, key, port)
	}
}

func serviceTarget(key wire.ServiceKey, port uint16) string {
	return key.String() + ":" + strconv.Itoa(int(port))
}

// outboundRoute decides a call to port of service key with view v: a mesh
// destination (an endpoint chosen round-robin, and the identities that
// must serve it), or a denial that names the rule.
func (s *Sidecar) outboundRoute(v *xdsclient.View, key wire.ServiceKey, port uint16) proxy.Route {
	d, err := v.Outbound(key, port)
	if err == nil {
		var addrs []netip.Addr
		if svc, ok := v.Service(key); ok {
			if p, ok := svc.Port(port); ok {
				d.Rule, d.AuditRule = p.Rule, p.AuditRule
			}
			// A headless service has no ClusterIP: its endpoints are
			// what the name table hides once it is out of reach.
			addrs = svc.Addrs
			for _, e := range svc.Endpoints {
				addrs = append(addrs, e.Addr())
			}
		}
		d.Recheck = func() error { return stillAllowed(s.view.Load(), key, port, addrs) }
		return proxy.Route{Mesh: &d}
	}
	r := proxy.Route{Deny: err.Error(), Target: serviceTarget(key, port)}
	switch {
	case errors.Is(err, proxy.ErrDenied):
		r.Rule = "policy allows no port of " + key.String() // the whole service is unreachable
		if svc, ok := v.Service(key); ok {
			if p, ok := svc.Port(port); ok && p.Rule != "" {
				r.Rule = p.Rule
			}
		}
	case errors.Is(err, xdsclient.ErrUnknownPort):
		r.Rule = ruleUnknownPort
	case errors.Is(err, xdsclient.ErrNoEndpoints):
		r.Rule = ruleNoEndpoints
	default:
		r.Rule = ruleUnknownService
	}
	return r
}

// stillAllowed re-decides an open call to port of service key with view
// v, for Revalidate: a denial when policy now refuses the port or the
// whole service; nil otherwise (no view, or a service that left the view
// without a policy decision: not a revocation). The view does not know
// the names of services this workload may not reach, only their
// addresses: addrs are the service's addresses (ClusterIPs and
// endpoints) when the call was routed, and one of them now hidden means
// policy took the whole service away.
func stillAllowed(v *xdsclient.View, key wire.ServiceKey, port uint16, addrs []netip.Addr) error {
	if v == nil {
		return nil
	}
	svc, ok := v.Service(key)
	if !ok {
		if slices.ContainsFunc(addrs, v.HiddenAddr) {
			return &proxy.DeniedError{Rule: "policy allows no port of " + key.String()}
		}
		return nil
	}
	if p, ok := svc.Port(port); ok && !p.Allowed {
		return &proxy.DeniedError{Rule: p.Rule, Detail: fmt.Sprintf("%s may no longer reach %s", v.ID(), serviceTarget(key, port))}
	}
	return nil
}

// viewLookup decides a captured outbound destination with the current
// view: a ClusterIP:port or endpoint of a mesh service goes through
// Outbound (policy, expected identities); an address of a service this
// workload may not reach at all is denied; anything else is not in the
// mesh (ok false). A call to one endpoint goes to that endpoint; a call
// to a ClusterIP goes to an endpoint chosen round-robin.
func (s *Sidecar) viewLookup(dst netip.AddrPort) (proxy.Route, bool) {
	v := s.view.Load()
	if v == nil {
		return proxy.Route{Deny: ruleNoView, Target: dst.String(), Rule: ruleNoView}, true
	}
	svc, port, ok := v.LookupAddr(dst)
	if !ok {
		// The address of a mesh service this workload may reach on no
		// port: discovery sends it (for DNS) without the service's name,
		// so it is refused as an unknown service, never passed through in
		// plaintext.
		if v.HiddenAddr(dst.Addr()) {
			return proxy.Route{Deny: "not a service this workload may reach", Target: dst.String(), Rule: ruleUnknownService}, true
		}
		return proxy.Route{}, false
	}
	r := s.outboundRoute(v, svc.Key, port.Port)
	if r.Mesh != nil && slices.Contains(svc.Endpoints, netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())) {
		r.Mesh.Addr, r.Mesh.Port = dst.String(), dst.Port()
	}
	return r, true
}

// followDiscovery runs the xDS client until ctx ends, installing every
// new view for new connections, the inbound Authorizer and the DNS
// server. The last view stays in force while discovery is unreachable.
func (s *Sidecar) followDiscovery(ctx context.Context, id spiffeid.ID) error {
	c, err := xdsclient.New(xdsclient.Config{
		Addr: s.cfg.DiscoveryAddr, ID: id, ServerID: s.cfg.DiscoveryID,
		SVIDs: s.agent, Bundles: s.agent, Logger: s.log, Metrics: s.registry,
		AdminAddr: s.adminAddr(), Version: buildVersion(),
		PodAddrs: podAddrs(os.Getenv(PodIPEnv), net.InterfaceAddrs, s.log),
	})
	if err != nil {
		return fmt.Errorf("discovery client: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	defer func() { <-done }()
	for first := true; ; {
		changed := c.Changed() // before View: no update is missed
		if v := c.View(); v != nil && v != s.view.Load() {
			s.setView(v, first)
			first = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// setView makes v the view new connections and DNS queries are decided by.
func (s *Sidecar) setView(v *xdsclient.View, first bool) {
	s.view.Store(v)
	if s.dns != nil {
		s.dns.SetTable(v)
	}
	level, msg := slog.LevelDebug, "discovery view updated"
	if first {
		level, msg = slog.LevelInfo, "discovery view received"
		if d := v.ClusterDomain(); d != s.cfg.ClusterDomain {
			s.log.Warn("discovery names services in another cluster domain than --cluster-domain; short names will not resolve as the pod expects",
				slog.String("discovery", d), slog.String("cluster_domain", s.cfg.ClusterDomain))
		}
	}
	s.log.Log(context.Background(), level, msg, slog.Int("services", len(v.Services())), slog.String("inbound_default", v.InboundDefault().String()))
	// Open streams the new policy denies are closed now, both ways.
	if s.proxy != nil && !first {
		if n := s.proxy.Revalidate(); n > 0 {
			s.log.Info("closed open connections the new policy denies", slog.Int("connections", n))
		}
	}
}

// newDNS builds the DNS server from cfg.DNS: upstreams and search rules
// from the resolv.conf (upstreams from --dns-upstream if given), metrics on
// reg. The mesh names come later, with each view (SetTable).
func newDNS(cfg Config, reg prometheus.Registerer) (*dns.Server, error) {
	d := cfg.DNS
	c := dns.Config{
		Listen: d.Listen, ClusterDomain: cfg.ClusterDomain, Upstreams: d.Upstreams,
		AnswerUnreachable: d.AnswerUnreachable, EgressAllow: d.EgressAllow,
		Logger: cfg.Logger, Registerer: reg,
	}
	if cfg.Capture != nil {
		// The IPv6 capture rules send DNS to an IPv6 resolver to [::1].
		c.AlsoListen, _ = loopback6(d.Listen)
	}
	if d.ResolvConf != "" {
		servers, search, ndots, err := readResolvConf(d.ResolvConf)
		if err != nil {
			return nil, err
		}
		c.Search, c.Ndots = search, ndots
		if len(c.Upstreams) == 0 {
			if len(servers) == 0 {
				return nil, fmt.Errorf("--resolv-conf %s lists no nameserver: fix it, or give --dns-upstream", d.ResolvConf)
			}
			c.Upstreams = servers
		}
	}
	srv, err := dns.New(c)
	if err != nil {
		return nil, fmt.Errorf("DNS server: %w", err)
	}
	return srv, nil
}

// egressAllowed reports whether registry-only mode lets a connection to a
// non-mesh address through: only if the DNS server recently answered an
// --egress-allow name with it.
func (s *Sidecar) egressAllowed(a netip.Addr) bool {
	return s.dns != nil && s.dns.AllowedIP(a)
}

// readResolvConf reads the upstream resolvers and search rules.
func readResolvConf(path string) (servers, search []string, ndots int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("--resolv-conf: %w", err)
	}
	defer f.Close()
	servers, search, ndots, err = dns.ParseResolvConf(f)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("--resolv-conf %s: %w", path, err)
	}
	return servers, search, ndots, nil
}

// debugDiscovery serves GET /debug/discovery: the current view as JSON,
// the services this identity may reach with their per-port decisions.
func (s *Sidecar) debugDiscovery(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.DiscoveryAddr == "" {
		http.Error(w, "discovery is not configured (--discovery)", http.StatusNotFound)
		return
	}
	v := s.view.Load()
	if v == nil {
		http.Error(w, "no configuration from discovery at "+s.cfg.DiscoveryAddr+" yet", http.StatusServiceUnavailable)
		return
	}
	type port struct {
		Name       string `json:"name,omitempty"`
		Port       uint16 `json:"port"`
		TargetPort uint16 `json:"target_port"`
		Allowed    bool   `json:"allowed"`
		Rule       string `json:"rule"`
	}
	type service struct {
		Service    string   `json:"service"`
		FQDN       string   `json:"fqdn"`
		Addresses  []string `json:"addresses"`
		Ports      []port   `json:"ports"`
		Endpoints  []string `json:"endpoints"`
		Identities []string `json:"identities"`
	}
	out := struct {
		Discovery      string    `json:"discovery"`
		SpiffeID       string    `json:"spiffe_id"`
		InboundDefault string    `json:"inbound_default"`
		Services       []service `json:"services"`
	}{Discovery: s.cfg.DiscoveryAddr, SpiffeID: v.ID().String(), InboundDefault: v.InboundDefault().String(), Services: []service{}}
	for _, svc := range v.Services() {
		o := service{Service: svc.Key.String(), FQDN: svc.FQDN, Addresses: strs(svc.Addrs), Endpoints: strs(svc.Endpoints), Identities: strs(svc.IDs)}
		for _, p := range svc.Ports {
			o.Ports = append(o.Ports, port{p.Name, p.Port, p.TargetPort, p.Allowed, p.Rule})
		}
		out.Services = append(out.Services, o)
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}

func strs[T fmt.Stringer](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return out
}

// followFederation re-decides the open streams whenever the set of
// federated bundles changes, until ctx ends: a stream with a peer of a
// trust domain no longer federated (or whose root left that domain's
// bundle) is closed (proxy.Revalidate).
func (s *Sidecar) followFederation(ctx context.Context) {
	last := s.agent.FederatedBundles()
	for {
		changed := s.agent.Changed()
		if cur := s.agent.FederatedBundles(); !slices.Equal(cur, last) {
			last = cur
			if n := s.proxy.Revalidate(); n > 0 {
				s.log.Info("closed open connections with peers of a trust domain no longer trusted", slog.Int("connections", n))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
