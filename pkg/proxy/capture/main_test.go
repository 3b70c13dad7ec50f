package capture_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// helperArg as the first argument makes the test binary act as a small
// client or proxy instead of running tests. The end-to-end tests start it
// inside a network namespace as another UID (1337, the sidecar's, or an
// unprivileged one).
const helperArg = "tether-capture-helper"

func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == helperArg {
		if err := helper(os.Args[2], os.Args[3:]); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helper(mode string, args []string) error {
	switch {
	case mode == "dial" && len(args) == 1: // dial ADDR: print what the server sends
		reply, err := dialTCP(args[0])
		fmt.Print(reply)
		return err
	case mode == "deliver" && len(args) == 1: // deliver ADDR: as dial, from capture.DeliverySource
		reply, err := deliverTCP(args[0])
		fmt.Print(reply)
		return err
	case mode == "udpc" && len(args) == 1: // udpc ADDR: one datagram on a connected socket, print the reply
		reply, err := connectedUDP(args[0])
		fmt.Print(reply)
		return err
	case mode == "udp" && len(args) == 1: // udp ADDR: send one datagram, print the reply and its source
		reply, err := exchangeUDP(args[0])
		fmt.Print(reply)
		return err
	case mode == "check" && len(args) == 0: // check: print capture.Check's verdict
		if err := capture.Check(capture.DefaultConfig()); err != nil {
			return err
		}
		fmt.Print("ok")
		return nil
	case mode == "proxy" && len(args) == 1: // proxy ADDR: a minimal transparent outbound proxy
		return proxy(args[0])
	}
	return fmt.Errorf("unknown helper mode %q %q", mode, args)
}

func dialTCP(addr string) (string, error) {
	return read(net.DialTimeout("tcp", addr, 3*time.Second))
}

// deliverTCP connects as the sidecar delivers inbound traffic to the
// application at the pod IP: from capture.DeliverySource, or
// capture.DeliverySource6 for an IPv6 address.
func deliverTCP(addr string) (string, error) {
	src := capture.DeliverySource
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() {
		src = capture.DeliverySource6
	}
	d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
	return read(d.Dial("tcp", addr))
}

// connectedUDP sends one datagram on a connected socket, which reports an
// ICMP port unreachable (a REJECT) as "connection refused", and returns the
// reply.
func connectedUDP(addr string) (string, error) {
	c, err := net.DialTimeout("udp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := c.Write([]byte("query")); err != nil {
		return "", err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// read returns what the server sends until it closes c.
func read(c net.Conn, err error) (string, error) {
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func exchangeUDP(addr string) (string, error) {
	c, err := net.ListenUDP("udp", nil)
	if err != nil {
		return "", err
	}
	defer c.Close()
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return "", err
	}
	if _, err := c.WriteToUDP([]byte("query"), to); err != nil {
		return "", err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 512)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s from %s", buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())), nil
}

// proxy is what the sidecar does with captured outbound connections, minus
// TLS: accept, ask conntrack where the connection was going, connect there
// itself (as the proxy UID, so not captured again) and relay the answer.
func proxy(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			dst, err := capture.OriginalDst(c.(*net.TCPConn))
			if err != nil {
				fmt.Fprintln(c, "error:", err)
				return
			}
			reply, err := dialTCP(dst.String())
			if err != nil {
				reply = "error: " + err.Error()
			}
			fmt.Fprintf(c, "proxy(uid %d) %s -> %s", os.Getuid(), dst, reply)
		}()
	}
}
