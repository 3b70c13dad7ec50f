package capture

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func TestRulesGolden(t *testing.T) {
	custom := DefaultConfig()
	custom.ProxyUID, custom.ProxyGID = 2000, 3000
	custom.ExcludeInboundPorts = []int{9090, 8443, 9090}
	custom.ExcludeOutboundPorts = []int{5432, 3306}
	custom.ExcludeOutboundCIDRs = []netip.Prefix{
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("fd00::/8"), // ignored: IPv6 is off
	}

	noDNS := DefaultConfig()
	noDNS.CaptureDNS = false

	dual := custom
	dual.IPv6 = true

	// Registry-only: UDP rejected, both families; with and without DNS capture.
	registryOnly := dual
	registryOnly.RejectUDP = true
	registryOnlyNoDNS := registryOnly
	registryOnlyNoDNS.CaptureDNS = false

	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"default", DefaultConfig()},
		{"custom", custom},
		{"nodns", noDNS},
		{"ipv6", dual},
		{"registry-only", registryOnly},
		{"registry-only-nodns", registryOnlyNoDNS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := Rules(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, filepath.Join("testdata", tc.name+".golden"), rs.String())
		})
	}
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./pkg/proxy/capture -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run go test ./pkg/proxy/capture -update if the change is intended)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestRulesRejectInvalidConfig(t *testing.T) {
	c := DefaultConfig()
	c.InboundPort = 0
	if _, err := Rules(c); err == nil || !strings.Contains(err.Error(), "inbound port") {
		t.Fatalf("Rules with inbound port 0: %v", err)
	}
}
