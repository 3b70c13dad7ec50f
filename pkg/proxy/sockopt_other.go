//go:build !linux

package proxy

import "syscall"

// bindAddressNoPort is Linux's; elsewhere the source port is picked at bind.
var bindAddressNoPort func(network, address string, c syscall.RawConn) error
