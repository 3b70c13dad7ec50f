package sidecar

import (
	"fmt"
	"net"
	"net/netip"
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
	// expected to serve each (static until discovery provides them).
	Endpoints map[netip.AddrPort][]spiffeid.ID
	// OutboundMode is Passthrough or RegistryOnly.
	OutboundMode string
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

// router decides captured outbound connections by original destination.
func (t *Transparent) router(originalDst proxy.OriginalDstFunc) proxy.Router {
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
			return proxy.Route{Deny: "connection to the outbound listener itself (was the traffic captured?)"}
		}
		if ids, ok := t.Endpoints[dst]; ok {
			return proxy.Route{Mesh: &proxy.Destination{Name: dst.String(), Addr: dst.String(), Port: dst.Port(), IDs: ids}}
		}
		if t.OutboundMode == RegistryOnly {
			return proxy.Route{Deny: "registry-only: " + dst.String() + " is not a mesh destination"}
		}
		return proxy.Route{Passthrough: dst.String()}
	}
}

// originalDst is capture.OriginalDst; tests may replace it.
var originalDst proxy.OriginalDstFunc = capture.OriginalDst
