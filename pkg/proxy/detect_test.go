package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net"
	"testing"

	"github.com/tether-mesh/tether/pkg/proxy"
)

// clientHello captures the first flight of a real Go TLS client.
func clientHello(t testing.TB, protos []string) []byte {
	a, b := net.Pipe()
	go func() {
		tls.Client(a, &tls.Config{InsecureSkipVerify: true, NextProtos: protos}).Handshake()
		a.Close()
	}()
	buf := make([]byte, 4096)
	n, _ := b.Read(buf)
	// Read the rest of the record if split.
	for n < 5 || n < 5+int(buf[3])<<8|int(buf[4]) {
		m, err := b.Read(buf[n:])
		if err != nil {
			break
		}
		n += m
	}
	b.Close()
	return buf[:n]
}

func TestDetect(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want proxy.Kind
	}{
		{"mesh ClientHello", clientHello(t, []string{"h2", proxy.ALPN}), proxy.MeshTLS},
		{"browser ClientHello", clientHello(t, []string{"h2", "http/1.1"}), proxy.ForeignTLS},
		{"no ALPN", clientHello(t, nil), proxy.ForeignTLS},
		{"HTTP", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), proxy.Plaintext},
		{"empty", nil, proxy.Plaintext},
		{"short TLS header", []byte{0x16, 0x03}, proxy.Plaintext},
		{"truncated hello", clientHello(t, []string{proxy.ALPN})[:60], proxy.ForeignTLS},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := proxy.Detect(bufio.NewReaderSize(bytes.NewReader(tc.in), 20<<10)); got != tc.want {
				t.Fatalf("Detect = %s, want %s", got, tc.want)
			}
		})
	}
}

// FuzzDetect: no first bytes crash detection, and detection never consumes.
func FuzzDetect(f *testing.F) {
	f.Add(clientHello(f, []string{proxy.ALPN}))
	f.Add(clientHello(f, []string{"h2"}))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 20<<10)
		proxy.Detect(br)
		rest := make([]byte, len(in))
		n, _ := br.Read(rest)
		for n < len(in) {
			m, err := br.Read(rest[n:])
			if err != nil {
				break
			}
			n += m
		}
		if !bytes.Equal(rest[:n], in) {
			t.Fatal("Detect consumed bytes")
		}
	})
}
