package testutil

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Freezer is a TCP proxy that can stop forwarding without closing
// anything, as a host that vanished does: no FIN, no RST, no answer. Tests
// use it to check that clients notice a silent peer (gRPC keepalive).
type Freezer struct {
	l      net.Listener
	gate   sync.RWMutex // held for writing while frozen
	frozen bool         // only the test's goroutine uses it
}

// StartFreezer forwards a new loopback port to target until the test
// ends.
func StartFreezer(t testing.TB, target string) *Freezer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &Freezer{l: l}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		if f.frozen {
			f.Unfreeze() // (a failed test) so that the pipes can end
		}
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Go(func() { f.pipe(out, in) })
			wg.Go(func() { f.pipe(in, out) })
		}
	})
	return f
}

// Addr is the address to connect to instead of the target.
func (f *Freezer) Addr() string { return f.l.Addr().String() }

// Freeze stops forwarding in both directions; what arrives is held.
func (f *Freezer) Freeze() { f.gate.Lock(); f.frozen = true }

// Unfreeze forwards again.
func (f *Freezer) Unfreeze() { f.frozen = false; f.gate.Unlock() }

// pipe copies src to dst, holding each chunk while frozen.
func (f *Freezer) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			f.gate.RLock()
			_, werr := dst.Write(buf[:n])
			f.gate.RUnlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				src.Close()
			}
			return
		}
	}
}
