//go:build !linux

package capture

import (
	"errors"
	"net"
	"net/netip"
)

// OriginalDst needs Linux conntrack; elsewhere it always fails.
func OriginalDst(conn *net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("original destination: SO_ORIGINAL_DST needs Linux")
}
