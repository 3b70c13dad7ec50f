package proxy

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// bindAddressNoPort sets IP_BIND_ADDRESS_NO_PORT on a socket about to be
// bound to a source address with port 0, so that the kernel picks the port
// when it connects, for the whole 4-tuple, and may reuse ports in TIME_WAIT.
// Picked at bind, for the source address alone, the ports would run out
// after some 28,000 connections a minute from that address. A kernel
// without the option (before Linux 4.2) picks the port at bind.
func bindAddressNoPort(_, _ string, c syscall.RawConn) error {
	return c.Control(setBindAddressNoPort)
}

// setBindAddressNoPort captures nothing, so passing it allocates nothing.
func setBindAddressNoPort(fd uintptr) {
	unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
}
