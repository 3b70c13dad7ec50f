package dns

import (
	"context"
	"net/netip"
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"
)

// hideUnreachable wraps next (the forwarder) so that the upstream resolvers
// do not tell this pod what discovery hides from it: the names of mesh
// services it may reach on no port. The pod's table knows only their
// addresses (see HiddenTable), so the query goes upstream like any other,
// and an answer that holds one of them (in the answer or additional
// section: a CNAME chain or an SRV target included) becomes NXDOMAIN, as
// does the reverse (PTR) name of one, before anything upstream is asked.
// An SRV answer with a target in the cluster's service domain whose
// address it does not include is refused the same way, since that target
// could be a hidden service. Cached answers are
// checked too: the table may have changed since they were cached.
func (s *Server) hideUnreachable(next handler) handler {
	return func(ctx context.Context, req *request) (*mdns.Msg, string) {
		if s.cfg.AnswerUnreachable {
			return next(ctx, req)
		}
		if a, ok := reverseAddr(req.name); ok && s.table.hidden(a) {
			return s.negative(req.msg, mdns.RcodeNameError), resultUnreachable
		}
		resp, result := next(ctx, req)
		if resp == nil {
			return resp, result
		}
		if s.revealsHidden(resp) {
			return s.negative(req.msg, mdns.RcodeNameError), resultUnreachable
		}
		if s.mayNameHidden(req, resp) {
			switch hidden, ok := s.addressesHidden(ctx, req, next); {
			case !ok:
				return reply(req.msg, mdns.RcodeServerFailure), resultServfail
			case hidden:
				return s.negative(req.msg, mdns.RcodeNameError), resultUnreachable
			}
		}
		return resp, result
	}
}

// mayNameHidden reports whether resp says that a name exists without
// showing its addresses (NODATA for AAAA of an IPv4-only service, or
// records of another type), for a name of the cluster's services or an
// alias of one: the name could be a hidden service's, which only an
// address query shows.
func (s *Server) mayNameHidden(req *request, resp *mdns.Msg) bool {
	if resp.Rcode != mdns.RcodeSuccess {
		return false
	}
	if _, ok := reverseAddr(req.name); ok {
		return false
	}
	svc := ".svc." + s.cfg.ClusterDomain
	inCluster := strings.HasSuffix(req.name, svc)
	for _, rr := range resp.Answer {
		switch rr := rr.(type) {
		case *mdns.A, *mdns.AAAA:
			return false // revealsHidden has checked them
		case *mdns.CNAME:
			inCluster = inCluster || strings.HasSuffix(strings.ToLower(rr.Target), svc)
		}
	}
	return inCluster
}

// addressesHidden asks next for the A and AAAA records of the request's
// name (those it did not ask for itself) and reports whether one is
// hidden; ok is false when an answer could not be had.
func (s *Server) addressesHidden(ctx context.Context, req *request, next handler) (hidden, ok bool) {
	for _, qtype := range []uint16{mdns.TypeA, mdns.TypeAAAA} {
		if qtype == req.q.Qtype {
			continue
		}
		m := new(mdns.Msg).SetQuestion(req.q.Name, qtype)
		probe := &request{msg: m, q: m.Question[0], name: req.name}
		resp, _ := next(ctx, probe)
		if resp == nil || (resp.Rcode != mdns.RcodeSuccess && resp.Rcode != mdns.RcodeNameError) {
			return false, false
		}
		if s.revealsHidden(resp) {
			return true, true
		}
	}
	return false, true
}

// revealsHidden reports whether resp holds a hidden address, or an SRV
// record whose target, a service name of the cluster, has no address in
// resp.
func (s *Server) revealsHidden(resp *mdns.Msg) bool {
	addrs := map[string]bool{} // owner names with an address
	hidden := false
	check := func(rrs []mdns.RR) {
		for _, rr := range rrs {
			var a netip.Addr
			switch rr := rr.(type) {
			case *mdns.A:
				a, _ = netip.AddrFromSlice(rr.A.To4())
			case *mdns.AAAA:
				a, _ = netip.AddrFromSlice(rr.AAAA.To16())
			default:
				continue
			}
			addrs[strings.ToLower(rr.Header().Name)] = true
			hidden = hidden || s.table.hidden(a.Unmap())
		}
	}
	check(resp.Answer)
	check(resp.Extra)
	if hidden {
		return true
	}
	svc := ".svc." + s.cfg.ClusterDomain
	for _, rr := range resp.Answer {
		if srv, ok := rr.(*mdns.SRV); ok {
			t := strings.ToLower(srv.Target)
			if strings.HasSuffix(t, svc) && !addrs[t] {
				return true
			}
		}
	}
	return false
}

// reverseZones are the reverse-lookup forms: an IPv4 address's 4 bytes
// as decimal labels, or an IPv6 address's 32 nibbles as one hex digit
// each, least significant first.
var reverseZones = []struct {
	suffix string
	labels int // how many labels a whole address has
	base   int // each label's digits
	bits   int // each label's width
	digits int // how many digits a label has; 0: any
}{
	{".in-addr.arpa.", 4, 10, 8, 0},
	{".ip6.arpa.", 32, 16, 4, 1},
}

// reverseAddr parses a reverse-lookup name ("4.3.2.1.in-addr.arpa.", or
// 32 nibbles then "ip6.arpa.").
func reverseAddr(name string) (netip.Addr, bool) {
	name = strings.ToLower(name)
	for _, z := range reverseZones {
		rest, ok := strings.CutSuffix(name, z.suffix)
		if !ok {
			continue
		}
		labels := strings.Split(rest, ".")
		if len(labels) != z.labels {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, l := range labels {
			n, err := strconv.ParseUint(l, z.base, z.bits)
			if err != nil || (z.digits > 0 && len(l) != z.digits) {
				return netip.Addr{}, false
			}
			bit := (z.labels - 1 - i) * z.bits // the label's first bit, most significant first
			b[bit/8] |= byte(n) << (8 - z.bits - bit%8)
		}
		a, _ := netip.AddrFromSlice(b[:z.labels*z.bits/8])
		return a.Unmap(), true
	}
	return netip.Addr{}, false
}
