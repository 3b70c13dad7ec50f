package xds

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

func TestResolveAdminAddr(t *testing.T) {
	pod := netip.MustParseAddr("10.244.1.7")
	loop := netip.MustParseAddr("127.0.0.1")
	for _, tc := range []struct {
		addr    string
		from    netip.Addr
		want    string
		wantErr string
	}{
		{"", pod, "", ""},
		{":15020", pod, "10.244.1.7:15020", ""},
		{"0.0.0.0:15020", pod, "10.244.1.7:15020", ""},
		{"[::]:15020", pod, "10.244.1.7:15020", ""},
		{"10.244.1.7:15020", pod, "10.244.1.7:15020", ""},
		{"[::ffff:10.244.1.7]:15020", pod, "10.244.1.7:15020", ""},
		{"10.244.1.8:15020", pod, "", "not the address the sidecar connected from (10.244.1.7)"},
		{"127.0.0.1:15020", pod, "", "not the address"},
		{"127.0.0.2:41000", loop, "127.0.0.2:41000", ""},
		{"[::1]:41000", loop, "[::1]:41000", ""},
		{"[::]:15020", netip.MustParseAddr("fd00::2"), "[fd00::2]:15020", ""},
		{":15020", netip.Addr{}, "", "peer address is unknown"},
	} {
		got, err := resolveAdminAddr(tc.addr, tc.from)
		if got != tc.want || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("resolveAdminAddr(%q, %v) = %q, %v; want %q, error with %q", tc.addr, tc.from, got, err, tc.want, tc.wantErr)
		}
	}
}

// BenchmarkObserveNode is the cost a request adds to record the node's
// metadata: a new Node (a client that sends it on every request) and the
// same Node (the server reuses the first one).
func BenchmarkObserveNode(b *testing.B) {
	s := &Server{}
	s.init()
	st := &stream{peer: netip.MustParseAddrPort("10.244.1.7:41000")}
	md := wire.NodeMetadata{AdminAddr: ":15020", SVIDExpiry: time.Now(), Version: "v1.2.3"}.Struct()
	b.Run("new node", func(b *testing.B) {
		for range b.N {
			s.observeNode(st, &corev3.Node{Id: "spiffe://cluster.local/ns/default/sa/web", Metadata: md})
		}
	})
	b.Run("same node", func(b *testing.B) {
		n := &corev3.Node{Id: "spiffe://cluster.local/ns/default/sa/web", Metadata: md}
		for range b.N {
			s.observeNode(st, n)
		}
	})
}
