package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"time"
)

// A client that offers ALPN protocols none of which is tether/1 is refused
// by crypto/tls itself with the no_application_protocol alert. A client
// that offers no ALPN at all is accepted by crypto/tls (RFC 7301 lets a
// server ignore ALPN), and would then complete the handshake and wait for
// tether/1 frames that never come. refuseWithoutALPN closes that gap: it
// answers such a ClientHello with the same alert, before the server sends
// anything else, so a stock client fails at once with "no application
// protocol". The client never sends its certificate, so no SPIFFE ID is
// known for the log; the ClientHello's ALPN list and SNI are logged instead.

// alertNoApplicationProtocol is a plaintext TLS record holding the fatal
// alert no_application_protocol (RFC 8446 6.2, alert 120). The record
// version is 0x0301, as crypto/tls writes records before a version is
// negotiated.
var alertNoApplicationProtocol = []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 120}

// alertConn is the connection a tls.Server runs on. Once refuseWithoutALPN
// has written its alert, it drops crypto/tls's own (internal_error) alert,
// so the client reads the right one.
type alertConn struct {
	net.Conn
	refused atomic.Bool
	// gate and pd, if set, learn when the ClientHello has arrived; the
	// handshake's deadline is then moved to helloDeadline (if set): a
	// caller that speaks gets the full handshake time even under pressure.
	gate          *pendingGate
	pd            *pending
	helloDeadline time.Time
}

func (c *alertConn) Write(b []byte) (int, error) {
	if c.refused.Load() {
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}

// refuseWithoutALPN is the server's GetConfigForClient: nil (the server
// config) for a ClientHello offering tether/1, else it sends the
// no_application_protocol alert and fails the handshake.
func refuseWithoutALPN(chi *tls.ClientHelloInfo) (*tls.Config, error) {
	ac, _ := chi.Conn.(*alertConn)
	if slices.Contains(chi.SupportedProtos, ALPN) {
		if ac != nil && ac.gate != nil && ac.pd != nil {
			ac.gate.hello(ac.pd)
		}
		if ac != nil && !ac.helloDeadline.IsZero() {
			ac.Conn.SetDeadline(ac.helloDeadline)
		}
		return nil, nil
	}
	if ac != nil && ac.refused.CompareAndSwap(false, true) {
		ac.Conn.Write(alertNoApplicationProtocol)
	}
	return nil, fmt.Errorf("the client does not offer ALPN %s (it offers %q, server name %q): refused with no_application_protocol", ALPN, chi.SupportedProtos, chi.ServerName)
}
