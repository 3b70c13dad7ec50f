package dns

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	mdns "github.com/miekg/dns"
)

// hiddenTable is a Table that knows the addresses of hidden services, as
// the sidecar's discovery view does, but not their names.
type hiddenTable struct {
	*StaticTable
	addrs []netip.Addr
}

func (h hiddenTable) HiddenAddr(a netip.Addr) bool { return slices.Contains(h.addrs, a) }

// The upstream (kube-dns) knows every Service. A hidden service's name,
// an alias of it, its SRV name and its reverse name are all answered
// NXDOMAIN, like a name that does not exist; other names are forwarded as
// before. The reverse name of a hidden address is not even sent upstream.
func TestHiddenServicesNotRevealedByUpstream(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	up := startUpstream(t, func(r *mdns.Msg, _ bool) *mdns.Msg {
		q := r.Question[0]
		mu.Lock()
		asked = append(asked, q.Name)
		mu.Unlock()
		m := new(mdns.Msg).SetReply(r)
		switch q.Name {
		case "secret.vault.svc.cluster.local.":
			m.Answer = []mdns.RR{rr("secret.vault.svc.cluster.local. 5 IN A 10.96.0.9")}
		case "db-0.secretdb.vault.svc.cluster.local.": // a headless hidden service's pod
			m.Answer = []mdns.RR{rr("db-0.secretdb.vault.svc.cluster.local. 5 IN AAAA fd00::9")}
		case "alias.example.com.":
			m.Answer = []mdns.RR{rr("alias.example.com. 5 IN CNAME secret.vault.svc.cluster.local."), rr("secret.vault.svc.cluster.local. 5 IN A 10.96.0.9")}
		case "_http._tcp.secret.vault.svc.cluster.local.": // SRV without the target's address
			m.Answer = []mdns.RR{rr("_http._tcp.secret.vault.svc.cluster.local. 5 IN SRV 0 100 80 secret.vault.svc.cluster.local.")}
		case "_http._tcp.plain.shop.svc.cluster.local.":
			m.Answer = []mdns.RR{rr("_http._tcp.plain.shop.svc.cluster.local. 5 IN SRV 0 100 80 plain.shop.svc.cluster.local.")}
			m.Extra = []mdns.RR{rr("plain.shop.svc.cluster.local. 5 IN A 10.96.0.20")}
		case "_xmpp._tcp.example.com.":
			m.Answer = []mdns.RR{rr("_xmpp._tcp.example.com. 60 IN SRV 0 100 5222 xmpp.example.com.")}
		case "plain.shop.svc.cluster.local.":
			m.Answer = []mdns.RR{rr("plain.shop.svc.cluster.local. 5 IN A 10.96.0.20")}
		default:
			m.Answer = []mdns.RR{rr("%s 5 IN PTR plain.shop.svc.cluster.local.", q.Name)}
		}
		return m
	})
	table := hiddenTable{StaticTable: NewStaticTable(nil), addrs: []netip.Addr{mustAddr("10.96.0.9"), mustAddr("fd00::9")}}
	s := startServer(t, Config{Upstreams: []string{up.addr}, Table: table})

	for _, c := range []struct {
		name  string
		qtype uint16
	}{
		{"secret.vault.svc.cluster.local.", mdns.TypeA},
		{"db-0.secretdb.vault.svc.cluster.local.", mdns.TypeAAAA},
		{"alias.example.com.", mdns.TypeA},
		{"_http._tcp.secret.vault.svc.cluster.local.", mdns.TypeSRV},
		{"9.0.96.10.in-addr.arpa.", mdns.TypePTR},
		{"9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", mdns.TypePTR},
	} {
		wantNXDOMAIN(t, s.Addr(), c.name, c.qtype)
	}
	for _, c := range []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"plain.shop.svc.cluster.local.", mdns.TypeA, []string{"A 10.96.0.20"}},
		{"_http._tcp.plain.shop.svc.cluster.local.", mdns.TypeSRV, []string{"SRV plain.shop.svc.cluster.local. 80"}},
		{"_xmpp._tcp.example.com.", mdns.TypeSRV, []string{"SRV xmpp.example.com. 5222"}},
		{"20.0.96.10.in-addr.arpa.", mdns.TypePTR, []string{"20.0.96.10.in-addr.arpa.\t5\tIN\tPTR\tplain.shop.svc.cluster.local."}},
	} {
		resp := exchange(t, "udp", s.Addr(), c.name, c.qtype, false)
		if got := answers(resp); resp.Rcode != mdns.RcodeSuccess || !slices.Equal(got, c.want) {
			t.Errorf("%s %s: %s %q, want %q forwarded", mdns.TypeToString[c.qtype], c.name, mdns.RcodeToString[resp.Rcode], got, c.want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, q := range asked {
		if strings.HasSuffix(q, ".arpa.") && !strings.HasPrefix(q, "20.") {
			t.Errorf("the reverse name of a hidden address was sent upstream: %s", q)
		}
	}
}

func TestReverseAddr(t *testing.T) {
	for name, want := range map[string]string{
		"4.3.2.1.in-addr.arpa.": "1.2.3.4",
		"4.3.2.1.IN-ADDR.ARPA.": "1.2.3.4",
		"b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.1.2.3.4.ip6.arpa.": "4321:0:1:2:3:4:567:89ab",
		"1.0.0.0.0.0.0.0.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.": "0.0.0.1", // v4-mapped
	} {
		got, ok := reverseAddr(name)
		if !ok || got != mustAddr(want) {
			t.Errorf("reverseAddr(%q) = %v %v, want %s", name, got, ok, want)
		}
	}
	for _, name := range []string{"3.2.1.in-addr.arpa.", "256.3.2.1.in-addr.arpa.", "x.3.2.1.in-addr.arpa.", "1.ip6.arpa.", "example.com."} {
		if got, ok := reverseAddr(name); ok {
			t.Errorf("reverseAddr(%q) = %v, want no address", name, got)
		}
	}
}

// A hidden service's name exists upstream for every query type, but only
// its addresses show that it is hidden: an AAAA query for an IPv4-only
// hidden service, or a TXT query, got the upstream's empty NOERROR
// (NODATA), telling the pod that the name it was answered NXDOMAIN for
// exists (the A query for a denied db said NXDOMAIN, the AAAA query
// NOERROR, in the real-node test's story). Such answers are now checked
// against the name's addresses and hidden the same way; names without a
// hidden address keep their NODATA.
func TestHiddenServicesNotRevealedByOtherTypes(t *testing.T) {
	var mu sync.Mutex
	asked := map[string]int{}
	failProbe := false
	up := startUpstream(t, func(r *mdns.Msg, _ bool) *mdns.Msg {
		q := r.Question[0]
		mu.Lock()
		asked[mdns.TypeToString[q.Qtype]+" "+q.Name]++
		fail := failProbe
		mu.Unlock()
		m := new(mdns.Msg).SetReply(r)
		switch {
		case q.Name == "secret.vault.svc.cluster.local." && q.Qtype == mdns.TypeA:
			m.Answer = []mdns.RR{rr("secret.vault.svc.cluster.local. 5 IN A 10.96.0.9")}
		case q.Name == "secret6.vault.svc.cluster.local." && q.Qtype == mdns.TypeAAAA:
			m.Answer = []mdns.RR{rr("secret6.vault.svc.cluster.local. 5 IN AAAA fd00::9")}
		case q.Name == "alias.example.com.":
			m.Answer = []mdns.RR{rr("alias.example.com. 5 IN CNAME secret.vault.svc.cluster.local.")}
			if q.Qtype == mdns.TypeA {
				m.Answer = append(m.Answer, rr("secret.vault.svc.cluster.local. 5 IN A 10.96.0.9"))
			}
		case q.Name == "plain.shop.svc.cluster.local." && q.Qtype == mdns.TypeA:
			m.Answer = []mdns.RR{rr("plain.shop.svc.cluster.local. 5 IN A 10.96.0.20")}
		case q.Name == "flaky.shop.svc.cluster.local." && q.Qtype != mdns.TypeAAAA && fail:
			m.Rcode = mdns.RcodeServerFailure
		case strings.HasSuffix(q.Name, ".svc.cluster.local."), q.Name == "nov6.example.com.":
			// exists, no record of this type: NODATA
		default:
			m.Rcode = mdns.RcodeNameError
		}
		return m
	})
	table := hiddenTable{StaticTable: NewStaticTable(nil), addrs: []netip.Addr{mustAddr("10.96.0.9"), mustAddr("fd00::9")}}
	s := startServer(t, Config{Upstreams: []string{up.addr}, Table: table})

	for _, c := range []struct {
		name  string
		qtype uint16
	}{
		{"secret.vault.svc.cluster.local.", mdns.TypeAAAA},
		{"secret.vault.svc.cluster.local.", mdns.TypeTXT},
		{"secret.vault.svc.cluster.local.", mdns.TypeMX},
		{"secret6.vault.svc.cluster.local.", mdns.TypeA},
		{"alias.example.com.", mdns.TypeAAAA},
	} {
		wantNXDOMAIN(t, s.Addr(), c.name, c.qtype)
	}
	for _, c := range []struct {
		name  string
		qtype uint16
	}{
		{"plain.shop.svc.cluster.local.", mdns.TypeAAAA},
		{"plain.shop.svc.cluster.local.", mdns.TypeTXT},
		{"nov6.example.com.", mdns.TypeAAAA},
	} {
		resp := exchange(t, "udp", s.Addr(), c.name, c.qtype, false)
		if resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 0 {
			t.Errorf("%s %s: %s %q, want the upstream's NODATA", mdns.TypeToString[c.qtype], c.name, mdns.RcodeToString[resp.Rcode], answers(resp))
		}
	}
	mu.Lock()
	if asked["A nov6.example.com."] != 0 {
		t.Errorf("a NODATA answer for a name outside the cluster's services was checked upstream: %v", asked)
	}
	failProbe = true
	mu.Unlock()
	// When the addresses cannot be checked, the pod is not told the name exists.
	resp := exchange(t, "udp", s.Addr(), "flaky.shop.svc.cluster.local.", mdns.TypeAAAA, false)
	if resp.Rcode != mdns.RcodeServerFailure || len(resp.Answer) != 0 {
		t.Errorf("AAAA flaky.shop.svc.cluster.local. with its A query failing: %s %q, want SERVFAIL", mdns.RcodeToString[resp.Rcode], answers(resp))
	}
}

// wantNXDOMAIN asks the server at addr for name over UDP and TCP and fails
// unless each answer is NXDOMAIN with no records.
func wantNXDOMAIN(t *testing.T, addr, name string, qtype uint16) {
	t.Helper()
	for _, network := range []string{"udp", "tcp"} {
		resp := exchange(t, network, addr, name, qtype, false)
		if resp.Rcode != mdns.RcodeNameError || len(resp.Answer) != 0 || len(resp.Extra) != 0 {
			t.Errorf("%s %s over %s: %s %q, want NXDOMAIN and nothing else", mdns.TypeToString[qtype], name, network,
				mdns.RcodeToString[resp.Rcode], answers(resp))
		}
	}
}
