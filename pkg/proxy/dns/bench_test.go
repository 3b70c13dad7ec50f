package dns

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// packWriter is a ResponseWriter that packs the reply, as the UDP server
// does, and drops it.
type packWriter struct {
	mdns.ResponseWriter
	buf []byte
}

var benchClient = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}

func (w *packWriter) RemoteAddr() net.Addr { return benchClient }
func (w *packWriter) WriteMsg(m *mdns.Msg) error {
	b, err := m.PackBuffer(w.buf)
	w.buf = b[:0]
	return err
}

// BenchmarkServeDNS is the sidecar's work per mesh query, without the
// socket: the handler chain and packing the reply. Search rules of a pod
// in namespace team-000 (ndots 5), 2,000 services in the table.
func BenchmarkServeDNS(b *testing.B) {
	recs := map[string]Record{}
	for i := range 2000 {
		recs[fmt.Sprintf("svc-%04d.team-%03d.svc.cluster.local", i, i%40)] = Record{
			Addrs:     []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:     []SRVPort{{Name: "http", Proto: "tcp", Port: 80}},
			Reachable: i%10 != 9,
		}
	}
	s, err := New(Config{
		Search:     []string{"team-000.svc.cluster.local", "svc.cluster.local", "cluster.local"},
		Ndots:      5,
		Upstreams:  []string{"127.0.0.1:9"},
		Table:      NewStaticTable(recs),
		Logger:     quietLogger(),
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ name, q string }{
		{"fqdn", "svc-0123.team-003.svc.cluster.local."},
		{"short-ns", "svc-0123.team-003."},
		{"short", "svc-0040."},
		{"unreachable", "svc-0129.team-009.svc.cluster.local."},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m := new(mdns.Msg)
			m.SetQuestion(tc.q, mdns.TypeA)
			w := &packWriter{}
			b.ReportAllocs()
			for b.Loop() {
				s.ServeDNS(w, m)
			}
		})
	}
}
