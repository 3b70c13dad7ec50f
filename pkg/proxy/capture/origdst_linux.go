//go:build linux

package capture

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h), which is also
// IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h) at level SOL_IPV6.
const soOriginalDst = 80

// OriginalDst returns the address a connection redirected by the capture rules
// was originally sent to, read from conntrack with SO_ORIGINAL_DST. For a
// connection that was not redirected it returns the connection's own local
// address; if conntrack knows nothing of the connection, the error wraps
// unix.ENOENT. It works for IPv4, IPv6 and IPv4 connections accepted on a
// dual-stack socket.
func OriginalDst(conn *net.TCPConn) (netip.AddrPort, error) {
	remote, ok := conn.RemoteAddr().(*net.TCPAddr)
	if !ok || remote == nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: connection has no remote address")
	}
	v4 := remote.AddrPort().Addr().Unmap().Is4()
	raw, err := conn.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var dst netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		// x/sys/unix has no plain-bytes getsockopt, so borrow two of its
		// getters whose result structs are just big enough: IPv6Mreq
		// (20 bytes) for a sockaddr_in (16), IPv6MTUInfo (32) for a
		// sockaddr_in6 (28). The kernel only checks that the buffer is large
		// enough.
		if v4 {
			var m *unix.IPv6Mreq
			if m, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst); serr == nil {
				b := m.Multiaddr // struct sockaddr_in: family, port (big endian), address
				dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
			}
			return
		}
		var m *unix.IPv6MTUInfo
		if m, serr = unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, soOriginalDst); serr == nil {
			sa := m.Addr // struct sockaddr_in6; Port holds network-order bytes
			var port [2]byte
			binary.NativeEndian.PutUint16(port[:], sa.Port)
			dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), binary.BigEndian.Uint16(port[:]))
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination (SO_ORIGINAL_DST): %w", err)
	}
	return dst, nil
}
