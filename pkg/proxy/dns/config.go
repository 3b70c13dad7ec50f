package dns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults filled in by [Config] validation.
const (
	DefaultListen        = "127.0.0.1:15053"
	DefaultClusterDomain = "cluster.local"
	DefaultCacheSize     = 4096
	DefaultNdots         = 1 // glibc's default when resolv.conf has no ndots option
)

// ErrNoUpstream is returned by [New] when Config.Upstreams is empty.
var ErrNoUpstream = errors.New("dns: no upstream resolvers configured; pass the nameservers from the pod's original resolv.conf")

// Config configures a [Server]. Zero values mean the defaults.
type Config struct {
	// Listen is the UDP and TCP address (default 127.0.0.1:15053). Port 0
	// picks a free port shared by both; see [Server.Addr].
	Listen string
	// AlsoListen, if set, is a second UDP and TCP address served the same
	// way, when it can be bound: the sidecar's [::1]:15053, where the IPv6
	// capture rules send the pod's DNS to an IPv6 resolver. An address the
	// namespace does not have (no IPv6) is skipped, with a debug log.
	AlsoListen string
	// ClusterDomain is the Kubernetes cluster domain (default cluster.local).
	ClusterDomain string
	// Search and Ndots are the pod's resolv.conf search rules
	// (see [ParseResolvConf]). Ndots 0 means the glibc default of 1.
	Search []string
	Ndots  int
	// Upstreams are the pod's original resolvers, "ip" or "ip:port",
	// tried in order.
	Upstreams []string
	// AnswerUnreachable answers mesh names this pod may not reach like any
	// other, leaving the refusal to the proxy. The default (false) answers
	// NXDOMAIN for them.
	AnswerUnreachable bool
	// EgressAllow are the DNS names whose answers open egress in
	// registry-only mode: exact names ("api.example.com") or "*.suffix"
	// patterns that match any name below suffix.
	EgressAllow []string
	// CacheSize bounds the forwarder's answer cache (default 4096 entries;
	// negative disables the cache).
	CacheSize int
	// Table is the initial mesh name data; it may be nil and set later
	// with [Server.SetTable].
	Table Table
	// UpstreamTimeout bounds one exchange with one upstream (default 2s).
	UpstreamTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the tether_sidecar_dns_* metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Now is the clock (default time.Now); tests inject a fake one.
	Now func() time.Time
}

// withDefaults validates c and returns a copy with defaults filled in.
func (c Config) withDefaults() (Config, error) {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return c, fmt.Errorf("dns: listen address %q: %w", c.Listen, err)
	}
	if c.AlsoListen != "" {
		if _, _, err := net.SplitHostPort(c.AlsoListen); err != nil {
			return c, fmt.Errorf("dns: second listen address %q: %w", c.AlsoListen, err)
		}
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if _, ok := mdns.IsDomainName(c.ClusterDomain); !ok {
		return c, fmt.Errorf("dns: cluster domain %q is not a domain name", c.ClusterDomain)
	}
	c.ClusterDomain = canonical(c.ClusterDomain)
	if c.Ndots < 0 {
		return c, fmt.Errorf("dns: ndots %d is negative", c.Ndots)
	}
	if c.Ndots == 0 {
		c.Ndots = DefaultNdots
	}
	search := make([]string, 0, len(c.Search))
	for _, s := range c.Search {
		if _, ok := mdns.IsDomainName(s); !ok || strings.Trim(s, ".") == "" {
			return c, fmt.Errorf("dns: search domain %q is not a domain name", s)
		}
		search = append(search, canonical(s))
	}
	c.Search = search
	if len(c.Upstreams) == 0 {
		return c, ErrNoUpstream
	}
	ups := make([]string, 0, len(c.Upstreams))
	for _, u := range c.Upstreams {
		a, err := upstreamAddr(u)
		if err != nil {
			return c, err
		}
		ups = append(ups, a)
	}
	c.Upstreams = ups
	for _, p := range c.EgressAllow {
		if _, err := parsePattern(p); err != nil {
			return c, err
		}
	}
	if c.CacheSize == 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.UpstreamTimeout <= 0 {
		c.UpstreamTimeout = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// upstreamAddr turns "ip" or "ip:port" into "ip:port" (port 53 by default).
func upstreamAddr(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.String(), nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return "", fmt.Errorf("dns: upstream %q is neither ip nor ip:port", s)
	}
	return netip.AddrPortFrom(a, 53).String(), nil
}

// Limits on resolv.conf, which comes from the pod and is not trusted.
const (
	maxResolvConfLine = 4096
	maxSearch         = 32
	maxNdots          = 15 // glibc caps ndots at 15
)

// ParseResolvConf reads a resolv.conf: the nameserver addresses, the search
// list (the last "search" or "domain" line wins, as in glibc) and ndots
// (default 1, capped at 15). Unknown lines, bad addresses and bad domains
// are skipped like the C resolver does; err is set only when r fails or a
// line is longer than 4096 bytes.
func ParseResolvConf(r io.Reader) (servers []string, search []string, ndots int, err error) {
	ndots = DefaultNdots
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxResolvConfLine)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if a, perr := netip.ParseAddr(f[1]); perr == nil {
				servers = append(servers, a.String())
			}
		case "domain", "search":
			if f[0] == "domain" {
				f = f[:2]
			}
			search = search[:0]
			for _, d := range f[1:] {
				d = strings.TrimSuffix(strings.ToLower(d), ".")
				if _, ok := mdns.IsDomainName(d); ok && d != "" && !strings.HasPrefix(d, ".") && len(search) < maxSearch {
					search = append(search, d)
				}
			}
		case "options":
			for _, o := range f[1:] {
				v, ok := strings.CutPrefix(o, "ndots:")
				if !ok {
					continue
				}
				if n, perr := strconv.Atoi(v); perr == nil && n >= 0 {
					ndots = min(n, maxNdots)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, 0, fmt.Errorf("read resolv.conf: %w", err)
	}
	return servers, search, ndots, nil
}
