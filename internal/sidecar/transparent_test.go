package sidecar

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestTransparentRouter(t *testing.T) {
	web := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/web")
	eps := map[netip.AddrPort][]spiffeid.ID{}
	if err := ParseEndpoint(eps, "10.0.0.5:8080="+web.String()); err != nil {
		t.Fatal(err)
	}
	// A real TCP connection whose "original destination" the test decides.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		mode, dst string
		want      string
	}{
		{Passthrough, "10.0.0.5:8080", "mesh " + web.String()},
		{Passthrough, "93.184.216.34:443", "passthrough 93.184.216.34:443"},
		{RegistryOnly, "93.184.216.34:443", "deny registry-only"},
		{RegistryOnly, "10.0.0.5:8080", "mesh " + web.String()},
		{Passthrough, "127.0.0.1:15001", "deny connection to the outbound listener"},
	} {
		dst := netip.MustParseAddrPort(tc.dst)
		tr := &Transparent{OutboundAddr: ":15001", Endpoints: eps, OutboundMode: tc.mode}
		r := tr.router(func(*net.TCPConn) (netip.AddrPort, error) { return dst, nil }, tr.staticLookup, nil)(c)
		var got string
		switch {
		case r.Mesh != nil:
			got = "mesh " + r.Mesh.IDs[0].String()
			if r.Mesh.Port != dst.Port() || r.Mesh.Addr != tc.dst {
				t.Errorf("mesh route to %s: addr %s port %d", tc.dst, r.Mesh.Addr, r.Mesh.Port)
			}
		case r.Passthrough != "":
			got = "passthrough " + r.Passthrough
		default:
			got = "deny " + r.Deny
		}
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s mode, %s: %q, want %q", tc.mode, tc.dst, got, tc.want)
		}
	}
	for _, bad := range []string{"10.0.0.5=spiffe://x/y", "10.0.0.5:80", "10.0.0.5:80=web"} {
		if err := ParseEndpoint(map[netip.AddrPort][]spiffeid.ID{}, bad); err == nil {
			t.Errorf("ParseEndpoint(%q) accepted", bad)
		}
	}
}
