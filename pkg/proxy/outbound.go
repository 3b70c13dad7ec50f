package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// poolTTL is how long an idle outbound tunnel is kept for reuse.
const poolTTL = time.Minute

// Destination is a mesh destination: where to connect, and who may serve it.
type Destination struct {
	// Name is for logs, e.g. "web.default:8080".
	Name string
	// Addr is dialed: the original destination (transparent mode) or the
	// peer sidecar's inbound listener (explicit mode).
	Addr string
	// Port is the destination port sent to the peer sidecar (0 in explicit
	// mode, where the peer's listener decides).
	Port uint16
	// IDs are the SPIFFE IDs allowed to serve the destination.
	IDs []spiffeid.ID
	// Rule is the policy rule that allowed the call, for the access log;
	// optional.
	Rule string
	// AuditRule, when set, is the rule of a policy or default in audit
	// mode that would deny the call: it passes, logged with decision
	// audit-deny and this rule, and counted.
	AuditRule string
	// Recheck, if set, decides the call again after a policy change
	// (Proxy.Revalidate): nil to keep an open stream, or an error wrapping
	// ErrDenied (a *DeniedError names the rule) to close it.
	Recheck func() error
}

func (d *Destination) key() string {
	var b strings.Builder
	b.WriteString(d.Addr)
	for _, id := range d.IDs {
		b.WriteByte('|')
		b.WriteString(id.String())
	}
	return b.String()
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
	// Target names the refused destination for the access log and the
	// denial metric, e.g. "default/db:5432" or "93.184.216.34:443".
	Target string
	// Rule is the policy rule that refused, for the denial metric (default:
	// Deny).
	Rule string
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
	go func() {
		t := time.NewTicker(poolTTL / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.pool.sweep()
			}
		}
	}()
	return p.serve(ctx, l, "outbound", func(c net.Conn, _ *pending) { p.outbound(c, route) })
}

func (p *Proxy) outbound(c net.Conn, route Router) {
	e := &Entry{Direction: "outbound", Start: time.Now(), Source: c.RemoteAddr().String()}
	if svid, err := p.cfg.Identity.GetX509SVID(); err == nil {
		e.SourceID = svid.ID.String()
	}
	r := route(c)
	switch {
	case r.Deny != "":
		e.Dest, e.Target, e.Reason, e.Rule = r.Target, r.Target, r.Deny, r.Rule
		if e.Rule == "" {
			e.Rule = r.Deny
		}
		p.cfg.Metrics.denials.WithLabelValues("outbound", e.SourceID, r.Target, e.Rule).Inc()
		p.cfg.Denials.Add(Denial{Direction: "outbound", Source: e.SourceID, Destination: r.Target, Rule: e.Rule, Reason: r.Deny})
		p.cfg.Logger.Debug("outbound connection denied", slog.String("source_id", e.SourceID), slog.String("destination", r.Target), slog.String("reason", r.Deny))
		p.refuse(c, "outbound", "denied", e)
		return
	case r.Passthrough != "":
		e.Dest, e.Reason = r.Passthrough, "passthrough: not a mesh destination"
		up, err := p.dialer.Dial("tcp", r.Passthrough)
		if err != nil {
			e.Reason = "connect " + r.Passthrough + ": " + err.Error()
			p.refuse(c, "outbound", "upstream_error", e)
			return
		}
		e.BytesSent, e.BytesReceived = pipe(c, up, p.cfg.IdleTimeout)
		p.record(e, "outbound", "ok", "allow")
		return
	case r.Mesh == nil:
		e.Reason = "no route"
		p.refuse(c, "outbound", "no_route", e)
		return
	}
	d := r.Mesh
	e.Dest, e.Target, e.Rule = d.Addr, d.Name, d.Rule
	key := d.key()
	for retry := false; ; retry = true {
		// A retry never takes another pooled tunnel: when the peer closed
		// one (idle, or stale after a retire it learned of before us), the
		// others are likely closed too, and the stream must not fail for it.
		var t *tunnel
		if !retry {
			t = p.pool.get(key, p.stillTrusted)
		}
		reused := t != nil
		if t == nil {
			var result string
			var err error
			if t, result, err = p.dialTunnel(d); err != nil {
				ids := make([]string, len(d.IDs))
				for i, id := range d.IDs {
					ids[i] = id.String()
				}
				e.DestID, e.Reason = strings.Join(ids, ","), err.Error()
				p.refuse(c, "outbound", result, e)
				return
			}
		}
		e.DestID = t.peer.String()
		deny, err := t.open(d, p.cfg.HandshakeTimeout)
		if err != nil {
			t.conn.Close()
			if reused {
				continue // the peer closed the pooled tunnel: retry once on a new handshake
			}
			e.Reason = "open stream to " + d.Name + ": " + err.Error()
			p.refuse(c, "outbound", "upstream_error", e)
			return
		}
		p.cfg.Metrics.streams.WithLabelValues(fmt.Sprint(reused)).Inc()
		if deny != "" {
			p.pool.put(key, t)
			// The destination decided: its reason, not the rule that
			// let the call out, is the rule of this denial.
			e.Reason, e.Rule = "refused by "+t.peer.String()+": "+deny, "refused by the destination's sidecar: "+deny
			p.refuse(c, "outbound", "denied", e)
			return
		}
		decision := "allow"
		if d.AuditRule != "" {
			decision = "audit-deny"
			p.auditDenied(e, "outbound", d.Name, d.Rule, d.AuditRule)
		}
		e.Decision = decision
		var aborted, reusable bool
		p.using(t, true)
		tun := t
		ls := &liveStream{direction: "outbound", peer: t.peer, source: e.SourceID, dest: d.Name, destAddr: d.Addr,
			check: d.Recheck, kill: func() { tun.conn.Close(); c.Close() }}
		if !t.peer.MemberOf(p.cfg.TrustDomain) {
			ls.foreign = t.anchors
		}
		untrack := p.trackStream(ls, p.streamExpiry(t.peerExpiry))
		e.BytesSent, e.BytesReceived, aborted, reusable = t.relay(c, p.cfg.IdleTimeout)
		untrack()
		p.using(t, false)
		result := "ok"
		if aborted {
			result, e.Reason = "reset", "connection reset"
		}
		if r, dec, ok := ls.finish(e); ok {
			t.conn.Close()
			p.record(e, "outbound", r, dec)
			return
		}
		if reusable {
			p.pool.put(key, t)
		} else {
			t.conn.Close()
		}
		p.record(e, "outbound", result, decision)
		return
	}
}

// auditDenied counts an audit denial of a stream that passes and fills its
// access log entry: the would-be rule, and in the reason the rule that
// allowed it.
func (p *Proxy) auditDenied(e *Entry, direction, dest, allowedBy, auditRule string) {
	p.cfg.Metrics.audits.WithLabelValues(direction, dest, auditRule).Inc()
	e.Rule = auditRule
	e.Reason = "audit mode: allowed to " + dest + " by " + allowedBy + "; the rule would deny it"
}

// dialTunnel connects and handshakes with a peer sidecar, checking that
// it is one of d.IDs.
func (p *Proxy) dialTunnel(d *Destination) (*tunnel, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.DialTimeout+p.cfg.HandshakeTimeout)
	defer cancel()
	raw, err := p.dialer.DialContext(ctx, "tcp", d.Addr)
	if err != nil {
		return nil, "upstream_error", fmt.Errorf("connect %s at %s: %w", d.Name, d.Addr, err)
	}
	// The peer refuses streams once the SVID we present now has expired:
	// the tunnel is reusable only until then too. (Read before the
	// handshake: a renewal in between only makes this conservative.)
	var ownExpiry time.Time
	var ownChain []*x509.Certificate
	if svid, err := p.cfg.Identity.GetX509SVID(); err == nil {
		ownExpiry = svid.Certificates[0].NotAfter
		ownChain = svid.Certificates
	}
	start := time.Now()
	tc := tls.Client(raw, p.clientTLS(d.IDs))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		p.foreignRefusal("outbound", d.Addr, err)
		return nil, "handshake_error", fmt.Errorf("mTLS to %s: %w", d.Name, err)
	}
	p.cfg.Metrics.handshake.WithLabelValues("outbound").Observe(time.Since(start).Seconds())
	leaf := tc.ConnectionState().PeerCertificates[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		tc.Close()
		return nil, "handshake_error", err
	}
	expiry := leaf.NotAfter
	if !ownExpiry.IsZero() && ownExpiry.Before(expiry) {
		expiry = ownExpiry
	}
	t := newTunnel(tc, id, expiry)
	t.anchors = []anchor{p.anchorOf(tc.ConnectionState().PeerCertificates, id.TrustDomain()), p.anchorOf(ownChain, p.cfg.TrustDomain)}
	return t, "", nil
}

// open starts a stream: OPEN, then the server's OK or DENY. It returns the
// denial reason, or an error if the tunnel failed.
func (t *tunnel) open(d *Destination, timeout time.Duration) (string, error) {
	t.conn.SetDeadline(time.Now().Add(timeout))
	defer t.conn.SetDeadline(time.Time{})
	if err := t.writeFrame(frameOpen, openPayload(d.Port, d.Name)); err != nil {
		return "", err
	}
	typ, n, err := t.readHeader()
	if err != nil {
		return "", err
	}
	switch typ {
	case frameOK:
		if n != 0 {
			return "", fmt.Errorf("%w: OK with payload", errProtocol)
		}
		return "", nil
	case frameDeny:
		reason, err := t.readControl(n)
		if err != nil {
			return "", err
		}
		return string(reason), nil
	default:
		return "", fmt.Errorf("%w: expected OK or DENY, got frame type %d", errProtocol, typ)
	}
}
