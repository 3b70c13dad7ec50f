package dns

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var podSearch = []string{"shop.svc.cluster.local", "svc.cluster.local", "cluster.local"}

func meshTable() *StaticTable {
	return NewStaticTable(map[string]Record{
		"web.shop.svc.cluster.local": {
			Addrs:     []netip.Addr{mustAddr("10.0.0.1"), mustAddr("fd00::1")},
			Ports:     []SRVPort{{Name: "http", Proto: "tcp", Port: 8080}, {Name: "grpc", Proto: "tcp", Port: 9090}},
			Reachable: true,
		},
		"secret.shop.svc.cluster.local.": {Addrs: []netip.Addr{mustAddr("10.0.0.9")}},
	})
}

// answers renders the answer section as "type value" strings.
func answers(m *mdns.Msg) []string {
	var out []string
	for _, r := range m.Answer {
		switch v := r.(type) {
		case *mdns.A:
			out = append(out, "A "+v.A.String())
		case *mdns.AAAA:
			out = append(out, "AAAA "+v.AAAA.String())
		case *mdns.CNAME:
			out = append(out, "CNAME "+v.Target)
		case *mdns.SRV:
			out = append(out, "SRV "+v.Target+" "+strconv.Itoa(int(v.Port)))
		default:
			out = append(out, r.String())
		}
	}
	return out
}

func TestMeshNames(t *testing.T) {
	up := startUpstream(t, answerA("192.0.2.1", 60))
	s := startServer(t, Config{Search: podSearch, Ndots: 5, Upstreams: []string{up.addr}, Table: meshTable()})
	const full = "web.shop.svc.cluster.local."
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		want   []string
		extraA bool
	}{
		{"A full name", full, mdns.TypeA, mdns.RcodeSuccess, []string{"A 10.0.0.1"}, false},
		{"AAAA full name", full, mdns.TypeAAAA, mdns.RcodeSuccess, []string{"AAAA fd00::1"}, false},
		{"A mixed case", "WEB.Shop.svc.cluster.local.", mdns.TypeA, mdns.RcodeSuccess, []string{"A 10.0.0.1"}, false},
		{"A short name via search", "web.", mdns.TypeA, mdns.RcodeSuccess, []string{"CNAME " + full, "A 10.0.0.1"}, false},
		{"A svc.ns via search", "web.shop.", mdns.TypeA, mdns.RcodeSuccess, []string{"CNAME " + full, "A 10.0.0.1"}, false},
		{"AAAA svc.ns.svc via search", "web.shop.svc.", mdns.TypeAAAA, mdns.RcodeSuccess, []string{"CNAME " + full, "AAAA fd00::1"}, false},
		{"SRV named port", "_http._tcp." + full, mdns.TypeSRV, mdns.RcodeSuccess, []string{"SRV " + full + " 8080"}, true},
		{"SRV short via search", "_grpc._tcp.web.", mdns.TypeSRV, mdns.RcodeSuccess, []string{"CNAME _grpc._tcp." + full, "SRV " + full + " 9090"}, true},
		{"SRV all ports", full, mdns.TypeSRV, mdns.RcodeSuccess, []string{"SRV " + full + " 8080", "SRV " + full + " 9090"}, true},
		{"SRV unknown port", "_nope._tcp." + full, mdns.TypeSRV, mdns.RcodeNameError, nil, false},
		{"NODATA for TXT", full, mdns.TypeTXT, mdns.RcodeSuccess, nil, false},
		{"NODATA for A of SRV name", "_http._tcp." + full, mdns.TypeA, mdns.RcodeSuccess, nil, false},
		{"unreachable is NXDOMAIN", "secret.shop.svc.cluster.local.", mdns.TypeA, mdns.RcodeNameError, nil, false},
		{"unreachable short is NXDOMAIN", "secret.", mdns.TypeA, mdns.RcodeNameError, nil, false},
		{"non-mesh name is forwarded", "example.com.", mdns.TypeA, mdns.RcodeSuccess, []string{"A 192.0.2.1"}, false},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tc := range tests {
			t.Run(network+"/"+tc.name, func(t *testing.T) {
				resp := exchange(t, network, s.Addr(), tc.qname, tc.qtype, false)
				if resp.Rcode != tc.rcode {
					t.Fatalf("rcode %s, want %s", mdns.RcodeToString[resp.Rcode], mdns.RcodeToString[tc.rcode])
				}
				if got := answers(resp); !slices.Equal(got, tc.want) {
					t.Fatalf("answers %q, want %q", got, tc.want)
				}
				if tc.extraA && !slices.ContainsFunc(resp.Extra, func(r mdns.RR) bool { _, ok := r.(*mdns.A); return ok }) {
					t.Errorf("SRV answer without A glue: %v", resp.Extra)
				}
				if len(tc.want) == 0 && (len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != mdns.TypeSOA) {
					t.Errorf("negative answer without SOA: %v", resp.Ns)
				}
			})
		}
	}
	if n := up.queries(); n != 1 {
		t.Errorf("upstream saw %d queries, want 1 (example.com once, then from the cache)", n)
	}
}

func TestAnswerUnreachable(t *testing.T) {
	s := startServer(t, Config{Upstreams: []string{closedPort(t)}, AnswerUnreachable: true, Table: meshTable()})
	resp := exchange(t, "udp", s.Addr(), "secret.shop.svc.cluster.local.", mdns.TypeA, false)
	if got := answers(resp); resp.Rcode != mdns.RcodeSuccess || !slices.Equal(got, []string{"A 10.0.0.9"}) {
		t.Fatalf("rcode %d answers %q, want the address (refusal left to the proxy)", resp.Rcode, got)
	}
}

func TestSetTable(t *testing.T) {
	s := startServer(t, Config{Upstreams: []string{closedPort(t)}, UpstreamTimeout: 200 * time.Millisecond})
	const name = "api.shop.svc.cluster.local."
	if resp := exchange(t, "udp", s.Addr(), name, mdns.TypeA, false); resp.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("before any table: rcode %s, want SERVFAIL from the dead upstream", mdns.RcodeToString[resp.Rcode])
	}
	for _, ip := range []string{"10.1.0.1", "10.1.0.2"} {
		s.SetTable(NewStaticTable(map[string]Record{name: {Addrs: []netip.Addr{mustAddr(ip)}, Reachable: true}}))
		if got := answers(exchange(t, "udp", s.Addr(), name, mdns.TypeA, false)); !slices.Equal(got, []string{"A " + ip}) {
			t.Fatalf("after swap: %q, want A %s", got, ip)
		}
	}
}

func TestForwardCache(t *testing.T) {
	clock := newFakeClock()
	up := startUpstream(t, func(r *mdns.Msg, _ bool) *mdns.Msg {
		m := new(mdns.Msg).SetReply(r)
		switch r.Question[0].Name {
		case "example.com.":
			m.Answer = []mdns.RR{rr("example.com. 60 IN A 192.0.2.1")}
		case "nx.example.com.":
			m.Rcode = mdns.RcodeNameError
			m.Ns = []mdns.RR{rr("example.com. 3600 IN SOA ns. host. 1 2 3 4 20")}
		}
		return m
	})
	s := startServer(t, Config{Upstreams: []string{up.addr}, Now: clock.Now})

	resp := exchange(t, "udp", s.Addr(), "example.com.", mdns.TypeA, false)
	if got := answers(resp); !slices.Equal(got, []string{"A 192.0.2.1"}) {
		t.Fatalf("answers %q", got)
	}
	clock.Advance(10 * time.Second)
	resp = exchange(t, "udp", s.Addr(), "EXAMPLE.com.", mdns.TypeA, false)
	if up.queries() != 1 {
		t.Fatalf("second query reached the upstream (%d queries)", up.queries())
	}
	if ttl := resp.Answer[0].Header().Ttl; ttl != 50 {
		t.Errorf("cached TTL %d, want 60-10", ttl)
	}
	if resp.Question[0].Name != "EXAMPLE.com." {
		t.Errorf("question %q, want the client's spelling", resp.Question[0].Name)
	}
	if hits := counterValue(t, s.metrics.cacheHits); hits != 1 {
		t.Errorf("cache hits metric %v, want 1", hits)
	}
	clock.Advance(51 * time.Second)
	exchange(t, "udp", s.Addr(), "example.com.", mdns.TypeA, false)
	if up.queries() != 2 {
		t.Fatalf("after TTL: upstream saw %d queries, want 2", up.queries())
	}

	// Negative answers live for the SOA minimum (20s here).
	for range 2 {
		if resp := exchange(t, "udp", s.Addr(), "nx.example.com.", mdns.TypeA, false); resp.Rcode != mdns.RcodeNameError {
			t.Fatalf("rcode %s, want NXDOMAIN", mdns.RcodeToString[resp.Rcode])
		}
	}
	if up.queries() != 3 {
		t.Fatalf("NXDOMAIN not cached: upstream saw %d queries, want 3", up.queries())
	}
	clock.Advance(21 * time.Second)
	exchange(t, "udp", s.Addr(), "nx.example.com.", mdns.TypeA, false)
	if up.queries() != 4 {
		t.Fatalf("NXDOMAIN outlived the SOA minimum: upstream saw %d queries, want 4", up.queries())
	}
}

func TestCacheBounded(t *testing.T) {
	c := newCache(2)
	now := time.Now()
	for _, name := range []string{"a.", "b.", "c."} {
		m := new(mdns.Msg)
		m.Answer = []mdns.RR{rr("%s 60 IN A 192.0.2.1", name)}
		c.put(cacheKey{name: name, qtype: mdns.TypeA}, m, now)
	}
	if _, ok := c.get(cacheKey{name: "a.", qtype: mdns.TypeA}, now); ok {
		t.Error("least recently used entry survived")
	}
	if _, ok := c.get(cacheKey{name: "c.", qtype: mdns.TypeA}, now); !ok {
		t.Error("newest entry missing")
	}
}

func TestTCPFallback(t *testing.T) {
	const n = 60 // 60 A records do not fit in 512 bytes
	up := startUpstream(t, func(r *mdns.Msg, tcp bool) *mdns.Msg {
		m := new(mdns.Msg).SetReply(r)
		if !tcp {
			m.Truncated = true
			return m
		}
		for i := range n {
			m.Answer = append(m.Answer, rr("big.example.com. 60 IN A 192.0.2.%d", i+1))
		}
		return m
	})
	s := startServer(t, Config{Upstreams: []string{up.addr}})

	resp := exchange(t, "tcp", s.Addr(), "big.example.com.", mdns.TypeA, false)
	if len(resp.Answer) != n || resp.Truncated {
		t.Fatalf("got %d answers (TC=%v), want all %d", len(resp.Answer), resp.Truncated, n)
	}
	if up.udp.Load() != 1 || up.tcp.Load() != 1 {
		t.Fatalf("upstream saw udp=%d tcp=%d, want one of each", up.udp.Load(), up.tcp.Load())
	}
	// A plain UDP client gets TC=1 from the (cached) answer and retries over TCP.
	resp = exchange(t, "udp", s.Addr(), "big.example.com.", mdns.TypeA, false)
	if !resp.Truncated || len(resp.Answer) == n {
		t.Fatalf("UDP reply: TC=%v with %d answers, want truncated", resp.Truncated, len(resp.Answer))
	}
	resp.Compress = true
	if packed, _ := resp.Pack(); len(packed) > mdns.MinMsgSize {
		t.Errorf("UDP reply of %d bytes exceeds 512", len(packed))
	}
	// With EDNS0 and a large buffer it fits.
	if resp := exchange(t, "udp", s.Addr(), "big.example.com.", mdns.TypeA, true); len(resp.Answer) != n || resp.Truncated {
		t.Fatalf("EDNS UDP reply: %d answers TC=%v, want all", len(resp.Answer), resp.Truncated)
	}
}

func TestServfailWhenUpstreamsDown(t *testing.T) {
	s := startServer(t, Config{Upstreams: []string{closedPort(t), closedPort(t)}, UpstreamTimeout: 300 * time.Millisecond})
	for _, network := range []string{"udp", "tcp"} {
		resp := exchange(t, network, s.Addr(), "example.com.", mdns.TypeA, false)
		if resp.Rcode != mdns.RcodeServerFailure {
			t.Fatalf("%s: rcode %s, want SERVFAIL", network, mdns.RcodeToString[resp.Rcode])
		}
	}
	if got := counterValue(t, s.metrics.forwardErrors.WithLabelValues("udp")); got != 4 {
		t.Errorf("forward errors metric %v, want 4", got)
	}
	if got := counterValue(t, s.metrics.queries.WithLabelValues("A", resultServfail)); got != 2 {
		t.Errorf("servfail query metric %v, want 2", got)
	}
}

func TestSecondUpstreamUsed(t *testing.T) {
	up := startUpstream(t, answerA("192.0.2.7", 60))
	s := startServer(t, Config{Upstreams: []string{closedPort(t), up.addr}, UpstreamTimeout: 300 * time.Millisecond})
	if got := answers(exchange(t, "udp", s.Addr(), "example.com.", mdns.TypeA, false)); !slices.Equal(got, []string{"A 192.0.2.7"}) {
		t.Fatalf("answers %q, want the second upstream's", got)
	}
}

func TestUpstreamSeesRandomIDs(t *testing.T) {
	ids := make(chan uint16, 8)
	up := startUpstream(t, func(r *mdns.Msg, _ bool) *mdns.Msg {
		ids <- r.Id
		return new(mdns.Msg).SetReply(r) // NOERROR without SOA: not cached
	})
	s := startServer(t, Config{Upstreams: []string{up.addr}})
	seen := map[uint16]bool{}
	for range 4 {
		exchange(t, "udp", s.Addr(), "example.com.", mdns.TypeA, false) // client ID is always 0x4242
		seen[<-ids] = true
	}
	if seen[0x4242] || len(seen) < 3 {
		t.Fatalf("upstream IDs %v: want fresh random IDs, not the client's", seen)
	}
}

func TestEgressRecording(t *testing.T) {
	clock := newFakeClock()
	up := startUpstream(t, func(r *mdns.Msg, _ bool) *mdns.Msg {
		m := new(mdns.Msg).SetReply(r)
		q := r.Question[0]
		q.Name = strings.ToLower(q.Name)
		switch {
		case q.Name == "storage.googleapis.com." && q.Qtype == mdns.TypeA:
			m.Answer = []mdns.RR{
				rr("storage.googleapis.com. 300 IN CNAME edge.l.google.com."),
				rr("edge.l.google.com. 300 IN CNAME edge2.l.google.com."),
				rr("edge2.l.google.com. 60 IN A 142.250.1.1"),
				rr("unrelated.example.net. 60 IN A 198.51.100.66"), // not on the chain
			}
		case q.Name == "api.example.com." && q.Qtype == mdns.TypeAAAA:
			m.Answer = []mdns.RR{rr("api.example.com. 10 IN AAAA 2001:db8::1")}
		case q.Name == "evil.example.org." && q.Qtype == mdns.TypeA:
			m.Answer = []mdns.RR{rr("evil.example.org. 600 IN A 203.0.113.6")}
		case q.Name == "googleapis.com." && q.Qtype == mdns.TypeA:
			m.Answer = []mdns.RR{rr("googleapis.com. 600 IN A 203.0.113.7")}
		}
		return m
	})
	s := startServer(t, Config{
		Upstreams: []string{up.addr}, Now: clock.Now, CacheSize: -1,
		EgressAllow: []string{"*.googleapis.com", "api.example.com"},
	})
	exchange(t, "udp", s.Addr(), "storage.googleapis.com.", mdns.TypeA, false)
	exchange(t, "tcp", s.Addr(), "API.example.com.", mdns.TypeAAAA, false)
	exchange(t, "udp", s.Addr(), "evil.example.org.", mdns.TypeA, false)
	exchange(t, "udp", s.Addr(), "googleapis.com.", mdns.TypeA, false) // the wildcard needs a label

	check := func(when string, want map[string]bool) {
		t.Helper()
		for ip, allowed := range want {
			if got := s.AllowedIP(mustAddr(ip)); got != allowed {
				t.Errorf("%s: AllowedIP(%s) = %v, want %v", when, ip, got, allowed)
			}
		}
	}
	check("fresh", map[string]bool{
		"142.250.1.1": true, "::ffff:142.250.1.1": true, "2001:db8::1": true,
		"198.51.100.66": false, "203.0.113.6": false, "203.0.113.7": false,
	})
	clock.Advance(31 * time.Second) // past the 30s minimum hold of the 10s AAAA
	check("after 31s", map[string]bool{"142.250.1.1": true, "2001:db8::1": false})
	clock.Advance(30 * time.Second) // past the A's 60s TTL
	check("after 61s", map[string]bool{"142.250.1.1": false})
}

func TestOddQueries(t *testing.T) {
	s, err := New(Config{Upstreams: []string{"192.0.2.53"}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	q := func(edit func(m *mdns.Msg)) *mdns.Msg {
		m := new(mdns.Msg).SetQuestion("example.com.", mdns.TypeA)
		edit(m)
		return m
	}
	tests := []struct {
		name  string
		msg   *mdns.Msg
		rcode int // -1: dropped
	}{
		{"no question", q(func(m *mdns.Msg) { m.Question = nil }), mdns.RcodeFormatError},
		{"two questions", q(func(m *mdns.Msg) { m.Question = append(m.Question, m.Question[0]) }), mdns.RcodeFormatError},
		{"chaos class", q(func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS }), mdns.RcodeNotImplemented},
		{"unknown class", q(func(m *mdns.Msg) { m.Question[0].Qclass = 999 }), mdns.RcodeNotImplemented},
		{"notify opcode", q(func(m *mdns.Msg) { m.Opcode = mdns.OpcodeNotify }), mdns.RcodeNotImplemented},
		{"zone transfer", q(func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeAXFR }), mdns.RcodeRefused},
		{"huge name", q(func(m *mdns.Msg) { m.Question[0].Name = strings.Repeat("a.", 200) }), mdns.RcodeFormatError},
		{"a response", q(func(m *mdns.Msg) { m.Response = true }), -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := s.handle(context.Background(), tc.msg)
			switch {
			case tc.rcode == -1 && resp != nil:
				t.Fatalf("answered %v, want dropped", resp)
			case tc.rcode == -1:
			case resp == nil:
				t.Fatal("dropped, want an answer")
			case resp.Rcode != tc.rcode || resp.Id != tc.msg.Id:
				t.Fatalf("rcode %s id %d, want %s id %d", mdns.RcodeToString[resp.Rcode], resp.Id, mdns.RcodeToString[tc.rcode], tc.msg.Id)
			}
		})
	}
}

func TestGarbageOverUDP(t *testing.T) {
	s := startServer(t, Config{Upstreams: []string{closedPort(t)}, Table: meshTable()})
	conn, err := net.Dial("udp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	good, _ := new(mdns.Msg).SetQuestion("web.shop.svc.cluster.local.", mdns.TypeA).Pack()
	for _, b := range [][]byte{{}, {0}, good[:5], good[:len(good)-1], append([]byte{}, good[:12]...), {0xde, 0xad, 0xbe, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0xc0, 0x0c}} {
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	// The server is still alive and answers real queries.
	if got := answers(exchange(t, "udp", s.Addr(), "web.shop.svc.cluster.local.", mdns.TypeA, false)); !slices.Equal(got, []string{"A 10.0.0.1"}) {
		t.Fatalf("after garbage: %q", got)
	}
}

func TestDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("dig not installed (apt-get install dnsutils); skipping the dig check")
	}
	s := startServer(t, Config{Search: podSearch, Ndots: 5, Upstreams: []string{closedPort(t)}, Table: meshTable()})
	host, port, _ := net.SplitHostPort(s.Addr())
	for _, args := range [][]string{
		{"web.shop.svc.cluster.local", "A"},
		{"+tcp", "web.shop.svc.cluster.local", "AAAA"},
		{"_http._tcp.web.shop.svc.cluster.local", "SRV"},
	} {
		cmd := exec.Command(dig, append([]string{"@" + host, "-p", port, "+short", "+time=2", "+tries=1"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		want := map[string]string{"A": "10.0.0.1", "AAAA": "fd00::1", "SRV": "0 100 8080 web.shop.svc.cluster.local."}[args[len(args)-1]]
		if strings.TrimSpace(string(out)) != want {
			t.Errorf("dig %v = %q, want %q", args, out, want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no upstream", Config{}},
		{"bad upstream", Config{Upstreams: []string{"dns.example"}}},
		{"bad listen", Config{Listen: "nope", Upstreams: []string{"1.1.1.1"}}},
		{"bad pattern", Config{Upstreams: []string{"1.1.1.1"}, EgressAllow: []string{"*.*.example.com"}}},
		{"bad search", Config{Upstreams: []string{"1.1.1.1"}, Search: []string{"a..b"}}},
		{"negative ndots", Config{Upstreams: []string{"1.1.1.1"}, Ndots: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	if _, err := New(Config{Upstreams: []string{"1.1.1.1", "[::1]:5353", "10.0.0.10:53"}}); err != nil {
		t.Fatalf("good config: %v", err)
	}
}

func counterValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	m, ok := c.(prometheus.Metric)
	if !ok {
		t.Fatalf("%T is not a single metric", c)
	}
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetCounter().GetValue()
}

// TestAlsoListen: the server answers on its second address too (the
// sidecar's [::1]:15053, where the IPv6 capture rules send DNS queries to
// an IPv6 resolver), over UDP and TCP, the same as on the first.
func TestAlsoListen(t *testing.T) {
	if l, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		t.Skipf("no ::1 here: %v", err)
	} else {
		l.Close()
	}
	up := startUpstream(t, answerA("192.0.2.1", 60))
	s := startServer(t, Config{AlsoListen: "[::1]:0", Search: podSearch, Ndots: 5, Upstreams: []string{up.addr}, Table: meshTable()})
	if !strings.HasPrefix(s.AlsoAddr(), "[::1]:") {
		t.Fatalf("AlsoAddr %q, want [::1]:port", s.AlsoAddr())
	}
	for _, network := range []string{"udp", "tcp"} {
		m := exchange(t, network, s.AlsoAddr(), "web.shop.svc.cluster.local.", mdns.TypeA, false)
		if len(m.Answer) != 1 || !strings.Contains(m.Answer[0].String(), "10.0.0.1") {
			t.Fatalf("%s query on %s: %v", network, s.AlsoAddr(), m.Answer)
		}
	}
	if _, err := New(Config{AlsoListen: "::1", Upstreams: []string{up.addr}}); err == nil || !strings.Contains(err.Error(), "second listen address") {
		t.Fatalf("AlsoListen without a port: %v", err)
	}
}
