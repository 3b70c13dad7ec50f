package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
)

// ALPN is the protocol mesh hops negotiate.
const ALPN = "tether/1"

// Kind is what the first bytes of an inbound connection look like.
type Kind int

// Kinds of inbound connection.
const (
	// Plaintext is anything that is not a TLS ClientHello (or no bytes at
	// all within the peek timeout: a server-first protocol).
	Plaintext Kind = iota
	// ForeignTLS is a TLS ClientHello that does not offer ALPN tether/1.
	ForeignTLS
	// MeshTLS is a ClientHello offering tether/1.
	MeshTLS
)

func (k Kind) String() string {
	return [...]string{"plaintext", "foreign-tls", "mesh-tls"}[k]
}

// maxHello bounds how much of a ClientHello is buffered for detection.
const maxHello = 16 << 10

var errShort = errors.New("short ClientHello")

// Detect classifies a connection by peeking (never consuming) its first
// record. The reader must have a buffer of at least maxHello+5 bytes.
// Errors from the reader (such as a deadline) end detection with what has
// been seen so far.
func Detect(br *bufio.Reader) Kind {
	hdr, err := br.Peek(5)
	if err != nil || hdr[0] != 0x16 || hdr[1] != 0x03 {
		return Plaintext
	}
	n := int(binary.BigEndian.Uint16(hdr[3:5]))
	if n == 0 || n > maxHello {
		return ForeignTLS
	}
	rec, err := br.Peek(5 + n)
	if err != nil {
		return ForeignTLS
	}
	protos, err := helloALPN(rec[5:])
	if err != nil {
		return ForeignTLS
	}
	for _, p := range protos {
		if p == ALPN {
			return MeshTLS
		}
	}
	return ForeignTLS
}

// helloALPN returns the ALPN protocols of a ClientHello handshake message
// (RFC 8446 4.1.2), bounds-checking every length.
func helloALPN(b []byte) ([]string, error) {
	r := reader(b)
	typ, ok := r.u8()
	if !ok || typ != 1 { // client_hello
		return nil, errShort
	}
	body, ok := r.vec(3)
	if !ok {
		return nil, errShort
	}
	r = reader(body)
	if !r.skip(2 + 32) { // legacy_version, random
		return nil, errShort
	}
	for _, l := range []int{1, 2, 1} { // session id, cipher suites, compression
		if _, ok := r.vec(l); !ok {
			return nil, errShort
		}
	}
	exts, ok := r.vec(2)
	if !ok {
		return nil, nil // no extensions
	}
	r = reader(exts)
	for len(r) > 0 {
		typ, ok1 := r.u16()
		data, ok2 := r.vec(2)
		if !ok1 || !ok2 {
			return nil, errShort
		}
		if typ != 16 { // application_layer_protocol_negotiation
			continue
		}
		d := reader(data)
		list, ok := d.vec(2)
		if !ok {
			return nil, errShort
		}
		var out []string
		for l := reader(list); len(l) > 0; {
			p, ok := l.vec(1)
			if !ok {
				return nil, errShort
			}
			out = append(out, string(p))
		}
		return out, nil
	}
	return nil, nil
}

type reader []byte

func (r *reader) u8() (byte, bool) {
	if len(*r) < 1 {
		return 0, false
	}
	v := (*r)[0]
	*r = (*r)[1:]
	return v, true
}

func (r *reader) u16() (uint16, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(*r)
	*r = (*r)[2:]
	return v, true
}

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

// vec reads a vector with a big-endian length prefix of l bytes.
func (r *reader) vec(l int) ([]byte, bool) {
	if len(*r) < l {
		return nil, false
	}
	n := 0
	for _, b := range (*r)[:l] {
		n = n<<8 | int(b)
	}
	*r = (*r)[l:]
	if len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}
