package capture

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ChainPrefix starts the name of every chain this package owns. Cleanup
// removes all chains with this prefix from the nat table.
const ChainPrefix = "TETHER_"

// The chains, in the order Rules declares them.
const (
	chainInbound    = "TETHER_INBOUND"     // inbound TCP: exclusions, then TETHER_IN_REDIRECT
	chainInRedirect = "TETHER_IN_REDIRECT" // REDIRECT to InboundPort
	chainOutput     = "TETHER_OUTPUT"      // outbound TCP: exclusions, then TETHER_REDIRECT
	chainRedirect   = "TETHER_REDIRECT"    // REDIRECT to OutboundPort
	chainDNS        = "TETHER_DNS"         // DNS over UDP and TCP: REDIRECT to DNSPort
	chainUDP        = "TETHER_UDP"         // filter table, with RejectUDP: the app's UDP egress
)

// DeliverySource is the address the sidecar connects to the application's
// pod IP from when it delivers inbound traffic. Connections from it that
// leave through lo are never captured, so they reach the application rather
// than the inbound listener (see "Hairpin" in the package doc). IPv4 only:
// Linux puts no IPv6 loopback range on lo, only ::1, so there is no such
// address to bind for IPv6.
var DeliverySource = netip.AddrFrom4([4]byte{127, 0, 0, 6})

// DeliverySource6 is DeliverySource for IPv6. Linux has no IPv6 loopback
// range on lo, only ::1, so `tether-sidecar init` adds ::6/128 to lo when
// it installs the IPv6 rules (as Istio does); the IPv6 rules exempt it.
var DeliverySource6 = netip.MustParseAddr("::6")

// family is what differs between the IPv4 and IPv6 rules.
type family struct {
	name          string // for errors
	save, restore string // tools
	loopback      string // the loopback range, as iptables-save prints it
	delivery      string // DeliverySource (or DeliverySource6) as iptables-save prints it
	reject        string // REJECT's --reject-with for UDP
	is6           bool
}

var (
	ipv4 = family{name: "IPv4", save: "iptables-save", restore: "iptables-restore", loopback: "127.0.0.0/8",
		delivery: netip.PrefixFrom(DeliverySource, 32).String(), reject: "icmp-port-unreachable"}
	ipv6 = family{name: "IPv6", save: "ip6tables-save", restore: "ip6tables-restore", loopback: "::1/128",
		delivery: netip.PrefixFrom(DeliverySource6, 128).String(), reject: "icmp6-port-unreachable", is6: true}
)

// The tables this package writes to, in the order it writes them.
var tableNames = []string{"nat", "filter"}

// table is the part of one table (nat or filter) this package owns for one
// family.
type table struct {
	name   string   // nat or filter
	chains []string // TETHER chains, declared in this order
	rules  []string // "-A CHAIN ..." lines: TETHER chains first, then the jumps into them
}

// Ruleset is the input Apply gives iptables-restore --noflush (and
// ip6tables-restore) when the nat table holds no TETHER rules yet.
type Ruleset struct {
	IPv4 string
	IPv6 string // empty unless Config.IPv6
}

// String shows the ruleset as a --dry-run would: each part under a comment
// naming the command it is fed to.
func (r Ruleset) String() string {
	var b strings.Builder
	b.WriteString("# iptables-restore --noflush\n")
	b.WriteString(r.IPv4)
	if r.IPv6 != "" {
		b.WriteString("# ip6tables-restore --noflush\n")
		b.WriteString(r.IPv6)
	}
	return b.String()
}

// Rules returns the rules c describes, in iptables-restore format. It is pure:
// it runs nothing and reads nothing, so it serves --dry-run and golden tests.
func Rules(c Config) (Ruleset, error) {
	if err := c.Validate(); err != nil {
		return Ruleset{}, err
	}
	input := func(f family) string {
		var b strings.Builder
		for _, t := range tables(c, f) {
			if len(t.rules) > 0 {
				b.WriteString(t.restoreInput(savedTable{}))
			}
		}
		return b.String()
	}
	rs := Ruleset{IPv4: input(ipv4)}
	if c.IPv6 {
		rs.IPv6 = input(ipv6)
	}
	return rs, nil
}

// tables lays out every table for one family, in tableNames order. c must
// be valid.
func tables(c Config, f family) []table {
	return []table{build(c, f), buildFilter(c, f)}
}

// buildFilter lays out the filter table for one family: with RejectUDP,
// the app's UDP leaving the pod is rejected, except DNS (captured, or to
// the resolver when DNS is not captured) and the excluded destinations.
// c must be valid.
func buildFilter(c Config, f family) table {
	t := table{name: "filter"}
	if !c.RejectUDP {
		return t
	}
	add := func(chain string, spec ...string) {
		t.rules = append(t.rules, "-A "+chain+" "+strings.Join(spec, " "))
	}
	dport := func(port int) []string {
		return []string{"-p", "udp", "-m", "udp", "--dport", strconv.Itoa(port)}
	}
	t.chains = []string{chainUDP}
	add(chainUDP, "-m", "owner", "--uid-owner", strconv.Itoa(c.ProxyUID), "-j", "RETURN")
	add(chainUDP, "-m", "owner", "--gid-owner", strconv.Itoa(c.ProxyGID), "-j", "RETURN")
	// Within the pod, and DNS that nat already sent to the sidecar.
	add(chainUDP, "-o", "lo", "-j", "RETURN")
	add(chainUDP, "-d", f.loopback, "-j", "RETURN")
	if !c.CaptureDNS {
		// The pod must still resolve names; with DNS captured, queries
		// reach the sidecar over lo instead.
		add(chainUDP, append(dport(53), "-j", "RETURN")...)
	}
	for _, p := range cidrs(c.ExcludeOutboundCIDRs, f) {
		add(chainUDP, "-d", p.String(), "-j", "RETURN")
	}
	for _, p := range sortedUnique(c.ExcludeOutboundPorts) {
		add(chainUDP, append(dport(p), "-j", "RETURN")...)
	}
	add(chainUDP, "-j", "REJECT", "--reject-with", f.reject)
	add("OUTPUT", "-p", "udp", "-j", chainUDP)
	return t
}

// build lays out the nat table for one family. c must be valid.
func build(c Config, f family) table {
	t := table{name: "nat"}
	add := func(chain string, spec ...string) {
		t.rules = append(t.rules, "-A "+chain+" "+strings.Join(spec, " "))
	}
	dport := func(proto string, port int) []string {
		return []string{"-p", proto, "-m", proto, "--dport", strconv.Itoa(port)}
	}
	owners := [][]string{
		{"-m", "owner", "--uid-owner", strconv.Itoa(c.ProxyUID)},
		{"-m", "owner", "--gid-owner", strconv.Itoa(c.ProxyGID)},
	}

	t.chains = []string{chainInbound, chainInRedirect, chainOutput, chainRedirect}
	if c.CaptureDNS {
		t.chains = append(t.chains, chainDNS)
	}

	// Inbound: the proxy's own ports and the excluded ones reach their
	// listeners directly; everything else goes to InboundPort.
	in := sortedUnique(append([]int{c.OutboundPort, c.InboundPort, c.DNSPort, c.AdminPort}, c.ExcludeInboundPorts...))
	for _, p := range in {
		add(chainInbound, append(dport("tcp", p), "-j", "RETURN")...)
	}
	add(chainInbound, "-p", "tcp", "-j", chainInRedirect)
	add(chainInRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(c.InboundPort))

	// Outbound TCP. The proxy's deliveries to the application at the pod IP
	// (from DeliverySource or DeliverySource6, out of lo) are left alone. Its other connections
	// leave as they are, except those to the pod's own IP (out of lo, not to
	// loopback), which go through inbound capture like a call from another
	// pod. Then loopback, DNS, and the exclusions; the rest goes to
	// OutboundPort.
	add(chainOutput, "-s", f.delivery, "-o", "lo", "-j", "RETURN")
	for _, o := range owners {
		add(chainOutput, append(append([]string{"!", "-d", f.loopback, "-o", "lo"}, o...), "-j", chainInbound)...)
		add(chainOutput, append(o, "-j", "RETURN")...)
	}
	add(chainOutput, "-o", "lo", "-j", "RETURN")
	add(chainOutput, "-d", f.loopback, "-j", "RETURN")
	if c.CaptureDNS {
		add(chainOutput, append(dport("tcp", 53), "-j", chainDNS)...)
	}
	for _, p := range cidrs(c.ExcludeOutboundCIDRs, f) {
		add(chainOutput, "-d", p.String(), "-j", "RETURN")
	}
	for _, p := range sortedUnique(c.ExcludeOutboundPorts) {
		add(chainOutput, append(dport("tcp", p), "-j", "RETURN")...)
	}
	add(chainOutput, "-j", chainRedirect)
	add(chainRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(c.OutboundPort))

	// DNS, reached by UDP from OUTPUT and by TCP from TETHER_OUTPUT. The
	// proxy's own queries (its forwarding to the real resolver) and queries
	// to a resolver on loopback are left alone.
	if c.CaptureDNS {
		for _, o := range owners {
			add(chainDNS, append(o, "-j", "RETURN")...)
		}
		add(chainDNS, "-d", f.loopback, "-j", "RETURN")
		add(chainDNS, "-p", "udp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(c.DNSPort))
		add(chainDNS, "-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(c.DNSPort))
	}

	// The jumps from the built-in chains come last, into finished chains.
	add("PREROUTING", "-p", "tcp", "-j", chainInbound)
	add("OUTPUT", "-p", "tcp", "-j", chainOutput)
	if c.CaptureDNS {
		add("OUTPUT", append(dport("udp", 53), "-j", chainDNS)...)
	}
	return t
}

func sortedUnique(ports []int) []int {
	out := slices.Clone(ports)
	slices.Sort(out)
	return slices.Compact(out)
}

// cidrs returns the masked prefixes of family f in ps, sorted, without
// duplicates.
func cidrs(ps []netip.Prefix, f family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() == f.is6 {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return slices.Compact(out)
}

// restoreInput is the iptables-restore --noflush transaction that turns the
// table cur (of t's name) into one holding exactly t (and everything cur holds outside
// the TETHER chains and the jumps into them):
//
//  1. declare t's chains, which creates them or flushes them if they exist,
//     and flush stale TETHER chains (declared by an earlier Config, not by t);
//  2. delete every existing jump from another chain into a TETHER chain;
//  3. delete the stale chains, now empty and unreferenced;
//  4. append t's rules, jumps last.
//
// iptables-restore applies it atomically, so the table is never half-done.
// An empty t gives the Cleanup transaction.
func (t table) restoreInput(cur savedTable) string {
	var b strings.Builder
	b.WriteString("*" + t.name + "\n")
	var stale []string
	for _, ch := range cur.chains {
		if !slices.Contains(t.chains, ch) {
			stale = append(stale, ch)
		}
	}
	for _, ch := range append(slices.Clone(t.chains), stale...) {
		fmt.Fprintf(&b, ":%s - [0:0]\n", ch)
	}
	for _, j := range cur.jumps {
		fmt.Fprintf(&b, "-D %s\n", j)
	}
	for _, ch := range stale {
		fmt.Fprintf(&b, "-X %s\n", ch)
	}
	for _, r := range t.rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// savedTable is what this package owns in a table read by iptables-save.
type savedTable struct {
	chains []string // chains named TETHER_*
	jumps  []string // rules of other chains that jump into them, without the leading "-A "
}

func (s savedTable) empty() bool { return len(s.chains) == 0 && len(s.jumps) == 0 }

// parseSave picks this package's chains and the jumps into them out of
// the section of `iptables-save -t <name>` output for table name.
// Comments, counters and other tables are ignored.
func parseSave(out, name string) savedTable {
	var s savedTable
	inNat := false
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			inNat = line == "*"+name
		case !inNat:
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if strings.HasPrefix(name, ChainPrefix) && !slices.Contains(s.chains, name) {
				s.chains = append(s.chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if len(f) < 4 || strings.HasPrefix(f[1], ChainPrefix) {
				continue
			}
			// A jump into one of our chains ends with "-j TETHER_X" (or -g):
			// our chains take no target options.
			target, verb := f[len(f)-1], f[len(f)-2]
			if strings.HasPrefix(target, ChainPrefix) && (verb == "-j" || verb == "-g" || verb == "--jump" || verb == "--goto") {
				s.jumps = append(s.jumps, strings.TrimPrefix(line, "-A "))
			}
		}
	}
	return s
}
