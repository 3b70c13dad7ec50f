package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// InboundTarget says where an accepted inbound connection goes: the app's
// address and the port authorization is checked for.
type InboundTarget func(c net.Conn) (app string, port uint16, err error)

// FixedTarget sends every connection to app (explicit mode).
func FixedTarget(app string) (InboundTarget, error) {
	_, ps, err := net.SplitHostPort(app)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return nil, errors.New("app address " + app + " has no valid port")
	}
	return func(net.Conn) (string, uint16, error) { return app, uint16(port), nil }, nil
}

// ServeInbound terminates mesh mTLS on l and forwards to the app until
// ctx ends.
func (p *Proxy) ServeInbound(ctx context.Context, l net.Listener, target InboundTarget) error {
	return p.serve(ctx, l, "inbound", func(c net.Conn) { p.inbound(c, target) })
}

func (p *Proxy) inbound(c net.Conn, target InboundTarget) {
	e := &Entry{Direction: "inbound", Start: time.Now(), Source: c.RemoteAddr().String()}
	result := "ok"
	defer func() {
		e.Duration = time.Since(e.Start)
		p.cfg.Metrics.conns.WithLabelValues("inbound", result).Inc()
		p.cfg.Metrics.bytes.WithLabelValues("inbound", "sent", result).Add(float64(e.BytesSent))
		p.cfg.Metrics.bytes.WithLabelValues("inbound", "received", result).Add(float64(e.BytesReceived))
		p.cfg.AccessLog.Record(e)
	}()
	fail := func(res, decision, reason string) {
		result, e.Decision, e.Reason = res, decision, reason
		reset(c)
	}
	app, port, err := target(c)
	if err != nil {
		fail("no_target", "error", "original destination: "+err.Error())
		return
	}
	e.Dest = app

	conn := c
	if p.cfg.InboundMode == Permissive {
		br := bufio.NewReaderSize(c, maxHello+5)
		c.SetReadDeadline(time.Now().Add(p.cfg.PeekTimeout))
		kind := Detect(br)
		c.SetReadDeadline(time.Time{})
		conn = &peekedConn{Conn: c, r: br}
		if kind != MeshTLS {
			e.Reason = "permissive: " + kind.String() + " passed through"
			e.BytesReceived, e.BytesSent = p.relay(conn, app, e, &result)
			return
		}
	}

	hctx, cancel := context.WithTimeout(context.Background(), p.cfg.HandshakeTimeout)
	tc := tls.Server(conn, p.serverTLS)
	start := time.Now()
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		fail("handshake_error", "deny", "mTLS handshake: "+err.Error())
		return
	}
	p.cfg.Metrics.handshake.WithLabelValues("inbound").Observe(time.Since(start).Seconds())
	src, err := x509svid.IDFromCert(tc.ConnectionState().PeerCertificates[0])
	if err != nil { // the handshake verified an SVID, so this does not happen
		fail("handshake_error", "deny", "peer certificate: "+err.Error())
		return
	}
	e.SourceID = src.String()
	if svid, err := p.cfg.Identity.GetX509SVID(); err == nil {
		e.DestID = svid.ID.String()
	}
	if err := p.cfg.Authorize(src, port); err != nil {
		p.cfg.Metrics.denials.WithLabelValues(src.String()).Inc()
		p.cfg.Logger.Debug("inbound connection denied", slog.String("source_id", src.String()), slog.Int("port", int(port)), slog.Any("reason", err))
		fail("denied", "deny", err.Error())
		tc.Close()
		return
	}
	e.BytesReceived, e.BytesSent = p.relay(tc, app, e, &result)
}

// relay dials addr and pipes c to it, returning the bytes copied from c
// and to c.
func (p *Proxy) relay(c net.Conn, addr string, e *Entry, result *string) (fromC, toC int64) {
	up, err := p.dialer.Dial("tcp", addr)
	if err != nil {
		*result, e.Decision, e.Reason = "upstream_error", "error", "connect "+addr+": "+err.Error()
		reset(c)
		return 0, 0
	}
	e.Decision = "allow"
	return pipe(c, up, p.cfg.IdleTimeout)
}
