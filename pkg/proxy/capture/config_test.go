package capture

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // substring of the error; "" means valid
	}{
		{"default", func(*Config) {}, ""},
		{"duplicates are fine", func(c *Config) {
			c.ExcludeInboundPorts = []int{15020, 8080, 8080}
			c.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}
		}, ""},
		{"uid 0", func(c *Config) { c.ProxyUID = 0 }, "proxy UID 0: must be between 1 and"},
		{"negative gid", func(c *Config) { c.ProxyGID = -1 }, "proxy GID -1"},
		{"outbound port 0", func(c *Config) { c.OutboundPort = 0 }, "outbound port: port 0 is out of range 1-65535"},
		{"dns port 70000", func(c *Config) { c.DNSPort = 70000 }, "DNS port: port 70000 is out of range 1-65535"},
		{"same port twice", func(c *Config) { c.AdminPort = c.InboundPort }, "inbound port and admin port are both 15006"},
		{"excluded inbound 0", func(c *Config) { c.ExcludeInboundPorts = []int{80, 0} }, "excluded inbound port: port 0 is out of range"},
		{"excluded outbound 65536", func(c *Config) { c.ExcludeOutboundPorts = []int{65536} }, "excluded outbound port: port 65536"},
		{"invalid prefix", func(c *Config) { c.ExcludeOutboundCIDRs = []netip.Prefix{{}} }, "is not a valid CIDR"},
		{"4in6 prefix", func(c *Config) {
			c.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}
		}, "IPv4 form"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate = %v; want an ErrInvalidConfig saying %q", err, tc.want)
			}
		})
	}
}

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []int
		wantErr string
	}{
		{"", nil, ""},
		{"  ", nil, ""},
		{"15020", []int{15020}, ""},
		{" 8080 , 15020,8080,1,65535 ", []int{8080, 15020, 1, 65535}, ""},
		{"0", nil, `port 0 is out of range 1-65535`},
		{"70000", nil, `port 70000 is out of range 1-65535`},
		{"abc", nil, `port "abc" is not a number from 1 to 65535`},
		{"80,", nil, `entry 2 is empty`},
		{"80,,90", nil, `entry 2 is empty`},
		{"+80", nil, `port "+80" is not a number`},
		{"-1", nil, `port "-1" is not a number`},
		{"8000-8010", nil, `port "8000-8010" is not a number`},
		{"99999999999999999999999", nil, `is not a number`},
	} {
		got, err := ParsePorts(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("ParsePorts(%q) = %v, %v; want error %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseCIDRs(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string // the prefixes joined by ","
		wantErr string
	}{
		{"", "", ""},
		{"10.0.0.0/8", "10.0.0.0/8", ""},
		{" 10.1.2.3/8, 192.168.1.10 ,10.0.0.0/8", "10.0.0.0/8,192.168.1.10/32", ""},
		{"fd00::1/8,2001:db8::1", "fd00::/8,2001:db8::1/128", ""},
		{"0.0.0.0/0", "0.0.0.0/0", ""},
		{"10.0.0.0/33", "", `"10.0.0.0/33" is not a CIDR`},
		{"10.0.0/8", "", `"10.0.0/8" is not a CIDR`},
		{"abc", "", `"abc" is not an IP address or a CIDR`},
		{"10.0.0.0/8,", "", "entry 2 is empty"},
		{"fe80::1%eth0", "", "zones are not allowed"},
		{"fe80::1%eth0/64", "", "is not a CIDR"},
		{"::ffff:10.0.0.1", "", "IPv4 form"},
		{strings.Repeat("x", 200), "", `..." is not an IP address`},
	} {
		got, err := ParseCIDRs(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("ParseCIDRs(%q) = %v, %v; want error %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		var s []string
		for _, p := range got {
			s = append(s, p.String())
		}
		if err != nil || strings.Join(s, ",") != tc.want {
			t.Errorf("ParseCIDRs(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}
