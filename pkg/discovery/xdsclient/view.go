package xdsclient

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/proxy"
	"github.com/tether-mesh/tether/pkg/proxy/dns"
)

var (
	// ErrMalformed wraps every error NewView returns for resources it
	// cannot use; the client NACKs them.
	ErrMalformed = errors.New("malformed discovery resources")
	// ErrUnknownService is returned by Outbound for a service this
	// workload may not reach on any port, or that discovery does not know
	// (the view cannot tell them apart: the names of unreachable services
	// are not sent).
	ErrUnknownService = errors.New("unknown service")
	// ErrUnknownPort is returned by Outbound for a port the service does
	// not have.
	ErrUnknownPort = errors.New("unknown service port")
	// ErrNoEndpoints is returned by Outbound when nothing serves the
	// service's port.
	ErrNoEndpoints = errors.New("no endpoints")
	// ErrNoView is returned by Outbound on a nil View: there is no
	// configuration from discovery yet.
	ErrNoView = errors.New("no configuration from discovery yet")
)

// View is one consistent, immutable configuration received from discovery
// for one identity. Safe for concurrent use. Slices in the values it
// returns share memory with the View and must not be modified.
//
// A nil *View (Client.View before the first configuration) knows nothing:
// Lookup and LookupAddr find nothing, Authorize denies, and Outbound
// returns ErrNoView.
type View struct {
	id             spiffeid.ID // zero when built with NewView
	clusterDomain  string      // without dots at the ends, e.g. "cluster.local"
	inboundDefault wire.Default

	services []*entry // sorted by key
	byKey    map[wire.ServiceKey]*entry
	byFQDN   map[string]*entry
	byAddr   map[netip.AddrPort]addrRef
	hidden   map[netip.Addr]struct{} // addresses of mesh services this workload may reach on no port
	podAddrs []netip.Addr            // this pod's addresses, if known (see NewViewForPod)
	chains   map[uint16][]*chain     // this pod's inbound filter chains by destination (target) port
}

// entry is one reachable service with what Outbound and Lookup need.
type entry struct {
	svc     Service
	record  dns.Record
	serving [][]netip.AddrPort // per index of svc.Ports: endpoints serving its target port
	next    []atomic.Uint32    // per index of svc.Ports: round-robin position
}

type addrRef struct {
	e    *entry
	port int // index in e.svc.Ports
}

// chain is one inbound filter chain: the pods' addresses and the target
// port it matches, and its RBAC filters, each of which must admit a
// caller.
type chain struct {
	listener, name string
	port           uint16
	addrs          []netip.Addr // sorted
	rbacs          []rbacRules
}

// rbacRules are the principals one RBAC filter allows and, when it has
// shadow rules, those it would allow (audit mode) and the would-be rule
// that denies the others.
type rbacRules struct {
	stat       string
	principals []principal
	shadow     *shadowRules
}

// shadowRules are an RBAC filter's shadow_rules: the would-be admission.
type shadowRules struct {
	rule       string // the would-be rule of the callers it does not admit
	principals []principal
}

// MaxAuditRuleLen bounds the would-be rule text of a port or shadow policy.
const MaxAuditRuleLen = 4096

type principalKind uint8

const (
	principalExact     principalKind = iota
	principalPrefix                  // the whole trust domain: spiffe://<td>/
	principalNamespace               // spiffe://<td>/ns/<ns>/sa/<one segment>
)

type principal struct {
	kind  principalKind
	value string // the ID, the trust domain prefix, or spiffe://<td>/ns/<ns>/sa/
}

func (p principal) String() string {
	switch p.kind {
	case principalPrefix:
		return "prefix:" + p.value
	case principalNamespace:
		return "regex:" + p.value + "[^/]+"
	}
	return "exact:" + p.value
}

func (p principal) matches(id string) bool {
	switch p.kind {
	case principalPrefix:
		return strings.HasPrefix(id, p.value)
	case principalNamespace:
		rest, ok := strings.CutPrefix(id, p.value)
		return ok && rest != "" && !strings.Contains(rest, "/")
	}
	return id == p.value
}

// Service is a service this workload may reach on at least one port.
type Service struct {
	Key       wire.ServiceKey
	FQDN      string           // "web.shop.svc.cluster.local."
	Addrs     []netip.Addr     // ClusterIPs (empty for headless)
	Ports     []Port           // in the order discovery sent them
	Endpoints []netip.AddrPort // from the ClusterLoadAssignment
	IDs       []spiffeid.ID    // who serves it (the Cluster's URI SAN matchers)
}

// Port is one port of a service and this workload's outbound decision for it.
type Port struct {
	Name             string
	Port, TargetPort uint16
	Allowed          bool   // may this workload reach it
	Rule             string // the rule that decided
	// AuditDenied: Allowed, but a policy or default in audit mode would
	// deny (the connection passes, logged as audit-deny).
	AuditDenied bool
	AuditRule   string // the would-be rule, when AuditDenied
}

// Port returns the service port numbered p.
func (s *Service) Port(p uint16) (Port, bool) {
	for _, sp := range s.Ports {
		if sp.Port == p {
			return sp, true
		}
	}
	return Port{}, false
}

// NewView checks and indexes resources as xds.BuildResources returns them
// (keys resource.ClusterType, EndpointType, ListenerType,
// ExtensionConfigType). Any malformed resource is an error (wrapping
// ErrMalformed), and so is a missing name table or a set of resources
// that do not fit together (a Cluster without its ClusterLoadAssignment or
// name table entry, or the reverse).
//
// A View from NewView does not know its own identity, so the inbound
// defaults allow-mesh and same-namespace, which depend on it, deny; use
// NewViewFor to get them right.
func NewView(res map[resource.Type][]types.Resource) (*View, error) {
	return NewViewFor(spiffeid.ID{}, res)
}

// NewViewFor is NewView for the workload id the resources were built for.
// The identity gives the trust domain and namespace of the inbound
// defaults and names the workload in errors.
func NewViewFor(id spiffeid.ID, res map[resource.Type][]types.Resource) (*View, error) {
	return NewViewForPod(id, nil, res)
}

// NewViewForPod is NewViewFor for the pod of workload id at podAddrs (its
// addresses, one per IP family). Its inbound decisions are the pod's: the
// filter chains whose addresses include one of podAddrs decide. Without
// addresses, or if no chain lists them (discovery does not count the pod
// as an endpoint of any Service, for instance while it is not ready),
// every chain of the identity applies (fail closed; see
// discovery.PodChains).
func NewViewForPod(id spiffeid.ID, podAddrs []netip.Addr, res map[resource.Type][]types.Resource) (*View, error) {
	v, err := newView(id, podAddrs, res, &memo{})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return v, nil
}

// newView is NewViewFor with the resources parsed through m.
func newView(id spiffeid.ID, podAddrs []netip.Addr, res map[resource.Type][]types.Resource, m *memo) (*View, error) {
	for typ, items := range res {
		switch typ {
		case resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.ExtensionConfigType:
		default:
			if len(items) > 0 {
				return nil, fmt.Errorf("unexpected resource type %s", typ)
			}
		}
	}
	nt, err := parseNameTables(res[resource.ExtensionConfigType], m)
	if err != nil {
		return nil, err
	}
	return newViewOf(id, podAddrs, nt, res, m)
}

// newViewOf is newView once the name table, nt, is parsed.
func newViewOf(id spiffeid.ID, podAddrs []netip.Addr, nt *nameTable, res map[resource.Type][]types.Resource, m *memo) (*View, error) {
	clusters, err := parseClusters(res[resource.ClusterType], m)
	if err != nil {
		return nil, err
	}
	clas, err := parseCLAs(res[resource.EndpointType], m)
	if err != nil {
		return nil, err
	}
	chains, err := parseListeners(res[resource.ListenerType], m)
	if err != nil {
		return nil, err
	}

	v := &View{
		id:            id,
		clusterDomain: nt.clusterDomain,
		byKey:         make(map[wire.ServiceKey]*entry, len(nt.services)),
		byFQDN:        make(map[string]*entry, len(nt.services)),
		hidden:        nt.hidden,
		podAddrs:      podAddrs,
		chains:        podChains(chains, podAddrs),
	}
	v.inboundDefault = nt.inboundDefault

	for _, s := range nt.services {
		name := wire.ClusterName(s.Key)
		ids, ok := clusters[name]
		if !ok {
			return nil, fmt.Errorf("name table lists %s but there is no Cluster %q", s.Key, name)
		}
		eps, ok := clas[name]
		if !ok {
			return nil, fmt.Errorf("cluster %q has no ClusterLoadAssignment", name)
		}
		s.IDs = ids
		s.Endpoints = eps
		e := &entry{svc: s}
		e.index()
		v.services = append(v.services, e)
		v.byKey[s.Key] = e
		v.byFQDN[s.FQDN] = e
	}
	for name := range clusters {
		if key, _ := parseClusterName(name); v.byKey[key] == nil {
			return nil, fmt.Errorf("cluster %q is not in the name table", name)
		}
	}
	for name := range clas {
		if _, ok := clusters[name]; !ok {
			return nil, fmt.Errorf("ClusterLoadAssignment %q has no Cluster", name)
		}
	}
	slices.SortFunc(v.services, func(a, b *entry) int { return compareKeys(a.svc.Key, b.svc.Key) })
	// Address index: ClusterIP:port first, then endpoints; the first
	// service in key order wins a shared address.
	n := 0
	for _, e := range v.services {
		n += len(e.svc.Addrs) * len(e.svc.Ports)
		for _, eps := range e.serving {
			n += len(eps)
		}
	}
	v.byAddr = make(map[netip.AddrPort]addrRef, n)
	for _, e := range v.services {
		for _, a := range e.svc.Addrs {
			for i, p := range e.svc.Ports {
				ap := netip.AddrPortFrom(a, p.Port)
				if _, dup := v.byAddr[ap]; !dup {
					v.byAddr[ap] = addrRef{e, i}
				}
			}
		}
	}
	for _, e := range v.services {
		for i := range e.svc.Ports {
			for _, ap := range e.serving[i] {
				if _, dup := v.byAddr[ap]; !dup {
					v.byAddr[ap] = addrRef{e, i}
				}
			}
		}
	}
	return v, nil
}

func compareKeys(a, b wire.ServiceKey) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// index computes the endpoints serving each port and the DNS record.
func (e *entry) index() {
	s := &e.svc
	targets := make(map[uint16]bool, len(s.Ports))
	for _, p := range s.Ports {
		targets[p.TargetPort] = true
	}
	e.serving = make([][]netip.AddrPort, len(s.Ports))
	e.next = make([]atomic.Uint32, len(s.Ports))
	for i, p := range s.Ports {
		for _, ep := range s.Endpoints {
			// An endpoint on a port that is no target port has its own
			// port (a sidecar's inbound listener) and serves every port.
			if ep.Port() == p.TargetPort || !targets[ep.Port()] {
				e.serving[i] = append(e.serving[i], ep)
			}
		}
	}
	rec := dns.Record{Addrs: s.Addrs, Reachable: true}
	if len(s.Addrs) == 0 { // headless: the endpoints' addresses
		for _, ep := range s.Endpoints {
			rec.Addrs = append(rec.Addrs, ep.Addr())
		}
		slices.SortFunc(rec.Addrs, netip.Addr.Compare)
		rec.Addrs = slices.Compact(rec.Addrs)
	}
	for _, p := range s.Ports {
		if p.Name != "" {
			rec.Ports = append(rec.Ports, dns.SRVPort{Name: p.Name, Proto: "tcp", Port: p.Port})
		}
	}
	e.record = rec
}

// ID returns the identity the view was built for (zero from NewView).
func (v *View) ID() spiffeid.ID {
	if v == nil {
		return spiffeid.ID{}
	}
	return v.id
}

// ClusterDomain returns the cluster DNS domain of the names, e.g.
// "cluster.local".
func (v *View) ClusterDomain() string {
	if v == nil {
		return ""
	}
	return v.clusterDomain
}

// InboundDefault returns the policy for local ports no Service covers
// (Deny on a nil View).
func (v *View) InboundDefault() wire.Default {
	if v == nil {
		return wire.Deny
	}
	return v.inboundDefault
}

// Services returns the services this workload may reach, sorted by
// namespace and name.
func (v *View) Services() []Service {
	if v == nil {
		return nil
	}
	out := make([]Service, len(v.services))
	for i, e := range v.services {
		out[i] = e.svc
	}
	return out
}

// Service returns the reachable service key.
func (v *View) Service(key wire.ServiceKey) (Service, bool) {
	if v == nil {
		return Service{}, false
	}
	e, ok := v.byKey[key]
	if !ok {
		return Service{}, false
	}
	return e.svc, true
}

func (v *View) me() string {
	if v.id.IsZero() {
		return "this workload"
	}
	return v.id.String()
}

// HiddenAddr implements dns.HiddenTable: whether a is an address
// (ClusterIP, or a headless service's endpoint) of a mesh service this
// workload may reach on no port. The sidecar's DNS server answers NXDOMAIN
// rather than an upstream answer that holds one.
func (v *View) HiddenAddr(a netip.Addr) bool {
	if v == nil {
		return false
	}
	_, ok := v.hidden[a.Unmap()]
	return ok
}

// Outbound decides a connection from this workload to service key on
// service port port. It returns a proxy.Destination (Name "ns/svc:port",
// Addr one endpoint that serves the target port, chosen round-robin across
// calls, Port that endpoint's port, IDs the serving identities, Rule the
// rule that allows, AuditRule the would-be rule of an audit denial), or an
// error: wrapping proxy.ErrDenied with the rule when policy denies the
// port or the whole service; ErrUnknownService when discovery does not
// know it; ErrUnknownPort when the service has no such port;
// ErrNoEndpoints when nothing serves it.
func (v *View) Outbound(key wire.ServiceKey, port uint16) (proxy.Destination, error) {
	if v == nil {
		return proxy.Destination{}, ErrNoView
	}
	e, ok := v.byKey[key]
	if !ok {
		return proxy.Destination{}, fmt.Errorf("%w: %s is not a mesh service %s may reach (policy lets it reach no port, or discovery does not know it)", ErrUnknownService, key, v.me())
	}
	i := slices.IndexFunc(e.svc.Ports, func(p Port) bool { return p.Port == port })
	if i < 0 {
		return proxy.Destination{}, fmt.Errorf("%w: %s has no port %d", ErrUnknownPort, key, port)
	}
	p := e.svc.Ports[i]
	if !p.Allowed {
		return proxy.Destination{}, fmt.Errorf("%w: %s may not reach %s:%d: %s", proxy.ErrDenied, v.me(), key, port, p.Rule)
	}
	eps := e.serving[i]
	if len(eps) == 0 || len(e.svc.IDs) == 0 {
		return proxy.Destination{}, fmt.Errorf("%w: nothing serves %s:%d (target port %d)", ErrNoEndpoints, key, port, p.TargetPort)
	}
	n := e.next[i].Add(1) - 1
	ep := eps[int(n%uint32(len(eps)))]
	return proxy.Destination{
		Name:      key.String() + ":" + strconv.Itoa(int(port)),
		Addr:      ep.String(),
		Port:      ep.Port(),
		IDs:       e.svc.IDs,
		Rule:      p.Rule,
		AuditRule: p.AuditRule,
	}, nil
}

// LookupAddr maps a captured original destination (a ClusterIP and
// service port, or an endpoint address and port) to its service and port.
func (v *View) LookupAddr(dst netip.AddrPort) (Service, Port, bool) {
	if v == nil {
		return Service{}, Port{}, false
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	r, ok := v.byAddr[dst]
	if !ok {
		return Service{}, Port{}, false
	}
	return r.e.svc, r.e.svc.Ports[r.port], true
}

// podChains returns, by target port, the chains among all (the inbound
// Listener's) that list one of addrs, or all of them if none does: the
// same choice as discovery.PodChains.
func podChains(all []*chain, addrs []netip.Addr) map[uint16][]*chain {
	mine := wire.ChooseForPod(all, func(c *chain) []netip.Addr { return c.addrs }, addrs)
	out := make(map[uint16][]*chain)
	for _, c := range mine {
		out[c.port] = append(out[c.port], c)
	}
	return out
}

// Authorize is the inbound (authoritative) check: may src reach this
// pod's local target port? The inbound Listener's filter chains for this
// pod (see NewViewForPod) whose DestinationPort is port decide: src must
// match a principal of every RBAC filter of every one of them (each
// filter is one Service port that restricts the pod's port). An allowed
// src that a filter's shadow rules do not admit is AuditDenied, with
// that filter's would-be rule. For a port
// no chain covers, the name table's inbound default does (allow-mesh: any
// ID of this workload's trust domain; same-namespace:
// spiffe://<td>/ns/<this namespace>/sa/<sa>; deny).
func (v *View) Authorize(src spiffeid.ID, port uint16) wire.Decision {
	if v == nil {
		return wire.Decision{Rule: ErrNoView.Error()}
	}
	if src.IsZero() {
		return wire.Decision{Rule: "source has no SPIFFE ID"}
	}
	s := src.String()
	chains := v.chains[port]
	if len(chains) > 0 {
		var rules []string
		var audit string // the first filter's would-be denial
		for _, c := range chains {
			for _, r := range c.rbacs {
				k := slices.IndexFunc(r.principals, func(p principal) bool { return p.matches(s) })
				if k < 0 {
					return wire.Decision{Rule: fmt.Sprintf("no principal of %s chain %s (%s) admits %s", c.listener, c.name, r.stat, src)}
				}
				rules = append(rules, fmt.Sprintf("%s principal %s", r.stat, r.principals[k]))
				if audit == "" && r.shadow != nil && !slices.ContainsFunc(r.shadow.principals, func(p principal) bool { return p.matches(s) }) {
					audit = fmt.Sprintf("%s (%s): %s", c.name, r.stat, r.shadow.rule)
				}
			}
		}
		names := make([]string, len(chains))
		for i, c := range chains {
			names[i] = c.name
		}
		return wire.Decision{Allowed: true, Rule: fmt.Sprintf("listener %s chain %s: %s", chains[0].listener, strings.Join(names, ", "), strings.Join(rules, ", ")),
			AuditDenied: audit != "", AuditRule: audit}
	}
	rule := fmt.Sprintf("inbound default %s (no Service covers port %d)", v.inboundDefault, port)
	switch v.inboundDefault {
	case wire.AllowMesh:
		if v.id.IsZero() {
			return wire.Decision{Rule: rule + ": the view does not know its own trust domain"}
		}
		return wire.Decision{Allowed: src.TrustDomain() == v.id.TrustDomain(), Rule: rule}
	case wire.SameNamespace:
		mine, ok := wire.WorkloadNamespace(v.id)
		if v.id.IsZero() || !ok {
			return wire.Decision{Rule: rule + ": this workload has no namespace"}
		}
		theirs, ok := wire.WorkloadNamespace(src)
		return wire.Decision{Allowed: ok && theirs == mine && src.TrustDomain() == v.id.TrustDomain(), Rule: rule}
	default:
		return wire.Decision{Rule: rule}
	}
}

// AdmitsForeign reports whether id, a caller of another trust domain, may
// reach some port of this pod: whether on some target port every RBAC
// filter of every inbound filter chain (see Authorize) has a principal
// that matches it. Discovery sends principals of another trust domain
// only for AccessPolicy sources that name it (an exact ID, or the prefix
// spiffe://<td>/ of a trustDomain source); the inbound default of a port
// no chain covers never admits one. The proxy asks it at the inbound
// handshake (proxy.Config.AcceptForeign); each stream is then decided by
// Authorize. False for an ID of this workload's own trust domain (not
// foreign), and for a view that does not know its own.
func (v *View) AdmitsForeign(id spiffeid.ID) bool {
	if v == nil || v.id.IsZero() || id.IsZero() || id.MemberOf(v.id.TrustDomain()) {
		return false
	}
	s := id.String()
	for _, chains := range v.chains {
		if chainsAdmit(chains, s) {
			return true
		}
	}
	return false
}

// chainsAdmit reports whether every RBAC filter of every chain has a
// principal matching id.
func chainsAdmit(chains []*chain, id string) bool {
	for _, c := range chains {
		for _, r := range c.rbacs {
			if !slices.ContainsFunc(r.principals, func(p principal) bool { return p.matches(id) }) {
				return false
			}
		}
	}
	return true
}

// AuditAuthorizer returns Authorize as a proxy.AuditAuthorizer: the
// would-be rule of an audit denial, or an error wrapping proxy.ErrDenied
// with the rule.
func (v *View) AuditAuthorizer() proxy.AuditAuthorizer {
	return func(src spiffeid.ID, port uint16) (string, error) {
		d := v.Authorize(src, port)
		if !d.Allowed {
			return "", fmt.Errorf("%w: %s", proxy.ErrDenied, d.Rule)
		}
		return d.AuditRule, nil
	}
}

// Authorizer returns Authorize as a proxy.Authorizer: nil to allow, or an
// error wrapping proxy.ErrDenied with the rule.
func (v *View) Authorizer() proxy.Authorizer {
	return func(src spiffeid.ID, port uint16) error { return v.authorize(src, port) }
}

func (v *View) authorize(src spiffeid.ID, port uint16) error {
	d := v.Authorize(src, port)
	if d.Allowed {
		return nil
	}
	return fmt.Errorf("%w: %s", proxy.ErrDenied, d.Rule)
}

var (
	_ dns.Table       = (*View)(nil)
	_ dns.HiddenTable = (*View)(nil)
)

// Lookup implements dns.Table: a mesh service name this workload may reach
// gives its ClusterIPs (or, headless, its endpoints' addresses) and named
// ports, Reachable; anything else is not a mesh name here. (The view does
// not know the names of the services it may not reach: the DNS server
// forwards them, and refuses an answer that holds a HiddenAddr.)
func (v *View) Lookup(fqdn string) (dns.Record, bool) {
	if v == nil {
		return dns.Record{}, false
	}
	fqdn = strings.ToLower(fqdn)
	if !strings.HasSuffix(fqdn, ".") {
		fqdn += "."
	}
	if e, ok := v.byFQDN[fqdn]; ok {
		return e.record, true
	}
	return dns.Record{}, false
}

// nameTable is a checked NameTable.
type nameTable struct {
	clusterDomain  string
	inboundDefault wire.Default
	services       []Service // without Endpoints and IDs
	hidden         map[netip.Addr]struct{}
}

// parseNameTables merges and checks the name-table entries among the
// TypedExtensionConfigs (see wire.MergeNameTables); others are ignored.
func parseNameTables(items []types.Resource, m *memo) (*nameTable, error) {
	t, err := wire.MergeNameTableEntries(items, m.nameEntry)
	if err != nil {
		return nil, err
	}
	return checkNameTable(t, m)
}

func checkNameTable(t *discoveryv1.NameTable, m *memo) (*nameTable, error) {
	nt := &nameTable{
		clusterDomain: strings.Trim(t.GetClusterDomain(), "."),
		services:      make([]Service, 0, len(t.GetServices())),
		hidden:        make(map[netip.Addr]struct{}, len(t.GetUnreachableAddresses())),
	}
	if nt.clusterDomain == "" {
		return nil, errors.New("name table: cluster_domain is empty")
	}
	d, err := wire.ParseDefault(t.GetInboundDefault())
	if err != nil {
		return nil, fmt.Errorf("name table: inbound_default: %w", err)
	}
	nt.inboundDefault = d
	seen := make(map[wire.ServiceKey]bool, len(t.GetServices()))
	for i, sn := range t.GetServices() {
		key := wire.ServiceKey{Namespace: sn.GetNamespace(), Name: sn.GetName()}
		if key.Namespace == "" || key.Name == "" || strings.ContainsAny(key.Namespace+key.Name, "/.") {
			return nil, fmt.Errorf("name table: services[%d]: bad name %q", i, key)
		}
		if seen[key] {
			return nil, fmt.Errorf("name table: service %s is listed twice", key)
		}
		seen[key] = true
		s, err := m.service(sn, nt.clusterDomain)
		if err != nil {
			return nil, err
		}
		nt.services = append(nt.services, s)
	}
	for i, s := range t.GetUnreachableAddresses() {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("name table: unreachable_addresses[%d] %q is not an IP address", i, s)
		}
		nt.hidden[a.Unmap()] = struct{}{}
	}
	return nt, nil
}

// parseService checks the FQDN, addresses and ports of one service of a
// name table whose cluster domain is clusterDomain. (checkNameTable checks
// its name, and that it is listed once, first.)
func parseService(sn *discoveryv1.ServiceName, clusterDomain string) (Service, error) {
	key := wire.ServiceKey{Namespace: sn.GetNamespace(), Name: sn.GetName()}
	want := wire.FQDN(key, clusterDomain)
	if sn.GetFqdn() != want {
		return Service{}, fmt.Errorf("name table: service %s: fqdn %q, want %q", key, sn.GetFqdn(), want)
	}
	s := Service{Key: key, FQDN: want}
	for _, a := range sn.GetAddresses() {
		ip, err := netip.ParseAddr(a)
		if err != nil || ip.Zone() != "" {
			return Service{}, fmt.Errorf("name table: service %s: bad address %q", key, a)
		}
		s.Addrs = append(s.Addrs, ip.Unmap())
	}
	ports := make(map[uint16]bool)
	for _, p := range sn.GetPorts() {
		if p.GetPort() == 0 || p.GetPort() > 65535 || p.GetTargetPort() == 0 || p.GetTargetPort() > 65535 {
			return Service{}, fmt.Errorf("name table: service %s: port %d → %d is outside 1-65535", key, p.GetPort(), p.GetTargetPort())
		}
		if proto := p.GetProtocol(); proto != "" && !strings.EqualFold(proto, "tcp") {
			return Service{}, fmt.Errorf("name table: service %s: port %d: protocol %q is not tcp", key, p.GetPort(), proto)
		}
		if ports[uint16(p.GetPort())] {
			return Service{}, fmt.Errorf("name table: service %s: port %d is listed twice", key, p.GetPort())
		}
		ports[uint16(p.GetPort())] = true
		if err := checkAudit(p); err != nil {
			return Service{}, fmt.Errorf("name table: service %s: port %d: %w", key, p.GetPort(), err)
		}
		s.Ports = append(s.Ports, Port{
			Name: p.GetName(), Port: uint16(p.GetPort()), TargetPort: uint16(p.GetTargetPort()),
			Allowed: p.GetAllowed(), Rule: p.GetRule(), AuditDenied: p.GetAuditDenied(), AuditRule: p.GetAuditRule(),
		})
	}
	return s, nil
}

// checkAudit checks a port's audit fields: audit_denied only with
// allowed, and with a rule; a rule only with audit_denied.
func checkAudit(p *discoveryv1.ServicePort) error {
	switch {
	case p.GetAuditDenied() && !p.GetAllowed():
		return errors.New("audit_denied on a port that is not allowed (an audit denial is of an allowed connection)")
	case p.GetAuditDenied() && p.GetAuditRule() == "":
		return errors.New("audit_denied without audit_rule")
	case !p.GetAuditDenied() && p.GetAuditRule() != "":
		return errors.New("audit_rule without audit_denied")
	}
	return checkRuleText(p.GetAuditRule())
}

// checkRuleText refuses a would-be rule the access log could not print
// as one line: too long, not UTF-8, or with control characters.
func checkRuleText(rule string) error {
	if len(rule) > MaxAuditRuleLen {
		return fmt.Errorf("audit rule of %d bytes, at most %d", len(rule), MaxAuditRuleLen)
	}
	if !utf8.ValidString(rule) || strings.ContainsFunc(rule, unicode.IsControl) {
		return fmt.Errorf("audit rule %q is not printable UTF-8", rule)
	}
	return nil
}

func parseClusterName(name string) (wire.ServiceKey, error) {
	ns, svc, ok := strings.Cut(name, "/")
	if !ok || ns == "" || svc == "" || strings.Contains(svc, "/") {
		return wire.ServiceKey{}, fmt.Errorf("cluster name %q is not <namespace>/<service>", name)
	}
	return wire.ServiceKey{Namespace: ns, Name: svc}, nil
}

// parseClusters checks the Clusters and returns, by name, the identities
// their URI SAN matchers name.
func parseClusters(items []types.Resource, m *memo) (map[string][]spiffeid.ID, error) {
	out := make(map[string][]spiffeid.ID, len(items))
	for i, r := range items {
		c, ok := r.(*clusterv3.Cluster)
		if !ok {
			return nil, fmt.Errorf("cluster %d is a %T, want a Cluster", i, r)
		}
		if _, err := parseClusterName(c.GetName()); err != nil {
			return nil, err
		}
		if _, dup := out[c.GetName()]; dup {
			return nil, fmt.Errorf("cluster %q is sent twice", c.GetName())
		}
		ids, err := lookup(m.clusters, c, clusterIDs)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: %w", c.GetName(), err)
		}
		out[c.GetName()] = ids
	}
	return out, nil
}

func clusterIDs(c *clusterv3.Cluster) ([]spiffeid.ID, error) {
	if c.GetType() != clusterv3.Cluster_EDS {
		return nil, fmt.Errorf("discovery type %v, want EDS", c.GetType())
	}
	ts := c.GetTransportSocket()
	if ts == nil || ts.GetTypedConfig() == nil {
		return nil, errors.New("no TLS transport socket")
	}
	var tc tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&tc); err != nil {
		return nil, fmt.Errorf("transport socket: %w", err)
	}
	var ids []spiffeid.ID
	cvc := tc.GetCommonTlsContext().GetCombinedValidationContext()
	if cvc == nil {
		return nil, errors.New("transport socket has no combined validation context")
	}
	for i, m := range cvc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
			return nil, fmt.Errorf("SAN matcher %d: type %v, want URI", i, m.GetSanType())
		}
		if m.GetMatcher().GetIgnoreCase() {
			return nil, fmt.Errorf("SAN matcher %d: ignore_case is not supported", i)
		}
		exact, ok := m.GetMatcher().GetMatchPattern().(*matcherv3.StringMatcher_Exact)
		if !ok {
			return nil, fmt.Errorf("SAN matcher %d: want an exact match", i)
		}
		id, err := spiffeid.FromString(exact.Exact)
		if err != nil {
			return nil, fmt.Errorf("SAN matcher %d: %q: %w", i, exact.Exact, err)
		}
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(ids), nil
}

// parseCLAs checks the ClusterLoadAssignments and returns their endpoints
// by cluster name (see claEndpoints).
func parseCLAs(items []types.Resource, m *memo) (map[string][]netip.AddrPort, error) {
	out := make(map[string][]netip.AddrPort, len(items))
	for i, r := range items {
		cla, ok := r.(*endpointv3.ClusterLoadAssignment)
		if !ok {
			return nil, fmt.Errorf("endpoint assignment %d is a %T, want a ClusterLoadAssignment", i, r)
		}
		name := cla.GetClusterName()
		if _, err := parseClusterName(name); err != nil {
			return nil, fmt.Errorf("ClusterLoadAssignment: %w", err)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("ClusterLoadAssignment %q is sent twice", name)
		}
		eps, err := lookup(m.clas, cla, claEndpoints)
		if err != nil {
			return nil, err
		}
		out[name] = eps
	}
	return out, nil
}

// claEndpoints returns cla's endpoints in the order sent, without
// duplicates.
func claEndpoints(cla *endpointv3.ClusterLoadAssignment) ([]netip.AddrPort, error) {
	eps := []netip.AddrPort{}
	seen := make(map[netip.AddrPort]bool)
	for _, l := range cla.GetEndpoints() {
		for _, lb := range l.GetLbEndpoints() {
			ap, err := endpointAddr(lb)
			if err != nil {
				return nil, fmt.Errorf("ClusterLoadAssignment %q: %w", cla.GetClusterName(), err)
			}
			if !seen[ap] {
				seen[ap] = true
				eps = append(eps, ap)
			}
		}
	}
	return eps, nil
}

func endpointAddr(lb *endpointv3.LbEndpoint) (netip.AddrPort, error) {
	sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}, errors.New("endpoint without a socket address")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return netip.AddrPort{}, fmt.Errorf("endpoint %s: protocol %v, want TCP", sa.GetAddress(), sa.GetProtocol())
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil || ip.Zone() != "" || ip.IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("endpoint address %q is not an IP address", sa.GetAddress())
	}
	port, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue)
	if !ok || port.PortValue == 0 || port.PortValue > 65535 {
		return netip.AddrPort{}, fmt.Errorf("endpoint %s: port is missing or outside 1-65535", ip)
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port.PortValue)), nil
}

// parseListeners checks the inbound Listener (at most one, named
// wire.InboundListenerName) and returns its filter chains.
func parseListeners(items []types.Resource, m *memo) ([]*chain, error) {
	var out []*chain
	for i, r := range items {
		l, ok := r.(*listenerv3.Listener)
		if !ok {
			return nil, fmt.Errorf("listener %d is a %T, want a Listener", i, r)
		}
		if name := l.GetName(); name != wire.InboundListenerName {
			return nil, fmt.Errorf("listener %q: not the inbound listener %q", name, wire.InboundListenerName)
		}
		if i > 0 {
			return nil, fmt.Errorf("listener %q is sent twice", l.GetName())
		}
		chains, err := lookup(m.listeners, l, listenerChains)
		if err != nil {
			return nil, err
		}
		out = chains
	}
	return out, nil
}

// listenerChains checks the inbound listener l and returns its filter
// chains in order.
func listenerChains(l *listenerv3.Listener) ([]*chain, error) {
	name := l.GetName()
	if l.GetDefaultFilterChain() != nil {
		return nil, fmt.Errorf("listener %q: a default filter chain is not supported", name)
	}
	lfs := l.GetListenerFilters()
	if len(lfs) != 1 || lfs[0].GetName() != wellknown.OriginalDestination || lfs[0].GetTypedConfig() == nil {
		return nil, fmt.Errorf("listener %q: want exactly the listener filter %s (chains match the original destination)", name, wellknown.OriginalDestination)
	}
	var od originaldstv3.OriginalDst
	if err := lfs[0].GetTypedConfig().UnmarshalTo(&od); err != nil {
		return nil, fmt.Errorf("listener %q: %s: %w", name, wellknown.OriginalDestination, err)
	}
	var out []*chain
	seen := make(map[string]bool)
	for j, fc := range l.GetFilterChains() {
		c, err := parseChain(fc)
		if err != nil {
			return nil, fmt.Errorf("listener %q: filter chain %d (%s): %w", name, j, fc.GetName(), err)
		}
		for _, a := range c.addrs {
			k := strconv.Itoa(int(c.port)) + " " + a.String()
			if seen[k] {
				return nil, fmt.Errorf("listener %q: filter chain %d (%s): a chain before it matches %s port %d too", name, j, fc.GetName(), a, c.port)
			}
			seen[k] = true
		}
		c.listener = name
		out = append(out, c)
	}
	return out, nil
}

func parseChain(fc *listenerv3.FilterChain) (*chain, error) {
	m := fc.GetFilterChainMatch()
	dp := m.GetDestinationPort()
	if dp == nil || dp.GetValue() == 0 || dp.GetValue() > 65535 {
		return nil, errors.New("filter chain match has no destination port in 1-65535")
	}
	if len(m.GetSourcePrefixRanges()) > 0 || len(m.GetSourcePorts()) > 0 || len(m.GetServerNames()) > 0 ||
		len(m.GetApplicationProtocols()) > 0 || len(m.GetDirectSourcePrefixRanges()) > 0 || m.GetTransportProtocol() != "" {
		return nil, errors.New("filter chain match uses fields other than destination_port and prefix_ranges")
	}
	if m.GetSourceType() != listenerv3.FilterChainMatch_ANY {
		return nil, errors.New("filter chain match uses source_type")
	}
	c := &chain{name: fc.GetName(), port: uint16(dp.GetValue())}
	if len(m.GetPrefixRanges()) == 0 {
		return nil, errors.New("filter chain match has no prefix_ranges (the pods it is for)")
	}
	for _, pr := range m.GetPrefixRanges() {
		a, err := netip.ParseAddr(pr.GetAddressPrefix())
		if err != nil || a.Zone() != "" || pr.GetPrefixLen() == nil || int(pr.GetPrefixLen().GetValue()) != a.BitLen() {
			return nil, fmt.Errorf("prefix range %s/%d is not one address", pr.GetAddressPrefix(), pr.GetPrefixLen().GetValue())
		}
		c.addrs = append(c.addrs, a.Unmap())
	}
	slices.SortFunc(c.addrs, netip.Addr.Compare)
	c.addrs = slices.Compact(c.addrs)
	fs := fc.GetFilters()
	if len(fs) < 2 || fs[len(fs)-1].GetName() != wellknown.TCPProxy {
		return nil, fmt.Errorf("want one or more %s filters then %s", wellknown.RoleBasedAccessControl, wellknown.TCPProxy)
	}
	for k, f := range fs[:len(fs)-1] {
		if f.GetName() != wellknown.RoleBasedAccessControl {
			return nil, fmt.Errorf("filter %d is %q, want %s filters then %s", k, f.GetName(), wellknown.RoleBasedAccessControl, wellknown.TCPProxy)
		}
		var rb rbacfilterv3.RBAC
		if f.GetTypedConfig() == nil {
			return nil, fmt.Errorf("RBAC filter %d has no typed_config", k)
		}
		if err := f.GetTypedConfig().UnmarshalTo(&rb); err != nil {
			return nil, fmt.Errorf("RBAC filter %d: %w", k, err)
		}
		ps, err := principals(&rb)
		if err != nil {
			return nil, fmt.Errorf("RBAC filter %d: %w", k, err)
		}
		shadow, err := parseShadow(rb.GetShadowRules())
		if err != nil {
			return nil, fmt.Errorf("RBAC filter %d: shadow_rules: %w", k, err)
		}
		c.rbacs = append(c.rbacs, rbacRules{stat: rb.GetStatPrefix(), principals: ps, shadow: shadow})
	}
	var tp tcpproxyv3.TcpProxy
	last := fs[len(fs)-1]
	if last.GetTypedConfig() == nil {
		return nil, errors.New("tcp_proxy filter has no typed_config")
	}
	if err := last.GetTypedConfig().UnmarshalTo(&tp); err != nil {
		return nil, fmt.Errorf("tcp_proxy filter: %w", err)
	}
	if want := wire.LocalClusterPrefix + strconv.Itoa(int(c.port)); tp.GetCluster() != want {
		return nil, fmt.Errorf("tcp_proxy cluster %q, want %q (the app on the chain's port)", tp.GetCluster(), want)
	}
	return c, nil
}

// principals returns what an ALLOW RBAC filter lets in. Only what the
// server sends is understood (any permission; authenticated principal
// names matched exactly, by a trust domain prefix spiffe://<td>/, or by a
// namespace regex of wire.NamespaceRegex; shadow rules as parseShadow
// reads them); anything else is an error rather than a guess.
func principals(rb *rbacfilterv3.RBAC) ([]principal, error) {
	if rb.GetMatcher() != nil || rb.GetShadowMatcher() != nil {
		return nil, errors.New("only rules and shadow rules are supported (no matcher or shadow matcher)")
	}
	rules := rb.GetRules()
	if rules == nil {
		return nil, errors.New("no rules")
	}
	return rulePrincipals(rules, false)
}

// parseShadow reads shadow_rules as discovery sends them (nil: none): an
// ALLOW with exactly one policy, named by the would-be rule (printable,
// at most MaxAuditRuleLen bytes), whose principals are those principals
// accepts, or the one principal not_id any (nobody).
func parseShadow(rules *rbacv3.RBAC) (*shadowRules, error) {
	if rules == nil {
		return nil, nil
	}
	if len(rules.GetPolicies()) != 1 {
		return nil, fmt.Errorf("%d policies, want exactly one, named by the would-be rule", len(rules.GetPolicies()))
	}
	sh := &shadowRules{}
	for name := range rules.GetPolicies() {
		sh.rule = name
	}
	if sh.rule == "" {
		return nil, errors.New("the policy has no name (the would-be rule)")
	}
	if err := checkRuleText(sh.rule); err != nil {
		return nil, err
	}
	ps, err := rulePrincipals(rules, true)
	if err != nil {
		return nil, err
	}
	sh.principals = ps
	return sh, nil
}

// isNobody reports whether pr is not_id any, which matches no one.
func isNobody(pr *rbacv3.Principal) bool {
	return pr.GetNotId() != nil && pr.GetNotId().GetAny()
}

// rulePrincipals returns the principals of an ALLOW RBAC; with
// nobodyOK, a policy may also have the sole principal not_id any.
func rulePrincipals(rules *rbacv3.RBAC, nobodyOK bool) ([]principal, error) {
	if rules.GetAction() != rbacv3.RBAC_ALLOW {
		return nil, fmt.Errorf("action %v, want ALLOW", rules.GetAction())
	}
	var out []principal
	names := make([]string, 0, len(rules.GetPolicies()))
	for n := range rules.GetPolicies() {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		p := rules.GetPolicies()[n]
		if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
			return nil, fmt.Errorf("policy %q: conditions are not supported", n)
		}
		if len(p.GetPermissions()) == 0 {
			return nil, fmt.Errorf("policy %q has no permissions", n)
		}
		for _, perm := range p.GetPermissions() {
			if !perm.GetAny() {
				return nil, fmt.Errorf("policy %q: only the any permission is supported", n)
			}
		}
		if nobodyOK && len(p.GetPrincipals()) == 1 && isNobody(p.GetPrincipals()[0]) {
			continue
		}
		for k, pr := range p.GetPrincipals() {
			pp, err := parsePrincipal(pr)
			if err != nil {
				return nil, fmt.Errorf("policy %q: principal %d: %w", n, k, err)
			}
			out = append(out, pp)
		}
	}
	return out, nil
}

// parsePrincipal reads one authenticated principal name matcher.
func parsePrincipal(pr *rbacv3.Principal) (principal, error) {
	a := pr.GetAuthenticated()
	if a == nil || a.GetPrincipalName() == nil {
		return principal{}, errors.New("not an authenticated principal name")
	}
	m := a.GetPrincipalName()
	if m.GetIgnoreCase() {
		return principal{}, errors.New("ignore_case is not supported")
	}
	switch pat := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		if _, err := spiffeid.FromString(pat.Exact); err != nil {
			return principal{}, fmt.Errorf("%q: %w", pat.Exact, err)
		}
		return principal{value: pat.Exact}, nil
	case *matcherv3.StringMatcher_Prefix:
		if err := checkTrustDomainPrefix(pat.Prefix); err != nil {
			return principal{}, err
		}
		return principal{kind: principalPrefix, value: pat.Prefix}, nil
	case *matcherv3.StringMatcher_SafeRegex:
		if pat.SafeRegex.GetEngineType() != nil {
			return principal{}, errors.New("a regex engine other than the default is not supported")
		}
		p, err := wire.ParseNamespaceRegex(pat.SafeRegex.GetRegex())
		if err != nil {
			return principal{}, err
		}
		return principal{kind: principalNamespace, value: p}, nil
	}
	return principal{}, errors.New("want an exact, trust domain prefix or namespace regex match")
}

// checkTrustDomainPrefix accepts "spiffe://<td>/", every ID of a trust
// domain. Longer prefixes are refused: a prefix such as
// spiffe://<td>/ns/<ns>/ also admits IDs like spiffe://<td>/ns/<ns>/batch/job1
// that no policy rule admits.
func checkTrustDomainPrefix(p string) error {
	td, ok := strings.CutSuffix(strings.TrimPrefix(p, "spiffe://"), "/")
	if !ok || !strings.HasPrefix(p, "spiffe://") {
		return fmt.Errorf("prefix %q is not spiffe://<trust domain>/", p)
	}
	if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "/") {
		return fmt.Errorf("prefix %q is not spiffe://<trust domain>/ (only whole trust domains are matched by prefix)", p)
	}
	return nil
}
