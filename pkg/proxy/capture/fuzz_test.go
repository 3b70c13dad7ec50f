package capture

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzParsePorts: annotation values are untrusted. The parser must never
// panic, must return only valid ports without duplicates, and its output must
// parse back to itself.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"", "15020", "80, 443,80", "0", "70000", "abc", "80,,90", "+1", " 1 ,65535 ", "٣", "1_0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ports, err := ParsePorts(s)
		if err != nil {
			if ports != nil {
				t.Fatalf("ParsePorts(%q) returned %v with error %v", s, ports, err)
			}
			return
		}
		var strs []string
		for i, p := range ports {
			if p < 1 || p > 65535 {
				t.Fatalf("ParsePorts(%q) returned port %d", s, p)
			}
			if slices.Contains(ports[:i], p) {
				t.Fatalf("ParsePorts(%q) returned %d twice", s, p)
			}
			strs = append(strs, strconv.Itoa(p))
		}
		again, err := ParsePorts(strings.Join(strs, ","))
		if err != nil || !slices.Equal(again, ports) {
			t.Fatalf("round trip of %v gave %v, %v", ports, again, err)
		}
		c := DefaultConfig()
		c.ExcludeInboundPorts, c.ExcludeOutboundPorts = ports, ports
		if _, err := Rules(c); err != nil {
			t.Fatalf("Rules with ports %v from %q: %v", ports, s, err)
		}
	})
}

// FuzzParseCIDRs: as FuzzParsePorts, for CIDR lists.
func FuzzParseCIDRs(f *testing.F) {
	for _, s := range []string{"", "10.0.0.0/8", "10.1.2.3/8, 192.168.1.1", "fd00::/8,::1", "fe80::1%eth0", "::ffff:1.2.3.4/128", "1.2.3.4/33", ","} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParseCIDRs(s)
		if err != nil {
			if ps != nil {
				t.Fatalf("ParseCIDRs(%q) returned %v with error %v", s, ps, err)
			}
			return
		}
		var strs []string
		for i, p := range ps {
			if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
				t.Fatalf("ParseCIDRs(%q) returned %v", s, p)
			}
			if slices.Contains(ps[:i], p) {
				t.Fatalf("ParseCIDRs(%q) returned %v twice", s, p)
			}
			strs = append(strs, p.String())
		}
		again, err := ParseCIDRs(strings.Join(strs, ","))
		if err != nil || !slices.Equal(again, ps) {
			t.Fatalf("round trip of %v gave %v, %v", ps, again, err)
		}
		c := DefaultConfig()
		c.IPv6 = true
		c.ExcludeOutboundCIDRs = ps
		rs, err := Rules(c)
		if err != nil {
			t.Fatalf("Rules with CIDRs %v from %q: %v", ps, s, err)
		}
		// Every rule is one line: nothing from the input can add a rule.
		for _, p := range ps {
			if want := "-A TETHER_OUTPUT -d " + p.String() + " -j RETURN\n"; !strings.Contains(rs.String(), want) {
				t.Fatalf("ruleset lacks %q", want)
			}
		}
	})
}
