package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// serverIdle is how long an inbound tunnel may wait for its next stream.
// It is longer than the client's pool TTL, so the client always gives up
// on an idle tunnel first.
const serverIdle = 5 * time.Minute

// InboundTarget says where a stream goes: given the accepted connection and
// the port the caller asked for (0 when unknown, as for plaintext in
// permissive mode), it returns the app.
type InboundTarget func(c net.Conn, port uint16) (App, error)

// App is the app a stream goes to.
type App struct {
	// Addr is the app's address. LocalTarget leaves it empty: it chooses
	// between the pod IP and loopback when it connects.
	Addr string
	// Port is the app's port, which authorization is checked for.
	Port uint16

	local *localApps // LocalTarget's
	pod   netip.Addr // LocalTarget: the pod IP; the zero Addr to use loopback only
}

// String returns the app's address, for logs. For LocalTarget it is the pod
// IP and port, or 127.0.0.1 and port when there is no pod IP to deliver to.
func (a App) String() string {
	switch {
	case a.local == nil:
		return a.Addr
	case a.pod.IsValid():
		return netip.AddrPortFrom(a.pod, a.Port).String()
	}
	return loopbackAddr(a.Port)
}

// FixedTarget sends every stream to app (explicit mode).
func FixedTarget(app string) (InboundTarget, error) {
	_, ps, err := net.SplitHostPort(app)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return nil, errors.New("app address " + app + " has no valid port")
	}
	return func(net.Conn, uint16) (App, error) { return App{Addr: app, Port: uint16(port)}, nil }, nil
}

// OriginalDstFunc returns the destination a captured connection was
// addressed to before iptables redirected it (SO_ORIGINAL_DST).
type OriginalDstFunc func(c *net.TCPConn) (netip.AddrPort, error)

func underlyingTCP(c net.Conn) (*net.TCPConn, bool) {
	switch v := c.(type) {
	case *net.TCPConn:
		return v, true
	case *peekedConn:
		return underlyingTCP(v.Conn)
	}
	return nil, false
}

// dialApp connects to the app of a stream. It returns the address it
// connected to, or tried first, for logs.
func (p *Proxy) dialApp(a App) (net.Conn, string, error) {
	if a.local != nil {
		return a.local.dial(p, a.pod, a.Port)
	}
	up, err := p.dialer.Dial("tcp", a.Addr)
	return up, a.Addr, err
}

// ServeInbound terminates mesh mTLS on l and forwards streams to the app
// until ctx ends.
func (p *Proxy) ServeInbound(ctx context.Context, l net.Listener, target InboundTarget) error {
	return p.serve(ctx, l, "inbound", func(c net.Conn, pd *pending) { p.inbound(c, pd, target) })
}

func (p *Proxy) inbound(c net.Conn, pd *pending, target InboundTarget) {
	conn := c
	// Unauthenticated until the handshake completes: a short deadline,
	// shorter still while many such connections are open (pending.go).
	full := time.Now().Add(p.cfg.HandshakeTimeout)
	deadline, helloDeadline := full, time.Time{}
	if p.pending.pressure() && p.cfg.PressureHandshakeTimeout < p.cfg.HandshakeTimeout {
		// Until its ClientHello arrives; then the full time.
		deadline, helloDeadline = time.Now().Add(p.cfg.PressureHandshakeTimeout), full
	}
	if p.cfg.InboundMode == Permissive {
		br := bufio.NewReaderSize(c, maxHello+5)
		peek := time.Now().Add(p.cfg.PeekTimeout)
		if deadline.Before(peek) {
			peek = deadline
		}
		c.SetReadDeadline(peek)
		kind := Detect(br)
		c.SetReadDeadline(time.Time{})
		conn = &peekedConn{Conn: c, r: br}
		if kind != MeshTLS {
			p.plaintextInbound(conn, pd, target, kind)
			return
		}
	}
	c.SetDeadline(deadline)
	tc := tls.Server(&alertConn{Conn: conn, gate: p.pending, pd: pd, helloDeadline: helloDeadline}, p.serverTLS)
	start := time.Now()
	err := tc.Handshake()
	c.SetDeadline(time.Time{})
	if err != nil {
		reason := "mTLS handshake: " + err.Error()
		if p.authenticated(pd); pd.wasEvicted {
			reason += " (reset to make room: too many unauthenticated connections)"
		}
		e := &Entry{Source: c.RemoteAddr().String(), Reason: reason}
		if rule, id, ok := p.foreignRefusal("inbound", c.LocalAddr().String(), err); ok && id != "" {
			// A verified caller of another trust domain no rule names.
			e.SourceID, e.Dest, e.Rule = id, c.LocalAddr().String(), rule
			p.refuse(c, "inbound", "denied", e)
			return
		}
		p.refuse(c, "inbound", "handshake_error", e)
		return
	}
	p.cfg.Metrics.handshake.WithLabelValues("inbound").Observe(time.Since(start).Seconds())
	st := tc.ConnectionState()
	src, err := x509svid.IDFromCert(st.PeerCertificates[0])
	if err == nil && st.NegotiatedProtocol != ALPN {
		err = fmt.Errorf("client did not negotiate ALPN %s", ALPN)
	}
	if err != nil {
		// The handshake verified the caller's SVID: name it.
		p.refuse(c, "inbound", "handshake_error", &Entry{Source: c.RemoteAddr().String(), SourceID: src.String(), Reason: err.Error()})
		return
	}
	if !p.takeSlot(pd) {
		p.refuse(c, "inbound", "over_limit", &Entry{Source: c.RemoteAddr().String(), SourceID: src.String(),
			Reason: fmt.Sprintf("over the limit of %d inbound connections", p.cfg.MaxConnections)})
		return
	}
	t := newTunnel(tc, src, st.PeerCertificates[0].NotAfter)
	t.anchors = []anchor{p.anchorOf(st.PeerCertificates, src.TrustDomain())}
	// The first OPEN must follow the handshake promptly; later ones may
	// wait as long as the client keeps the tunnel pooled.
	for wait := p.cfg.HandshakeTimeout; p.serveStream(c, t, target, wait); wait = serverIdle {
	}
	tc.Close()
}

// serveStream serves one stream of an inbound tunnel. It returns false
// when the tunnel is finished.
func (p *Proxy) serveStream(c net.Conn, t *tunnel, target InboundTarget, wait time.Duration) bool {
	p.setIdle(c, true)
	t.conn.SetReadDeadline(time.Now().Add(wait))
	typ, n, err := t.readHeader()
	p.setIdle(c, false)
	e := &Entry{Direction: "inbound", Start: time.Now(), Source: c.RemoteAddr().String(), SourceID: t.peer.String()}
	if err != nil && !errors.Is(err, errProtocol) && t.br.Buffered() == 0 {
		return false // the client closed the tunnel, or it sat idle too long
	}
	if svid, err := p.cfg.Identity.GetX509SVID(); err == nil {
		e.DestID = svid.ID.String()
	}
	var port uint16
	var payload []byte
	if typ == frameOpen {
		payload, err = t.readControl(n)
	}
	if err == nil && typ == frameOpen {
		port, e.Dest, err = parseOpen(payload)
	} else if err == nil {
		err = fmt.Errorf("%w: expected OPEN, got frame type %d", errProtocol, typ)
	}
	if err != nil {
		e.Reason = "tunnel: " + err.Error()
		p.refuse(c, "inbound", "protocol_error", e)
		return false
	}
	deny := func(result, reason string) bool {
		e.Reason = reason
		p.record(e, "inbound", result, "deny")
		return t.writeFrame(frameDeny, []byte(reason)) == nil
	}
	// A tunnel whose credentials went stale (the caller's SVID expired, or
	// a root either chain ends at was retired) takes no new stream. It is
	// closed without a DENY: the caller then retries on a new handshake
	// with its current SVID, as it does for a tunnel closed while idle.
	stale := ""
	if !time.Now().Before(t.peerExpiry) {
		stale = "the caller's SVID expired at " + t.peerExpiry.UTC().Format(time.RFC3339)
	} else if !p.stillTrusted(t.anchors...) {
		stale = "the caller's SVID chains to a root that is no longer in the trust bundle"
	}
	if stale != "" {
		e.Reason = stale + "; tunnel closed, a new handshake is needed"
		p.record(e, "inbound", "denied", "deny")
		return false
	}
	app, err := target(c, port)
	if err != nil {
		return deny("no_target", "no destination: "+err.Error())
	}
	e.Port = app.Port
	if err := p.checkLoop(c.LocalAddr().String(), app); err != nil {
		e.Dest = app.String()
		return deny("loop", err.Error())
	}
	auditRule, err := p.authorizeStream(t.peer, app.Port)
	if err != nil {
		e.Dest, e.Rule = app.String(), ruleOf(err)
		p.cfg.Metrics.denials.WithLabelValues("inbound", t.peer.String(), e.Dest, e.Rule).Inc()
		p.cfg.Denials.Add(Denial{Direction: "inbound", Source: t.peer.String(), Destination: e.Dest, Rule: e.Rule, Reason: err.Error()})
		p.cfg.Logger.Debug("inbound stream denied", slog.String("source_id", t.peer.String()), slog.Int("port", int(app.Port)), slog.Any("reason", err))
		return deny("denied", err.Error())
	}
	up, addr, err := p.dialApp(app)
	e.Dest = addr
	if err != nil {
		e.Reason = "connect " + addr + ": " + err.Error()
		p.record(e, "inbound", "upstream_error", "error")
		return t.writeFrame(frameDeny, []byte(e.Reason)) == nil
	}
	if err := t.writeFrame(frameOK, nil); err != nil {
		up.Close()
		return false
	}
	decision := "allow"
	if auditRule != "" {
		decision = "audit-deny"
		p.auditDenied(e, "inbound", e.Dest, "this sidecar's policy", auditRule)
	}
	e.Decision = decision
	peer, appPort := t.peer, app.Port
	ls := &liveStream{direction: "inbound", peer: peer, source: e.Source, dest: e.Dest,
		check: func() error { return p.cfg.Authorize(peer, appPort) },
		kill:  func() { c.Close(); up.Close() }}
	if !peer.MemberOf(p.cfg.TrustDomain) {
		ls.foreign = t.anchors
	}
	untrack := p.trackStream(ls, p.streamExpiry(t.peerExpiry))
	var aborted, reusable bool
	e.BytesSent, e.BytesReceived, aborted, reusable = t.relay(up, p.cfg.IdleTimeout)
	untrack()
	result := "ok"
	if aborted {
		result, e.Reason = "reset", "connection reset"
	}
	if r, d, ok := ls.finish(e); ok {
		p.record(e, "inbound", r, d)
		return false
	}
	p.record(e, "inbound", result, decision)
	return reusable
}

// authorizeStream decides a new inbound stream: with AuthorizeAudit if
// set (auditRule non-empty: audit-denied), else Authorize.
func (p *Proxy) authorizeStream(src spiffeid.ID, port uint16) (auditRule string, err error) {
	if p.cfg.AuthorizeAudit != nil {
		return p.cfg.AuthorizeAudit(src, port)
	}
	return "", p.cfg.Authorize(src, port)
}

// unauthenticated stands for the caller's SPIFFE ID in the denial metric
// and /debug/denials when it has none (permissive mode).
const unauthenticated = "unauthenticated"

// plaintextInbound passes a non-mesh connection to the app (permissive),
// on a port no policy restricts and that is not the sidecar's own.
func (p *Proxy) plaintextInbound(c net.Conn, pd *pending, target InboundTarget, kind Kind) {
	e := &Entry{Direction: "inbound", Start: time.Now(), Source: c.RemoteAddr().String(), Reason: "permissive: " + kind.String() + " passed through"}
	app, err := target(c, 0)
	if err != nil {
		e.Reason = "original destination: " + err.Error()
		p.refuse(c, "inbound", "no_target", e)
		return
	}
	e.Dest = app.String()
	if err := p.checkLoop(c.LocalAddr().String(), app); err != nil {
		e.Reason = kind.String() + " " + err.Error()
		p.refuse(c, "inbound", "loop", e)
		return
	}
	if err := p.cfg.AuthorizeUnauthenticated(app.Port); err != nil {
		// Plaintext has no identity: only ports no policy restricts.
		e.Reason, e.Rule = "permissive: "+kind.String()+" refused: "+err.Error(), ruleOf(err)
		p.cfg.Metrics.denials.WithLabelValues("inbound", unauthenticated, e.Dest, e.Rule).Inc()
		p.cfg.Denials.Add(Denial{Direction: "inbound", Source: unauthenticated, Destination: e.Dest, Rule: e.Rule, Reason: err.Error()})
		p.cfg.Logger.Debug("inbound connection without identity denied", slog.String("source", e.Source), slog.Int("port", int(app.Port)), slog.Any("reason", err))
		p.refuse(c, "inbound", "denied", e)
		return
	}
	if !p.takeSlot(pd) {
		e.Reason = fmt.Sprintf("over the limit of %d inbound connections", p.cfg.MaxConnections)
		p.refuse(c, "inbound", "over_limit", e)
		return
	}
	up, addr, err := p.dialApp(app)
	e.Dest = addr
	if err != nil {
		e.Reason = "connect " + addr + ": " + err.Error()
		p.refuse(c, "inbound", "upstream_error", e)
		return
	}
	port := app.Port
	ls := &liveStream{direction: "inbound", source: e.Source, dest: e.Dest,
		check: func() error { return p.cfg.AuthorizeUnauthenticated(port) },
		kill:  func() { c.Close(); up.Close() }}
	untrack := p.trackStream(ls, time.Time{})
	e.BytesReceived, e.BytesSent = pipe(c, up, p.cfg.IdleTimeout)
	untrack()
	if r, d, ok := ls.finish(e); ok {
		p.record(e, "inbound", r, d)
		return
	}
	p.record(e, "inbound", "ok", "allow")
}

// record finishes an access log entry and counts it.
func (p *Proxy) record(e *Entry, direction, result, decision string) {
	if e.Start.IsZero() {
		e.Start = time.Now()
	}
	e.Direction, e.Decision, e.Duration = direction, decision, time.Since(e.Start)
	if p.cfg.Observe != nil {
		p.cfg.Observe(e)
	}
	m := p.cfg.Metrics
	m.conns.WithLabelValues(direction, result).Inc()
	if e.BytesSent > 0 {
		m.bytes.WithLabelValues(direction, "sent", result).Add(float64(e.BytesSent))
	}
	if e.BytesReceived > 0 {
		m.bytes.WithLabelValues(direction, "received", result).Add(float64(e.BytesReceived))
	}
	p.cfg.AccessLog.Record(e)
}

// refuse records a refusal and resets c.
func (p *Proxy) refuse(c net.Conn, direction, result string, e *Entry) {
	decision := "deny"
	if result == "upstream_error" || result == "no_target" || result == "no_route" {
		decision = "error"
	}
	p.record(e, direction, result, decision)
	reset(c)
}
