package dns

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzHandle feeds DNS message bytes through the same path as a query off
// the wire (unpack, then the handler chain) with a fake upstream, and checks
// that every reply packs and keeps the query's ID.
func FuzzHandle(f *testing.F) {
	seed := func(name string, t uint16, edit func(*mdns.Msg)) {
		m := new(mdns.Msg).SetQuestion(name, t)
		if edit != nil {
			edit(m)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed("web.shop.svc.cluster.local.", mdns.TypeA, nil)
	seed("web.", mdns.TypeAAAA, nil)
	seed("_http._tcp.web.", mdns.TypeSRV, nil)
	seed("secret.shop.svc.cluster.local.", mdns.TypeA, nil)
	seed("storage.googleapis.com.", mdns.TypeA, func(m *mdns.Msg) { m.SetEdns0(4096, true) })
	seed("fail.example.com.", mdns.TypeMX, nil)
	seed("example.com.", mdns.TypeA, func(m *mdns.Msg) { m.Question = append(m.Question, m.Question[0]) })
	seed("example.com.", mdns.TypeA, func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS })
	seed(strings.Repeat("a.", 120), mdns.TypeA, nil)
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1})

	s, err := New(Config{
		Upstreams: []string{"192.0.2.53"}, Search: podSearch, Ndots: 5, Logger: quietLogger(),
		EgressAllow: []string{"*.googleapis.com"}, Table: meshTable(),
	})
	if err != nil {
		f.Fatal(err)
	}
	s.exchange = func(_ context.Context, _ string, m *mdns.Msg, _ string) (*mdns.Msg, error) {
		q := m.Question[0]
		if strings.HasPrefix(strings.ToLower(q.Name), "fail.") {
			return nil, errors.New("upstream down")
		}
		r := new(mdns.Msg).SetReply(m)
		r.Answer = []mdns.RR{
			&mdns.CNAME{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeCNAME, Class: mdns.ClassINET, Ttl: 60}, Target: "edge.example.net."},
			&mdns.A{Hdr: mdns.RR_Header{Name: "edge.example.net.", Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: netip.MustParseAddr("192.0.2.1").AsSlice()},
		}
		return r, nil
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		q := new(mdns.Msg)
		if err := q.Unpack(b); err != nil {
			return // miekg/dns's server drops these before the handler
		}
		resp := s.handle(context.Background(), q)
		if resp == nil {
			return
		}
		if resp.Id != q.Id {
			t.Fatalf("reply ID %d, query ID %d", resp.Id, q.Id)
		}
		resp.Truncate(udpSize(q))
		if _, err := resp.Pack(); err != nil {
			t.Fatalf("reply does not pack: %v\n%v", err, resp)
		}
	})
}

func FuzzParseResolvConf(f *testing.F) {
	f.Add([]byte("nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"))
	f.Add([]byte("domain example.com\nnameserver ::1 # comment\n; x\noptions ndots:99 timeout:1\n"))
	f.Add([]byte("search \x00 .. a..b\nnameserver fe80::1%eth0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		servers, search, ndots, err := ParseResolvConf(strings.NewReader(string(b)))
		if err != nil {
			return
		}
		if ndots < 0 || ndots > maxNdots {
			t.Fatalf("ndots %d out of range", ndots)
		}
		if len(search) > maxSearch {
			t.Fatalf("%d search domains", len(search))
		}
		for _, s := range servers {
			if _, err := netip.ParseAddr(s); err != nil {
				t.Fatalf("server %q: %v", s, err)
			}
		}
		// What the parser returns is accepted by Config.
		if _, err := New(Config{Upstreams: append(servers, "127.0.0.1"), Search: search, Ndots: ndots, Logger: quietLogger()}); err != nil {
			t.Fatalf("parsed resolv.conf rejected by New: %v", err)
		}
	})
}
