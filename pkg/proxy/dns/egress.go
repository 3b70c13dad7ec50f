package dns

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// minEgressHold is how long an allowed address stays allowed at least, even
// when its answer's TTL is shorter: clients often connect a little after the
// TTL of a short-lived answer has run out.
const minEgressHold = 30 * time.Second

// maxEgressAddrs bounds the recorded addresses; beyond it expired entries are
// swept, and if none expired the new address is not recorded.
const maxEgressAddrs = 1 << 16

// pattern is a parsed egress allow-list entry.
type pattern struct {
	suffix   string // canonical; for wildcards with the leading dot
	wildcard bool
}

// CheckEgressPattern reports whether p is a valid [Config].EgressAllow
// entry: a name ("api.example.com") or "*.suffix" ("*.googleapis.com").
func CheckEgressPattern(p string) error {
	_, err := parsePattern(p)
	return err
}

func parsePattern(p string) (pattern, error) {
	name, wild := strings.CutPrefix(strings.TrimSpace(p), "*.")
	if _, ok := mdns.IsDomainName(name); !ok || strings.Trim(name, ".") == "" || strings.Contains(name, "*") {
		return pattern{}, fmt.Errorf("dns: egress pattern %q: want a name (api.example.com) or *.suffix (*.googleapis.com)", p)
	}
	if wild {
		return pattern{suffix: "." + canonical(name), wildcard: true}, nil
	}
	return pattern{suffix: canonical(name)}, nil
}

// match reports whether the canonical name matches. "*.example.com" matches
// names below example.com but not example.com itself.
func (p pattern) match(name string) bool {
	if p.wildcard {
		return len(name) > len(p.suffix) && strings.HasSuffix(name, p.suffix)
	}
	return name == p.suffix
}

// egress records the addresses that answered allowed names.
type egress struct {
	patterns []pattern
	now      func() time.Time

	mu    sync.RWMutex
	addrs map[netip.Addr]time.Time // address → allowed until
}

func newEgress(patterns []string, now func() time.Time) *egress {
	e := &egress{now: now, addrs: make(map[netip.Addr]time.Time)}
	for _, s := range patterns {
		p, err := parsePattern(s) // validated in Config
		if err == nil {
			e.patterns = append(e.patterns, p)
		}
	}
	return e
}

func (e *egress) allowedName(name string) bool {
	for _, p := range e.patterns {
		if p.match(name) {
			return true
		}
	}
	return false
}

// record notes the A and AAAA addresses in resp that answer qname, directly or
// through a CNAME chain, if qname is allowed.
func (e *egress) record(qname string, resp *mdns.Msg) {
	if len(e.patterns) == 0 || resp == nil || !e.allowedName(qname) {
		return
	}
	// Names reachable from qname through CNAMEs; answers are not always in
	// chain order, so iterate until nothing new is found.
	names := map[string]bool{qname: true}
	for changed := true; changed; {
		changed = false
		for _, rr := range resp.Answer {
			if c, ok := rr.(*mdns.CNAME); ok && names[canonical(c.Hdr.Name)] && !names[canonical(c.Target)] {
				names[canonical(c.Target)] = true
				changed = true
			}
		}
	}
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, rr := range resp.Answer {
		var ip []byte
		switch v := rr.(type) {
		case *mdns.A:
			ip = v.A
		case *mdns.AAAA:
			ip = v.AAAA
		default:
			continue
		}
		if !names[canonical(rr.Header().Name)] {
			continue
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		until := now.Add(max(time.Duration(rr.Header().Ttl)*time.Second, minEgressHold))
		e.put(a.Unmap(), until, now)
	}
}

func (e *egress) put(a netip.Addr, until, now time.Time) {
	if old, ok := e.addrs[a]; ok {
		if until.After(old) {
			e.addrs[a] = until
		}
		return
	}
	if len(e.addrs) >= maxEgressAddrs {
		for k, t := range e.addrs {
			if !t.After(now) {
				delete(e.addrs, k)
			}
		}
		if len(e.addrs) >= maxEgressAddrs {
			return
		}
	}
	e.addrs[a] = until
}

func (e *egress) allowed(a netip.Addr) bool {
	a = a.Unmap()
	e.mu.RLock()
	until, ok := e.addrs[a]
	e.mu.RUnlock()
	return ok && e.now().Before(until)
}

// recordEgress wraps next (the forwarder) and records the addresses of
// answers to egress-allowed names, cached answers included.
func (s *Server) recordEgress(next handler) handler {
	return func(ctx context.Context, req *request) (*mdns.Msg, string) {
		resp, result := next(ctx, req)
		if resp != nil && resp.Rcode == mdns.RcodeSuccess {
			s.egress.record(req.name, resp)
		}
		return resp, result
	}
}
