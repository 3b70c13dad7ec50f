package dns

import (
	"context"
	"strings"

	mdns "github.com/miekg/dns"
)

// meshTTL is the TTL of mesh answers, in seconds: short, so that discovery
// updates reach clients quickly.
const meshTTL = 5

// meshNames answers names of mesh services from the table.
func (s *Server) meshNames(_ context.Context, req *request) (*mdns.Msg, string) {
	for _, cand := range s.candidates(req.name) {
		base, port, proto, isSRV := splitSRV(cand)
		rec, ok := s.table.lookup(base)
		if !ok {
			continue
		}
		return s.meshAnswer(req, cand, base, rec, port, proto, isSRV)
	}
	return nil, ""
}

// candidates lists the names the pod's resolver would try for name, in its
// order: with fewer dots than ndots the search suffixes come first, else the
// name as asked comes first.
func (s *Server) candidates(name string) []string {
	rel := strings.TrimSuffix(name, ".")
	if rel == "" {
		return []string{name}
	}
	out := make([]string, 0, len(s.cfg.Search)+1)
	for _, suffix := range s.cfg.Search {
		if c := rel + "." + suffix; len(c) <= 255 {
			out = append(out, c)
		}
	}
	if strings.Count(rel, ".") >= s.cfg.Ndots {
		return append([]string{name}, out...)
	}
	return append(out, name)
}

// splitSRV splits "_port._proto.rest." into its parts.
func splitSRV(name string) (base, port, proto string, ok bool) {
	if !strings.HasPrefix(name, "_") {
		// Not an SRV name; skip splitting it (an allocation per label), as
		// every candidate of every query comes through here.
		return name, "", "", false
	}
	labels := mdns.SplitDomainName(name)
	if len(labels) < 3 || !strings.HasPrefix(labels[0], "_") || !strings.HasPrefix(labels[1], "_") {
		return name, "", "", false
	}
	return strings.Join(labels[2:], ".") + ".", labels[0][1:], labels[1][1:], true
}

// meshAnswer builds the reply for a query whose candidate name cand was found
// in the table (base is cand without the SRV labels).
func (s *Server) meshAnswer(req *request, cand, base string, rec Record, port, proto string, isSRV bool) (*mdns.Msg, string) {
	r := req.msg
	if !rec.Reachable && !s.cfg.AnswerUnreachable {
		return s.negative(r, mdns.RcodeNameError), resultUnreachable
	}
	var ports []SRVPort
	for _, p := range rec.Ports {
		if !isSRV || (strings.EqualFold(p.Name, port) && strings.EqualFold(p.Proto, proto)) {
			ports = append(ports, p)
		}
	}
	if isSRV && len(ports) == 0 {
		return s.negative(r, mdns.RcodeNameError), resultMesh
	}

	m := reply(r, mdns.RcodeSuccess)
	m.Authoritative = true
	owner := req.q.Name
	if cand != req.name {
		// A short name completed through the search list: point the asked
		// name at the full one so the client accepts the answer.
		m.Answer = append(m.Answer, &mdns.CNAME{Hdr: hdr(owner, mdns.TypeCNAME), Target: cand})
		owner = cand
	}
	switch req.q.Qtype {
	case mdns.TypeA, mdns.TypeAAAA:
		if !isSRV {
			m.Answer = append(m.Answer, addrRRs(owner, rec, req.q.Qtype)...)
		}
	case mdns.TypeSRV:
		for _, p := range ports {
			m.Answer = append(m.Answer, &mdns.SRV{
				Hdr: hdr(owner, mdns.TypeSRV), Priority: 0, Weight: 100, Port: p.Port, Target: base,
			})
		}
		m.Extra = append(m.Extra, addrRRs(base, rec, mdns.TypeA)...)
		m.Extra = append(m.Extra, addrRRs(base, rec, mdns.TypeAAAA)...)
	}
	if !hasType(m.Answer, req.q.Qtype) {
		m.Ns = append(m.Ns, s.soa()) // NODATA
	}
	return m, resultMesh
}

// negative is NXDOMAIN (or NODATA) with the cluster domain's SOA so that
// clients cache it briefly.
func (s *Server) negative(r *mdns.Msg, rcode int) *mdns.Msg {
	m := reply(r, rcode)
	m.Authoritative = true
	m.Ns = []mdns.RR{s.soa()}
	return m
}

func (s *Server) soa() mdns.RR {
	d := s.cfg.ClusterDomain
	return &mdns.SOA{
		Hdr: hdr(d, mdns.TypeSOA), Ns: "ns.dns." + d, Mbox: "hostmaster." + d,
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: meshTTL,
	}
}

func hdr(name string, t uint16) mdns.RR_Header {
	return mdns.RR_Header{Name: name, Rrtype: t, Class: mdns.ClassINET, Ttl: meshTTL}
}

// addrRRs are the A (IPv4) or AAAA (IPv6) records of rec.
func addrRRs(owner string, rec Record, t uint16) []mdns.RR {
	var out []mdns.RR
	for _, a := range rec.Addrs {
		a = a.Unmap()
		switch {
		case t == mdns.TypeA && a.Is4():
			out = append(out, &mdns.A{Hdr: hdr(owner, t), A: a.AsSlice()})
		case t == mdns.TypeAAAA && a.Is6():
			out = append(out, &mdns.AAAA{Hdr: hdr(owner, t), AAAA: a.AsSlice()})
		}
	}
	return out
}

func hasType(rrs []mdns.RR, t uint16) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == t {
			return true
		}
	}
	return false
}
