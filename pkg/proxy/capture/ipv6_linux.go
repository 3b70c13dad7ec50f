package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// PodIPv6 returns the IPv6 addresses of the current network namespace that
// another host could send to: those on interfaces other than lo, except
// link-local ones (fe80::/10). A pod with any of them needs IPv6 capture.
func PodIPv6() ([]netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok || ip.Is4() || ip.Is4In6() || ip.IsLinkLocalUnicast() || ip.IsLoopback() {
				continue
			}
			out = append(out, ip)
		}
	}
	return out, nil
}

// IPv6Enabled reports whether IPv6 is on in the current network namespace
// (the kernel has it, and net.ipv6.conf.all.disable_ipv6 is 0).
func IPv6Enabled() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

// AddDeliverySource6 puts DeliverySource6 (::6/128) on lo in the current
// network namespace, so the sidecar can connect from it to the pod's IPv6
// address. It is idempotent, and needs CAP_NET_ADMIN.
func AddDeliverySource6() error {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return fmt.Errorf("add %s to lo: %w", DeliverySource6, err)
	}
	if err := addAddr(lo.Index, netip.PrefixFrom(DeliverySource6, 128)); err != nil {
		return fmt.Errorf("add %s to lo: %w", DeliverySource6, err)
	}
	return nil
}

// addAddr adds (or replaces) an IPv6 address on interface index with one
// RTM_NEWADDR request over rtnetlink, and waits for the kernel's answer.
func addAddr(index int, p netip.Prefix) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}
	addr := p.Addr().As16()
	attr := func(typ uint16, v []byte) []byte {
		b := make([]byte, unix.SizeofRtAttr+len(v))
		binary.NativeEndian.PutUint16(b[0:], uint16(len(b)))
		binary.NativeEndian.PutUint16(b[2:], typ)
		copy(b[unix.SizeofRtAttr:], v)
		return b
	}
	body := make([]byte, unix.SizeofIfAddrmsg)
	body[0] = unix.AF_INET6
	body[1] = byte(p.Bits())
	body[2] = unix.IFA_F_NODAD
	body[3] = unix.RT_SCOPE_UNIVERSE
	binary.NativeEndian.PutUint32(body[4:], uint32(index))
	body = append(body, attr(unix.IFA_LOCAL, addr[:])...)
	body = append(body, attr(unix.IFA_ADDRESS, addr[:])...)
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], unix.RTM_NEWADDR)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	binary.NativeEndian.PutUint32(msg[8:], 1) // sequence
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		for b := buf[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			typ, seq := binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:])
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return errors.New("netlink answer: bad message length")
			}
			if typ == unix.NLMSG_ERROR && seq == 1 {
				if l < unix.SizeofNlMsghdr+4 {
					return errors.New("netlink answer: short error message")
				}
				if code := int32(binary.NativeEndian.Uint32(b[unix.SizeofNlMsghdr:])); code != 0 {
					return unix.Errno(-code)
				}
				return nil
			}
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
		}
	}
}
