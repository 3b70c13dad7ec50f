package sidecar

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/proxy"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// Outbound modes for destinations the mesh does not know.
const (
	Passthrough  = "passthrough"
	RegistryOnly = "registry-only"
)

// Transparent configures capture mode: iptables (installed by
// `tether-sidecar init`) redirects the pod's TCP to these listeners.
type Transparent struct {
	InboundAddr  string // :15006
	OutboundAddr string // :15001
	// Endpoints are the mesh endpoints this pod may call and the identities
	// expected to serve each, when there is no discovery.
	Endpoints map[netip.AddrPort][]spiffeid.ID
	// OutboundMode is Passthrough or RegistryOnly.
	OutboundMode string
	// LoopbackPorts are the app ports inbound streams may be delivered to
	// on 127.0.0.1 when the app does not listen on the pod IP; the others
	// are delivered at the pod IP only (proxy.LoopbackPorts).
	LoopbackPorts []uint16
}

// checkLoopbackPorts refuses a loopback port the sidecar itself listens
// on: delivering a mesh caller to 127.0.0.1:15001 would hand it the
// outbound listener, an open proxy with the pod's identity.
func (t *Transparent) checkLoopbackPorts(c *Config) error {
	own := []struct{ name, addr string }{
		{"capture inbound", t.InboundAddr}, {"capture outbound", t.OutboundAddr}, {"admin", c.AdminAddr},
	}
	if c.DNS != nil {
		own = append(own, struct{ name, addr string }{"DNS", c.DNS.Listen})
	}
	for _, p := range t.LoopbackPorts {
		for _, o := range own {
			if _, port, err := net.SplitHostPort(o.addr); err == nil && port == strconv.Itoa(int(p)) {
				return fmt.Errorf("--localhost-inbound-ports: %d is where the sidecar listens (%s), never an app port", p, o.name)
			}
		}
	}
	return nil
}

// ParseEndpoint parses IP:PORT=SPIFFE_ID[,SPIFFE_ID...] into eps.
func ParseEndpoint(eps map[netip.AddrPort][]spiffeid.ID, v string) error {
	addr, ids, ok := strings.Cut(v, "=")
	ap, err := netip.ParseAddrPort(addr)
	if !ok || err != nil {
		return fmt.Errorf("want IP:PORT=SPIFFE_ID[,SPIFFE_ID...], got %q", v)
	}
	for _, s := range strings.Split(ids, ",") {
		id, err := spiffeid.FromString(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("mesh endpoint %q: expected identity %q: %v", v, s, err)
		}
		eps[ap] = append(eps[ap], id)
	}
	return nil
}

// meshLookup decides a captured outbound destination the mesh knows; ok
// is false for a destination outside the mesh.
type meshLookup func(dst netip.AddrPort) (r proxy.Route, ok bool)

// staticLookup decides by the --mesh-endpoint table (no discovery).
func (t *Transparent) staticLookup(dst netip.AddrPort) (proxy.Route, bool) {
	ids, ok := t.Endpoints[dst]
	if !ok {
		return proxy.Route{}, false
	}
	return proxy.Route{Mesh: &proxy.Destination{Name: dst.String(), Addr: dst.String(), Port: dst.Port(), IDs: ids}}, true
}

// router decides captured outbound connections by original destination:
// what mesh says for mesh destinations; for the rest, passthrough, or in
// registry-only mode only addresses egressAllowed admits (those the DNS
// server answered for --egress-allow names; nil admits none).
func (t *Transparent) router(originalDst proxy.OriginalDstFunc, mesh meshLookup, egressAllowed func(netip.Addr) bool) proxy.Router {
	_, outPort, _ := net.SplitHostPort(t.OutboundAddr)
	return func(c net.Conn) proxy.Route {
		tc, ok := c.(*net.TCPConn)
		if !ok {
			return proxy.Route{Deny: "not a TCP connection"}
		}
		dst, err := originalDst(tc)
		if err != nil {
			return proxy.Route{Deny: "original destination: " + err.Error()}
		}
		if dst.Addr().IsLoopback() && fmt.Sprint(dst.Port()) == outPort {
			return proxy.Route{Deny: "connection to the outbound listener itself (was the traffic captured?)", Target: dst.String()}
		}
		if r, ok := mesh(dst); ok {
			return r
		}
		if t.OutboundMode == RegistryOnly && (egressAllowed == nil || !egressAllowed(dst.Addr())) {
			return proxy.Route{Deny: "registry-only: " + dst.String() + " is not a mesh destination nor an address of an --egress-allow name",
				Target: dst.String(), Rule: ruleRegistryOnly}
		}
		return proxy.Route{Passthrough: dst.String()}
	}
}

// originalDst is capture.OriginalDst; tests may replace it.
var originalDst proxy.OriginalDstFunc = capture.OriginalDst
