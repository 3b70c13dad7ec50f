package proxy

import (
	"errors"
	"fmt"
)

// A connection addressed to one of the sidecar's own ports (its capture
// listeners, admin, DNS), say plaintext straight to the inbound capture
// port in permissive mode, has that port as its original destination.
// Delivering it "to the app" on that port would connect the sidecar to
// itself, and the new connection would be delivered again, until the
// connection limit resets everything. Such connections, and streams whose
// OPEN names such a port, are refused at once (result "loop").

// errLoop is the refusal of a delivery to one of the sidecar's own ports.
var errLoop = errors.New("addressed to the sidecar itself")

// Reserve adds ports to the sidecar's own ports, which nothing is
// delivered to. The listeners the proxy serves are added as they start.
func (p *Proxy) Reserve(ports ...uint16) {
	for _, port := range ports {
		p.own[port/64].Or(1 << (port % 64))
	}
}

func (p *Proxy) reserved(port uint16) bool {
	return p.own[port/64].Load()&(1<<(port%64)) != 0
}

// checkLoop refuses delivering to app when that reaches the sidecar
// itself: a port of this pod that is the sidecar's (LocalTarget), or, for
// a fixed app address, one of the sidecar's ports on the address the
// connection was accepted on.
func (p *Proxy) checkLoop(accepted string, app App) error {
	if app.local != nil && p.reserved(app.Port) {
		return fmt.Errorf("%w: port %d is the sidecar's own", errLoop, app.Port)
	}
	if app.local == nil && app.Addr == accepted {
		return fmt.Errorf("%w: %s is the listener itself", errLoop, app.Addr)
	}
	return nil
}

// AllowUnauthenticated lets callers with no identity reach every port: the
// default when no policy is configured.
func AllowUnauthenticated(uint16) error { return nil }

// DenyUnauthenticated refuses callers with no identity on every port.
func DenyUnauthenticated(port uint16) error {
	return &DeniedError{Rule: "no identity", Detail: fmt.Sprintf("policy restricts port %d and the caller presented no SPIFFE ID", port)}
}
