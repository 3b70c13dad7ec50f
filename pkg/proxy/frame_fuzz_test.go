package proxy

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzFrames: the frame reader never panics or over-reads on hostile
// input, and only yields OPEN ports and names from well-formed frames.
func FuzzFrames(f *testing.F) {
	f.Add(append([]byte{frameOpen, 0, 0, 0, 4}, openPayload(8080, "ab")...))
	f.Add([]byte{frameData, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{frameDeny, 0, 0, 0, 3, 'n', 'o', '!'})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, in []byte) {
		tn := &tunnel{br: bufio.NewReaderSize(bytes.NewReader(in), 64<<10)}
		for range 16 {
			typ, n, err := tn.readHeader()
			if err != nil {
				return
			}
			if n > maxPayload {
				t.Fatalf("accepted a %d-byte frame", n)
			}
			switch typ {
			case frameOpen, frameDeny:
				b, err := tn.readControl(n)
				if err != nil {
					return
				}
				if typ == frameOpen {
					port, name, err := parseOpen(b)
					if err == nil && (len(name) != len(b)-2 || port != uint16(b[0])<<8|uint16(b[1])) {
						t.Fatal("OPEN decoded wrongly")
					}
				}
			default:
				if _, err := tn.br.Discard(n); err != nil {
					return
				}
			}
		}
	})
}
