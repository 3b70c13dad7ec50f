package xdsclient

import (
	"slices"
	"strconv"
	"strings"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// ServicePort is a port of a Service.
type ServicePort struct {
	Service wire.ServiceKey
	Port    uint16
}

// InboundServicePorts returns, by this pod's target port, the service
// ports whose policy decides connections to it (the deciders of its
// inbound chains), sorted: what the sidecar's flow summary names as the
// destination of a connection it accepted. A target port no chain covers
// (the inbound default decides) is absent. The deciders are read from the
// chains' names, "<target port>|<namespace>/<name>:<port>,..."
// (discovery.InboundChain.Name); a name of another form adds nothing.
func (v *View) InboundServicePorts() map[uint16][]ServicePort {
	if v == nil {
		return nil
	}
	out := make(map[uint16][]ServicePort, len(v.chains))
	for port, chains := range v.chains {
		var sps []ServicePort
		for _, c := range chains {
			sps = append(sps, parseDeciders(c.name)...)
		}
		slices.SortFunc(sps, func(a, b ServicePort) int {
			if c := strings.Compare(a.Service.String(), b.Service.String()); c != 0 {
				return c
			}
			return int(a.Port) - int(b.Port)
		})
		if sps = slices.Compact(sps); len(sps) > 0 {
			out[port] = sps
		}
	}
	return out
}

func parseDeciders(name string) []ServicePort {
	_, list, ok := strings.Cut(name, "|")
	if !ok {
		return nil
	}
	var out []ServicePort
	for _, d := range strings.Split(list, ",") {
		svc, port, ok := cutLast(d, ":")
		ns, n, ok2 := strings.Cut(svc, "/")
		p, err := strconv.ParseUint(port, 10, 16)
		if !ok || !ok2 || err != nil || p == 0 || ns == "" || n == "" {
			continue
		}
		out = append(out, ServicePort{Service: wire.ServiceKey{Namespace: ns, Name: n}, Port: uint16(p)})
	}
	return out
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
