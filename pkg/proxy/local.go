package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"syscall"
)

// LocalTarget sends each stream to the app in the pod (transparent mode),
// on the port the caller asked for or, for plaintext, on the connection's
// original destination port.
//
// A stream goes to the pod IP, as a kubelet or another pod would reach the
// app, connected from source (IPv4) or from the DeliverySource6 option
// (IPv6): addresses the capture rules let through to the app rather than
// back to the inbound listener. An app that listens on loopback only is not
// reached: its listener is meant for the pod itself (a debug or admin
// port), and delivering mesh callers there would open it to every identity
// the policy admits to the port, seen by the app as 127.0.0.1. Only on the
// ports named by LoopbackPorts (the pod's tether.dev/localhost-inbound-ports)
// is 127.0.0.1 tried when the pod IP refuses; which of the two answered is
// then kept per port and tried first for the next stream, so an app on
// loopback costs one refused connection per port (while the sidecar runs),
// not one per stream; when the kept one is refused (the app restarted,
// bound elsewhere), the other is tried and kept instead. Without an IPv6
// delivery source, streams to an IPv6 pod IP are refused (or, on an
// opted-in port, go to 127.0.0.1).
func LocalTarget(originalDst OriginalDstFunc, source netip.Addr, opts ...LocalOption) InboundTarget {
	l := &localApps{originalDst: originalDst, source: netip.AddrPortFrom(source, 0)}
	for _, o := range opts {
		o(l)
	}
	return func(c net.Conn, port uint16) (App, error) {
		var pod netip.Addr
		if port == 0 {
			dst, err := l.originalDstOf(c)
			if err != nil {
				return App{}, err
			}
			pod, port = dst.Addr().Unmap(), dst.Port()
		} else {
			pod = l.podIP(c)
		}
		if !pod.Is4() && !(pod.Is6() && l.source6.Addr().IsValid()) {
			pod = netip.Addr{}
		}
		return App{Port: port, local: l, pod: pod}, nil
	}
}

// LocalOption configures LocalTarget.
type LocalOption func(*localApps)

// LoopbackPorts lets streams to these ports fall back to 127.0.0.1 when
// the app does not listen on the pod IP (the pod's opt-in,
// tether.dev/localhost-inbound-ports). Port 0 is ignored.
func LoopbackPorts(ports ...uint16) LocalOption {
	return func(l *localApps) {
		for _, p := range ports {
			if p != 0 {
				l.optIn[p/64] |= 1 << (p % 64)
			}
		}
	}
}

// DeliverySource6 is the address streams to an IPv6 pod IP are connected
// from (capture.DeliverySource6, which tether-sidecar init puts on lo).
func DeliverySource6(a netip.Addr) LocalOption {
	return func(l *localApps) { l.source6 = netip.AddrPortFrom(a, 0) }
}

// localApps is what LocalTarget knows of the app: where it listens on
// each port.
type localApps struct {
	originalDst OriginalDstFunc
	source      netip.AddrPort // where an IPv4 pod IP is dialled from, port 0
	source6     netip.AddrPort // where an IPv6 pod IP is dialled from; invalid: none
	// optIn has bit p set when port p may be delivered to 127.0.0.1. It is
	// set by the options only, before any stream.
	optIn [1 << 16 / 64]uint64
	// onLoopback has bit p set while port p is served on 127.0.0.1 and not
	// at the pod IP: the last connection to the pod IP was refused, and the
	// one to 127.0.0.1 after it was not.
	onLoopback [1 << 16 / 64]atomic.Uint64
}

func (l *localApps) optedIn(port uint16) bool {
	return l.optIn[port/64]&(1<<(port%64)) != 0
}

func (l *localApps) loopback(port uint16) bool {
	return l.onLoopback[port/64].Load()&(1<<(port%64)) != 0
}

func (l *localApps) setLoopback(port uint16, on bool) {
	w, bit := &l.onLoopback[port/64], uint64(1)<<(port%64)
	if on {
		w.Or(bit)
	} else {
		w.And(^bit)
	}
}

func (l *localApps) originalDstOf(c net.Conn) (netip.AddrPort, error) {
	tc, ok := underlyingTCP(c)
	if !ok {
		return netip.AddrPort{}, errors.New("not a TCP connection")
	}
	return l.originalDst(tc)
}

var loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// errNoPodIP refuses a stream whose pod IP is not known (or is IPv6 with no
// IPv6 delivery source) on a port not opted in to loopback delivery.
var errNoPodIP = errors.New("no pod IP to deliver to (the original destination is unknown, or IPv6 without an IPv6 delivery source), " +
	"and the port is not opted in to delivery on 127.0.0.1")

// podIP returns the pod IP a stream came to, or the zero Addr if it is not
// known. It is the address c was accepted on: REDIRECT in PREROUTING points
// a connection from another pod at the address of the interface it came in
// on. REDIRECT in OUTPUT, which captures the sidecar's calls to a service
// its own pod backs, points them at 127.0.0.1 (or ::1) instead; their
// original destination has the pod IP. For IPv6 the interface may have
// several addresses (a link-local one among them), so the original
// destination, the address the caller named, is used.
func (l *localApps) podIP(c net.Conn) netip.Addr {
	a, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	if ip := a.AddrPort().Addr().Unmap(); ip.Is4() && ip != loopback4 {
		return ip
	}
	dst, err := l.originalDstOf(c)
	if err != nil {
		return netip.Addr{}
	}
	return dst.Addr().Unmap()
}

// dial connects to the app on port at the pod IP. On a port opted in to
// loopback, it tries first where the app answered last; if that is
// refused, the other, which is then kept (without a pod IP, loopback
// only). It returns the address it connected to, or tried first.
func (l *localApps) dial(p *Proxy, pod netip.Addr, port uint16) (net.Conn, string, error) {
	if !l.optedIn(port) {
		if !pod.IsValid() {
			return nil, net.JoinHostPort("", strconv.Itoa(int(port))), errNoPodIP
		}
		return l.dialAt(p, pod, port, false)
	}
	if !pod.IsValid() {
		return l.dialAt(p, pod, port, true)
	}
	lo := l.loopback(port)
	up, addr, err := l.dialAt(p, pod, port, lo)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return up, addr, err
	}
	up, other, err2 := l.dialAt(p, pod, port, !lo)
	if err2 != nil {
		return nil, addr, fmt.Errorf("%w; and at %s: %w", err, other, err2)
	}
	l.setLoopback(port, !lo)
	return up, other, nil
}

// dialAt connects to the app on port, on 127.0.0.1 if loopback is set,
// else at pod from l.source.
func (l *localApps) dialAt(p *Proxy, pod netip.Addr, port uint16, loopback bool) (net.Conn, string, error) {
	if loopback {
		addr := loopbackAddr(port)
		up, err := p.dialer.Dial("tcp", addr)
		return up, addr, err
	}
	dst, src := netip.AddrPortFrom(pod, port), l.source
	if pod.Is6() {
		src = l.source6
	}
	up, err := p.appDialer.DialTCP(context.Background(), "tcp", src, dst)
	if err != nil {
		return nil, dst.String(), err // not a nil *TCPConn in a non-nil net.Conn
	}
	return up, dst.String(), nil
}

func loopbackAddr(port uint16) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
}
