package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Destination is a mesh destination: where to connect, and who may serve it.
type Destination struct {
	// Name is for logs, e.g. "web.default:8080".
	Name string
	// Addr is dialed: the original destination (transparent mode) or the
	// peer sidecar's inbound listener (explicit mode).
	Addr string
	// IDs are the SPIFFE IDs allowed to serve the destination.
	IDs []spiffeid.ID
}

// Route is the outbound decision for one connection: exactly one of Mesh,
// Passthrough or Deny is set.
type Route struct {
	Mesh *Destination
	// Passthrough is an address to connect to without TLS (not a mesh
	// destination, passthrough mode).
	Passthrough string
	// Deny is the reason to refuse (registry-only mode, or policy).
	Deny string
}

// Router decides where an accepted outbound connection goes.
type Router func(c net.Conn) Route

// FixedRoute sends every connection to one mesh destination (explicit mode).
func FixedRoute(d Destination) Router {
	return func(net.Conn) Route { return Route{Mesh: &d} }
}

// ServeOutbound originates mTLS (or passes through) for connections
// accepted on l until ctx ends.
func (p *Proxy) ServeOutbound(ctx context.Context, l net.Listener, route Router) error {
	return p.serve(ctx, l, "outbound", func(c net.Conn) { p.outbound(c, route) })
}

func (p *Proxy) outbound(c net.Conn, route Router) {
	e := &Entry{Direction: "outbound", Start: time.Now(), Source: c.RemoteAddr().String()}
	if svid, err := p.cfg.Identity.GetX509SVID(); err == nil {
		e.SourceID = svid.ID.String()
	}
	result := "ok"
	defer func() {
		e.Duration = time.Since(e.Start)
		p.cfg.Metrics.conns.WithLabelValues("outbound", result).Inc()
		p.cfg.Metrics.bytes.WithLabelValues("outbound", "sent", result).Add(float64(e.BytesSent))
		p.cfg.Metrics.bytes.WithLabelValues("outbound", "received", result).Add(float64(e.BytesReceived))
		p.cfg.AccessLog.Record(e)
	}()
	r := route(c)
	switch {
	case r.Deny != "":
		result, e.Decision, e.Reason = "denied", "deny", r.Deny
		reset(c)
		return
	case r.Passthrough != "":
		e.Dest, e.Reason = r.Passthrough, "passthrough: not a mesh destination"
		e.BytesSent, e.BytesReceived = p.relay(c, r.Passthrough, e, &result)
		return
	case r.Mesh == nil:
		result, e.Decision, e.Reason = "no_route", "error", "no route"
		reset(c)
		return
	}
	d := r.Mesh
	e.Dest = d.Addr
	ids := make([]string, len(d.IDs))
	for i, id := range d.IDs {
		ids[i] = id.String()
	}
	e.DestID = strings.Join(ids, ",")
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.DialTimeout+p.cfg.HandshakeTimeout)
	defer cancel()
	raw, err := p.dialer.DialContext(ctx, "tcp", d.Addr)
	if err != nil {
		result, e.Decision, e.Reason = "upstream_error", "error", "connect "+d.Name+" at "+d.Addr+": "+err.Error()
		reset(c)
		return
	}
	start := time.Now()
	tc := tls.Client(raw, p.clientTLS(d.IDs))
	if err := tc.HandshakeContext(ctx); err != nil {
		result, e.Decision, e.Reason = "handshake_error", "deny", "mTLS to "+d.Name+": "+err.Error()
		raw.Close()
		reset(c)
		return
	}
	p.cfg.Metrics.handshake.WithLabelValues("outbound").Observe(time.Since(start).Seconds())
	if peer := tc.ConnectionState().PeerCertificates; len(peer) > 0 && len(peer[0].URIs) == 1 {
		e.DestID = peer[0].URIs[0].String()
	}
	e.Decision = "allow"
	e.BytesSent, e.BytesReceived = pipe(c, tc, p.cfg.IdleTimeout)
}
