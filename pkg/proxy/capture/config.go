package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Defaults, from the contract in docs/architecture.md ("Ports" and
// "Data path").
const (
	DefaultProxyUID     = 1337
	DefaultOutboundPort = 15001
	DefaultInboundPort  = 15006
	DefaultAdminPort    = 15020
	DefaultDNSPort      = 15053
)

// ErrInvalidConfig is wrapped by every error Validate, ParsePorts and
// ParseCIDRs return.
var ErrInvalidConfig = errors.New("invalid capture config")

// Config says what to capture and where to send it. Start from DefaultConfig.
type Config struct {
	// ProxyUID and ProxyGID identify the sidecar's traffic, which is never
	// captured. Both must be positive: 0 would exempt every root process.
	ProxyUID, ProxyGID int

	// OutboundPort, InboundPort and DNSPort are where the sidecar listens for
	// captured outbound TCP, inbound TCP and DNS. AdminPort is its admin
	// server. All four are always excluded from inbound capture.
	OutboundPort, InboundPort, DNSPort, AdminPort int

	// CaptureDNS sends the pod's DNS queries (UDP and TCP port 53) to DNSPort.
	CaptureDNS bool

	// IPv6 installs the same rules with ip6tables. See the package doc.
	IPv6 bool

	// RejectUDP rejects the application's UDP that leaves the pod (filter
	// table), except DNS and the excluded destinations: the sidecar proxies
	// TCP only, so registry-only egress needs it to hold for UDP too.
	RejectUDP bool

	// ExcludeInboundPorts are pod ports whose inbound connections reach the
	// application directly (annotation tether.dev/exclude-inbound-ports).
	ExcludeInboundPorts []int

	// ExcludeOutboundPorts are destination ports the application reaches
	// directly (annotation tether.dev/exclude-outbound-ports).
	ExcludeOutboundPorts []int

	// ExcludeOutboundCIDRs are destinations the application reaches directly
	// (annotation tether.dev/exclude-outbound-cidrs). IPv6 prefixes are only
	// used when IPv6 is set.
	ExcludeOutboundCIDRs []netip.Prefix
}

// DefaultConfig is the contract's configuration: UID/GID 1337, ports 15001,
// 15006, 15053 and 15020, DNS captured, IPv4 only, nothing else excluded.
func DefaultConfig() Config {
	return Config{
		ProxyUID:     DefaultProxyUID,
		ProxyGID:     DefaultProxyUID,
		OutboundPort: DefaultOutboundPort,
		InboundPort:  DefaultInboundPort,
		DNSPort:      DefaultDNSPort,
		AdminPort:    DefaultAdminPort,
		CaptureDNS:   true,
	}
}

// maxID is the largest UID/GID the kernel accepts ((uid_t)-1 means "none").
const maxID = 1<<32 - 2

// Validate reports the first problem with c, wrapping ErrInvalidConfig.
// Duplicate ports and CIDRs are not a problem; Rules removes them.
func (c Config) Validate() error {
	for _, id := range []struct {
		name string
		v    int
	}{{"proxy UID", c.ProxyUID}, {"proxy GID", c.ProxyGID}} {
		if id.v <= 0 || id.v > maxID {
			return fmt.Errorf("%w: %s %d: must be between 1 and %d (0 would exempt every root process from capture)",
				ErrInvalidConfig, id.name, id.v, maxID)
		}
	}
	named := []struct {
		name string
		v    int
	}{
		{"outbound port", c.OutboundPort},
		{"inbound port", c.InboundPort},
		{"DNS port", c.DNSPort},
		{"admin port", c.AdminPort},
	}
	for i, p := range named {
		if err := checkPort(p.v); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrInvalidConfig, p.name, err)
		}
		for _, q := range named[:i] {
			if q.v == p.v {
				return fmt.Errorf("%w: %s and %s are both %d: the sidecar needs a separate port for each",
					ErrInvalidConfig, q.name, p.name, p.v)
			}
		}
	}
	for _, l := range []struct {
		name  string
		ports []int
	}{{"excluded inbound port", c.ExcludeInboundPorts}, {"excluded outbound port", c.ExcludeOutboundPorts}} {
		for _, p := range l.ports {
			if err := checkPort(p); err != nil {
				return fmt.Errorf("%w: %s: %w", ErrInvalidConfig, l.name, err)
			}
		}
	}
	for _, p := range c.ExcludeOutboundCIDRs {
		if err := checkPrefix(p); err != nil {
			return fmt.Errorf("%w: excluded outbound CIDR: %w", ErrInvalidConfig, err)
		}
	}
	return nil
}

func checkPort(p int) error {
	if p < 1 || p > 65535 {
		return fmt.Errorf("port %d is out of range 1-65535", p)
	}
	return nil
}

func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("%q is not a valid CIDR", p)
	case p.Addr().Zone() != "":
		return fmt.Errorf("%s: zones are not allowed", p)
	case p.Addr().Is4In6():
		return fmt.Errorf("%s: write IPv4-mapped addresses in IPv4 form", p)
	}
	return nil
}

// ParsePorts parses a comma-separated list of ports such as an annotation's
// "15020, 8080". Spaces around entries are ignored, duplicates are dropped
// (the first one's position is kept), and an empty or all-space string is an
// empty list. Every entry must be a decimal number from 1 to 65535.
func ParsePorts(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var ports []int
	for i, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return nil, fmt.Errorf("%w: port list %q: entry %d is empty", ErrInvalidConfig, clip(s), i+1)
		}
		p, err := strconv.Atoi(f)
		if err != nil || strings.HasPrefix(f, "+") || strings.HasPrefix(f, "-") {
			return nil, fmt.Errorf("%w: port %q is not a number from 1 to 65535", ErrInvalidConfig, clip(f))
		}
		if err := checkPort(p); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// ParseCIDRs parses a comma-separated list of CIDRs such as an annotation's
// "10.0.0.0/8, 192.168.1.10". A bare address means that single host
// (/32 or /128). Host bits are cleared ("10.1.2.3/8" is 10.0.0.0/8), spaces
// around entries are ignored, duplicates dropped, and an empty or all-space
// string is an empty list. Zones and IPv4-mapped IPv6 forms are rejected.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []netip.Prefix
	for i, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return nil, fmt.Errorf("%w: CIDR list %q: entry %d is empty", ErrInvalidConfig, clip(s), i+1)
		}
		var p netip.Prefix
		if strings.Contains(f, "/") {
			var err error
			if p, err = netip.ParsePrefix(f); err != nil {
				return nil, fmt.Errorf("%w: %q is not a CIDR such as 10.0.0.0/8 or fd00::/8", ErrInvalidConfig, clip(f))
			}
		} else {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%w: %q is not an IP address or a CIDR such as 10.0.0.0/8", ErrInvalidConfig, clip(f))
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("%w: %q: zones are not allowed", ErrInvalidConfig, clip(f))
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if err := checkPrefix(p); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		p = p.Masked()
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// clip shortens untrusted input quoted in an error message.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
