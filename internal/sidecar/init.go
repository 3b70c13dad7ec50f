package sidecar

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

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
	fs.BoolVar(&c.IPv6, "ipv6", c.IPv6, "also install the rules with ip6tables")
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
	if err := c.Validate(); err != nil {
		return fail(err)
	}
	if *dryRun {
		rules, err := capture.Rules(c)
		if err != nil {
			return fail(err)
		}
		fmt.Fprint(stdout, rules.String())
		return 0
	}
	if runner == nil {
		if err := capture.Check(c); err != nil {
			return fail(err)
		}
	}
	if *cleanup {
		if err := capture.Cleanup(ctx, runner); err != nil {
			return fail(err)
		}
		fmt.Fprintln(stdout, "removed Tether's capture rules")
		return 0
	}
	if err := capture.Apply(ctx, c, runner); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "capture rules installed: outbound TCP -> :%d, inbound TCP -> :%d, DNS -> :%d (capture %v); UID %d exempt\n",
		c.OutboundPort, c.InboundPort, c.DNSPort, c.CaptureDNS, c.ProxyUID)
	return 0
}
