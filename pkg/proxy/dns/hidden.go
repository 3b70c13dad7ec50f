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
		if resp != nil && s.revealsHidden(resp) {
			return s.negative(req.msg, mdns.RcodeNameError), resultUnreachable
		}
		return resp, result
	}
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

// reverseAddr parses a reverse-lookup name ("4.3.2.1.in-addr.arpa.", or
// 32 nibbles then "ip6.arpa.").
func reverseAddr(name string) (netip.Addr, bool) {
	name = strings.ToLower(name)
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa."); ok {
		labels := strings.Split(rest, ".")
		if len(labels) != 4 {
			return netip.Addr{}, false
		}
		var b [4]byte
		for i, l := range labels {
			n, err := strconv.ParseUint(l, 10, 8)
			if err != nil {
				return netip.Addr{}, false
			}
			b[3-i] = byte(n)
		}
		return netip.AddrFrom4(b), true
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa."); ok {
		labels := strings.Split(rest, ".")
		if len(labels) != 32 {
			return netip.Addr{}, false
		}
		var b [16]byte
		for i, l := range labels {
			n, err := strconv.ParseUint(l, 16, 4)
			if err != nil || len(l) != 1 {
				return netip.Addr{}, false
			}
			j := 31 - i // nibble position, most significant first
			b[j/2] |= byte(n) << (4 * (1 - j%2))
		}
		return netip.AddrFrom16(b).Unmap(), true
	}
	return netip.Addr{}, false
}
