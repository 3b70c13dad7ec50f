package discovery

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// ServicePort names one port of one service.
type ServicePort struct {
	Service ServiceKey
	Port    uint16
}

// String returns "namespace/name:port".
func (p ServicePort) String() string { return p.Service.String() + ":" + strconv.Itoa(int(p.Port)) }

// InboundChain is who decides connections to one target port of some pods
// of one identity: the pods at Addrs (endpoint addresses) on TargetPort
// admit a caller only if every one of Deciders admits it.
//
// The deciders of a pod's target port are the ports, with that target
// port, of the Services that select the pod (the Services one of whose
// endpoints has the pod's address and identity): those named by an
// AccessPolicy, if any is; otherwise all of them, each deciding by its
// namespace's default. A caller must pass every decider (intersection):
// a connection to the pod's address does not say which Service the
// caller meant, so it is let in only if it would be by every Service
// that restricts that port of that pod.
type InboundChain struct {
	TargetPort uint16
	// Addrs are the pods' addresses, sorted, at least one.
	Addrs []netip.Addr
	// Deciders are sorted, at least one.
	Deciders []ServicePort
}

// Name is "<target port>|<decider>,<decider>...", unique among the chains
// of one identity.
func (c InboundChain) Name() string {
	s := make([]string, len(c.Deciders))
	for i, d := range c.Deciders {
		s[i] = d.String()
	}
	return strconv.Itoa(int(c.TargetPort)) + "|" + strings.Join(s, ",")
}

// InboundChains returns the inbound chains of the pods of identity id, in
// td, among services (those id does not serve add nothing): one per
// target port and distinct list of deciders, sorted by target port and
// name. eng says which services an AccessPolicy restricts.
func InboundChains(eng *policy.Engine, td spiffeid.TrustDomain, id spiffeid.ID, services []*Service) []InboundChain {
	type podPort struct {
		addr netip.Addr
		port uint16
	}
	all := map[podPort][]ServicePort{}
	restricted := map[podPort][]ServicePort{}
	for _, svc := range services {
		if len(svc.Ports) == 0 || !svc.Remote.IsZero() { // a remote service is served by the other mesh
			continue
		}
		r := eng.Restricted(svc.Key.Namespace, svc.Key.Name)
		for _, e := range svc.Endpoints {
			if eid, err := e.Identity(td, svc.Key.Namespace); err != nil || eid != id {
				continue
			}
			for _, p := range svc.Ports {
				pp := podPort{e.Addr.Unmap(), p.TargetPort}
				sp := ServicePort{svc.Key, p.Port}
				all[pp] = append(all[pp], sp)
				if r {
					restricted[pp] = append(restricted[pp], sp)
				}
			}
		}
	}
	byName := map[string]*InboundChain{}
	for pp, ds := range all {
		if rs := restricted[pp]; len(rs) > 0 {
			ds = rs
		}
		ds = slices.Clone(ds)
		slices.SortFunc(ds, compareServicePorts)
		ds = slices.Compact(ds)
		c := InboundChain{TargetPort: pp.port, Deciders: ds}
		name := c.Name()
		if have, ok := byName[name]; ok {
			have.Addrs = append(have.Addrs, pp.addr)
			continue
		}
		c.Addrs = []netip.Addr{pp.addr}
		byName[name] = &c
	}
	out := make([]InboundChain, 0, len(byName))
	for _, c := range byName {
		slices.SortFunc(c.Addrs, netip.Addr.Compare)
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b InboundChain) int {
		return cmp.Or(cmp.Compare(a.TargetPort, b.TargetPort), strings.Compare(a.Name(), b.Name()))
	})
	return out
}

func compareServicePorts(a, b ServicePort) int {
	return cmp.Or(compareKeys(a.Service, b.Service), cmp.Compare(a.Port, b.Port))
}

// PodChains returns the chains among chains (an identity's, from
// InboundChains) that apply to the pod at addrs (its addresses, one per
// IP family): those listing one of addrs. If none does (discovery does
// not list the pod as an endpoint of any Service, for instance while it
// is not ready, or its addresses are unknown), all of them apply: the pod
// is held to every pod of its identity at once (fail closed).
func PodChains(chains []InboundChain, addrs []netip.Addr) []InboundChain {
	return wire.ChooseForPod(chains, func(c InboundChain) []netip.Addr { return c.Addrs }, addrs)
}

// InboundChains is InboundChains for the services of s.
func (s *Snapshot) InboundChains(id spiffeid.ID) []InboundChain {
	svcs := make([]*Service, len(s.services))
	for i := range s.services {
		svcs[i] = &s.services[i]
	}
	return InboundChains(s.engine, s.td, id, svcs)
}

// Inbound decides a connection from src to targetPort of the pod of
// identity id at addrs, as that pod's sidecar does with what discovery
// sends it (see InboundChains and PodChains): on a target port of the
// pod's chains, every decider of every chain for that port must allow
// src; on a port no chain covers, the default of the pod's namespace (the
// namespace of id, else the mesh default) decides. The decision is
// audit-denied when a decider's is (see policy.Engine.Decide); a port no
// chain covers is never audited (the sidecar knows only the enforced
// default).
func (s *Snapshot) Inbound(src, id spiffeid.ID, addrs []netip.Addr, targetPort uint16) policy.Decision {
	var allowed []string
	var audit string // the first decider's would-be denial
	for _, c := range PodChains(s.InboundChains(id), addrs) {
		if c.TargetPort != targetPort {
			continue
		}
		for _, d := range c.Deciders {
			dec := s.engine.Decide(src, d.Service.Namespace, d.Service.Name, d.Port)
			if !dec.Allowed {
				return policy.Decision{Rule: fmt.Sprintf("pod port %d is %s's port %d: %s", targetPort, d.Service, d.Port, dec.Rule)}
			}
			allowed = append(allowed, dec.Rule)
			if dec.AuditDenied && audit == "" {
				audit = fmt.Sprintf("pod port %d is %s's port %d: %s", targetPort, d.Service, d.Port, dec.AuditRule)
			}
		}
	}
	if len(allowed) > 0 {
		slices.Sort(allowed)
		return policy.Decision{Allowed: true, Rule: strings.Join(slices.Compact(allowed), " and "), AuditDenied: audit != "", AuditRule: audit}
	}
	ns, _ := wire.WorkloadNamespace(id)
	d := s.engine.DecideDefault(src, ns)
	d.Rule = fmt.Sprintf("no Service covers port %d: %s", targetPort, d.Rule)
	// The sidecar learns only the enforced default of such ports, not
	// its mode: they are not audited.
	d.AuditDenied, d.AuditRule = false, ""
	return d
}
