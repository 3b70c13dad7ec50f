package sidecar

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"

	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// Init is `tether-sidecar init`: it installs (or with --cleanup removes, or
// with --dry-run prints) the transparent-capture rules in the current
// network namespace. It returns the process exit code.
func Init(ctx context.Context, args []string, stdout, stderr io.Writer, runner capture.Runner) int {
	c := capture.DefaultConfig()
	fs := flag.NewFlagSet("tether-sidecar init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.ProxyUID, "proxy-uid", c.ProxyUID, "UID of the sidecar, whose traffic is never captured")
	fs.IntVar(&c.ProxyGID, "proxy-gid", c.ProxyGID, "GID of the sidecar")
	fs.IntVar(&c.InboundPort, "inbound-port", c.InboundPort, "inbound capture port")
	fs.IntVar(&c.OutboundPort, "outbound-port", c.OutboundPort, "outbound capture port")
	fs.IntVar(&c.DNSPort, "dns-port", c.DNSPort, "DNS capture port")
	fs.IntVar(&c.AdminPort, "admin-port", c.AdminPort, "sidecar admin port (never captured inbound, so probes reach it)")
	// DNS capture is off by default: the sidecar serves DNS only with
	// --transparent and --discovery (or --dns-listen), and capturing port
	// 53 without it would break name resolution in the pod.
	c.CaptureDNS = false
	fs.BoolVar(&c.CaptureDNS, "capture-dns", false, "send the pod's DNS (port 53) to the sidecar's DNS port; use it when the sidecar serves DNS (tether-sidecar --transparent --discovery ...)")
	ipv6 := ipv6Mode("auto")
	fs.Var(&ipv6, "ipv6", "capture IPv6 too: auto (whenever the pod's kernel has IPv6; required when the pod has an IPv6 address other than link-local), true (required), or false (refused when the pod has such an address)")
	outboundMode := fs.String("outbound-mode", Passthrough, "the sidecar's --outbound-mode: with registry-only, the app's UDP leaving the pod is rejected too (except DNS and the excluded destinations), since the sidecar proxies TCP only")
	parseInto := func(dst *[]int) func(string) error {
		return func(s string) error {
			v, err := capture.ParsePorts(s)
			*dst = v
			return err
		}
	}
	fs.Func("exclude-inbound-ports", "comma-separated ports whose inbound traffic skips the sidecar", parseInto(&c.ExcludeInboundPorts))
	fs.Func("exclude-outbound-ports", "comma-separated destination ports that skip the sidecar", parseInto(&c.ExcludeOutboundPorts))
	fs.Func("exclude-outbound-cidrs", "comma-separated destination CIDRs that skip the sidecar", func(s string) error {
		v, err := capture.ParseCIDRs(s)
		c.ExcludeOutboundCIDRs = v
		return err
	})
	dryRun := fs.Bool("dry-run", false, "print the rules and change nothing")
	cleanup := fs.Bool("cleanup", false, "remove Tether's rules")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tether-sidecar init: unexpected arguments %q\n", fs.Args())
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(stderr, "tether-sidecar init:", err)
		return 1
	}
	switch *outboundMode {
	case Passthrough:
	case RegistryOnly:
		c.RejectUDP = true
	default:
		fmt.Fprintf(stderr, "tether-sidecar init: --outbound-mode %q: want %s or %s\n", *outboundMode, Passthrough, RegistryOnly)
		return 2
	}
	if err := c.Validate(); err != nil {
		return fail(err)
	}
	// IPv6: which addresses another host could reach the pod on decides
	// whether IPv6 capture is required (fail closed) or best effort.
	var podIPv6 []netip.Addr
	if !*cleanup {
		var err error
		if podIPv6, err = thisPod.ipv6Addrs(); err != nil {
			return fail(fmt.Errorf("list the pod's IPv6 addresses: %w", err))
		}
	}
	required := ipv6 == "true" || len(podIPv6) > 0
	switch {
	case ipv6 == "false" && len(podIPv6) > 0:
		return fail(fmt.Errorf("--ipv6=false, but the pod has IPv6 address %s: its IPv6 traffic would skip the sidecar "+
			"(anyone could reach the app in plaintext there, and outbound IPv6 would bypass policy); refusing to leave it uncaptured", podIPv6[0]))
	case ipv6 == "false":
	case required:
		c.IPv6 = true
	default: // auto, no routable IPv6 address: capture if the kernel has IPv6 at all
		c.IPv6 = thisPod.ipv6On()
	}
	if *dryRun {
		rules, err := capture.Rules(c)
		if err != nil {
			return fail(err)
		}
		fmt.Fprint(stdout, rules.String())
		return 0
	}
	if *cleanup {
		if runner == nil {
			if err := capture.Check(capture.DefaultConfig()); err != nil {
				return fail(err)
			}
		}
		if err := capture.Cleanup(ctx, runner); err != nil {
			return fail(err)
		}
		fmt.Fprintln(stdout, "removed Tether's capture rules")
		return 0
	}
	err := install(ctx, c, runner)
	if err != nil && c.IPv6 {
		if required {
			return fail(fmt.Errorf("IPv6 capture is required (%s) but could not be set up, so the pod must not start: %w", why6(podIPv6), err))
		}
		// Best effort: the pod has no IPv6 address another host could
		// reach, so IPv4 capture alone protects it.
		fmt.Fprintf(stderr, "tether-sidecar init: warning: no IPv6 capture (the pod has no IPv6 address other than link-local): %v\n", err)
		c.IPv6 = false
		err = install(ctx, c, runner)
	}
	if err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "capture rules installed: outbound TCP -> :%d, inbound TCP -> :%d, DNS -> :%d (capture %v); UID %d exempt; IPv6 %v; UDP egress rejected %v\n",
		c.OutboundPort, c.InboundPort, c.DNSPort, c.CaptureDNS, c.ProxyUID, c.IPv6, c.RejectUDP)
	return 0
}

// install checks the tools and privileges (unless a test gives runner),
// puts DeliverySource6 on lo for IPv6, and applies c.
func install(ctx context.Context, c capture.Config, runner capture.Runner) error {
	if runner == nil {
		if err := capture.Check(c); err != nil {
			return err
		}
	}
	if c.IPv6 {
		if err := thisPod.addSource6(); err != nil {
			return err
		}
	}
	return capture.Apply(ctx, c, runner)
}

func why6(addrs []netip.Addr) string {
	if len(addrs) == 0 {
		return "--ipv6=true"
	}
	return "the pod has IPv6 address " + addrs[0].String()
}

// ipv6Mode is the value of init's --ipv6: auto, true or false. A bare
// --ipv6 means true.
type ipv6Mode string

func (m *ipv6Mode) String() string   { return string(*m) }
func (m *ipv6Mode) IsBoolFlag() bool { return true }
func (m *ipv6Mode) Set(v string) error {
	switch v {
	case "auto", "true", "false":
		*m = ipv6Mode(v)
		return nil
	}
	return fmt.Errorf("want auto, true or false, got %q", v)
}

// podNetwork is what Init asks of the pod's network namespace; tests
// replace thisPod.
type podNetwork struct {
	ipv6Addrs  func() ([]netip.Addr, error)
	ipv6On     func() bool
	addSource6 func() error
}

var thisPod = podNetwork{ipv6Addrs: capture.PodIPv6, ipv6On: capture.IPv6Enabled, addSource6: capture.AddDeliverySource6}
