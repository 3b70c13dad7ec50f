package sidecar

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// FuzzListenerFlags: the parsers of --allow, --outbound and
// --mesh-endpoint never panic and never yield an entry without an identity
// (or, for an outbound service, without a namespace, name and port).
func FuzzListenerFlags(f *testing.F) {
	f.Add("spiffe://cluster.local/ns/default/sa/web=8080,8443")
	f.Add("127.0.0.1:9000=127.0.0.1:16006@spiffe://cluster.local/ns/default/sa/web")
	f.Add("10.0.0.5:8080=spiffe://cluster.local/ns/a/sa/b,spiffe://cluster.local/ns/a/sa/c")
	f.Add("=@,")
	f.Add("127.0.0.1:9000=default/api:8080")
	f.Add("127.0.0.1:9000=default/api:0")
	f.Fuzz(func(t *testing.T, v string) {
		l := proxy.AllowList{}
		if l.ParseAllow(v) == nil && len(l) != 1 {
			t.Fatalf("ParseAllow(%q) accepted but added %d entries", v, len(l))
		}
		if o, err := ParseOutbound(v); err == nil {
			service := o.Service != (wire.ServiceKey{})
			if o.Listen == "" || (service && (o.Port == 0 || o.Service.Namespace == "" || o.Service.Name == "" || len(o.Dest.IDs) > 0)) ||
				(!service && (len(o.Dest.IDs) == 0 || o.Dest.Addr == "")) {
				t.Fatalf("ParseOutbound(%q) = %+v", v, o)
			}
		}
		eps := map[netip.AddrPort][]spiffeid.ID{}
		if ParseEndpoint(eps, v) == nil {
			for ap, ids := range eps {
				if !ap.IsValid() || len(ids) == 0 {
					t.Fatalf("ParseEndpoint(%q) = %v", v, eps)
				}
			}
		}
	})
}
