package xdsclient

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// AuthorizeUnauthenticated is the inbound check for a caller with no
// SPIFFE ID (plaintext, or TLS without tether/1, in permissive mode): may
// it reach this workload's local target port? Only if no policy restricts
// the port: every inbound filter chain for it admits the whole trust
// domain (a principal prefix spiffe://<td>/, what discovery sends when
// nothing narrower than allow-mesh applies), or, for a port no chain
// covers, the inbound default is allow-mesh. A nil View denies.
func (v *View) AuthorizeUnauthenticated(port uint16) wire.Decision {
	if v == nil {
		return wire.Decision{Rule: ErrNoView.Error()}
	}
	chains := v.chains[port]
	if len(chains) == 0 {
		rule := fmt.Sprintf("inbound default %s (no Service covers port %d)", v.inboundDefault, port)
		return wire.Decision{Allowed: v.inboundDefault == wire.AllowMesh, Rule: rule}
	}
	for _, c := range chains {
		if !v.admitsTrustDomain(c) {
			return wire.Decision{Rule: fmt.Sprintf("listener %s chain %s restricts port %d to named identities; the caller has none", c.listener, c.name, port)}
		}
	}
	return wire.Decision{Allowed: true, Rule: fmt.Sprintf("no policy restricts port %d (every chain admits the whole trust domain)", port)}
}

// admitsTrustDomain reports whether every RBAC filter of c has a
// principal that admits every ID of a trust domain (this workload's, when
// the view knows it): a caller without identity passes c only if no
// Service port behind it restricts who may call.
func (v *View) admitsTrustDomain(c *chain) bool {
	if len(c.rbacs) == 0 {
		return false
	}
	for _, r := range c.rbacs {
		if !slices.ContainsFunc(r.principals, v.isTrustDomainPrefix) {
			return false
		}
	}
	return true
}

// isTrustDomainPrefix reports whether p is the principal of a whole trust
// domain (spiffe://<td>/), this workload's when the view knows it.
func (v *View) isTrustDomainPrefix(p principal) bool {
	if p.kind != principalPrefix || !strings.HasSuffix(p.value, "/") {
		return false
	}
	id, err := spiffeid.FromString(strings.TrimSuffix(p.value, "/"))
	if err != nil || id.Path() != "" {
		return false
	}
	return v.id.IsZero() || id.TrustDomain() == v.id.TrustDomain()
}
