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
// The app may listen on all addresses, on the pod IP only or on loopback
// only. A stream goes to the pod IP, connected from source, an address the
// capture rules let through to it (capture.DeliverySource), and if that is
// refused to 127.0.0.1. Which of the two answered is kept per port and tried
// first for the next stream, so an app on loopback costs one refused
// connection per port (while the sidecar runs), not one per stream; when the
// kept one is refused (the app restarted, bound elsewhere), the other is
// tried and kept instead. An IPv6 pod IP cannot be reached from an address
// the capture rules let through (Linux has no IPv6 loopback range to bind
// one from), so IPv6 streams go to 127.0.0.1.
func LocalTarget(originalDst OriginalDstFunc, source netip.Addr) InboundTarget {
	l := &localApps{originalDst: originalDst, source: netip.AddrPortFrom(source, 0)}
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
		if !pod.Is4() {
			pod = netip.Addr{}
		}
		return App{Port: port, local: l, pod: pod}, nil
	}
}

// localApps is what LocalTarget knows of the app: where it listens on
// each port.
type localApps struct {
	originalDst OriginalDstFunc
	source      netip.AddrPort // where the pod IP is dialled from, port 0
	// onLoopback has bit p set while port p is served on 127.0.0.1 and not
	// at the pod IP: the last connection to the pod IP was refused, and the
	// one to 127.0.0.1 after it was not.
	onLoopback [1 << 16 / 64]atomic.Uint64
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

// podIP returns the pod IP a stream came to, or the zero Addr if it is not
// known. It is the address c was accepted on: REDIRECT in PREROUTING points
// a connection from another pod at the address of the interface it came in
// on. REDIRECT in OUTPUT, which captures the sidecar's calls to a service
// its own pod backs, points them at 127.0.0.1 (or ::1) instead; their
// original destination has the pod IP.
func (l *localApps) podIP(c net.Conn) netip.Addr {
	a, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	if ip := a.AddrPort().Addr().Unmap(); ip != loopback4 && ip != netip.IPv6Loopback() {
		return ip
	}
	dst, err := l.originalDstOf(c)
	if err != nil {
		return netip.Addr{}
	}
	return dst.Addr().Unmap()
}

// dial connects to the app on port, at the pod IP or on loopback: first
// where it answered last; if that is refused, at the other, which is then
// kept. Without a pod IP, on loopback only. It returns the address it
// connected to, or tried first.
func (l *localApps) dial(p *Proxy, pod netip.Addr, port uint16) (net.Conn, string, error) {
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
	dst := netip.AddrPortFrom(pod, port)
	up, err := p.appDialer.DialTCP(context.Background(), "tcp", l.source, dst)
	if err != nil {
		return nil, dst.String(), err // not a nil *TCPConn in a non-nil net.Conn
	}
	return up, dst.String(), nil
}

func loopbackAddr(port uint16) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
}
