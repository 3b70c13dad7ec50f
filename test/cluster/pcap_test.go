package cluster_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
)

// packet is one captured IPv4 TCP segment.
type packet struct {
	src, dst netip.AddrPort
	payload  []byte
}

// Link types tcpdump writes: Ethernet (one interface), Linux cooked
// capture v1 and v2 (-i any).
const (
	linkEthernet = 1
	linkSLL      = 113
	linkSLL2     = 276
)

// parsePcap reads a classic pcap file (as `tcpdump -w -` writes it) and
// returns its IPv4 TCP segments; other packets are skipped. A file cut
// short in its last record (tcpdump interrupted) keeps the records before.
func parsePcap(b []byte) ([]packet, error) {
	if len(b) < 24 {
		return nil, fmt.Errorf("pcap: %d bytes, shorter than the file header", len(b))
	}
	var bo binary.ByteOrder
	switch magic := binary.LittleEndian.Uint32(b); magic {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("pcap: bad magic %#x (not a pcap file; pcapng is not read)", magic)
	}
	link := bo.Uint32(b[20:]) & 0xffff
	var pkts []packet
	for off := 24; off+16 <= len(b); {
		incl := int(bo.Uint32(b[off+8:]))
		off += 16
		if incl > len(b)-off {
			break // the last record was cut short
		}
		frame := b[off : off+incl]
		off += incl
		ip, ok := ipv4Payload(link, frame)
		if !ok {
			continue
		}
		if p, ok := tcpSegment(ip); ok {
			pkts = append(pkts, p)
		}
	}
	switch link {
	case linkEthernet, linkSLL, linkSLL2:
		return pkts, nil
	default:
		return nil, fmt.Errorf("pcap: link type %d not read (want Ethernet, LINUX_SLL or LINUX_SLL2)", link)
	}
}

// ipv4Payload returns the IPv4 packet in a frame of the link type.
func ipv4Payload(link uint32, f []byte) ([]byte, bool) {
	var proto uint16
	var hdr int
	switch link {
	case linkEthernet:
		hdr = 14
		if len(f) >= hdr {
			proto = binary.BigEndian.Uint16(f[12:])
		}
	case linkSLL:
		hdr = 16
		if len(f) >= hdr {
			proto = binary.BigEndian.Uint16(f[14:])
		}
	case linkSLL2:
		hdr = 20
		if len(f) >= hdr {
			proto = binary.BigEndian.Uint16(f[0:])
		}
	default:
		return nil, false
	}
	if len(f) < hdr || proto != 0x0800 {
		return nil, false
	}
	return f[hdr:], true
}

// tcpSegment parses an IPv4 packet holding TCP.
func tcpSegment(ip []byte) (packet, bool) {
	if len(ip) < 20 || ip[0]>>4 != 4 || ip[9] != 6 {
		return packet{}, false
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total > len(ip) {
		total = len(ip) // snapped
	}
	if ihl < 20 || total < ihl+20 {
		return packet{}, false
	}
	tcp := ip[ihl:total]
	doff := int(tcp[12]>>4) * 4
	if doff < 20 || doff > len(tcp) {
		return packet{}, false
	}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(tcp[0:]))
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(tcp[2:]))
	return packet{src: src, dst: dst, payload: tcp[doff:]}, true
}

// between returns the segments with payload from a to b or b to a.
func between(pkts []packet, a, b netip.Addr) []packet {
	var out []packet
	for _, p := range pkts {
		if len(p.payload) > 0 && ((p.src.Addr() == a && p.dst.Addr() == b) || (p.src.Addr() == b && p.dst.Addr() == a)) {
			out = append(out, p)
		}
	}
	return out
}

// tlsRecords counts segments that start with a TLS 1.2/1.3 record header
// (handshake or application data).
func tlsRecords(pkts []packet) int {
	n := 0
	for _, p := range pkts {
		if len(p.payload) >= 5 && (p.payload[0] == 0x16 || p.payload[0] == 0x17) && p.payload[1] == 3 && p.payload[2] <= 4 {
			n++
		}
	}
	return n
}

// --- tests of the parser, run without a cluster ---

func pcapFile(link uint32, frames ...[]byte) []byte {
	var b bytes.Buffer
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 262144)
	binary.LittleEndian.PutUint32(hdr[20:], link)
	b.Write(hdr)
	for _, f := range frames {
		rec := make([]byte, 16)
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(f)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(f)))
		b.Write(rec)
		b.Write(f)
	}
	return b.Bytes()
}

func ipTCP(src, dst netip.AddrPort, payload []byte) []byte {
	ip := make([]byte, 20+20+len(payload))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8], ip[9] = 64, 6
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[20:], src.Port())
	binary.BigEndian.PutUint16(ip[22:], dst.Port())
	ip[32] = 5 << 4
	copy(ip[40:], payload)
	return ip
}

func sll(proto uint16, ip []byte) []byte {
	h := make([]byte, 16)
	binary.BigEndian.PutUint16(h[14:], proto)
	return append(h, ip...)
}

func TestParsePcap(t *testing.T) {
	web, api := netip.MustParseAddrPort("10.88.0.5:41000"), netip.MustParseAddrPort("10.88.0.6:8080")
	tls := []byte{0x17, 0x03, 0x03, 0x00, 0x20, 1, 2, 3}
	file := pcapFile(linkSLL,
		sll(0x0800, ipTCP(web, api, []byte("GET / HTTP/1.1\r\nX-Tether-Marker: M-1\r\n"))),
		sll(0x86dd, []byte("an IPv6 packet, skipped")),
		sll(0x0800, ipTCP(api, web, tls)),
		sll(0x0800, ipTCP(api, web, nil)),
	)
	pkts, err := parsePcap(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) != 3 {
		t.Fatalf("got %d TCP segments, want 3", len(pkts))
	}
	if pkts[0].src != web || pkts[0].dst != api || !bytes.Contains(pkts[0].payload, []byte("M-1")) {
		t.Errorf("first segment %v -> %v %q", pkts[0].src, pkts[0].dst, pkts[0].payload)
	}
	if got := between(pkts, web.Addr(), api.Addr()); len(got) != 2 {
		t.Errorf("between: %d segments with payload, want 2", len(got))
	}
	if n := tlsRecords(pkts); n != 1 {
		t.Errorf("tlsRecords = %d, want 1", n)
	}

	// Cut inside the last record: the records before are kept.
	cut, err := parsePcap(file[:len(file)-3])
	if err != nil || len(cut) != 2 {
		t.Errorf("cut file: %d segments, %v; want 2", len(cut), err)
	}
	eth := append(make([]byte, 12), 0x08, 0x00)
	if p, err := parsePcap(pcapFile(linkEthernet, append(eth, ipTCP(web, api, []byte("x"))...))); err != nil || len(p) != 1 {
		t.Errorf("Ethernet: %d segments, %v", len(p), err)
	}
	sll2 := make([]byte, 20)
	binary.BigEndian.PutUint16(sll2, 0x0800)
	if p, err := parsePcap(pcapFile(linkSLL2, append(sll2, ipTCP(web, api, []byte("x"))...))); err != nil || len(p) != 1 {
		t.Errorf("SLL2: %d segments, %v", len(p), err)
	}
	for name, bad := range map[string][]byte{
		"empty":     nil,
		"pcapng":    append([]byte{0x0a, 0x0d, 0x0d, 0x0a}, make([]byte, 40)...),
		"link type": pcapFile(105),
	} {
		if _, err := parsePcap(bad); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
	if _, err := parsePcap([]byte("short")); err == nil {
		t.Error("a 5-byte file parsed without error")
	}
}
