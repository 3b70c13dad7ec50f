package sidecar

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

func noEnv(string) string { return "" }

// explicit is a valid explicit-mode command line without discovery.
var explicit = []string{"--ca", "x:1", "--bundle", "b.pem", "--join-token", "t", "--inbound", "127.0.0.1:1=127.0.0.1:2"}

func withArgs(base []string, more ...string) []string {
	return append(slices.Clone(base), more...)
}

func TestParseFlagsDiscovery(t *testing.T) {
	disc := withArgs(explicit, "--discovery", "127.0.0.1:15010")
	transparent := []string{"--ca", "x:1", "--bundle", "b.pem", "--join-token", "t", "--transparent", "--discovery", "disc:15010"}
	cases := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, c Config)
	}{
		{"no discovery: static configuration, no DNS", explicit, nil, func(t *testing.T, c Config) {
			if c.DiscoveryAddr != "" || c.DNS != nil || !c.DiscoveryID.IsZero() {
				t.Errorf("discovery %q, DNS %+v, discovery ID %s", c.DiscoveryAddr, c.DNS, c.DiscoveryID)
			}
		}},
		{"discovery with defaults", withArgs(disc, "--outbound", "127.0.0.1:9000=default/api:8080", "--outbound", "127.0.0.1:9001=127.0.0.1:7@spiffe://cluster.local/ns/default/sa/db"), nil, func(t *testing.T, c Config) {
			if c.DiscoveryAddr != "127.0.0.1:15010" {
				t.Errorf("discovery %q", c.DiscoveryAddr)
			}
			if want := "spiffe://cluster.local/ns/tether-system/sa/tether-discovery"; c.DiscoveryID.String() != want {
				t.Errorf("discovery ID %s, want %s", c.DiscoveryID, want)
			}
			if c.ClusterDomain != "cluster.local" {
				t.Errorf("cluster domain %q", c.ClusterDomain)
			}
			if c.DNS != nil {
				t.Errorf("DNS on in explicit mode without --dns-listen: %+v", c.DNS)
			}
			if len(c.Outbound) != 2 {
				t.Fatalf("outbound %+v", c.Outbound)
			}
			if o := c.Outbound[0]; o.Service != (wire.ServiceKey{Namespace: "default", Name: "api"}) || o.Port != 8080 || o.Listen != "127.0.0.1:9000" {
				t.Errorf("service outbound %+v", o)
			}
			if o := c.Outbound[1]; o.Service != (wire.ServiceKey{}) || o.Dest.Addr != "127.0.0.1:7" || len(o.Dest.IDs) != 1 {
				t.Errorf("peer outbound %+v", o)
			}
		}},
		{"discovery from the environment", explicit, map[string]string{"TETHER_DISCOVERY_ADDR": "tether-discovery.tether-system.svc:15010"}, func(t *testing.T, c Config) {
			if c.DiscoveryAddr != "tether-discovery.tether-system.svc:15010" {
				t.Errorf("discovery %q", c.DiscoveryAddr)
			}
		}},
		{"discovery ID follows the trust domain", withArgs(disc, "--trust-domain", "example.org"), nil, func(t *testing.T, c Config) {
			if want := "spiffe://example.org/ns/tether-system/sa/tether-discovery"; c.DiscoveryID.String() != want {
				t.Errorf("discovery ID %s, want %s", c.DiscoveryID, want)
			}
		}},
		{"explicit discovery ID and cluster domain", withArgs(disc, "--discovery-id", "spiffe://cluster.local/discovery", "--cluster-domain", "Corp.Example."), nil, func(t *testing.T, c Config) {
			if c.DiscoveryID.String() != "spiffe://cluster.local/discovery" || c.ClusterDomain != "corp.example" {
				t.Errorf("discovery ID %s, cluster domain %q", c.DiscoveryID, c.ClusterDomain)
			}
		}},
		{"transparent with discovery: DNS on by default", transparent, nil, func(t *testing.T, c Config) {
			if c.DNS == nil || c.DNS.Listen != "127.0.0.1:15053" || c.DNS.ResolvConf != "/etc/resolv.conf" || c.DNS.AnswerUnreachable {
				t.Errorf("DNS %+v", c.DNS)
			}
		}},
		{"transparent with discovery, DNS turned off", withArgs(transparent, "--dns-listen", ""), nil, func(t *testing.T, c Config) {
			if c.DNS != nil {
				t.Errorf("DNS %+v", c.DNS)
			}
		}},
		{"DNS settings", withArgs(transparent, "--outbound-mode", "registry-only", "--dns-listen", "127.0.0.1:5353", "--resolv-conf", "/tmp/r.conf",
			"--dns-upstream", "10.0.0.10", "--dns-upstream", "127.0.0.1:5300", "--dns-answer-unreachable",
			"--egress-allow", "*.googleapis.com", "--egress-allow", "api.example.com"), nil, func(t *testing.T, c Config) {
			d := c.DNS
			if d == nil || d.Listen != "127.0.0.1:5353" || d.ResolvConf != "/tmp/r.conf" || !d.AnswerUnreachable ||
				!slices.Equal(d.Upstreams, []string{"10.0.0.10", "127.0.0.1:5300"}) || !slices.Equal(d.EgressAllow, []string{"*.googleapis.com", "api.example.com"}) {
				t.Errorf("DNS %+v", d)
			}
			if c.Capture.OutboundMode != RegistryOnly {
				t.Errorf("outbound mode %q", c.Capture.OutboundMode)
			}
		}},
		{"explicit mode may run the DNS server", withArgs(disc, "--dns-listen", "127.0.0.1:0"), nil, func(t *testing.T, c Config) {
			if c.DNS == nil || c.DNS.Listen != "127.0.0.1:0" {
				t.Errorf("DNS %+v", c.DNS)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseFlags(tc.args, func(k string) string { return tc.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestParseFlagsRefusesBadDiscoveryInput(t *testing.T) {
	disc := withArgs(explicit, "--discovery", "127.0.0.1:15010")
	transparent := []string{"--ca", "x:1", "--bundle", "b.pem", "--join-token", "t", "--transparent", "--discovery", "disc:15010"}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"discovery without port", withArgs(explicit, "--discovery", "tether-discovery"), "--discovery \"tether-discovery\": want host:port"},
		{"bad discovery ID", withArgs(disc, "--discovery-id", "tether-discovery"), "--discovery-id"},
		{"discovery ID of another trust domain", withArgs(disc, "--discovery-id", "spiffe://other.org/discovery"), "outside trust domain"},
		{"discovery ID without discovery", withArgs(explicit, "--discovery-id", "spiffe://cluster.local/discovery"), "--discovery-id needs --discovery"},
		{"allow-list with discovery", withArgs(disc, "--allow", "spiffe://cluster.local/ns/default/sa/web"), "--allow and --discovery do not go together"},
		{"mesh endpoints with discovery", withArgs(transparent, "--mesh-endpoint", "10.0.0.5:80=spiffe://cluster.local/ns/default/sa/web"), "--mesh-endpoint and --discovery do not go together"},
		{"service outbound without discovery", withArgs(explicit, "--outbound", "127.0.0.1:9000=default/api:8080"), "needs --discovery"},
		{"outbound namespace not a label", withArgs(disc, "--outbound", "127.0.0.1:9000=Default/api:8080"), "namespace \"Default\""},
		{"outbound service not a label", withArgs(disc, "--outbound", "127.0.0.1:9000=default/9api:8080"), "service \"9api\""},
		{"outbound port 0", withArgs(disc, "--outbound", "127.0.0.1:9000=default/api:0"), "port \"0\""},
		{"outbound port by name", withArgs(disc, "--outbound", "127.0.0.1:9000=default/api:http"), "port \"http\""},
		{"outbound port too large", withArgs(disc, "--outbound", "127.0.0.1:9000=default/api:70000"), "port \"70000\""},
		{"outbound service without port", withArgs(disc, "--outbound", "127.0.0.1:9000=default/api"), "NAMESPACE/SERVICE:PORT"},
		{"outbound service without namespace", withArgs(disc, "--outbound", "127.0.0.1:9000=api:8080"), "NAMESPACE/SERVICE:PORT"},
		{"outbound without listener", withArgs(disc, "--outbound", "=default/api:8080"), "LISTEN="},
		{"bad cluster domain", withArgs(disc, "--cluster-domain", "a..b"), "--cluster-domain"},
		{"DNS listen without port", withArgs(transparent, "--dns-listen", "localhost"), "--dns-listen \"localhost\""},
		{"DNS upstream not an address", withArgs(transparent, "--dns-upstream", "dns.google"), "want IP or IP:PORT"},
		{"bad egress pattern", withArgs(transparent, "--egress-allow", "*.*.example.com"), "egress pattern"},
		{"egress allow-list without DNS", withArgs(disc, "--egress-allow", "*.example.com"), "--egress-allow needs the DNS server"},
		{"egress allow-list with DNS turned off", withArgs(transparent, "--dns-listen", "", "--egress-allow", "api.example.com"), "--egress-allow needs the DNS server"},
		{"DNS without upstreams", withArgs(transparent, "--resolv-conf", ""), "needs upstream resolvers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFlags(tc.args, noEnv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestNewDNSReadsResolvConf: the DNS server takes its upstreams and
// search rules from the resolv.conf, and refuses one it cannot use.
func TestNewDNSReadsResolvConf(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.conf", "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n")
	empty := write("empty.conf", "search example.com\n")
	cfg := func(d DNS) Config {
		d.Listen = "127.0.0.1:0"
		return Config{ClusterDomain: "cluster.local", DNS: &d}
	}
	if _, err := newDNS(cfg(DNS{ResolvConf: good}), prometheus.NewRegistry()); err != nil {
		t.Errorf("good resolv.conf: %v", err)
	}
	if _, err := newDNS(cfg(DNS{ResolvConf: empty, Upstreams: []string{"127.0.0.1:5300"}}), prometheus.NewRegistry()); err != nil {
		t.Errorf("resolv.conf without nameserver but --dns-upstream: %v", err)
	}
	for _, tc := range []struct {
		name string
		d    DNS
		want string
	}{
		{"missing file", DNS{ResolvConf: filepath.Join(dir, "nope.conf")}, "--resolv-conf"},
		{"no nameserver", DNS{ResolvConf: empty}, "lists no nameserver"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newDNS(cfg(tc.d), prometheus.NewRegistry())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestParseFlagsLocalhostInboundPorts: --localhost-inbound-ports (from the
// pod's tether.dev/localhost-inbound-ports) names the only ports delivered
// to 127.0.0.1; the sidecar's own listening ports and bad lists are refused.
func TestParseFlagsLocalhostInboundPorts(t *testing.T) {
	transparent := []string{"--ca", "x:1", "--bundle", "b.pem", "--join-token", "t", "--transparent"}
	c, err := ParseFlags(withArgs(transparent, "--localhost-inbound-ports", "9090, 8081"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Capture.LoopbackPorts; !slices.Equal(got, []uint16{9090, 8081}) {
		t.Fatalf("loopback ports %v, want [9090 8081]", got)
	}
	if c, err := ParseFlags(transparent, noEnv); err != nil || len(c.Capture.LoopbackPorts) != 0 {
		t.Fatalf("without the flag: loopback ports %v, %v; want none", c.Capture.LoopbackPorts, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{withArgs(transparent, "--localhost-inbound-ports", "http"), "not a number"},
		{withArgs(transparent, "--localhost-inbound-ports", "15001"), "15001 is where the sidecar listens (capture outbound)"},
		{withArgs(transparent, "--localhost-inbound-ports", "8080,15020"), "15020 is where the sidecar listens (admin)"},
		{withArgs(transparent, "--capture-outbound-listen", "127.0.0.1:16001", "--localhost-inbound-ports", "16001"), "16001 is where the sidecar listens (capture outbound)"},
		{withArgs(explicit, "--localhost-inbound-ports", "8080"), "needs --transparent"},
	} {
		if _, err := ParseFlags(tc.args, noEnv); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

// TestJoinTokenFile: the join token comes from a file (or stdin), so that
// it is not in /proc/PID/cmdline for every local user to read.
func TestJoinTokenFile(t *testing.T) {
	const tok = "tjt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	dir := t.TempDir()
	good := filepath.Join(dir, "token")
	if err := os.WriteFile(good, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("hunter2"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--ca", "x:1", "--bundle", "b.pem", "--inbound", "127.0.0.1:1=127.0.0.1:2"}
	c, err := ParseFlags(withArgs(base, "--join-token-file", good), noEnv)
	if err != nil || c.JoinToken != tok {
		t.Fatalf("--join-token-file: token %q, %v", c.JoinToken, err)
	}
	c, err = ParseFlags(base, func(k string) string { return map[string]string{"TETHER_JOIN_TOKEN_FILE": good}[k] })
	if err != nil || c.JoinToken != tok {
		t.Fatalf("TETHER_JOIN_TOKEN_FILE: token %q, %v", c.JoinToken, err)
	}
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"both":     {withArgs(base, "--join-token", tok, "--join-token-file", good), "not both"},
		"missing":  {withArgs(base, "--join-token-file", filepath.Join(dir, "none")), "join token file"},
		"not one":  {withArgs(base, "--join-token-file", bad), "not a join token"},
		"and file": {withArgs(base, "--join-token-file", good, "--token-file", good), "exactly one"},
	} {
		if _, err := ParseFlags(tc.args, noEnv); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
	}
}

// TestParseFlagsWorkloadSocketAccess: the Workload API socket is 0600 unless
// told otherwise; a group needs 0660; other modes are refused.
func TestParseFlagsWorkloadSocketAccess(t *testing.T) {
	c, err := ParseFlags(explicit, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.WorkloadSocketAccess.Mode != 0o600 || c.WorkloadSocketAccess.Group != "" {
		t.Errorf("default access %+v, want mode 0600 and no group", c.WorkloadSocketAccess)
	}
	c, err = ParseFlags(withArgs(explicit, "--workload-socket-mode", "0660", "--workload-socket-group", "65533"), noEnv)
	if err != nil || c.WorkloadSocketAccess.Mode != 0o660 || c.WorkloadSocketAccess.Group != "65533" {
		t.Errorf("group access: %+v, %v", c.WorkloadSocketAccess, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--workload-socket-mode", "0644"}, "want 0600"},
		{[]string{"--workload-socket-mode", "0777"}, "want 0600"},
		{[]string{"--workload-socket-mode", "rw"}, "octal"},
		{[]string{"--workload-socket-group", "65533"}, "needs socket mode 0660"},
		{[]string{"--workload-socket-mode", "0660", "--workload-socket-group", "no-such-group-xyz"}, "socket group"},
	} {
		if _, err := ParseFlags(withArgs(explicit, tc.args...), noEnv); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}
