package sidecar

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// nodeNameEnv holds the node's name in the tether-validate container
// (pkg/inject.NodeNameEnv; the sidecar binary does not link pkg/inject).
const nodeNameEnv = "TETHER_NODE_NAME"

// Test destinations of validate-redirect: documentation addresses
// (RFC 5737, RFC 3849) that no pod has a reason to exclude or reach.
var (
	testAddrs4 = []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.1")}
	testAddrs6 = []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8:1::1")}
)

// firstTestPort is the first destination port validate-redirect tries.
const firstTestPort = 15002

// redirectCheck is one family's check: a connection to target must arrive,
// redirected, on listen.
type redirectCheck struct {
	listen netip.AddrPort
	target netip.AddrPort
}

// ValidateRedirect is `tether-sidecar validate-redirect`, the
// tether-validate init container of pods injected in CNI mode. Without any
// privilege, it checks that the capture rules the Tether CNI plugin should
// have installed are in the pod's network namespace: it listens on the
// outbound capture port (the sidecar does not run yet), connects to a
// documentation address that the rules capture, and expects that
// connection to arrive on its listener with that address as its original
// destination. IPv6 is checked too when the pod has an IPv6 address other
// than link-local. When the check fails it says so, naming the node agent,
// and returns 1, so the pod never starts without the redirection.
func ValidateRedirect(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("tether-sidecar validate-redirect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	outPort := fs.Int("outbound-port", capture.DefaultOutboundPort, "outbound capture port, where the rules redirect the app's connections")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to try before failing")
	var exPorts []int
	var exCIDRs []netip.Prefix
	fs.Func("exclude-outbound-ports", "the pod's tether.dev/exclude-outbound-ports (not used as the test port)", func(s string) (err error) {
		exPorts, err = capture.ParsePorts(s)
		return err
	})
	fs.Func("exclude-outbound-cidrs", "the pod's tether.dev/exclude-outbound-cidrs (not used as the test address)", func(s string) (err error) {
		exCIDRs, err = capture.ParseCIDRs(s)
		return err
	})
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tether-sidecar validate-redirect: unexpected arguments %q\n", fs.Args())
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "tether-sidecar validate-redirect:", err)
		return 1
	}
	if os.Getuid() == capture.DefaultProxyUID || os.Getgid() == capture.DefaultProxyUID {
		return fail(fmt.Errorf("runs as UID %d GID %d: the capture rules exempt UID and GID %d (the sidecar's), so this check would prove nothing; run it as another user",
			os.Getuid(), os.Getgid(), capture.DefaultProxyUID))
	}
	checks, err := redirectChecks(*outPort, exPorts, exCIDRs)
	if err != nil {
		return fail(err)
	}
	for _, c := range checks {
		if err := checkRedirect(ctx, c, *timeout); err != nil {
			return fail(notRedirected(err, getenv(nodeNameEnv)))
		}
		fmt.Fprintf(stdout, "redirection in place: a connection to %s reached the capture port %s\n", c.target, c.listen)
	}
	return 0
}

// redirectChecks picks, for IPv4 and (when the pod has a routable IPv6
// address) IPv6, a test destination that the pod's exclusions leave
// captured.
func redirectChecks(outPort int, exPorts []int, exCIDRs []netip.Prefix) ([]redirectCheck, error) {
	port := firstTestPort
	for port == outPort || slices.Contains(exPorts, port) {
		port++
	}
	families := []struct {
		name     string
		loopback netip.Addr
		addrs    []netip.Addr
	}{{"IPv4", netip.MustParseAddr("127.0.0.1"), testAddrs4}}
	pod6, err := capture.PodIPv6()
	if err != nil {
		return nil, fmt.Errorf("list the pod's IPv6 addresses: %w", err)
	}
	if len(pod6) > 0 {
		families = append(families, struct {
			name     string
			loopback netip.Addr
			addrs    []netip.Addr
		}{"IPv6", netip.IPv6Loopback(), testAddrs6})
	}
	var out []redirectCheck
	for _, f := range families {
		i := slices.IndexFunc(f.addrs, func(a netip.Addr) bool {
			return !slices.ContainsFunc(exCIDRs, func(p netip.Prefix) bool { return p.Contains(a) })
		})
		if i < 0 {
			return nil, fmt.Errorf("every %s test address (%v) is in tether.dev/exclude-outbound-cidrs, so the redirection cannot be checked; "+
				"exclude narrower CIDRs, or use the init redirect mode for this pod's namespace", f.name, f.addrs)
		}
		out = append(out, redirectCheck{
			listen: netip.AddrPortFrom(f.loopback, uint16(outPort)),
			target: netip.AddrPortFrom(f.addrs[i], uint16(port)),
		})
	}
	return out, nil
}

// checkRedirect tries, until timeout, to see a connection to c.target
// arrive on c.listen with c.target as its original destination.
func checkRedirect(ctx context.Context, c redirectCheck, timeout time.Duration) error {
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(c.listen))
	if err != nil {
		return fmt.Errorf("listen on the capture port %s: %w (something else holds it before the sidecar starts)", c.listen, err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err = tryRedirect(ctx, l, c)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tryRedirect makes one connection to c.target and checks that it is the
// one l accepts, redirected from c.target.
func tryRedirect(ctx context.Context, l *net.TCPListener, c redirectCheck) error {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", c.target.String())
	if err != nil {
		return fmt.Errorf("a connection to %s did not reach the capture port %s: %w", c.target, c.listen, err)
	}
	defer conn.Close()
	local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
	if err := l.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	for {
		in, err := l.AcceptTCP()
		if err != nil {
			return fmt.Errorf("a connection to %s was established, but not with the capture port %s (%v): it went out unredirected", c.target, c.listen, err)
		}
		from := in.RemoteAddr().(*net.TCPAddr).AddrPort()
		dst, derr := capture.OriginalDst(in)
		in.Close()
		if from != local {
			continue // not ours
		}
		if derr != nil {
			return fmt.Errorf("original destination of the redirected connection: %w", derr)
		}
		if dst != c.target {
			return fmt.Errorf("a connection to %s reached %s with original destination %s, not a redirection of it", c.target, c.listen, dst)
		}
		return nil
	}
}

// notRedirected is the message of a failed check: what failed, why, and
// what to do.
func notRedirected(err error, node string) error {
	where, sel := "this pod's node", "NODE"
	if node != "" {
		where, sel = "node "+strconv.Quote(node), node
	}
	return fmt.Errorf("this pod's traffic is NOT redirected to the sidecar, so it must not start: %w. "+
		"In CNI redirect mode the Tether CNI plugin sets the redirection up when the pod's network is created, and it did not for this pod: "+
		"the Tether CNI node agent (DaemonSet tether-cni-node) is not installed, or was not ready, on %s. "+
		"Check it with `kubectl get pods -A -l app.kubernetes.io/name=tether-cni-node -o wide --field-selector spec.nodeName=%s`; "+
		"once it is ready there, delete this pod so that it is created again (a restart keeps the same network)", err, where, sel)
}
